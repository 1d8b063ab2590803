"""Live migration on the twins: the guest moves with every volume reconnected for the
destination and released on the source; every failure before the switch-over rolls back
to exactly one attachment per volume (the source's); a failure after it rolls forward."""

import dataclasses
import threading
import time

import pytest

from attachflow import domxml, errors, operations, record
from attachflow import migrate as mig
from attachflow import migration_monitor
from attachflow.connectors import get_transport, iscsi_native
from attachflow.events import MigrationProgress, StepUndone

from twins import FakeCinder, fake_host

APIS = ["attachments", "legacy"]
TRANSPORTS = ["native", "kernel"]


@pytest.fixture
def lab():
    cinder = FakeCinder()
    network = {}
    a = fake_host("hosta", cinder, "198.18.0.11", network)
    b = fake_host("hostb", cinder, "198.18.0.12", network)
    return cinder, a, b


def guest(lab, api, transport, volumes=2):
    """A volume-backed guest on hosta with ``volumes`` data volumes."""
    cinder, a, _b = lab
    root = cinder.create_volume()
    operations.boot(cinder, a, get_transport(transport), "vm", root, api=api)
    data = [cinder.create_volume() for _ in range(volumes)]
    for vol in data:
        operations.attach(cinder, a, get_transport(transport), vol, "vm", api=api)
    return [root] + data


def where(lab, vols):
    """Where the guest runs, and per volume: Cinder's attachments (by host of their
    connector) and the status."""
    cinder, a, b = lab
    runs = [h.name for h in (a, b) if "vm" in h.hypervisor.domains
            and h.hypervisor.domains["vm"].active]
    atts = {v: sorted((att.connector or {}).get("host", "?")
                      for att in cinder.volumes[v].attachments.values()) for v in vols}
    return runs, atts


def host_leftovers(host):
    return {"secrets": dict(host.hypervisor.secrets), "sessions": set(host.brick.sessions),
            "devices": dict(host.brick.devices), "maps": dict(host.brick.maps),
            "qemu": set(host.hypervisor.sessions)}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_migrate_there_and_back(lab, api, transport):
    cinder, a, b = lab
    vols = guest(lab, api, transport)
    for src, dst in ((a, b), (b, a)):
        clean_dst = host_leftovers(dst)
        plan = mig.preflight(cinder, src, dst, "vm", api="auto")
        result = mig.migrate(cinder, plan)
        assert result.runs_on == dst.name and not result.left_behind
        assert result.downtime_ms == 25 and not result.rolled_forward
        runs, atts = where(lab, vols)
        assert runs == [dst.name]
        if api == "attachments":
            assert all(hosts == [dst.name] for hosts in atts.values()), atts
        else:
            assert all(len(hosts) == 1 for hosts in atts.values())
        assert all(cinder.volumes[v].status == "in-use" for v in vols)
        # the source has nothing left of the guest
        assert not any(v in usage for usage in src.hypervisor.secrets for v in vols)
        assert not src.brick.sessions and not src.hypervisor.sessions
        # the destination runs every disk, found by serial, address kept, records updated
        records = record.read(dst.hypervisor.domain("vm"))
        for v in vols:
            disk = dst.hypervisor.domain("vm").disk(v)
            assert disk is not None
            assert dst.hypervisor.domain("vm", inactive=True).disk(v) is not None
            assert records[v].host == dst.name
            # the record is the destination's connection: its connector, its attachment
            assert records[v].connector["host"] == dst.name
            expected = get_transport(transport).connector_properties(dst)
            assert records[v].connector["initiator"] == expected.initiator
            assert records[v].connector["ip"] == expected.ip
            if api == "attachments":
                (att_id,) = cinder.volumes[v].attachments
                assert records[v].attachment_id == att_id
            assert records[v].connection.auth_password is None
            assert records[v] == record.read(dst.hypervisor.domain("vm", inactive=True))[v]
        assert clean_dst != host_leftovers(dst)
    # and detach works on the host the guest came back to
    operations.detach(cinder, a, vols[1], "vm")
    assert cinder.volumes[vols[1]].status == "available"


def test_migrate_a_guest_attached_by_an_earlier_version(lab, monkeypatch):
    """Its secrets carry the old usage name: the source's go, the destination's are new."""
    cinder, a, b = lab
    with monkeypatch.context() as earlier:
        earlier.setattr(iscsi_native, "secret_usage",
                        lambda volume_id, owner: f"attachflow/{volume_id}/{owner}")
        # earlier versions wrote that name without checking it against the schema
        earlier.setattr(domxml, "_check_source", lambda source: None)
        vols = guest(lab, "attachments", "native")
    uuid = a.hypervisor.domains["vm"].uuid
    assert sorted(a.hypervisor.secrets) == sorted(f"attachflow/{v}/{uuid}" for v in vols)
    result = mig.migrate(cinder, mig.preflight(cinder, a, b, "vm", api="auto"))
    assert result.runs_on == "hostb" and not result.left_behind
    assert not a.hypervisor.secrets
    assert sorted(b.hypervisor.secrets) == sorted(iscsi_native.secret_usage(v, uuid)
                                                  for v in vols)


def test_three_storage_calls_per_migrated_volume(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native")
    cinder.calls.clear()
    mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert len(cinder.calls) == 3 * len(vols)
    assert sorted(set(cinder.calls)) == ["attachment_complete", "attachment_create",
                                         "attachment_delete"]


# Every step before the switch-over that can fail, per API and per transport; `after`
# lets the first volume through so that one volume's undo runs beside the other's failure.
FAILURES = {
    "attachments": [("cinder", "attachment_create", 0), ("cinder", "attachment_create", 1)],
    "legacy": [("cinder", "initialize_connection", 0),
               ("cinder", "initialize_connection", 1)],
    "native": [("b_hv", "define_secret", 0), ("b_hv", "define_secret", 1)],
    "kernel": [("b_brick", "connect", 0), ("b_brick", "connect", 1)],
}
LIBVIRT_REFUSES = ("a_hv", "migrate", 0)


def _records(host):
    return {inactive: record.read(host.hypervisor.domain("vm", inactive=inactive))
            for inactive in (False, True)}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_failure_before_switch_over_rolls_back(lab, api, transport):
    cinder, a, b = lab
    vols = guest(lab, api, transport)
    for which, method, after in FAILURES[api] + FAILURES[transport] + [LIBVIRT_REFUSES]:
        before = where(lab, vols), host_leftovers(a), host_leftovers(b), _records(a)
        target = {"cinder": cinder, "a_hv": a.hypervisor, "b_hv": b.hypervisor,
                  "b_brick": b.brick}[which]
        target.fail(method, errors.AttachflowError(f"{method} broke"), after=after)
        with pytest.raises(errors.AttachflowError, match=f"{method} broke") as info:
            mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
        assert "could NOT undo" not in str(info.value) and info.value.exit_code == 1
        assert "vm" not in b.hypervisor.domains, (method, after)
        assert (where(lab, vols), host_leftovers(a), host_leftovers(b), _records(a)) \
            == before, (method, after)
    # and the guest still moves once nothing is in the way
    mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert where(lab, vols)[0] == ["hostb"]


def test_wrong_chap_on_destination_rolls_back(lab):
    cinder, a, b = lab
    vols = guest(lab, "legacy", "native", volumes=1)
    before = where(lab, vols), host_leftovers(b)
    real_login = b.hypervisor._login

    def refuse(domain, xml):
        raise errors.HypervisorError("iSCSI login failed: Authentication failure")

    b.hypervisor._login = refuse
    with pytest.raises(errors.OperationFailed, match="Authentication failure"):
        mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    b.hypervisor._login = real_login
    assert (where(lab, vols), host_leftovers(b)) == before
    assert a.hypervisor.domains["vm"].active


def test_timeout_aborts_and_rolls_back(lab, monkeypatch):
    monkeypatch.setattr(migration_monitor, "POLL_INTERVAL", 0.01)
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    before = where(lab, vols)
    a.hypervisor.during_migration = lambda hv: hv.wait_for_abort(5)
    events = []
    plan = mig.preflight(cinder, a, b, "vm",
                         options=mig.MigrationOptions(completion_timeout=1.0))
    with pytest.raises(errors.OperationFailed, match="completion timeout"):
        mig.migrate(cinder, plan, progress=events.append)
    assert "abort_job" in a.hypervisor.calls
    progress = [e for e in events if isinstance(e, MigrationProgress)]
    assert progress and progress[0].total > 0
    assert progress[0].operation == "migrate vm from hosta to hostb"
    # the steps were reported too, and their undo once the timeout struck
    assert any(isinstance(e, StepUndone) for e in events)
    assert where(lab, vols) == before


def test_timeout_can_switch_to_postcopy(lab, monkeypatch):
    monkeypatch.setattr(migration_monitor, "POLL_INTERVAL", 0.01)
    cinder, a, b = lab
    guest(lab, "attachments", "native", volumes=0)
    a.hypervisor.during_migration = lambda hv: hv.wait_for_abort(5)
    plan = mig.preflight(cinder, a, b, "vm", options=mig.MigrationOptions(
        completion_timeout=1.0, on_timeout="postcopy", max_downtime_ms=300))
    result = mig.migrate(cinder, plan)
    # libvirt switches only a migration started with the post-copy flag
    assert [r.postcopy for r in a.hypervisor.migrations] == [True]
    assert a.hypervisor.postcopy_started and result.runs_on == "hostb"
    assert a.hypervisor.max_downtime == 300


@pytest.mark.parametrize("options,flag", [({}, False), ({"postcopy": True}, True),
                                          ({"on_timeout": "postcopy"}, True)])
def test_the_post_copy_flag_is_set_when_post_copy_may_be_needed(lab, options, flag):
    cinder, a, b = lab
    guest(lab, "attachments", "native", volumes=0)
    mig.migrate(cinder, mig.preflight(cinder, a, b, "vm",
                                      options=mig.MigrationOptions(**options)))
    assert [r.postcopy for r in a.hypervisor.migrations] == [flag]
    assert not a.hypervisor.postcopy_started  # the job ended before any timeout


def test_late_failure_rolls_forward_and_says_so(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    a.hypervisor.fail_after_switch = errors.HypervisorError("connection reset in Finish")
    result = mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert result.rolled_forward and result.runs_on == "hostb"
    assert "connection reset in Finish" in result.left_behind[0]
    runs, atts = where(lab, vols)
    assert runs == ["hostb"] and all(h == ["hostb"] for h in atts.values())


def test_cleanup_failure_after_switch_is_reported_not_undone(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    a.hypervisor.fail("undefine_secret", errors.HypervisorError("libvirtd gone"))
    result = mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert result.runs_on == "hostb"
    assert any("libvirtd gone" in line for line in result.left_behind)
    # storage was still cleaned up: one attachment per volume, hostb's
    assert where(lab, vols)[1] == {v: ["hostb"] for v in vols}


def test_everything_left_behind_is_reported_one_line_each_in_volume_order(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=2)
    a.hypervisor.fail_after_switch = errors.HypervisorError("connection reset in Finish")
    # every volume fails the same two steps: the order does not depend on which of the
    # volumes, finished side by side, gets to the fake first
    a.hypervisor.fail("undefine_secret", errors.HypervisorError("libvirtd gone"),
                      times=len(vols))
    cinder.fail("attachment_delete", errors.StorageUnavailable("cinder away"),
                times=len(vols))
    result = mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert result.rolled_forward and result.runs_on == "hostb"
    expected = ["live migration: reported 'connection reset in Finish', but the guest "
                "runs on hostb: finished the move instead of rolling back"]
    for vol in vols:
        expected += [f"disconnect {vol} on hosta: libvirtd gone",
                     f"release source connection of {vol}: cinder away"]
    assert result.left_behind == expected


def test_preflight_refuses_without_changing_anything(lab):
    cinder, a, b = lab
    guest(lab, "attachments", "native", volumes=1)
    cinder.calls.clear()
    b.hypervisor.add_domain("vm-other")
    cases = []
    cases.append(("same host", lambda: mig.preflight(cinder, a, a, "vm")))
    cases.append(("not found", lambda: mig.preflight(cinder, a, b, "nosuch")))
    a.hypervisor.add_domain("stopped", active=False)
    cases.append(("not running", lambda: mig.preflight(cinder, a, b, "stopped")))
    a.hypervisor.add_domain("localdisk")
    cases.append(("not a Cinder volume", lambda: mig.preflight(cinder, a, b, "localdisk")))
    for label, call in cases:
        with pytest.raises(errors.InputError) as info:
            call()
        assert info.value.exit_code == 2, label
    b.hypervisor.add_domain("vm")
    with pytest.raises(errors.PreflightError, match="already exists"):
        mig.preflight(cinder, a, b, "vm")
    del b.hypervisor.domains["vm"]
    b.runner.refuse = True
    with pytest.raises(errors.PreflightError, match="does not answer over SSH"):
        mig.preflight(cinder, a, b, "vm")
    b.runner.refuse = False
    b.hypervisor.fail("lookup", errors.HostError("cannot connect to libvirt"))
    with pytest.raises(errors.PreflightError, match="cannot connect to libvirt"):
        mig.preflight(cinder, a, b, "vm")
    assert cinder.calls == []


def test_copy_local_disks_on_request(lab):
    cinder, a, b = lab
    a.hypervisor.add_domain("localdisk")
    plan = mig.preflight(cinder, a, b, "localdisk",
                         options=mig.MigrationOptions(copy_local_disks=True))
    assert plan.local_disks == ["vda"]


def test_dry_run_shows_plan_and_xml_change_and_touches_nothing(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    before = where(lab, vols), host_leftovers(a), host_leftovers(b)
    cinder.calls.clear()
    out = mig.dry_run(mig.preflight(cinder, a, b, "vm"))
    assert "live migration hosta -> hostb" in out["steps"]
    diff = out["xml_diff"].splitlines()
    assert '-          <iqn name="iqn.2024-01.dev.attachflow:hosta" />' in diff
    assert '+          <iqn name="iqn.2024-01.dev.attachflow:hostb" />' in diff
    assert cinder.calls == []
    assert (where(lab, vols), host_leftovers(a), host_leftovers(b)) == before


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_volumes_exported_otherwise_move_as_exported(lab, api, transport):
    """Read-only, LUN 3, three portals, discovery CHAP: each keeps what it is on the
    destination, and nothing is left on the source."""
    cinder, a, b = lab
    root = cinder.create_volume()
    operations.boot(cinder, a, get_transport(transport), "vm", root, api=api)
    vols = [cinder.create_volume(readonly=True), cinder.create_volume(lun=3),
            cinder.create_volume(portals=3), cinder.create_volume(discovery_chap=True)]
    for vol in vols:
        operations.attach(cinder, a, get_transport(transport), vol, "vm", api=api)
    for src, dst in ((a, b), (b, a)):
        result = mig.migrate(cinder, mig.preflight(cinder, src, dst, "vm"))
        assert result.runs_on == dst.name and not result.left_behind
        for vol in vols:
            exported = cinder.volumes[vol]
            for disk in (dst.hypervisor.domain("vm").disk(vol),
                         dst.hypervisor.domain("vm", inactive=True).disk(vol)):
                assert disk.readonly == exported.readonly
                if transport == "native":
                    assert disk.source.lun == exported.lun
                else:
                    assert disk.source.path.endswith(f"-lun-{exported.lun}")
                    assert disk.source.path in dst.brick.devices
        assert host_leftovers(src) == {"secrets": {}, "sessions": set(), "devices": {},
                                       "maps": {}, "qemu": set()}
    for vol in vols:
        operations.detach(cinder, a, vol, "vm")
        assert cinder.volumes[vol].status == "available"


def _empty(dev, xml):
    return domxml.Disk.parse(xml.format(dev=dev))


def test_dry_run_lists_every_step_and_the_destination_records(lab):
    cinder, a, b = lab
    root, data = guest(lab, "attachments", "native", volumes=1)
    out = mig.dry_run(mig.preflight(cinder, a, b, "vm"))
    assert out["steps"] == [
        f"attachments: connection for hostb (volume {root}, vda)",
        f"native: connect {root} on hostb",
        f"attachments: connection for hostb (volume {data}, vdb)",
        f"native: connect {data} on hostb",
        "live migration hosta -> hostb",
        f"attachments: complete {root} on hostb, disconnect hosta, release the source "
        "connection",
        f"attachments: complete {data} on hostb, disconnect hosta, release the source "
        "connection"]
    assert {k: v for k, v in out.items() if k not in ("steps", "xml_diff")} == {
        "domain": "vm", "source": "hosta", "destination": "hostb", "volumes": [root, data],
        "copy_disks": []}
    diff = out["xml_diff"].splitlines()
    assert diff[:2] == ["--- hosta/vm.xml", "+++ hostb/vm.xml"]
    # the records shown for the destination carry the destination's connector
    added = [line for line in diff if line.startswith("+") and "attachflow:volume id" in line]
    assert len(added) == 2
    assert all('"connector": {"host": "hostb", "initiator": "iqn.2024-01.dev.attachflow:'
               'hostb", "ip": "198.18.0.12"' in line for line in added)


def test_the_plan_names_the_local_disks_it_copies(lab):
    cinder, a, b = lab
    a.hypervisor.add_domain("localdisk", devices=("vda", "vdb"))
    plan = mig.preflight(cinder, a, b, "localdisk",
                         options=mig.MigrationOptions(copy_local_disks=True))
    assert plan.steps() == ["live migration hosta -> hostb, copying vda, vdb"]
    assert mig.dry_run(plan)["copy_disks"] == ["vda", "vdb"]


def test_preflight_says_what_is_wrong(lab):
    cinder, a, b = lab
    root, data = guest(lab, "attachments", "native", volumes=1)
    a.hypervisor.add_domain("stopped", active=False)

    def refused(**kwargs):
        with pytest.raises(errors.PreflightError) as info:
            mig.preflight(cinder, kwargs.pop("src", a), kwargs.pop("dst", b),
                          kwargs.pop("name", "vm"), **kwargs)
        assert info.value.exit_code == 2
        return str(info.value)

    assert refused(options=mig.MigrationOptions(on_timeout="wait")) == \
        "--on-timeout must be abort or postcopy, not 'wait'"
    assert refused(dst=a) == "source and destination are the same host (hosta)"
    assert refused(name="stopped") == "domain 'stopped' is not running on hosta"
    meta = a.hypervisor.domains["vm"].live_meta
    good = meta[data]
    meta[data] = good.replace('"transport": "native"', '"transport": "nvme"')
    assert refused().startswith(f"volume {data}: ")
    meta[data] = "{not json"
    message = refused()
    assert data in message and message != "None"
    meta[data] = good
    b.brick.fail("properties", errors.HostError("brick broke"))
    plan = mig.preflight(cinder, a, b, "vm")  # native needs no os-brick on hostb
    assert [v.volume_id for v in plan.volumes] == [root, data]


def test_preflight_says_why_the_destination_connector_is_unknown(lab):
    cinder, a, b = lab
    guest(lab, "attachments", "kernel", volumes=0)
    b.brick.fail("properties", errors.HostError("brick broke"))
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, b, "vm")
    assert str(info.value) == "destination hostb connector: brick broke"


def test_empty_drives_are_nothing_to_move_and_any_other_disk_is_named(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    empties = [_empty("hdc", '<disk type="file" device="cdrom"><target dev="{dev}" '
                             'bus="sata"/></disk>'),
               _empty("vdx", '<disk type="file" device="disk"><target dev="{dev}" '
                             'bus="virtio"/></disk>'),
               _empty("vdy", '<disk type="block" device="disk"><target dev="{dev}" '
                             'bus="virtio"/></disk>'),
               _empty("vdz", '<disk device="disk"><target dev="{dev}" bus="virtio"/></disk>'),
               _empty("hdd", '<disk type="volume" device="cdrom"><target dev="{dev}" '
                             'bus="sata"/></disk>'),
               _empty("fda", '<disk type="network" device="floppy"><target dev="{dev}" '
                             'bus="fdc"/></disk>')]
    dom = a.hypervisor.domains["vm"]
    dom.live[:0] = empties  # before the volumes: they are still all checked
    plan = mig.preflight(cinder, a, b, "vm")
    assert [v.volume_id for v in plan.volumes] == vols and plan.local_disks == []
    # a CD-ROM with an image in it is a local disk like any other
    dom.live.append(_empty("hde", '<disk type="file" device="cdrom"><source '
                                  'file="/images/install.iso"/><target dev="{dev}" '
                                  'bus="sata"/></disk>'))
    dom.live.append(_empty("vdw", '<disk type="volume" device="disk"><target dev="{dev}" '
                                  'bus="virtio"/></disk>'))
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, b, "vm")
    assert str(info.value) == "disk hde of 'vm' is not a Cinder volume attached by " \
                              "attachflow; copy it with --copy-local-disks or detach it first"
    # so is a disk on a file (it used to be taken for an empty drive and left out)
    dom.live.append(_empty("vdv", '<disk type="file" device="disk"><source '
                                  'file="/images/data.qcow2"/><target dev="{dev}" '
                                  'bus="virtio"/></disk>'))
    for dev, xml in (
            ("fdb", '<disk type="dir" device="floppy"><source dir="/srv/share"/>'),
            ("hdg", '<disk type="volume" device="cdrom"><source pool="default" '
                    'volume="install.iso"/>'),
            ("hdh", '<disk type="network" device="cdrom"><source protocol="https" '
                    'name="/isos/install.iso"/>'),
            ("hdf", '<disk type="file" device="cdrom"><source startupPolicy="optional"/>')):
        dom.live.append(_empty(dev, xml + '<target dev="{dev}" bus="virtio"/></disk>'))
    plan = mig.preflight(cinder, a, b, "vm",
                         options=mig.MigrationOptions(copy_local_disks=True))
    # the empty CD-ROM (hdf) is nothing to move
    assert plan.local_disks == ["hde", "vdw", "vdv", "fdb", "hdg", "hdh"]


def test_the_destination_keeps_the_persistent_definition_not_the_live_one(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    # a change for the next boot only: the persistent definition has an empty CD-ROM
    a.hypervisor.domains["vm"].config.append(
        _empty("hdc", '<disk type="file" device="cdrom"><target dev="{dev}" '
                      'bus="sata"/></disk>'))
    mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    persistent = b.hypervisor.domain("vm", inactive=True)
    assert [d.target_dev for d in persistent.disks] == ["vda", "vdb", "hdc"]
    assert [d.target_dev for d in b.hypervisor.domain("vm").disks] == ["vda", "vdb"]
    assert all(persistent.disk(v) is not None for v in vols)
    # on the destination's connection, with the destination's records, both definitions
    records = record.read(persistent)
    for v in vols:
        assert persistent.disk(v).source.initiator_iqn == "iqn.2024-01.dev.attachflow:hostb"
        assert records[v].host == "hostb" and records[v].connector["host"] == "hostb"


def test_a_transient_guest_is_defined_on_the_destination_as_it_runs(lab):
    cinder, a, b = lab
    a.hypervisor.add_domain("transient", persistent=False)
    mig.migrate(cinder, mig.preflight(cinder, a, b, "transient",
                                      options=mig.MigrationOptions(copy_local_disks=True)))
    assert [d.target_dev for d in b.hypervisor.domain("transient", inactive=True).disks] \
        == ["vda"]


def test_the_request_carries_the_options_asked_for(lab):
    cinder, a, b = lab
    a.hypervisor.add_domain("localdisk", devices=("vda", "vdb"))
    mig.migrate(cinder, mig.preflight(cinder, a, b, "localdisk", options=mig.MigrationOptions(
        copy_local_disks=True, auto_converge=True, bandwidth_mib=100)))
    (request,) = a.hypervisor.migrations
    assert (request.dest_uri, request.auto_converge, request.bandwidth_mib,
            request.copy_disks, request.postcopy) == \
        ("test+fake://hostb/system", True, 100, ("vda", "vdb"), False)
    assert request.persist is not None


def test_a_failed_step_is_named_in_the_error(lab):
    cinder, a, b = lab
    root, data = guest(lab, "attachments", "native", volumes=1)
    op = "migrate vm from hosta to hostb failed at step"
    cinder.fail("attachment_create", errors.StorageUnavailable("cinder away"), after=1)
    with pytest.raises(errors.OperationFailed) as info:
        mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert str(info.value) == f"{op} 'destination connection (attachments) {data}': " \
                              "cinder away (all earlier steps undone)"
    b.hypervisor.fail("define_secret", errors.HypervisorError("no secret"), after=1)
    with pytest.raises(errors.OperationFailed) as info:
        mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert str(info.value) == f"{op} 'destination connect (native) {data}': no secret " \
                              "(all earlier steps undone)"
    cinder.volumes[data].driver_volume_type = "rbd"
    before = where(lab, [root, data]), host_leftovers(b)
    with pytest.raises(errors.OperationFailed) as info:
        mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert str(info.value) == f"{op} 'check transport {data}': volume {data} is exported " \
                              "as 'rbd'; transport 'native' carries only iscsi (all earlier " \
                              "steps undone)"
    assert (where(lab, [root, data]), host_leftovers(b)) == before


def test_a_refused_migration_is_named_in_the_error(lab):
    cinder, a, b = lab
    guest(lab, "attachments", "native", volumes=1)
    a.hypervisor.fail("migrate", errors.HypervisorError("migrate broke"))
    with pytest.raises(errors.OperationFailed) as info:
        mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert info.value.step == "live migration"
    assert str(info.value) == "migrate vm from hosta to hostb failed at step 'live " \
                              "migration': migrate broke (all earlier steps undone)"


def test_a_failed_job_that_left_the_guest_on_neither_host_rolls_back(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    before = where(lab, vols)[1], host_leftovers(b)

    def crash(hv):
        hv.domains["vm"].active = False
        raise errors.HypervisorError("qemu crashed")

    a.hypervisor.during_migration = crash
    with pytest.raises(errors.OperationFailed, match="qemu crashed"):
        mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert (where(lab, vols)[1], host_leftovers(b)) == before


def test_a_failed_job_that_left_the_guest_running_on_the_source_rolls_back(lab):
    """Even with a copy left running on the destination: the source's is the guest."""
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    before = where(lab, vols)[1], host_leftovers(b)

    def half(hv):
        b.hypervisor.domains["vm"] = dataclasses.replace(hv.domains["vm"])
        raise errors.HypervisorError("finish failed")

    a.hypervisor.during_migration = half
    with pytest.raises(errors.OperationFailed, match="finish failed"):
        mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert a.hypervisor.domains["vm"].active
    assert (where(lab, vols)[1], host_leftovers(b)) == before


def test_the_result_reports_the_move(lab):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    result = mig.migrate(cinder, mig.preflight(cinder, a, b, "vm")).to_dict()
    seconds = result.pop("seconds")
    assert 0 <= seconds < 30
    assert result == {"schema_version": 1, "operation": "migrate", "domain": "vm",
                      "source": "hosta", "destination": "hostb", "runs_on": "hostb", "volumes": vols, "migration_seconds": 1.2,
                      "downtime_ms": 25, "rolled_forward": False, "left_behind": []}


def test_the_result_falls_back_to_the_time_seen_when_the_destination_has_no_statistics(
        lab, monkeypatch):
    cinder, a, b = lab
    guest(lab, "attachments", "native", volumes=0)

    def gone(name, completed=False):
        raise errors.HypervisorError("no job statistics")

    monkeypatch.setattr(b.hypervisor, "job_stats", gone)
    a.hypervisor.during_migration = lambda hv: time.sleep(0.02)
    result = mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert 0.02 <= result.migration_seconds < 30 and result.downtime_ms is None
    assert result.migration_seconds <= result.seconds


def test_the_migration_call_runs_in_a_daemon_thread_an_interrupt_does_not_wait_for(lab):
    cinder, a, b = lab
    guest(lab, "attachments", "native", volumes=0)
    seen = []
    a.hypervisor.during_migration = lambda hv: seen.append(
        (threading.current_thread().name, threading.current_thread().daemon))
    mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert seen == [("migration", True)]


def test_a_destination_definition_that_cannot_be_made_is_named_and_rolled_back(
        lab, monkeypatch):
    cinder, a, b = lab
    vols = guest(lab, "attachments", "native", volumes=1)
    before = where(lab, vols), host_leftovers(b)

    def broken(plan, sources, atts):
        raise errors.InputError("record too large")

    monkeypatch.setattr(mig, "destination_definitions", broken)
    with pytest.raises(errors.OperationFailed) as info:
        mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"))
    assert str(info.value) == "migrate vm from hosta to hostb failed at step 'destination " \
                              "XML': record too large (all earlier steps undone)"
    assert (where(lab, vols), host_leftovers(b)) == before


def test_a_multipath_volume_moves_on_multipath(lab):
    cinder, a, b = lab
    root = cinder.create_volume(portals=2)
    operations.boot(cinder, a, get_transport("kernel", multipath=True), "vm", root,
                    api="attachments")
    plan = mig.preflight(cinder, a, b, "vm")
    assert plan.connectors["kernel"].multipath is True
    mig.migrate(cinder, plan)
    (device,) = b.brick.maps  # one multipath device over both portals
    assert len(b.brick.maps[device]) == 2 and not a.brick.maps
    assert b.hypervisor.domain("vm").disk(root).source.path == device
    assert record.read(b.hypervisor.domain("vm"))[root].multipath is True


def test_the_source_reaches_the_destination_by_its_migration_uri(lab):
    """A host whose libvirt URI names what only attachflow's machine has (a key file, an
    ssh wrapper) is reached by the source's libvirtd through its migration_uri."""
    cinder, a, b = lab
    vols = guest(lab, "attachments", "kernel", volumes=1)
    peer_view = "test+fake://hostb-from-peers/system"
    b.hypervisor.network[peer_view] = b.hypervisor
    b.cfg = dataclasses.replace(b.cfg, migration_uri=peer_view)
    result = mig.migrate(cinder, mig.preflight(cinder, a, b, "vm", api="auto"))
    assert result.runs_on == "hostb"
    assert [m.dest_uri for m in a.hypervisor.migrations] == [peer_view]
    assert where(lab, vols)[0] == ["hostb"]


def test_a_job_that_ends_before_the_first_poll_still_reports_where_it_ended(lab):
    # the monitor polls every half second; this job is over long before
    cinder, a, b = lab
    guest(lab, "attachments", "native", volumes=1)
    events = []
    mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"), progress=events.append)
    progress = [e for e in events if isinstance(e, MigrationProgress)]
    assert [(p.processed, p.remaining, p.total) for p in progress] == [
        (64 << 20, 0, 64 << 20)]
    assert progress[0].operation == "migrate vm from hosta to hostb"


def test_no_final_progress_when_the_destination_has_no_statistics(lab, monkeypatch):
    cinder, a, b = lab
    guest(lab, "attachments", "native", volumes=1)

    def gone(name, completed=False):
        raise errors.HypervisorError("no job statistics")

    monkeypatch.setattr(b.hypervisor, "job_stats", gone)
    events = []
    mig.migrate(cinder, mig.preflight(cinder, a, b, "vm"), progress=events.append)
    assert not [e for e in events if isinstance(e, MigrationProgress)]
