"""The lab's machinery without the machine: dependency order, parallel bring-up and its
failures, template filling, and the supervisord program files (the real daemons are
exercised by tests/lab)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import attachflow.lab as lab_api
from attachflow.lab import layout
from attachflow.lab.component import Component, Lab, bring_up, ordered
from attachflow.lab.errors import LabError
from attachflow.lab.supervision import Program, Supervisor


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTACHFLOW_LAB_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    return tmp_path / "state"


class Recorder:
    """What happened, in order, across the bring-up threads."""

    def __init__(self):
        self.events: list[str] = []
        self.lock = threading.Lock()

    def add(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def index(self, event: str) -> int:
        return self.events.index(event)


class Step(Component):
    def __init__(self, name, rec, requires=(), after=(), delay=0.0, fail=False):
        self.name, self.rec, self.requires, self.after = name, rec, requires, after
        self.delay, self.fail = delay, fail
        self.ready_timeout = 5
        self.poll_interval = 0.01

    def up(self, lab):
        self.rec.add(f"start {self.name}")
        time.sleep(self.delay)
        if self.fail:
            raise LabError(f"{self.name} broke")

    def ready(self, lab):
        self.rec.add(f"ready {self.name}")
        return True


def lab():
    return Lab(echo=lambda _m: None)


def test_every_component_comes_after_what_it_requires():
    comps = lab_api.components()
    names = [c.name for c in ordered(comps)]
    assert sorted(names) == sorted(c.name for c in comps)
    for comp in comps:
        for dep in (*comp.requires, *comp.after):
            assert names.index(dep) < names.index(comp.name), (dep, comp.name)


def test_the_lab_has_its_components():
    names = {c.name for c in lab_api.components()}
    assert {"network", "tgtd", "mariadb", "rabbitmq", "cinder-api", "cinder-scheduler",
            "cinder-volume", "guest-image", *lab_api.HOSTS} <= names


def test_kernel_nodes_are_components_only_when_asked_for(state):
    without = {c.name for c in lab_api.components("noauth")}
    assert not {"node-image", *layout.NODES} & without
    comps = lab_api.components("noauth", kernel_nodes=True)
    names = [c.name for c in ordered(comps)]
    assert {"node-image", "node-ssh-mesh", *layout.NODES} <= set(names)
    for node in layout.NODES:
        assert names.index("node-image") < names.index(node) < names.index("node-ssh-mesh")
    # a lab brought up with them keeps them
    (state / "kernel-nodes").write_text("yes\n")
    assert {"node-image", *layout.NODES} <= {c.name for c in lab_api.components("noauth")}


def test_a_node_entry_in_the_hosts_file_is_one_attachflow_reads(state):
    from attachflow.hosts import load_host
    from attachflow.lab.nodes import KernelNode
    layout.write(state / "hosts.toml", layout.render_text(
        "hosts.toml", entries="".join(KernelNode(n).hosts_entry() for n in layout.NODES)))
    for node, address in layout.NODES.items():
        cfg = load_host(node, env={"ATTACHFLOW_HOSTS": str(state / "hosts.toml")})
        assert cfg.address == address and cfg.remote_command == "attachflow"
        # the other node's libvirtd dials it with its own root keys, not the lab's wrapper
        assert cfg.inbound_migration_uri == f"qemu+ssh://root@{address}/system"
        assert "command=" in cfg.libvirt_uri


def test_the_node_image_is_keyed_by_its_recipe(monkeypatch):
    from attachflow.lab import nodeimage
    key = nodeimage.recipe_key()
    assert nodeimage.current().dir.name == f"node-image-{key}"
    monkeypatch.setattr(nodeimage, "PACKAGES", nodeimage.PACKAGES + ("strace",))
    assert nodeimage.recipe_key() != key
    monkeypatch.undo()
    real = nodeimage._file_text
    monkeypatch.setattr(nodeimage, "_file_text",
                        lambda t: real(t) + ("# changed\n" if t == "multipath.conf" else ""))
    assert nodeimage.recipe_key() != key


def test_cinder_volume_starts_after_a_listening_scheduler():
    by_name = {c.name: c for c in lab_api.components()}
    assert "cinder-scheduler" in by_name["cinder-volume"].requires
    assert "tgtd" in by_name["cinder-volume"].requires


def test_a_cycle_or_unknown_requirement_is_refused():
    rec = Recorder()
    with pytest.raises(LabError, match="require each other: a -> b -> a"):
        ordered([Step("a", rec, requires=("b",)), Step("b", rec, requires=("a",))])
    with pytest.raises(LabError, match="a requires nope"):
        ordered([Step("a", rec, requires=("nope",))])


def test_a_component_starts_only_once_its_requirements_are_ready():
    rec = Recorder()
    bring_up(lab(), [Step("c", rec, requires=("a", "b")), Step("a", rec, delay=0.05),
                     Step("b", rec, delay=0.1)])
    assert rec.index("start c") > rec.index("ready a")
    assert rec.index("start c") > rec.index("ready b")


def test_independent_components_start_together():
    rec = Recorder()
    bring_up(lab(), [Step("a", rec, delay=0.2), Step("b", rec, delay=0.2)])
    # Both started before either finished starting.
    assert set(rec.events[:2]) == {"start a", "start b"}


def test_after_means_started_not_ready():
    rec = Recorder()
    bring_up(lab(), [Step("broker", rec, delay=0.3), Step("svc", rec, after=("broker",))])
    assert rec.index("start svc") < rec.index("ready broker")


def test_a_failure_stops_dependents_and_is_raised(state):
    rec = Recorder()
    with pytest.raises(LabError, match="a broke"):
        bring_up(lab(), [Step("a", rec, fail=True), Step("b", rec, delay=0.1),
                         Step("c", rec, requires=("a",)), Step("d", rec, requires=("b",))])
    assert "start c" not in rec.events
    assert "start d" not in rec.events          # nothing new starts after a failure
    assert "ready b" in rec.events              # what was starting finishes
    times = layout.load_json(state / "ready-seconds.json", {})
    assert set(times) == {"b"}


def test_ready_times_are_kept_from_the_first_bring_up(state):
    rec = Recorder()
    bring_up(lab(), [Step("a", rec, delay=0.2)])
    first = layout.load_json(state / "ready-seconds.json", {})["a"]
    bring_up(lab(), [Step("a", rec)])
    assert layout.load_json(state / "ready-seconds.json", {})["a"] == first >= 0.2


def test_a_component_that_never_gets_ready_times_out():
    class Never(Step):
        def ready(self, lab):
            raise LabError("still booting")
    comp = Never("slow", Recorder())
    comp.ready_timeout = 0.2
    with pytest.raises(LabError, match=r"slow: not ready after 0.2s \(still booting\)"):
        bring_up(lab(), [comp])


def test_templates_fill_only_lowercase_braced_names():
    text = layout.render_text("host/enter", host="hosta", host_dir="/s/hosts/hosta")
    assert 'nsenter -t "$(cat /s/hosts/hosta/ns.pid)"' in text
    assert '"$@"' in text                       # shell syntax is left alone
    setup = layout.render_text("host/setup.sh", host="hostb", host_dir="/x")
    assert "hostname hostb" in setup and 'echo $$ > "$H/ns.pid"' in setup
    assert "${" not in setup.replace("$H", "")


def test_a_missing_template_value_names_the_template():
    with pytest.raises(LabError, match="template host/sshd_config: no value for address"):
        layout.render_text("host/sshd_config", host="hosta", host_dir="/x")


def _cinder_conf() -> str:
    from attachflow.lab import cinder
    return layout.render_text("cinder.conf", database_url="mysql+pymysql://db",
                              helper="privsep-helper", **cinder._auth_values())


def test_cinder_behind_keystone_checks_service_tokens(state):
    import configparser
    from attachflow.lab import keystone
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(_cinder_conf())
    assert conf["DEFAULT"]["auth_strategy"] == "keystone"
    authtoken = conf["keystone_authtoken"]
    assert authtoken["auth_url"] == f"http://127.0.0.1:{layout.KEYSTONE_PORT}"
    assert authtoken["username"] == "cinder" and authtoken["project_name"] == "service"
    assert authtoken["password"] == keystone.passwords()["cinder"]
    assert authtoken["service_token_roles"] == "service"
    assert authtoken["service_token_roles_required"] == "true"
    # Passwords are drawn once per lab and kept where only root reads them.
    assert keystone.passwords() == keystone.passwords()
    assert len(set(keystone.passwords().values())) == len(keystone.ACCOUNTS)
    assert (state / "keystone" / "passwords.json").stat().st_mode & 0o777 == 0o600


def test_cinder_under_noauth_has_no_keystone_section(state):
    import configparser
    layout.write(state / "auth", "noauth\n")
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(_cinder_conf())
    assert conf["DEFAULT"]["auth_strategy"] == "noauth"
    assert "keystone_authtoken" not in conf
    assert not (state / "keystone").exists()


def test_lab_clients_files_hold_every_account_readable_by_root_only(state):
    import yaml
    from attachflow.lab import keystone
    with pytest.raises(LabError, match="no Keystone passwords .* is the lab up"):
        keystone.write_client_files()  # only `lab up` draws them
    drawn = keystone.passwords(draw=True)
    keystone.write_client_files()
    clouds = yaml.safe_load(keystone.clouds_path().read_text())["clouds"]
    assert set(clouds) == {"attachflow-lab", "attachflow-lab-service", "attachflow-lab-admin",
                           "attachflow-lab-reader", "attachflow-lab-cinder"}
    member = clouds["attachflow-lab"]
    assert member["auth"]["username"] == "lab-member"
    assert member["auth"]["project_name"] == "attachflow-lab"
    assert member["auth"]["password"] == drawn["lab-member"]
    assert clouds["attachflow-lab-service"]["auth"]["project_name"] == "service"
    for path in (keystone.clouds_path(), keystone.openrc_path()):
        assert path.stat().st_mode & 0o777 == 0o600


def test_cinder_conf_comes_from_the_layout(state):
    text = _cinder_conf()
    assert f"my_ip = {layout.STORAGE_IP}" in text
    assert f"osapi_volume_listen_port = {layout.CINDER_PORT}" in text
    assert f"state_path = {state}/cinder" in text
    assert f"transport_url = rabbit://guest:guest@127.0.0.1:{layout.RABBIT_PORT}/" in text
    assert "connection = mysql+pymysql://db" in text
    assert "use_chap_auth = True" in text


class FakeCgroup:
    def __init__(self, root: Path):
        self.root = root

    def group(self, name: str) -> Path:
        (self.root / name).mkdir(parents=True, exist_ok=True)
        return self.root / name


def test_program_files_run_each_daemon_in_its_cgroup(tmp_path, state):
    sup = Supervisor(FakeCgroup(tmp_path / "cg"))
    sup.write_config([
        Program("svc", ["svc-bin", "--opt", "50%"], group="comp",
                env={"A": 'say "hi"', "B": "x"}, stop_signal="KILL", autorestart=False),
        Program("other", ["other-bin"], group="comp2"),
    ])
    text = (state / "supervisor" / "programs" / "svc.conf").read_text()
    launcher = state / "supervisor" / "in-cgroup"
    assert f"command = {launcher} {tmp_path / 'cg' / 'comp'} svc-bin --opt 50%%" in text
    assert 'environment = A="say \\"hi\\"",B="x"' in text
    assert "autorestart = false" in text and "stopsignal = KILL" in text
    assert launcher.stat().st_mode & 0o111
    conf = (state / "supervisor" / "supervisord.conf").read_text()
    assert f"file = {state}/supervisor/supervisor.sock" in conf
    # A program no longer declared loses its file.
    sup.write_config([Program("svc", ["svc-bin"], group="comp")])
    assert not (state / "supervisor" / "programs" / "other.conf").exists()


def test_a_component_that_breaks_on_down_does_not_stop_the_others():
    from attachflow.lab.component import bring_down
    rec = Recorder()

    class Broken(Step):
        def down(self, lab):
            raise RuntimeError("stuck")

    class Goes(Step):
        def down(self, lab):
            self.rec.add(f"down {self.name}")
            return []
    problems = bring_down(lab(), [Goes("base", rec), Broken("mid", rec, requires=("base",)),
                                  Goes("top", rec, requires=("mid",))])
    assert problems == ["mid: stuck"]
    assert rec.events == ["down top", "down base"]


def test_a_daemon_goes_down_before_the_peer_it_started_after():
    from attachflow.lab.component import bring_down
    rec = Recorder()

    class Goes(Step):
        def down(self, lab):
            time.sleep(0.05 if self.name == "svc" else 0)
            self.rec.add(f"down {self.name}")
            return []
    bring_down(lab(), [Goes("broker", rec), Goes("svc", rec, after=("broker",))])
    assert rec.events == ["down svc", "down broker"]


def test_some_components_go_down_while_what_they_require_stays():
    """The kernel nodes taken out of a running lab: the network they require stays up,
    and is not a component of this bring-down."""
    from attachflow.lab.component import bring_down
    rec = Recorder()

    class Goes(Step):
        def down(self, lab):
            self.rec.add(f"down {self.name}")
            return []
    problems = bring_down(lab(), [Goes("node", rec, requires=("network",)),
                                  Goes("mesh", rec, requires=("node",))])
    assert problems == [] and rec.events == ["down mesh", "down node"]


def test_a_wait_reports_what_it_last_waited_for_and_stops_at_once_when_hopeless():
    from attachflow.lab.errors import NeverReady
    from attachflow.lab.shell import wait_for

    def booting():
        raise LabError("waiting for iscsid.socket (activating)")

    with pytest.raises(LabError, match=r"nodeb: not ready after 0\.1s "
                       r"\(waiting for iscsid.socket \(activating\)\)"):
        wait_for("nodeb", booting, timeout=0.1, interval=0.02)

    calls = []

    def failed():
        calls.append(1)
        raise NeverReady("nodeb: failed attachflow-node.service: exit 1")

    with pytest.raises(NeverReady, match="failed attachflow-node.service"):
        wait_for("nodeb", failed, timeout=30, interval=0.02)
    assert len(calls) == 1
