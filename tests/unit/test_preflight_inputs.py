"""Migration preflight refuses bad options and domain names itself, with the one-line
message the command line gives, before any host or the storage API is asked."""

import pytest

from attachflow import errors, operations
from attachflow import migrate as mig
from attachflow.connectors import get_transport
from attachflow.domxml import Disk

from twins import FakeCinder, fake_host


@pytest.fixture
def lab():
    cinder = FakeCinder()
    network = {}
    a = fake_host("hosta", cinder, "198.18.0.11", network)
    b = fake_host("hostb", cinder, "198.18.0.12", network)
    root = cinder.create_volume()
    operations.boot(cinder, a, get_transport("native"), "vm", root, virt_type="qemu")
    for hv in (a.hypervisor, b.hypervisor):
        hv.calls.clear()
    cinder.calls.clear()
    return cinder, a, b


def refused(lab, options, message, domain="vm"):
    cinder, a, b = lab
    with pytest.raises(errors.InputError) as info:
        mig.preflight(cinder, a, b, domain, options=options)
    assert str(info.value) == message and info.value.exit_code == 2
    assert (cinder.calls, a.hypervisor.calls, b.hypervisor.calls) == ([], [], [])
    assert b.runner.commands == []


@pytest.mark.parametrize("field, value, message", [
    ("max_downtime_ms", 0, "--max-downtime (ms) must be a number from 1 to 600000, not 0"),
    ("max_downtime_ms", 600_001,
     "--max-downtime (ms) must be a number from 1 to 600000, not 600001"),
    ("bandwidth_mib", 0, "--bandwidth (MiB/s) must be a number from 1 to 1048576, not 0"),
    ("bandwidth_mib", (1 << 20) + 1,
     "--bandwidth (MiB/s) must be a number from 1 to 1048576, not 1048577"),
    ("completion_timeout", 0.5, "--timeout (s) must be a number from 1 to 86400, not 0.5"),
    ("completion_timeout", float("nan"),
     "--timeout (s) must be a number from 1 to 86400, not nan"),
    ("on_timeout", "pause", "--on-timeout must be abort or postcopy, not 'pause'"),
])
def test_preflight_refuses_options_out_of_bounds(lab, field, value, message):
    refused(lab, mig.MigrationOptions(**{field: value}), message)


def test_preflight_refuses_a_domain_name_libvirt_refuses(lab):
    refused(lab, None, "domain name 'a/b' is not valid for libvirt (1-255 characters, "
                       "no '/' or control characters)", domain="a/b")


@pytest.mark.parametrize("options", [
    mig.MigrationOptions(),
    mig.MigrationOptions(max_downtime_ms=1, bandwidth_mib=1, completion_timeout=1,
                         on_timeout="postcopy"),
    mig.MigrationOptions(max_downtime_ms=600_000, bandwidth_mib=1 << 20,
                         completion_timeout=86400, on_timeout="abort"),
])
def test_preflight_takes_options_within_bounds(lab, options):
    cinder, a, b = lab
    plan = mig.preflight(cinder, a, b, "vm", options=options)
    assert plan.options == options and plan.domain == "vm"
    assert [v.target_dev for v in plan.volumes] == ["vda"]


def test_preflight_without_options_uses_the_defaults(lab):
    cinder, a, b = lab
    plan = mig.preflight(cinder, a, b, "vm")
    assert plan.options == mig.MigrationOptions()


def add_disk(host, domain, xml):
    disk = Disk.parse(xml)
    dom = host.hypervisor.domains[domain]
    dom.live.insert(0, disk)       # before the guest's volumes
    dom.config.insert(0, disk)


EMPTY_CDROM = '<disk type="file" device="cdrom"><target dev="sda" bus="sata"/></disk>'
ISO_CDROM = ('<disk type="file" device="cdrom"><source file="/isos/tools.iso"/>'
             '<target dev="sdb" bus="sata"/><readonly/></disk>')
HTTP_CDROM = ('<disk type="network" device="cdrom"><source protocol="https" '
              'name="/isos/tools.iso"><host name="mirror.example" port="443"/></source>'
              '<target dev="sdc" bus="sata"/><readonly/></disk>')
EMPTY_FLOPPY = '<disk type="block" device="floppy"><target dev="fda" bus="fdc"/></disk>'
NO_TYPE_FLOPPY = '<disk device="floppy"><target dev="fdb" bus="fdc"/></disk>'
NETWORK_FLOPPY = ('<disk type="network" device="floppy"><source protocol="nbd" '
                  'name="boot"><host name="nbd.example"/></source>'
                  '<target dev="fdc" bus="fdc"/></disk>')
EMPTY_FILE_DISK = '<disk type="file" device="disk"><target dev="vdx" bus="virtio"/></disk>'
LOCAL_FILE_DISK = ('<disk type="file" device="disk"><driver name="qemu" type="qcow2"/>'
                   '<source file="/var/lib/libvirt/images/vm-data.qcow2"/>'
                   '<target dev="vdy" bus="virtio"/></disk>')


@pytest.mark.parametrize("xml", [EMPTY_CDROM, EMPTY_FLOPPY, NO_TYPE_FLOPPY,
                                 EMPTY_FILE_DISK])
def test_empty_drives_stay_out_of_the_plan(lab, xml):
    """Nothing of these to move: the guest's volumes after them are all planned."""
    cinder, a, b = lab
    add_disk(a, "vm", xml)
    plan = mig.preflight(cinder, a, b, "vm")
    assert [v.target_dev for v in plan.volumes] == ["vda"] and plan.local_disks == []


@pytest.mark.parametrize("xml,dev", [(ISO_CDROM, "sdb"), (HTTP_CDROM, "sdc"),
                                     (NETWORK_FLOPPY, "fdc")])
def test_a_drive_with_media_is_named_before_anything_moves(lab, xml, dev):
    """A medium attachflow does not manage may not exist on the destination: the
    operator decides (copy it, or eject it first)."""
    cinder, a, b = lab
    add_disk(a, "vm", xml)
    with pytest.raises(errors.PreflightError, match=f"disk {dev} of 'vm' is not a Cinder "
                                                    "volume attached by attachflow"):
        mig.preflight(cinder, a, b, "vm")


def test_a_local_image_file_is_refused_unless_copied(lab):
    """A disk backed by a local image file is not shared with the destination: without
    --copy-local-disks the migration would fail (or lose the disk) after volumes were
    connected there."""
    cinder, a, b = lab
    add_disk(a, "vm", LOCAL_FILE_DISK)
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, b, "vm")
    assert str(info.value) == ("disk vdy of 'vm' is not a Cinder volume attached by "
                               "attachflow; copy it with --copy-local-disks or detach it "
                               "first")
    plan = mig.preflight(cinder, a, b, "vm",
                         options=mig.MigrationOptions(copy_local_disks=True))
    assert plan.local_disks == ["vdy"] and [v.target_dev for v in plan.volumes] == ["vda"]


def test_preflight_refusals_say_what_is_wrong(lab):
    cinder, a, b = lab
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, a, "vm")
    assert str(info.value) == "source and destination are the same host (hosta)"
    a.hypervisor.destroy("vm")
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, b, "vm")
    assert str(info.value) == "domain 'vm' is not running on hosta"
    assert cinder.calls == [] and b.hypervisor.calls == []


@pytest.fixture
def kernel_lab():
    """A guest booted through the kernel's initiator with multipath."""
    cinder = FakeCinder()
    network = {}
    a = fake_host("hosta", cinder, "198.18.0.11", network)
    b = fake_host("hostb", cinder, "198.18.0.12", network)
    root = cinder.create_volume()
    operations.boot(cinder, a, get_transport("kernel", multipath=True), "vm", root,
                    virt_type="qemu")
    return cinder, a, b, root


def test_a_multipath_volume_is_planned_with_multipath_on_the_destination(kernel_lab):
    cinder, a, b, root = kernel_lab
    plan = mig.preflight(cinder, a, b, "vm")
    (vol,) = plan.volumes
    assert (vol.volume_id, vol.target_dev, vol.transport.name, vol.transport.multipath,
            vol.flow.api) == (root, "vda", "kernel", True, "attachments")
    assert plan.connectors["kernel"].multipath is True
    assert plan.connectors["kernel"].host == "hostb"


def test_the_api_asked_for_overrides_the_recorded_one(kernel_lab):
    cinder, a, b, _root = kernel_lab
    assert mig.preflight(cinder, a, b, "vm", api="legacy").volumes[0].flow.api == "legacy"
    assert mig.preflight(cinder, a, b, "vm", api="auto").volumes[0].flow.api == \
        "attachments"


def test_a_destination_without_a_connector_is_refused(kernel_lab):
    cinder, a, b, _root = kernel_lab
    b.brick.fail("properties", errors.HostError("iscsid not running"))
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, b, "vm")
    assert str(info.value) == "destination hostb connector: iscsid not running"


def test_a_damaged_record_is_refused_with_the_volume_named(kernel_lab):
    cinder, a, b, root = kernel_lab
    dom = a.hypervisor.domains["vm"]
    good = dom.live_meta[root]
    dom.live_meta[root] = "{not json"
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, b, "vm")
    assert str(info.value) == f"domain 'vm': the record of volume {root} is not JSON"
    dom.live_meta[root] = good.replace('"transport": "kernel"', '"transport": "fc"')
    assert dom.live_meta[root] != good
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, b, "vm")
    assert str(info.value).startswith(f"volume {root}: unknown transport 'fc'")
    dom.live_meta[root] = good
    with pytest.raises(errors.PreflightError) as info:
        mig.preflight(cinder, a, b, "vm", api="v9")
    assert str(info.value) == f"volume {root}: unknown API 'v9' (auto, attachments or legacy)"


EMPTY_BLOCK_DISK = '<disk type="block" device="disk"><target dev="vdw" bus="virtio"/></disk>'
NO_TYPE_DISK = '<disk device="disk"><target dev="vdv" bus="virtio"/></disk>'


@pytest.mark.parametrize("xml", [EMPTY_BLOCK_DISK, NO_TYPE_DISK])
def test_a_disk_without_a_source_is_an_empty_drive(lab, xml):
    cinder, a, b = lab
    add_disk(a, "vm", xml)
    plan = mig.preflight(cinder, a, b, "vm")
    assert [v.target_dev for v in plan.volumes] == ["vda"] and plan.local_disks == []


def test_the_persistent_definition_moves_as_defined_not_as_running(lab):
    """A change made for the next boot only (an ISO put in the persistent definition)
    is still for the next boot only on the destination."""
    cinder, a, b = lab
    a.hypervisor.domains["vm"].config.append(Disk.parse(ISO_CDROM))
    plan = mig.preflight(cinder, a, b, "vm")
    assert [d.target_dev for d in plan.persistent.disks] == ["vda", "sdb"]
    assert [d.target_dev for d in plan.live.disks] == ["vda"]
    result = mig.migrate(cinder, plan)
    assert result.runs_on == "hostb" and result.left_behind == []
    moved = b.hypervisor.domains["vm"]
    assert [d.target_dev for d in moved.config] == ["vda", "sdb"]
    assert [d.target_dev for d in moved.live] == ["vda"]
