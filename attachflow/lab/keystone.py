"""Keystone, the lab's identity service: who may call Cinder, and the catalog that says
where Cinder is.

Four components: ``keystone-db`` (keystone.conf, the Fernet and credential key
repositories, the ``keystone`` database), ``keystone-bootstrap`` (``keystone-manage
bootstrap``: the admin), ``keystone`` (the API under gunicorn on 127.0.0.1:5000, starting
while the bootstrap runs) and ``keystone-accounts`` (the lab's projects,
users, role assignments and Cinder's catalog entries, made through the API as an operator
would, and the clouds.yaml / openrc that point clients at them).

Accounts (all in the ``Default`` domain; passwords are drawn at the first ``up`` and
kept, readable by root only, in ``keystone/passwords.json``)::

    user                project         role     cloud in clouds.yaml
    admin               admin           admin    attachflow-lab-admin    (bootstrap)
    lab-member          attachflow-lab  member   attachflow-lab          owns the volumes
    lab-reader          attachflow-lab  reader   attachflow-lab-reader   may look only
    cinder              service         service  attachflow-lab-cinder   keystonemiddleware
    attachflow-service  service         service  attachflow-lab-service  the service token

Side effects owned: everything under ``keystone/`` in the state dir, the ``keystone``
database, the keystone daemon, and the accounts and catalog entries above.
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attachflow.lab import layout, mariadb
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError
from attachflow.lab.shell import port_open, run
from attachflow.lab.supervision import Program

DOMAIN = "Default"
REGION = "RegionOne"
LAB_PROJECT = "attachflow-lab"
SERVICE_PROJECT = "service"


@dataclass(frozen=True)
class Account:
    user: str
    project: str
    role: str
    cloud: str      # its entry in the lab's clouds.yaml


ADMIN = Account("admin", "admin", "admin", "attachflow-lab-admin")
MEMBER = Account("lab-member", LAB_PROJECT, "member", "attachflow-lab")
READER = Account("lab-reader", LAB_PROJECT, "reader", "attachflow-lab-reader")
CINDER = Account("cinder", SERVICE_PROJECT, "service", "attachflow-lab-cinder")
SERVICE = Account("attachflow-service", SERVICE_PROJECT, "service", "attachflow-lab-service")
ACCOUNTS = (ADMIN, MEMBER, READER, CINDER, SERVICE)


def auth_url() -> str:
    return f"http://{layout.KEYSTONE_LISTEN}:{layout.KEYSTONE_PORT}/v3"


def base_dir() -> Path:
    return layout.path("keystone")


def conf_path() -> Path:
    return base_dir() / "keystone.conf"


def clouds_path() -> Path:
    return base_dir() / "clouds.yaml"


def openrc_path() -> Path:
    return base_dir() / "openrc"


_passwords_lock = threading.Lock()


def passwords(draw: bool = False) -> dict[str, str]:
    """Every account's password. ``draw``: make the missing ones; only `lab up` does,
    under the lab's lock (and this one: components that start in parallel both ask)."""
    store = base_dir() / "passwords.json"
    with _passwords_lock:
        known = layout.load_json(store, {})
        if not all(a.user in known for a in ACCOUNTS):
            if not draw:
                raise LabError(f"no Keystone passwords in {store}: is the lab up? "
                               "(attachflow lab up)")
            known = {a.user: known.get(a.user) or secrets.token_urlsafe(18)
                     for a in ACCOUNTS}
            layout.write(store, json.dumps(known, indent=1) + "\n", 0o600)
        return known


def _manage(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> None:
    run([str(layout.VENV / "bin" / "keystone-manage"), "--config-file", str(conf_path()),
         *args], env={**layout.DAEMON_ENV, **(env or {})}, timeout=timeout)


def _key_repository(repo: Path) -> None:
    """A Fernet key repository as `keystone-manage fernet_setup` leaves it: key 0 staged,
    key 1 primary, each 32 random bytes in URL-safe base64, readable by root only. Written
    here because each keystone-manage run costs seconds of imports on a fresh lab."""
    import base64
    repo.mkdir(mode=0o700, parents=True, exist_ok=True)
    for index in ("0", "1"):
        if not (repo / index).exists():
            layout.write(repo / index, base64.urlsafe_b64encode(secrets.token_bytes(32))
                         .decode(), 0o600)


class KeystoneDB(Component):
    """keystone.conf, the key repositories and the schema."""
    name = "keystone-db"
    requires = ("mariadb",)
    pip_packages = ("keystone", "gunicorn", "PyMySQL", "python-openstackclient")

    def up(self, lab: Lab) -> None:
        kdir = base_dir()
        kdir.mkdir(parents=True, exist_ok=True)
        _link_openstack_cli()
        db = (f"mysql+pymysql://root@localhost/keystone?unix_socket={mariadb.socket_path()}"
              "&charset=utf8")
        layout.render("keystone.conf", conf_path(), 0o600, database_url=db)
        for repo in ("fernet-keys", "credential-keys"):
            _key_repository(kdir / repo)
        marker = kdir / "db-synced"
        if marker.exists():
            return
        mariadb.schema("keystone", "keystone", lambda: _manage("db_sync"))
        marker.write_text("")

    def status(self, lab: Lab) -> Status:
        done = (base_dir() / "db-synced").exists()
        return Status("up" if done else "down", address=str(conf_path()),
                      details={"config": str(conf_path())})


class KeystoneBootstrap(Component):
    """The admin, its project and roles, the region and Keystone's own catalog entry
    (`keystone-manage bootstrap`), made while the API server starts."""
    name = "keystone-bootstrap"
    requires = ("keystone-db",)

    def up(self, lab: Lab) -> None:
        marker = base_dir() / "bootstrapped"
        if marker.exists():
            return
        endpoint = f"http://{layout.KEYSTONE_LISTEN}:{layout.KEYSTONE_PORT}"
        # The password goes through the environment, not the command line `ps` shows.
        _manage("bootstrap", "--bootstrap-username", ADMIN.user,
                "--bootstrap-project-name", ADMIN.project,
                "--bootstrap-role-name", ADMIN.role, "--bootstrap-region-id", REGION,
                "--bootstrap-admin-url", endpoint, "--bootstrap-public-url", endpoint,
                "--bootstrap-internal-url", endpoint,
                env={"OS_BOOTSTRAP_PASSWORD": passwords(draw=True)[ADMIN.user]})
        marker.write_text("")

    def status(self, lab: Lab) -> Status:
        done = (base_dir() / "bootstrapped").exists()
        return Status("up" if done else "down", details={"admin": ADMIN.user})


def _link_openstack_cli() -> None:
    """The openstack CLI of the lab's environment, alone in a folder `lab env` puts on
    PATH (the environment's other commands would shadow the machine's). Part of the
    installation: `down` leaves it."""
    link = layout.INSTALL_DIR / "bin" / "openstack"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(layout.VENV / "bin" / "openstack")


class KeystoneService(Component):
    """The Keystone API, served by gunicorn."""
    name = "keystone"
    requires = ("keystone-db",)
    ready_timeout = 90
    poll_interval = 0.3

    def programs(self) -> list[Program]:
        return [Program("keystone", [
            str(layout.VENV / "bin" / "gunicorn"), "--bind",
            f"{layout.KEYSTONE_LISTEN}:{layout.KEYSTONE_PORT}",
            # One worker with threads: the lab's load is a few clients, and each worker
            # is another 100 MB.
            "--workers", "1", "--threads", "4", "--timeout", "120",
            "--no-control-socket", "--access-logfile", "-",
            "--pythonpath", str(base_dir()), "lab_keystone_wsgi:application"],
            group=self.name, env={"OS_KEYSTONE_CONFIG_FILES": str(conf_path())},
            stop_wait=15)]

    def up(self, lab: Lab) -> None:
        if (not lab.program_pids([self.name])
                and port_open(layout.KEYSTONE_LISTEN, layout.KEYSTONE_PORT)):
            raise LabError(f"port {layout.KEYSTONE_LISTEN}:{layout.KEYSTONE_PORT} is taken "
                           "by a process not started by the lab")
        # Keystone parses the process's command line as its own options (it expects
        # to be the whole process); under gunicorn that line is gunicorn's.
        layout.write(base_dir() / "lab_keystone_wsgi.py",
                     "import sys\n\nsys.argv[1:] = []\n"
                     "from keystone.wsgi.api import application  # noqa: E402,F401\n")
        super().up(lab)

    def ready(self, lab: Lab) -> bool:
        try:
            with urllib.request.urlopen(auth_url(), timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError) as e:
            raise LabError(f"keystone: {e}") from e

    def status(self, lab: Lab) -> Status:
        st = super().status(lab)
        st.address = f"{layout.KEYSTONE_LISTEN}:{layout.KEYSTONE_PORT}"
        st.details["auth_url"] = auth_url()
        if st.state == "up":
            try:
                self.ready(lab)
            except LabError as e:
                st.state, st.details["error"] = "starting", str(e)
        return st


# ---------------------------------------------------------------------------------------
# Talking to the lab's Keystone as its admin

_sessions: dict[tuple[str, str, str], Any] = {}
_sessions_lock = threading.Lock()


def session(account: Account = ADMIN):
    """A keystoneauth session for one of the lab's accounts, kept for the process (with
    its token) as long as the lab keeps the account's password: a lab brought down and
    up again has new ones."""
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3
    password = passwords()[account.user]
    key = (account.user, password, str(base_dir()))
    with _sessions_lock:
        if key not in _sessions:
            auth = v3.Password(auth_url=auth_url(), username=account.user,
                               password=password, user_domain_name=DOMAIN,
                               project_name=account.project, project_domain_name=DOMAIN)
            _sessions[key] = ks_session.Session(auth=auth, timeout=10)
        return _sessions[key]


class _Admin:
    """The handful of identity-API calls the lab's set-up needs. Each creates, and on a
    conflict (a second `up`) finds what exists, so a fresh lab pays one request per
    account and grant."""

    def __init__(self) -> None:
        self.sess = session(ADMIN)
        self.roles = {r["name"]: r["id"] for r in self.get("/roles")["roles"]}

    def get(self, path: str, **params: str) -> dict[str, Any]:
        return self.sess.get(auth_url() + path, params=params).json()

    def create(self, kind: str, body: dict[str, Any], **match: str) -> dict[str, Any]:
        resp = self.sess.post(f"{auth_url()}/{kind}s", json={kind: body}, raise_exc=False)
        if resp.status_code == 409 and match:
            return self.get(f"/{kind}s", **match)[f"{kind}s"][0]
        resp.raise_for_status()
        return resp.json()[kind]

    def grant(self, project_id: str, user_id: str, role: str) -> None:
        self.sess.put(f"{auth_url()}/projects/{project_id}/users/{user_id}/roles/"
                      f"{self.roles[role]}")


def _endpoint_url() -> str:
    return f"{layout.cinder_endpoint()}/%(project_id)s"


class KeystoneAccounts(Component):
    """The lab's projects, users and roles, Cinder in the catalog, and the files that
    point clients at them."""
    name = "keystone-accounts"
    requires = ("keystone", "keystone-bootstrap")

    def up(self, lab: Lab) -> None:
        if self.ready(lab):
            return
        admin = _Admin()
        domain = "default"  # the Default domain's id, made by keystone-manage bootstrap
        pw = passwords(draw=True)
        projects = {}
        for name in (LAB_PROJECT, SERVICE_PROJECT):
            projects[name] = admin.create("project", {"name": name, "domain_id": domain},
                                          name=name, domain_id=domain)["id"]
        def make(account: Account) -> None:
            user = admin.create("user", {"name": account.user, "domain_id": domain,
                                         "password": pw[account.user], "enabled": True},
                                name=account.user, domain_id=domain)
            admin.grant(projects[account.project], user["id"], account.role)

        # One thread per account: each is two requests that wait on Keystone.
        with concurrent.futures.ThreadPoolExecutor(len(ACCOUNTS)) as pool:
            list(pool.map(make, [a for a in ACCOUNTS if a is not ADMIN]))
        # Both names Cinder goes by: openstacksdk looks for block-storage, cinderclient
        # for volumev3. Services may share a type, so look before making one.
        for svc_type, svc_name in (("block-storage", "cinder"), ("volumev3", "cinderv3")):
            found = admin.get("/services", type=svc_type)["services"]
            svc = found[0] if found else admin.create(
                "service", {"type": svc_type, "name": svc_name})
            have = {e["interface"] for e in
                    admin.get("/endpoints", service_id=svc["id"])["endpoints"]}
            for interface in {"public", "internal", "admin"} - have:
                admin.create("endpoint", {"service_id": svc["id"], "interface": interface,
                                          "region_id": REGION, "url": _endpoint_url()})
        write_client_files()
        (base_dir() / "accounts-ready").write_text("")

    def ready(self, lab: Lab) -> bool:
        return (base_dir() / "accounts-ready").exists()

    def status(self, lab: Lab) -> Status:
        state = "up" if self.ready(lab) else "down"
        return Status(state, address=str(clouds_path()),
                      details={"clouds_yaml": str(clouds_path()),
                               "users": [a.user for a in ACCOUNTS]})


def write_client_files() -> None:
    """clouds.yaml with one cloud per account, and an openrc for the member (the cinder
    CLI reads no clouds.yaml), both readable by root only: they hold passwords."""
    pw = passwords()
    lines = ["# attachflow lab: one cloud per account. Written by `attachflow lab up`.",
             "clouds:"]
    for account in ACCOUNTS:
        lines += [f"  {account.cloud}:",
                  "    auth:",
                  f"      auth_url: {json.dumps(auth_url())}",
                  f"      username: {json.dumps(account.user)}",
                  f"      password: {json.dumps(pw[account.user])}",
                  f"      project_name: {json.dumps(account.project)}",
                  f"      user_domain_name: {DOMAIN}",
                  f"      project_domain_name: {DOMAIN}",
                  f"    region_name: {REGION}",
                  "    interface: public",
                  "    identity_api_version: 3",
                  f"    volume_api_version: {json.dumps(layout.VOLUME_API_VERSION)}"]
    layout.write(clouds_path(), "\n".join(lines) + "\n", 0o600)
    import shlex
    member = {"OS_AUTH_URL": auth_url(), "OS_USERNAME": MEMBER.user,
              "OS_PASSWORD": pw[MEMBER.user], "OS_PROJECT_NAME": MEMBER.project,
              "OS_USER_DOMAIN_NAME": DOMAIN, "OS_PROJECT_DOMAIN_NAME": DOMAIN,
              "OS_REGION_NAME": REGION, "OS_INTERFACE": "public",
              "OS_IDENTITY_API_VERSION": "3"}
    layout.write(openrc_path(),
                 "# The lab's member user, for clients that read no clouds.yaml.\n"
                 + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in member.items()),
                 0o600)
