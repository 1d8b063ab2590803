"""The public API: the README's library example and the boot-time hook example run on the
twins as written; the client owns and closes its connections; events reach a listener
and the logger; only the exported names are public."""

import importlib.machinery
import importlib.util
import logging
import re
from pathlib import Path

import pytest

import attachflow
from attachflow import errors, operations
from attachflow.connectors import get_transport

from twins import FakeCinder, fake_host

ROOT = Path(__file__).resolve().parents[2]


def twin_client(world, **settings):
    cinder, hosts = world
    return attachflow.Client(storage=cinder, hosts=hosts, **settings)


def sessions_and_secrets(host):
    return (set(host.brick.sessions), dict(host.brick.devices), dict(host.hypervisor.secrets),
            set(host.hypervisor.sessions))


def test_the_readme_library_example_runs_as_written(world, monkeypatch, capsys):
    cinder, hosts = world
    root = cinder.create_volume()
    operations.boot(cinder, hosts["hosta"], get_transport("native"), "vm1", root,
                    virt_type="qemu")
    volume = cinder.create_volume()
    monkeypatch.setenv("VOLUME", volume)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    real_client = attachflow.Client
    monkeypatch.setattr(attachflow, "Client", lambda **settings: real_client(
        storage=cinder, hosts=hosts, **settings))
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    assert f"{volume} is vdb in vm1" in out
    assert "vm1 runs on hostb; left behind: nothing" in out
    assert f"attach {volume} to vm1: storage complete (attachments) done" in out
    # what the example did, as a user would check it
    assert cinder.volumes[volume].status == "available"
    assert hosts["hostb"].hypervisor.domains["vm1"].active
    assert "vm1" not in hosts["hosta"].hypervisor.domains
    assert hosts["hostb"].hypervisor.domain("vm1").disk(volume) is None
    assert hosts["hostb"].hypervisor.domain("vm1").disk(root) is not None


def test_client_opens_each_host_once_and_closes_what_it_opened(monkeypatch):
    opened, closed = [], []

    def open_host(name, env):
        host = fake_host(name)
        host.close = lambda: closed.append(name)
        opened.append(name)
        return host

    monkeypatch.setattr("attachflow.client.open_host", open_host)
    given = fake_host("given")
    given.close = lambda: closed.append("given")
    with attachflow.Client(transport="native", storage=FakeCinder(),
                           hosts={"given": given}) as af:
        first = af.connector("hosta")
        assert af.connector("hosta") == first and af.host("hosta") is af.host("hosta")
        af.connector("hostb")
        af.connector("given")
        assert closed == []
    assert opened == ["hosta", "hostb"] and sorted(closed) == ["hosta", "hostb"]
    assert first.initiator and first.host == "hosta"


def test_connector_needs_no_storage(monkeypatch):
    def no_storage(*args, **kwargs):
        raise AssertionError("connector must not reach the storage API")

    monkeypatch.setattr("attachflow.client.CinderStorage.connect", no_storage)
    with attachflow.Client(transport="native", hosts={"local": fake_host("local")}) as af:
        assert af.connector().host == "local"


def test_settings_are_checked_and_default_from_the_environment():
    with pytest.raises(errors.InputError, match="unknown transport 'fibre'"):
        attachflow.Client(transport="fibre")
    with pytest.raises(errors.InputError, match="unknown api 'nova'"):
        attachflow.Client(api="nova")
    assert attachflow.Client(env={"ATTACHFLOW_TRANSPORT": "native"}).transport == "native"
    assert attachflow.Client(env={}).transport == "kernel"
    with pytest.raises(errors.InputError, match="unknown transport"):
        attachflow.Client(env={"ATTACHFLOW_TRANSPORT": "fc"})
    client = attachflow.Client(hosts_file="/nonexistent/hosts.toml", env={})
    assert client.host("local").cfg.libvirt_uri == "qemu:///system"


def test_events_reach_the_listener_and_the_logger_in_order(world, caplog):
    cinder, hosts = world
    hosts["hosta"].hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    events = []
    caplog.set_level(logging.DEBUG, logger="attachflow.events")
    with twin_client(world, transport="kernel", progress=events.append) as af:
        result = af.attach(vol, "vm1", host="hosta")
    started = [e.step for e in events if isinstance(e, attachflow.StepStarted)]
    done = [e.step for e in events if isinstance(e, attachflow.StepDone)]
    assert started == done == result.steps and events
    assert all(e.operation == f"attach {vol} to vm1" for e in events)
    assert [e.to_dict()["event"] for e in events[:2]] == ["step_started", "step_done"]
    logged = [r.getMessage() for r in caplog.records if r.name == "attachflow.events"]
    assert logged == [e.describe() for e in events]


def test_a_rollback_reports_each_undo_and_what_could_not_be_undone(world, caplog):
    cinder, hosts = world
    hv = hosts["hosta"].hypervisor
    hv.add_domain("vm1")
    vol = cinder.create_volume()
    cinder.fail("attachment_complete", errors.StorageUnavailable("cinder went away"))
    hv.fail("undefine_secret", errors.HypervisorError("libvirtd went away"), after=1)
    events = []
    caplog.set_level(logging.INFO, logger="attachflow.events")
    with twin_client(world, transport="native", progress=events.append) as af:
        with pytest.raises(attachflow.OperationFailed, match="could NOT undo") as info:
            af.attach(vol, "vm1", host="hosta")
    undone = [e.step for e in events if isinstance(e, attachflow.StepUndone)]
    failed = [(e.step, e.error) for e in events if isinstance(e, attachflow.UndoFailed)]
    assert failed == [("host connect (native)", "libvirtd went away")]
    # the attachment the host connection stands on is left for recover, and named
    assert undone == ["record in domain metadata", "guest attach"]
    assert "storage connect (attachments): left in place" in str(info.value)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"attach {vol} to vm1: could NOT undo host connect (native): libvirtd went away"]


def test_a_listener_that_raises_does_not_disturb_the_operation(world, caplog):
    cinder, hosts = world
    hosts["hosta"].hypervisor.add_domain("vm1")
    vol = cinder.create_volume()

    def broken(event):
        raise RuntimeError("listener bug")

    with twin_client(world, transport="native", progress=broken) as af:
        result = af.attach(vol, "vm1", host="hosta")
    assert result.device == "vdb" and cinder.volumes[vol].status == "in-use"
    assert any("listener" in r.getMessage() for r in caplog.records)


def test_only_the_exported_names_are_public():
    assert sorted(attachflow._MODULE_OF) == attachflow.__all__
    for name in attachflow.__all__:
        assert getattr(attachflow, name) is not None, name
    assert "Client" in dir(attachflow)
    with pytest.raises(AttributeError):
        attachflow.LibvirtHypervisor  # noqa: B018 (internal: not exported)
    assert (ROOT / "attachflow" / "py.typed").exists()
    assert issubclass(attachflow.OperationFailed, attachflow.AttachflowError)


# -- the boot-time hook example ------------------------------------------------------------

def load_hook():
    path = ROOT / "examples" / "hooks" / "attachflow-guest"
    loader = importlib.machinery.SourceFileLoader("attachflow_guest_hook", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def declare(tmp_path, name, volumes, transport="kernel"):
    lines = [f'transport = "{transport}"']
    for vol, device in volumes:
        lines += ["[[volumes]]", f'id = "{vol}"'] + ([f'device = "{device}"'] if device
                                                      else [])
    (tmp_path / f"{name}.toml").write_text("\n".join(lines) + "\n")


def test_the_hook_attaches_before_start_and_detaches_after_stop(world, tmp_path, capsys):
    cinder, hosts = world
    hook = load_hook()
    a = hosts["hosta"]
    a.hypervisor.add_domain("vm1", active=False)
    clean = sessions_and_secrets(a)
    vols = [cinder.create_volume(), cinder.create_volume()]
    declare(tmp_path, "vm1", [(vols[0], "vdc"), (vols[1], None)])
    args = ["--host", "hosta", "--guests-dir", str(tmp_path)]

    def run(action):
        return hook.main([action, "vm1", *args], client=twin_client(world,
                                                                    transport="kernel"))

    assert run("start") == 0
    dom = a.hypervisor.domain("vm1")
    assert a.hypervisor.domains["vm1"].active
    assert [dom.disk(v).target_dev for v in vols] == ["vdc", "vdb"]
    assert all(cinder.volumes[v].status == "in-use" for v in vols)
    assert len(a.brick.sessions) == 2
    assert run("start") == 0                      # a retried unit changes nothing
    assert "already attached as vdc" in capsys.readouterr().out
    assert all(len(cinder.volumes[v].attachments) == 1 for v in vols)

    assert run("stop") == 0
    assert not a.hypervisor.domains["vm1"].active
    assert all(cinder.volumes[v].status == "available" for v in vols)
    assert a.hypervisor.domain("vm1", inactive=True).disk(vols[0]) is None
    assert sessions_and_secrets(a) == clean
    assert run("stop") == 0
    assert "was not attached" in capsys.readouterr().out


def test_the_hook_leaves_the_guest_as_found_when_a_volume_cannot_be_attached(
        world, tmp_path, capsys):
    cinder, hosts = world
    hook = load_hook()
    a = hosts["hosta"]
    a.hypervisor.add_domain("vm1", active=False)
    clean = sessions_and_secrets(a)
    good = cinder.create_volume()
    declare(tmp_path, "vm1", [(good, None), ("7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a10", None)])
    code = hook.main(["start", "vm1", "--host", "hosta", "--guests-dir", str(tmp_path)],
                     client=twin_client(world, transport="kernel"))
    assert code == 2
    assert "start vm1:" in capsys.readouterr().err
    assert not a.hypervisor.domains["vm1"].active
    assert cinder.volumes[good].status == "available"
    assert a.hypervisor.domain("vm1", inactive=True).disk(good) is None
    assert sessions_and_secrets(a) == clean


def test_the_hook_stop_leaves_volumes_of_a_guest_that_does_not_shut_down(world, tmp_path):
    cinder, hosts = world
    hook = load_hook()
    a = hosts["hosta"]
    a.hypervisor.add_domain("vm1", active=False)
    vol = cinder.create_volume()
    declare(tmp_path, "vm1", [(vol, None)], transport="native")
    args = ["vm1", "--host", "hosta", "--guests-dir", str(tmp_path)]
    assert hook.main(["start", *args], client=twin_client(world)) == 0
    a.hypervisor.ignore_shutdown.add("vm1")
    code = hook.main(["stop", *args, "--shutdown-timeout", "0.2"], client=twin_client(world))
    assert code == 1
    assert a.hypervisor.domains["vm1"].active and cinder.volumes[vol].status == "in-use"


def test_the_hook_names_a_missing_or_broken_declaration(tmp_path):
    hook = load_hook()
    with pytest.raises(SystemExit, match="no declaration for vm1"):
        hook.main(["start", "vm1", "--guests-dir", str(tmp_path)], client=object())
    (tmp_path / "vm1.toml").write_text("[[volumes]]\ndevice = 'vdb'\n")
    with pytest.raises(SystemExit, match="needs an id"):
        hook.main(["start", "vm1", "--guests-dir", str(tmp_path)], client=object())


def test_connector_fails_when_the_host_does_not_answer(world):
    cinder, hosts = world
    hosts["hosta"].hypervisor.fail("hostname", attachflow.HostError(
        "hosta: cannot connect to libvirt at qemu+ssh://root@198.18.0.11/system"))
    with twin_client(world, transport="native") as af:
        with pytest.raises(attachflow.HostError, match="cannot connect to libvirt"):
            af.connector("hosta")
        assert af.connector("hostb").ip == "198.18.0.12"
