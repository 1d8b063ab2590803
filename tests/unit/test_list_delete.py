"""`list`: every volume attachflow attached on a host, and each disagreement between the
guest and the storage API; `delete`: a guest attachflow booted goes, its volumes detached
and released first; other guests are refused unless forced."""

import json

import pytest
from click.testing import CliRunner

from attachflow import cli, errors, inventory, operations
from attachflow.client import Client
from attachflow.connectors import get_transport
from test_flows import snapshot


@pytest.fixture
def run(cinder, host, monkeypatch):
    monkeypatch.setattr(cli, "_client", lambda transport=None, api=None, os_cloud=None,
                        progress=None, os_service_cloud=None, state_dir=None,
                        lock_wait=None: Client(transport=transport or "native", api=api,
                                              storage=cinder, progress=progress,
                                              hosts={"local": host, "hosta": host}))
    return lambda *args: CliRunner().invoke(cli.cli, [*args, "--host", "hosta"])


def guest_with_data(cinder, host, transport="native"):
    root, data = cinder.create_volume(), cinder.create_volume()
    operations.boot(cinder, host, get_transport(transport), "vm1", root, virt_type="qemu")
    res = operations.attach(cinder, host, get_transport(transport), data, "vm1")
    return root, data, res


def test_list_shows_each_volume_with_both_sides_agreeing(cinder, host, run):
    root, data, res = guest_with_data(cinder, host)
    host.hypervisor.add_domain("other")  # a guest with no volumes of attachflow's
    result = run("list", "-f", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(r["domain"], r["volume_id"], r["device"], r["problem"]) for r in rows] == \
        sorted([("vm1", root, "vda", "ok"), ("vm1", data, "vdb", "ok")],
               key=lambda r: r[1])
    row = next(r for r in rows if r["volume_id"] == data)
    assert (row["transport"], row["api"], row["attachment_id"], row["volume_status"],
            row["storage_attachment"], row["domain_state"]) == (
        "native", "attachments", res.attachment_id, "in-use", res.attachment_id, "running")
    one = run("list", "vm1", "-f", "value", "-c", "volume_id", "-c", "device")
    assert sorted(one.output.splitlines()) == sorted([f"{root} vda", f"{data} vdb"])


def test_list_reports_each_disagreement_and_exits_1(cinder, host, run):
    root, data, res = guest_with_data(cinder, host)
    stray = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), stray, "vm1")
    cinder.attachment_delete(res.attachment_id)           # released behind our back
    host.hypervisor.domains["vm1"].live = [                # the stray disk unplugged
        d for d in host.hypervisor.domains["vm1"].live if d.serial != stray]
    host.hypervisor.domains["vm1"].config = [
        d for d in host.hypervisor.domains["vm1"].config if d.serial != stray]
    entries = {e.volume_id: e for e in inventory.inventory(cinder, host, "vm1")}
    assert entries[root].problem == inventory.OK
    assert entries[data].problem == inventory.NO_STORAGE_ATTACHMENT
    assert entries[stray].problem == inventory.NO_DISK
    result = run("list", "vm1")
    assert result.exit_code == 1
    assert "no disk in the guest" in result.output and "lists no attachment" in result.output


def test_delete_detaches_every_volume_then_undefines(cinder, host, run):
    root, data, _ = guest_with_data(cinder, host, transport="kernel")
    result = run("delete", "vm1", "-f", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["detached"] == [data, root] and out["already"] is False
    assert "vm1" not in host.hypervisor.domains
    assert all(cinder.volumes[v].status == "available" for v in (root, data))
    assert not host.brick.sessions and not host.brick.devices
    again = run("delete", "vm1", "-f", "json")
    assert again.exit_code == 0 and json.loads(again.output)["already"] is True
    strict = run("delete", "vm1", "--strict")
    assert strict.exit_code == 2 and "not found" in strict.stderr


def test_delete_refuses_a_guest_attachflow_did_not_boot(cinder, host, run):
    host.hypervisor.add_domain("theirs")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "theirs")
    before = snapshot(cinder, host)
    result = run("delete", "theirs")
    assert result.exit_code == 2 and "was not booted by attachflow" in result.stderr
    assert snapshot(cinder, host) == before
    forced = run("delete", "theirs", "--force", "-f", "json")
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.output)["detached"] == [vol]
    assert cinder.volumes[vol].status == "available" and "theirs" not in host.hypervisor.domains


def test_a_guest_that_ignores_acpi_is_forced_off(cinder, host):
    root, data, _ = guest_with_data(cinder, host)
    host.hypervisor.ignore_shutdown.add("vm1")
    result = operations.delete_guest(cinder, host, "vm1", shutdown_timeout=1)
    assert result.detached == [data, root] and "vm1" not in host.hypervisor.domains
    assert "destroy" in host.hypervisor.calls


def test_a_volume_that_cannot_be_detached_keeps_the_guest_defined(cinder, host):
    root, data, _ = guest_with_data(cinder, host)
    cinder.fail("attachment_delete", errors.StorageUnavailable("cinder away"), after=1)
    with pytest.raises(errors.OperationFailed, match="cinder away"):
        operations.delete_guest(cinder, host, "vm1")
    assert "vm1" in host.hypervisor.domains                 # run it again to finish
    assert cinder.volumes[data].status == "available"
    assert cinder.volumes[root].status == "in-use"
    result = operations.delete_guest(cinder, host, "vm1")
    assert result.detached == [root] and "vm1" not in host.hypervisor.domains
