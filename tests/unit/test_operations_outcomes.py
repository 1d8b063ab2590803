"""What attach, detach and boot report back and leave behind, read the way a user would:
the result printed (operation, volume, domain, host, device, API, transport, attachment,
the steps done), the attachment Cinder shows, the record in the domain's metadata, and
the exact error for each kind of bad input."""

import json
import re

import pytest

from attachflow import domxml, errors, operations, record
from attachflow.connectors import get_transport, iscsi_native

ATTACH_STEPS = ["connector properties", "storage connect ({api})", "check transport",
                "host connect ({transport})", "guest attach", "find disk by serial",
                "record in domain metadata", "storage complete ({api})"]
BOOT_STEPS = ["connector properties", "storage connect ({api})", "check transport",
              "host connect ({transport})", "define domain", "start domain",
              "storage complete ({api})"]
DETACH_STEPS = ["storage begin detach ({api})", "guest detach (persistent)",
                "guest detach (live)", "host disconnect ({transport})",
                "remove record from domain metadata", "storage release ({api})"]


def steps(names, api, transport):
    return [n.format(api=api, transport=transport) for n in names]


def attachment_of(cinder, vol):
    (att,) = cinder.volumes[vol].attachments.values()
    return att


def check_seconds(res):
    assert isinstance(res.seconds, float) and 0 <= res.seconds < 30


@pytest.mark.parametrize("api", ["attachments", "legacy"])
@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_boot_reports_what_it_did_and_cinder_and_the_record_agree(cinder, host, api,
                                                                   transport):
    vol = cinder.create_volume()
    res = operations.boot(cinder, host, get_transport(transport), "vm9", vol, api=api)
    dom = host.hypervisor.domains["vm9"]
    att = attachment_of(cinder, vol)
    assert (att.instance_id, att.status, att.connector["host"]) == (dom.uuid, "attached",
                                                                    "hosta")
    if api == "legacy":  # os-attach names the device and the host
        assert (att.mountpoint, att.mode) == ("/dev/vda", "rw")
    rec = record.read(host.hypervisor.domain("vm9"))[vol]
    assert (rec.api, rec.transport, rec.host, rec.device) == (api, transport, "hosta", "vda")
    assert rec.attachment_id == res.attachment_id
    if api == "attachments":
        assert res.attachment_id == att.id
    else:  # the legacy API has no attachment id until os-attach
        assert res.attachment_id is None
    out = res.to_dict()
    check_seconds(res)
    del out["seconds"]
    assert out == {"schema_version": 1, "operation": "boot", "volume_id": vol,
                   "domain": "vm9", "host": "hosta",
                   "device": "vda", "api": api, "transport": transport,
                   "attachment_id": res.attachment_id, "already": False,
                   "steps": steps(BOOT_STEPS, api, transport)}


@pytest.mark.parametrize("api", ["attachments", "legacy"])
@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_attach_and_detach_report_what_they_did(cinder, host, api, transport):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    res = operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    att = attachment_of(cinder, vol)
    if api == "legacy":
        assert (att.mountpoint, att.connector) == ("/dev/vdb", {"host": "hosta"})
    out = res.to_dict()
    check_seconds(res)
    del out["seconds"]
    assert out == {"schema_version": 1, "operation": "attach", "volume_id": vol,
                   "domain": "vm1", "already": False,
                   "host": "hosta", "device": "vdb", "api": api, "transport": transport,
                   "attachment_id": record.read(host.hypervisor.domain("vm1"))[vol]
                   .attachment_id, "steps": steps(ATTACH_STEPS, api, transport)}
    cinder.calls.clear()
    res = operations.detach(cinder, host, vol, "vm1")
    out = res.to_dict()
    check_seconds(res)
    del out["seconds"]
    assert out["steps"] == steps(DETACH_STEPS, api, transport)
    assert (out["operation"], out["volume_id"], out["domain"], out["host"], out["device"],
            out["api"], out["transport"]) == ("detach", vol, "vm1", "hosta", "vdb", api,
                                              transport)
    if api == "attachments":
        # a recorded attachment needs no fresh connection info, whatever the transport
        assert cinder.calls == ["attachment_delete"]
        assert out["attachment_id"] == att.id
    assert cinder.volumes[vol].status == "available"


def test_boot_accepts_the_smallest_guest_and_capital_letters_in_its_name(cinder, host):
    vol = cinder.create_volume()
    res = operations.boot(cinder, host, get_transport("native"), "VM.Web-1_a", vol,
                          memory_mib=16, vcpus=1)
    assert res.domain == "VM.Web-1_a" and host.hypervisor.domains["VM.Web-1_a"].active


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "bad name"}, "'bad name' is not a valid name for a new domain (letters, "
                           "digits, '_', '.', '-'; at most 64; starting with a letter or "
                           "digit)"),
    ({"name": "-x"}, "'-x' is not a valid name for a new domain (letters, digits, '_', "
                     "'.', '-'; at most 64; starting with a letter or digit)"),
    ({"memory_mib": 15}, "memory (MiB) must be a number from 16 to 1048576, not 15"),
    ({"vcpus": 0}, "vcpus must be a number from 1 to 255, not 0"),
    ({"virt_type": "xen"}, "virt type 'xen' is not kvm or qemu"),
    ({"name": "vm1"}, "a domain named 'vm1' already exists on hosta and does not boot "
                      "from volume {vol}"),
])
def test_boot_refuses_bad_input_with_a_clear_message(cinder, host, kwargs, message):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    args = {"name": "vm9", **kwargs}
    with pytest.raises(errors.InputError) as info:
        operations.boot(cinder, host, get_transport("native"), args.pop("name"), vol, **args)
    assert str(info.value) == message.format(vol=vol) and info.value.exit_code == 2
    assert cinder.volumes[vol].status == "available" and not cinder.volumes[vol].attachments
    assert sorted(host.hypervisor.domains) == ["vm1"]


def test_a_failed_boot_names_the_operation_and_the_step(cinder, host):
    vol = cinder.create_volume()
    host.hypervisor.fail("start", errors.HypervisorError("no KVM here"))
    with pytest.raises(errors.OperationFailed) as info:
        operations.boot(cinder, host, get_transport("native"), "vm9", vol)
    assert str(info.value) == (f"boot vm9 from {vol} failed at step 'start domain': "
                               "no KVM here (all earlier steps undone)")


def test_a_failed_detach_names_the_operation_and_the_step(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    cinder.fail("attachment_delete", errors.StorageUnavailable("cinder went away"))
    with pytest.raises(errors.OperationFailed) as info:
        operations.detach(cinder, host, vol, "vm1")
    assert str(info.value) == (
        f"detach {vol} from vm1 failed at step 'storage release (attachments)': "
        "cinder went away (all earlier steps undone)")


def test_detach_of_a_volume_not_attached_says_so(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    with pytest.raises(errors.NotAttached) as info:
        operations.detach(cinder, host, vol, "vm1", strict=True)
    assert str(info.value) == f"volume {vol} is not attached to vm1"
    assert cinder.calls == []


def test_detach_with_another_transport_than_attached_is_refused(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    cinder.calls.clear()
    with pytest.raises(errors.TransportMismatch) as info:
        operations.detach(cinder, host, vol, "vm1", transport_name="kernel")
    assert str(info.value) == (f"volume {vol} was attached with transport 'native', "
                               "not 'kernel'")
    assert cinder.calls == [] and cinder.volumes[vol].status == "in-use"
    # naming the transport it was attached with is fine
    res = operations.detach(cinder, host, vol, "vm1", transport_name="native")
    assert res.transport == "native" and cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("api", ["attachments", "legacy"])
def test_detach_from_a_shut_off_guest_reports_the_device(cinder, host, api):
    host.hypervisor.add_domain("vm1", active=False)
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("kernel"), vol, "vm1", api=api)
    res = operations.detach(cinder, host, vol, "vm1")
    assert res.device == "vdb"
    assert res.steps == [s for s in steps(DETACH_STEPS, api, "kernel")
                         if s != "guest detach (live)"]
    assert not host.brick.sessions and cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("api", ["attachments", "legacy"])
@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_detach_from_a_transient_guest(cinder, host, api, transport):
    host.hypervisor.add_domain("vm1", persistent=False)
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    assert host.hypervisor.domains["vm1"].config == []
    res = operations.detach(cinder, host, vol, "vm1")
    assert res.device == "vdb"
    assert res.steps == [s for s in steps(DETACH_STEPS, api, transport)
                         if s != "guest detach (persistent)"]
    assert host.hypervisor.domain("vm1").disk(vol) is None
    assert not host.brick.sessions and not host.hypervisor.secrets
    assert not host.hypervisor.sessions
    assert cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("api", ["attachments", "legacy"])
def test_detach_of_a_recorded_kernel_volume_whose_disk_is_gone(cinder, host, api):
    """Someone removed the disk from the guest: the record still says how the host is
    connected, and detach ends that connection."""
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("kernel"), vol, "vm1", api=api)
    dom = host.hypervisor.domains["vm1"]
    dom.live = [d for d in dom.live if d.serial != vol]
    dom.config = [d for d in dom.config if d.serial != vol]
    assert host.brick.sessions
    res = operations.detach(cinder, host, vol, "vm1")
    assert (res.transport, res.device) == ("kernel", None)
    assert res.steps == [s for s in steps(DETACH_STEPS, api, "kernel")
                         if not s.startswith("guest detach")]
    assert not host.brick.sessions and not host.brick.devices
    assert record.read(host.hypervisor.domain("vm1")) == {}
    assert cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("api", ["attachments", "legacy"])
@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_detach_without_a_record_asks_for_what_it_needs(cinder, host, api, transport):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    dom = host.hypervisor.domains["vm1"]
    dom.live_meta, dom.config_meta = {}, {}
    res = operations.detach(cinder, host, vol, "vm1", api=api)
    expected = [f"storage begin detach ({api})", "connector properties"]
    if transport == "kernel":
        expected.append("storage connection info")
    expected += ["guest detach (persistent)", "guest detach (live)",
                 f"host disconnect ({transport})", f"storage release ({api})"]
    assert res.steps == expected
    assert cinder.volumes[vol].status == "available"


def test_detach_removes_the_secret_the_disk_names_whatever_its_name(cinder, host,
                                                                    monkeypatch):
    """A guest whose secret another tool named: the disk says which secret it is."""
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    with monkeypatch.context() as other_tool:
        other_tool.setattr(iscsi_native, "secret_usage",
                           lambda volume_id, owner: f"other-tool-{volume_id}")
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert list(host.hypervisor.secrets) == [f"other-tool-{vol}"]
    operations.detach(cinder, host, vol, "vm1")
    assert not host.hypervisor.secrets
    assert cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("api", ["attachments", "legacy"])
def test_detach_of_a_recorded_native_volume_whose_disk_is_gone(cinder, host, api):
    """Without the disk to name it, the secret is found by the volume and the guest."""
    uuid = host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1", api=api)
    assert list(host.hypervisor.secrets) == [iscsi_native.secret_usage(vol, uuid)]
    dom = host.hypervisor.domains["vm1"]
    dom.live = [d for d in dom.live if d.serial != vol]
    dom.config = [d for d in dom.config if d.serial != vol]
    res = operations.detach(cinder, host, vol, "vm1")
    assert (res.transport, res.device) == ("native", None)
    assert not host.hypervisor.secrets
    assert record.read(host.hypervisor.domain("vm1")) == {}
    assert cinder.volumes[vol].status == "available"


def test_an_unrecorded_disk_whose_type_says_nothing_is_detached_as_native(cinder, host):
    """Attached by another tool as a disk of a type attachflow does not make: without a
    record or a transport named, detach takes the default transport, native."""
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    dom = host.hypervisor.domains["vm1"]
    dom.live_meta, dom.config_meta = {}, {}
    odd = domxml.Disk.parse(
        f'<disk type="file" device="disk"><driver name="qemu" type="raw"/>'
        f'<source file="/var/lib/other/{vol}"/><target dev="vdb" bus="virtio"/>'
        f'<serial>{vol}</serial></disk>')
    dom.live = [odd if d.serial == vol else d for d in dom.live]
    dom.config = [odd if d.serial == vol else d for d in dom.config]
    res = operations.detach(cinder, host, vol, "vm1")
    assert (res.transport, res.device) == ("native", "vdb")
    assert host.hypervisor.domain("vm1").disk(vol) is None
    assert not host.hypervisor.secrets
    assert cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_boot_writes_a_complete_record_into_the_domain(cinder, host, transport):
    """What `virsh metadata` shows: the record stands on its own, without the disk."""
    vol = cinder.create_volume()
    operations.boot(cinder, host, get_transport(transport), "vm9", vol, api="legacy")
    for inactive in (False, True):
        raw = json.loads(host.hypervisor.domain("vm9", inactive=inactive)
                         .volume_entries()[vol])
        assert (raw["api"], raw["transport"], raw["host"], raw["device"]) == \
            ("legacy", transport, "hosta", "vda")


def test_attach_refuses_bad_input_with_a_clear_message(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    other = cinder.create_volume()
    cinder.calls.clear()
    native = get_transport("native")
    cases = [
        (errors.DeviceInUse, f"volume {vol} is already attached to vm1 as vdb, not vdc",
         lambda: operations.attach(cinder, host, native, vol, "vm1", device="vdc")),
        (errors.InputError, "device 'sdb' is not a virtio disk name (vdb, vdc, ..., vdzz)",
         lambda: operations.attach(cinder, host, native, other, "vm1", device="sdb")),
        (errors.DeviceInUse, "device vdb is already in use in vm1",
         lambda: operations.attach(cinder, host, native, other, "vm1", device="vdb")),
    ]
    for kind, message, call in cases:
        with pytest.raises(kind) as info:
            call()
        assert str(info.value) == message
    assert cinder.calls == [] and cinder.volumes[other].status == "available"


def test_a_failed_attach_names_the_operation_and_the_step(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    cinder.fail("attachment_complete", errors.StorageUnavailable("cinder went away"))
    with pytest.raises(errors.OperationFailed) as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert str(info.value) == (
        f"attach {vol} to vm1 failed at step 'storage complete (attachments)': "
        "cinder went away (all earlier steps undone)")


def test_undoing_an_attach_waits_for_the_guest_as_long_as_asked(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    host.hypervisor.fail("set_metadata", errors.HypervisorError("libvirtd went away"))
    host.hypervisor.refuse_detach.add("vdb")
    with pytest.raises(errors.OperationFailed) as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1",
                          detach_timeout=7)
    assert info.value.step == "record in domain metadata"
    assert "could NOT undo: guest attach: guest 'vm1' did not release vdb within 7 s" \
        in str(info.value)


def test_a_disk_waiting_in_the_persistent_definition_keeps_its_name_and_volume(cinder,
                                                                               host):
    """A disk added for the next boot only is in the persistent definition alone: its
    device name is taken and its volume is attached."""
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    dom = host.hypervisor.domains["vm1"]
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    dom.live = [d for d in dom.live if d.serial != vol]  # as if attached config-only
    other = cinder.create_volume()
    assert operations.attach(cinder, host, get_transport("native"), vol, "vm1").already
    with pytest.raises(errors.DeviceInUse, match="vdb is already in use"):
        operations.attach(cinder, host, get_transport("native"), other, "vm1",
                          device="vdb")
    assert operations.attach(cinder, host, get_transport("native"), other,
                             "vm1").device == "vdc"
    # detach takes it out of the persistent definition (the live one has none)
    res = operations.detach(cinder, host, vol, "vm1")
    assert res.steps[1:3] == ["guest detach (persistent)", "host disconnect (native)"]
    assert host.hypervisor.domain("vm1", inactive=True).disk(vol) is None
    assert cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("api", ["attachments", "legacy"])
@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_a_volume_exported_with_discard_gets_unmap_in_the_domain(cinder, host, api,
                                                                  transport):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    real_conn = cinder._conn

    def with_discard(*args):  # a backend that reports discard support
        return dict(real_conn(*args), discard=True)

    cinder._conn = with_discard
    operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    for inactive in (False, True):
        disk = host.hypervisor.domain("vm1", inactive=inactive).disk(vol)
        assert disk.element().find("driver").get("discard") == "unmap"
    plain = cinder.create_volume()
    cinder._conn = real_conn
    operations.attach(cinder, host, get_transport(transport), plain, "vm1", api=api)
    assert host.hypervisor.domain("vm1").disk(plain).element().find("driver") \
        .get("discard") is None


def test_attachments_api_tells_cinder_the_guest_device(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1", device="vdd")
    assert attachment_of(cinder, vol).mountpoint == "/dev/vdd"


@pytest.mark.parametrize("transport", ["native", "kernel"])
def test_a_volume_of_another_kind_is_refused_naming_it(cinder, host, transport):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume(driver_volume_type="rbd")
    with pytest.raises(errors.OperationFailed) as info:
        operations.attach(cinder, host, get_transport(transport), vol, "vm1")
    assert str(info.value.cause) == (f"volume {vol} is exported as 'rbd'; transport "
                                     f"'{transport}' carries only iscsi")


def test_a_disk_libvirt_kept_without_its_serial_is_undone_and_named(cinder, host):
    """If the hypervisor drops the serial, attach cannot find its disk: it says so and
    undoes everything."""
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    real_attach = host.hypervisor.attach_device

    def drop_serial(name, disk, live, config):
        bare = domxml.Disk.parse(re.sub(r"<serial>[^<]*</serial>", "", disk.to_xml()))
        return real_attach(name, bare, live, config)

    host.hypervisor.attach_device = drop_serial
    with pytest.raises(errors.OperationFailed) as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert info.value.step == "find disk by serial"
    assert str(info.value.cause) == f"disk with serial {vol} not found in vm1 after attach"
    assert "could NOT undo" not in str(info.value)
    assert [d.target_dev for d in host.hypervisor.domains["vm1"].live] == ["vda"]
    assert cinder.volumes[vol].status == "available" and not host.hypervisor.secrets
