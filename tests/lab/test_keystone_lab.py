"""The lab's Cinder behind its real Keystone: what happens to attachflow's operations when
the service user is missing, a login is refused, the user may not act, a token is revoked
in the middle of an operation, or Keystone is down.

Every other lab test already runs as the lab's member user with a service token (what
`lab env` sets); these take one of those away at a time and check, where a user would,
that the failure is one line with the right exit code and that the lab is exactly as
before (or, where Keystone made an undo impossible, that the message says what is left).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import pytest

from attachflow.lab import keystone
from test_e2e import APIS, assert_attached, assert_detached, boot, lab_state


def env_without(*names: str, **changes: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(changes)
    return env


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def no_secret_in(text: str) -> None:
    for password in keystone.passwords().values():
        assert password not in text
    assert "gAAAAA" not in text  # the start of every Fernet token


# -- Keystone's admin, for what an operator would do to users meanwhile -----------------

def _user_id(name: str) -> str:
    sess = keystone.session(keystone.ADMIN)
    users = sess.get(f"{keystone.auth_url()}/users", params={"name": name}).json()["users"]
    return users[0]["id"]


def set_user(name: str, **fields) -> None:
    sess = keystone.session(keystone.ADMIN)
    sess.patch(f"{keystone.auth_url()}/users/{_user_id(name)}", json={"user": fields})


@contextlib.contextmanager
def keystone_stopped(lab):
    from attachflow.lab.component import Lab
    from attachflow.lab.keystone import KeystoneService
    from attachflow.lab.shell import wait_for
    supervised = Lab()
    supervised.supervisor.stop("keystone")
    try:
        yield
    finally:
        supervised.supervisor.start("keystone")
        wait_for("keystone", lambda: KeystoneService().ready(supervised), timeout=90)


# -- the service user ---------------------------------------------------------------------

def test_without_a_service_user_a_detach_fails_cleanly_and_says_what_to_set(lab, cleanup):
    vm, _root = boot(lab, cleanup, "hosta", "attachments")
    data = lab.create_volume()
    cleanup["volumes"].append(data)
    lab.af_json("attach", data, vm, "--host", "hosta", "--api", "attachments")
    before = lab_state(lab)

    def disks():
        return [(d.disk_type, d.target_dev, d.serial, d.source_name, d.secret_usage)
                for d in (lab.disk("hosta", vm, data, inactive=i) for i in (False, True))]
    plugged = disks()
    proc = lab.af("detach", data, vm, "--host", "hosta", expect=1,
                  env=env_without("ATTACHFLOW_SERVICE_CLOUD"))
    line = one_line(proc)
    assert "--os-service-cloud / ATTACHFLOW_SERVICE_CLOUD" in line, line
    assert "all earlier steps undone" in line, line
    # The disk was unplugged before Cinder refused, and plugged back: the same disk
    # (device, source, serial, secret) in both definitions; the rest as it was.
    after = lab_state(lab)
    assert {k: v for k, v in after.items() if k != "xml"} == \
        {k: v for k, v in before.items() if k != "xml"}
    assert disks() == plugged
    assert_attached(lab, data, "hosta", vm, "vdb")
    # with the service user back, the same detach goes through
    lab.af_json("detach", data, vm, "--host", "hosta")
    assert_detached(lab, data, "hosta", vm)


def test_a_legacy_detach_needs_no_service_user(lab, cleanup):
    """Cinder keeps no connection info for a legacy attachment, so it lets its owner end
    the volume's only attachment without asking Nova (attachment_deletion_allowed; with
    several attachments on the volume it would ask)."""
    vm, _root = boot(lab, cleanup, "hosta", "legacy")
    data = lab.create_volume()
    cleanup["volumes"].append(data)
    lab.af_json("attach", data, vm, "--host", "hosta", "--api", "legacy")
    lab.af("detach", data, vm, "--host", "hosta", env=env_without("ATTACHFLOW_SERVICE_CLOUD"))
    assert_detached(lab, data, "hosta", vm)


# -- refused logins and refused calls ------------------------------------------------------

def test_refused_logins_and_calls_are_one_line_and_change_nothing(lab, cleanup):
    vm, _root = boot(lab, cleanup, "hosta", "attachments")
    free = lab.create_volume()
    cleanup["volumes"].append(free)
    before = lab_state(lab)
    # The member's settings as OS_* variables, with one thing wrong each time.
    plain = {"OS_CLOUD": "", "OS_AUTH_URL": keystone.auth_url(), "OS_USERNAME": "lab-member",
             "OS_PASSWORD": keystone.passwords()["lab-member"],
             "OS_PROJECT_NAME": "attachflow-lab", "OS_USER_DOMAIN_NAME": "Default",
             "OS_PROJECT_DOMAIN_NAME": "Default"}
    cases = {
        "wrong password": (dict(plain, OS_PASSWORD="not-the-password-1"), 3,
                           "Keystone at http://127.0.0.1:5000/v3 refused the login of user "
                           "'lab-member' in project 'attachflow-lab'"),
        "unknown project": (dict(plain, OS_PROJECT_NAME="no-such-project"), 3,
                            "refused the login of user 'lab-member' in project "
                            "'no-such-project'"),
        "service user's password": (
            {"ATTACHFLOW_SERVICE_CLOUD": "", "OS_SERVICE_AUTH_URL": keystone.auth_url(),
             "OS_SERVICE_USERNAME": "attachflow-service",
             "OS_SERVICE_PASSWORD": "not-the-password-2",
             "OS_SERVICE_PROJECT_NAME": "service",
             "OS_SERVICE_USER_DOMAIN_NAME": "Default",
             "OS_SERVICE_PROJECT_DOMAIN_NAME": "Default"}, 3,
            "refused the login of service user 'attachflow-service' in project 'service'"),
        "a reader may not attach": ({"OS_CLOUD": "attachflow-lab-reader"}, 3,
                                    "Cinder refused the user this call (HTTP 403"),
    }
    for case, (changes, code, words) in cases.items():
        proc = lab.af("attach", free, vm, "--host", "hosta", expect=None,
                      env=env_without(**changes))
        assert proc.returncode == code, (case, proc.stderr)
        line = one_line(proc)
        assert words in line, (case, line)
        no_secret_in(proc.stdout + proc.stderr)
        assert "not-the-password" not in proc.stderr
        assert lab_state(lab) == before, case

    with keystone_stopped(lab):
        # a command that must log in (with a stored token it would not ask Keystone)
        proc = lab.af("attach", free, vm, "--host", "hosta", expect=1,
                      env=env_without(ATTACHFLOW_TOKEN_CACHE="off"))
        line = one_line(proc)
        assert line.startswith("attachflow: error: cannot reach Keystone at "
                               "http://127.0.0.1:5000/v3 ("), line
    # (Cinder itself needs Keystone to answer anyone: the state is read once it is back)
    assert lab_state(lab) == before
    # and with Keystone back, the same attach works
    assert lab.af_json("attach", free, vm, "--host", "hosta")["device"] == "vdb"


# -- tokens revoked while an operation runs -------------------------------------------------

class TokenRequests(logging.Handler):
    """Counts the logins keystoneauth makes (its debug lines name each request)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        if "authentication request to http://127.0.0.1:5000/v3/auth/tokens" in \
                record.getMessage():
            self.count += 1


@contextlib.contextmanager
def counting_logins():
    log = logging.getLogger("keystoneauth.identity")
    handler, level = TokenRequests(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


REVOCATION_CACHE_TIME = 2


@pytest.fixture(scope="module")
def cinder_checks_tokens_often(lab):
    """Cinder trusting a validated token for 2 s instead of production's 5 minutes, for the
    tests of a token revoked mid-operation (with the default, Cinder would take the revoked
    token for the rest of the operation); production's default again afterwards."""
    from attachflow.lab import cinder
    cinder.token_cache_time(REVOCATION_CACHE_TIME)
    try:
        yield
    finally:
        cinder.token_cache_time(None)


def settle() -> None:
    """Wait until a revocation counts everywhere, as it would by the time an operator's
    change met a running operation: Cinder trusts a token's validation for
    REVOCATION_CACHE_TIME here, and Keystone counts whole seconds (a token issued in the
    second of a revocation is revoked with it)."""
    time.sleep(REVOCATION_CACHE_TIME + 0.5)


def revoke_member_tokens() -> None:
    """Disabling a user revokes every token it holds; enabled again, it may log in."""
    set_user("lab-member", enabled=False)
    set_user("lab-member", enabled=True)
    settle()


def at_step(step: str, action):
    """A progress listener that runs ``action`` once, when ``step`` is done."""
    from attachflow.events import StepDone
    done = []

    def listener(event):
        if isinstance(event, StepDone) and event.step.startswith(step) and not done:
            done.append(event)
            action()
    return listener, done


@pytest.mark.parametrize("api", APIS)
def test_a_token_revoked_mid_attach_is_replaced_by_one_new_login(lab, cleanup, api,
                                                                 cinder_checks_tokens_often):
    import attachflow
    vm, _root = boot(lab, cleanup, "hosta", api)
    data = lab.create_volume()
    cleanup["volumes"].append(data)

    listener, fired = at_step("host connect", revoke_member_tokens)
    with counting_logins() as logins, attachflow.Client(api=api, progress=listener) as af:
        af.storage.get_volume(data)        # logged in before the operation
        first = logins.count
        result = af.attach(data, vm, host="hosta")
    assert fired and result.device == "vdb"
    # one new login each for the member and the service user, no more
    assert logins.count - first == 2, logins.count
    assert_attached(lab, data, "hosta", vm, "vdb")


def test_a_refused_new_login_mid_attach_undoes_what_it_can_and_names_the_rest(
        lab, cleanup, cinder_checks_tokens_often):
    import attachflow
    from attachflow import errors
    vm, _root = boot(lab, cleanup, "hosta", "attachments")
    data = lab.create_volume()
    cleanup["volumes"].append(data)
    password = keystone.passwords()["lab-member"]
    secrets_before = sorted(lab.secrets("hosta"))

    def change_password():
        # A changed password revokes the user's tokens, and the old one no longer logs in.
        set_user("lab-member", password=password + "-changed")
        settle()

    listener, fired = at_step("host connect", change_password)
    try:
        with attachflow.Client(api="attachments", progress=listener) as af:
            with pytest.raises(errors.OperationFailed) as info:
                af.attach(data, vm, host="hosta")
    finally:
        set_user("lab-member", password=password)
        settle()
    message = str(info.value)
    assert fired and isinstance(info.value.cause, errors.AuthError), message
    assert "a new login to Keystone failed: Keystone at http://127.0.0.1:5000/v3 refused " \
           "the login" in message
    assert "could NOT undo: storage connect" in message, message
    no_secret_in(message)
    # the host side is undone: no disk, no secret, no session on the target
    for inactive in (False, True):
        assert lab.disk("hosta", vm, data, inactive=inactive) is None
    assert sorted(lab.secrets("hosta")) == secrets_before
    assert lab.initiators_of(data) == []
    # what the message names is what is left: the attachment, in Cinder
    vm_uuid = lab.conn("hosta").lookupByName(vm).UUIDString()
    left = [(a.instance, a.status) for a in
            lab.cinder.attachments.list(search_opts={"volume_id": data})]
    assert len(left) == 1 and left[0][0] == vm_uuid and \
        left[0][1] in ("reserved", "attaching"), left


# -- tokens kept between commands ----------------------------------------------------------

def commands(state_dir, count: int = 1, volume: str | None = None, **settings) -> int:
    """``count`` commands one after another, each with its own ``Client`` as each
    `attachflow` process has, sharing ``state_dir``: the logins they made together."""
    import attachflow
    with counting_logins() as logins:
        for _ in range(count):
            with attachflow.Client(state_dir=str(state_dir), **settings) as af:
                if volume:
                    af.storage.get_volume(volume)
                else:
                    af.storage  # noqa: B018 - connecting is the command's login
    return logins.count


def logged_in_once(lab, cleanup, state_dir) -> str:
    """A new volume, and the first command on it: one login each for the member and
    the service user, stored in ``state_dir``."""
    volume = lab.create_volume()
    cleanup["volumes"].append(volume)
    assert commands(state_dir, 1, volume) == 2
    return volume


def stored(state_dir) -> dict:
    """The stored tokens, by file name: each file's content as JSON."""
    import json
    return {f.name: json.loads(f.read_text()) for f in (state_dir / "tokens").glob("*.json")}


def rewrite_stored(state_dir, change) -> None:
    """Change every stored token's keystoneauth state with ``change(state)``."""
    import json
    for file in (state_dir / "tokens").glob("*.json"):
        data = json.loads(file.read_text())
        data = change(data)
        file.write_text(json.dumps(data))


def test_commands_share_one_login_per_user_and_keep_it_private(lab, cleanup, tmp_path):
    volume = lab.create_volume()
    cleanup["volumes"].append(volume)
    # the member and the service user log in once; 20 more commands ask Keystone nothing
    assert commands(tmp_path, 1, volume) == 2
    assert commands(tmp_path, 20, volume) == 0
    files = list((tmp_path / "tokens").iterdir())
    assert len(files) == 2
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)
    assert oct((tmp_path / "tokens").stat().st_mode & 0o777) == "0o700"
    # the command line says where its time went, and never shows a token
    env = env_without(ATTACHFLOW_STATE_DIR=str(tmp_path))
    proc = lab.af("list", "--host", "hosta", "-f", "value", "--timings", env=env)
    assert "stored token of user 'lab-member'" in proc.stderr
    assert "login of" not in proc.stderr, proc.stderr
    no_secret_in(proc.stdout + proc.stderr)


def test_a_revoked_stored_token_costs_one_new_login_per_user(lab, cleanup, tmp_path,
                                                             cinder_checks_tokens_often):
    volume = logged_in_once(lab, cleanup, tmp_path)
    before = stored(tmp_path)
    revoke_member_tokens()
    # Cinder refuses the member's stored token (401): keystoneauth logs in again, once
    # for the user and once for the service user whose token goes with it
    assert commands(tmp_path, 1, volume) == 2
    after = stored(tmp_path)
    assert set(after) == set(before) and after != before
    assert commands(tmp_path, 3, volume) == 0


def test_a_stale_catalog_is_read_again_and_a_revoked_token_found_then(
        lab, cleanup, tmp_path, cinder_checks_tokens_often):
    from attachflow.token_cache import CATALOG_TTL
    volume = logged_in_once(lab, cleanup, tmp_path)

    def aged(data):
        return {**data, "catalog_at": data["catalog_at"] - CATALOG_TTL - 1}
    rewrite_stored(tmp_path, aged)
    # the catalog is read again with the same token: no login
    assert commands(tmp_path, 1, volume) == 0
    # the member's catalog is new (the service user's token finds no endpoint: not read)
    assert sorted(time.time() - d["catalog_at"] < 60 for d in stored(tmp_path).values()) \
        == [False, True]
    # a revoked token, found when its catalog is read: exactly one new login (the
    # member's); the service user's token stays
    rewrite_stored(tmp_path, aged)
    revoke_member_tokens()
    assert commands(tmp_path, 1, volume) == 1


def test_a_changed_password_logs_in_anew_or_fails_and_forgets_the_token(
        lab, cleanup, tmp_path, cinder_checks_tokens_often):
    import yaml
    from attachflow import errors
    volume = logged_in_once(lab, cleanup, tmp_path)
    password = keystone.passwords()["lab-member"]
    clouds = yaml.safe_load(open(os.environ["OS_CLIENT_CONFIG_FILE"]))
    clouds["clouds"]["attachflow-lab"]["auth"]["password"] = password + "-new"
    new_clouds = tmp_path / "clouds.yaml"
    new_clouds.write_text(yaml.safe_dump(clouds))
    set_user("lab-member", password=password + "-new")
    settle()
    try:
        # the operator has not updated clouds.yaml yet: the stored token was revoked with
        # the change, the new login is refused, and the token is not kept
        with pytest.raises(errors.AuthError, match="refused the login"):
            commands(tmp_path, 1, volume)
        # (Cinder's 401 drops both tokens that went with the request, the service user's
        # too: it was never asked for again)
        assert stored(tmp_path) == {}
        # with the new password: new logins, not the old token
        env = env_without(OS_CLIENT_CONFIG_FILE=str(new_clouds))
        assert commands(tmp_path, 1, volume, env=env) == 2
        assert commands(tmp_path, 2, volume, env=env) == 0
    finally:
        set_user("lab-member", password=password)
        settle()


def test_another_cloud_finds_no_token_but_its_own(lab, cleanup, tmp_path):
    volume = logged_in_once(lab, cleanup, tmp_path)
    # the reader is another user of the same Keystone: its own login; the service user's
    # token serves both
    assert commands(tmp_path, 1, volume, cloud="attachflow-lab-reader") == 1
    assert len(stored(tmp_path)) == 3
    assert commands(tmp_path, 1, volume, cloud="attachflow-lab-reader") == 0
    assert commands(tmp_path, 1, volume) == 0


def test_an_expired_stored_token_is_not_used(lab, cleanup, tmp_path):
    import json
    volume = logged_in_once(lab, cleanup, tmp_path)

    def expired(data):
        state = json.loads(data["state"])
        state["body"]["token"]["expires_at"] = "2020-01-01T00:00:00.000000Z"
        return {**data, "state": json.dumps(state)}
    rewrite_stored(tmp_path, expired)
    assert commands(tmp_path, 1, volume) == 2
    assert commands(tmp_path, 1, volume) == 0


def test_with_the_cache_off_every_command_logs_in_and_nothing_is_stored(lab, cleanup,
                                                                        tmp_path):
    volume = lab.create_volume()
    cleanup["volumes"].append(volume)
    env = env_without(ATTACHFLOW_TOKEN_CACHE="off")
    assert commands(tmp_path, 3, volume, env=env) == 6
    assert not (tmp_path / "tokens").exists()
