"""Every operation is safe to repeat: doing what is done already changes nothing and says
so; a repeat that asks for something else is a refusal (exit 2) that changes nothing."""

import pytest

from attachflow import errors, operations
from attachflow.connectors import get_transport
from test_flows import APIS, TRANSPORTS, in_use_by, snapshot


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_twice_returns_the_attachment_and_changes_nothing(cinder, host, api,
                                                                  transport):
    uuid = host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    first = operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    before = snapshot(cinder, host)
    cinder.calls.clear()
    for device in (None, first.device):
        again = operations.attach(cinder, host, get_transport(transport), vol, "vm1",
                                  api=api, device=device)
        assert again.already and not first.already
        (att_id,) = cinder.volumes[vol].attachments  # legacy: known once os-attach ran
        assert (again.device, again.api, again.transport, again.attachment_id) == (
            first.device, api, transport, att_id)
        assert again.steps == [] and again.to_dict()["already"] is True
    assert snapshot(cinder, host) == before
    assert in_use_by(cinder, vol) == ("in-use", [(uuid, "attached")])
    assert set(cinder.calls) <= {"get_volume"}  # looked, changed nothing


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_detach_twice_says_it_was_not_attached(cinder, host, api, transport):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    first = operations.detach(cinder, host, vol, "vm1")
    before = snapshot(cinder, host)
    again = operations.detach(cinder, host, vol, "vm1")
    assert not first.already and again.already
    assert (again.device, again.api, again.transport, again.attachment_id) == (
        None, None, None, None)
    assert snapshot(cinder, host) == before
    with pytest.raises(errors.NotAttached, match=f"volume {vol} is not attached to vm1") \
            as info:
        operations.detach(cinder, host, vol, "vm1", strict=True)
    assert info.value.exit_code == 2
    assert snapshot(cinder, host) == before


def test_attach_of_a_disk_cinder_does_not_list_is_refused(cinder, host):
    """The disk is in the domain but its attachment is gone in Cinder (deleted by hand):
    "already attached" would be a lie."""
    uuid = host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    res = operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    cinder.attachment_delete(res.attachment_id)
    assert in_use_by(cinder, vol) == ("available", [])
    before = snapshot(cinder, host)
    with pytest.raises(errors.VolumeStateError, match="Cinder does not list") as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert info.value.exit_code == 2 and snapshot(cinder, host) == before
    assert uuid  # the guest keeps its disk; detach then attach repairs it


def test_detach_refuses_when_cinder_still_lists_an_attachment_for_the_guest(cinder, host):
    uuid = host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    new = cinder.attachment_create(vol, uuid, {"host": "hosta", "initiator": "iqn.x"})
    cinder.attachment_complete(new.attachment_id)
    before = snapshot(cinder, host)
    with pytest.raises(errors.VolumeStateError, match=new.attachment_id) as info:
        operations.detach(cinder, host, vol, "vm1")
    assert info.value.exit_code == 2 and snapshot(cinder, host) == before


def test_a_volume_attached_elsewhere_is_still_refused(cinder, host):
    host.hypervisor.add_domain("vm1")
    host.hypervisor.add_domain("vm2")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    before = snapshot(cinder, host)
    with pytest.raises(errors.VolumeStateError, match="vm1|in-use") as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm2")
    assert info.value.exit_code == 2 and snapshot(cinder, host) == before


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_boot_twice_finds_the_running_guest(cinder, host, api, transport):
    vol = cinder.create_volume()
    first = operations.boot(cinder, host, get_transport(transport), "vm9", vol, api=api,
                            virt_type="qemu")
    before = snapshot(cinder, host)
    again = operations.boot(cinder, host, get_transport(transport), "vm9", vol, api=api,
                            virt_type="qemu")
    assert again.already and again.operation == "boot" and again.device == "vda"
    (att_id,) = cinder.volumes[vol].attachments
    assert again.attachment_id == att_id and first.attachment_id in (att_id, None)
    assert snapshot(cinder, host) == before
    # another volume under the same name is a refusal
    other = cinder.create_volume()
    before = snapshot(cinder, host)
    with pytest.raises(errors.InputError, match="does not boot from volume") as info:
        operations.boot(cinder, host, get_transport(transport), "vm9", other, api=api)
    assert info.value.exit_code == 2 and snapshot(cinder, host) == before
    assert in_use_by(cinder, other) == ("available", [])


def test_boot_of_a_shut_off_guest_is_refused_with_what_to_do(cinder, host):
    vol = cinder.create_volume()
    operations.boot(cinder, host, get_transport("native"), "vm9", vol, virt_type="qemu")
    host.hypervisor.destroy("vm9")
    before = snapshot(cinder, host)
    with pytest.raises(errors.VolumeStateError, match="shut off: start it") as info:
        operations.boot(cinder, host, get_transport("native"), "vm9", vol)
    assert info.value.exit_code == 2 and snapshot(cinder, host) == before


def test_a_repeated_attach_names_the_guest_host_and_volume(cinder, host):
    uuid = host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    first = operations.attach(cinder, host, get_transport("kernel"), vol.upper(), "vm1",
                              api="attachments")
    again = operations.attach(cinder, host, get_transport("kernel"), vol, "vm1")
    assert again.to_dict() == {
        "schema_version": 1, "operation": "attach", "volume_id": vol, "domain": "vm1",
        "host": "hosta", "device": "vdb", "api": "attachments", "transport": "kernel",
        "attachment_id": first.attachment_id, "seconds": again.seconds, "steps": [],
        "already": True}
    assert 0 <= again.seconds < 5 and first.volume_id == vol
    assert in_use_by(cinder, vol) == ("in-use", [(uuid, "attached")])


def test_a_repeated_attach_on_another_device_is_refused(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    before = snapshot(cinder, host)
    with pytest.raises(errors.DeviceInUse) as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1", device="vdc")
    assert str(info.value) == f"volume {vol} is already attached to vm1 as vdb, not vdc"
    assert info.value.exit_code == 2 and snapshot(cinder, host) == before


def test_a_repeated_attach_with_another_transport_is_refused(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    before = snapshot(cinder, host)
    with pytest.raises(errors.TransportMismatch) as info:
        operations.attach(cinder, host, get_transport("kernel"), vol, "vm1")
    assert str(info.value) == (f"volume {vol} is already attached to vm1 as vdb with "
                               "transport 'native', not 'kernel'")
    assert info.value.exit_code == 2 and snapshot(cinder, host) == before


def test_a_disk_attached_by_another_tool_is_not_claimed(cinder, host):
    """The volume's disk is in the guest (its serial) but attachflow has no record."""
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    dom = host.hypervisor.domains["vm1"]
    dom.live_meta.clear()
    dom.config_meta.clear()
    before = snapshot(cinder, host)
    with pytest.raises(errors.VolumeStateError) as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert str(info.value) == (
        f"volume {vol} is already attached to vm1 as vdb, but not by attachflow (no "
        "record in the domain): detach it with the tool that attached it")
    assert snapshot(cinder, host) == before


def test_a_disk_only_in_the_persistent_definition_counts_as_attached(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    first = operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    host.hypervisor.destroy("vm1")                     # shut off: only the definition
    before = snapshot(cinder, host)
    again = operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert again.already and again.device == "vdb"
    assert again.attachment_id == first.attachment_id
    assert snapshot(cinder, host) == before


def test_a_repeated_attach_whose_attachment_cinder_replaced_is_refused(cinder, host):
    """Cinder lists an attachment for the guest, but not the one attachflow recorded."""
    uuid = host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    first = operations.attach(cinder, host, get_transport("native"), vol, "vm1",
                              api="attachments")
    cinder.attachment_delete(first.attachment_id)
    other = cinder.attachment_create(vol, uuid, {"host": "hosta", "initiator": "iqn.x"})
    cinder.attachment_complete(other.attachment_id)
    before = snapshot(cinder, host)
    with pytest.raises(errors.VolumeStateError) as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert str(info.value) == (
        f"volume {vol} is in vm1 as vdb, but Cinder does not list that attachment "
        "(volume status 'in-use'): detach it, then attach it again")
    assert snapshot(cinder, host) == before


def test_a_repeated_detach_names_the_guest_and_host(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    again = operations.detach(cinder, host, vol.replace("-", ""), "vm1")
    assert again.to_dict() == {
        "schema_version": 1, "operation": "detach", "volume_id": vol, "domain": "vm1",
        "host": "hosta", "device": None, "api": None, "transport": None,
        "attachment_id": None, "seconds": again.seconds, "steps": [], "already": True}
    assert 0 <= again.seconds < 5


def test_a_repeated_boot_names_the_guest_host_and_attachment(cinder, host):
    vol = cinder.create_volume()
    first = operations.boot(cinder, host, get_transport("kernel"), "vm9", vol,
                            api="attachments", virt_type="qemu")
    again = operations.boot(cinder, host, get_transport("kernel"), "vm9", vol)
    assert again.to_dict() == {
        "schema_version": 1, "operation": "boot", "volume_id": vol, "domain": "vm9",
        "host": "hosta", "device": "vda", "api": "attachments", "transport": "kernel",
        "attachment_id": first.attachment_id, "seconds": again.seconds, "steps": [],
        "already": True}
    assert first.to_dict()["already"] is False and first.steps[-1] == \
        "storage complete (attachments)"


def test_a_boot_under_the_name_of_a_guest_with_the_volume_elsewhere_is_refused(cinder,
                                                                               host):
    """The guest holds the volume, but not as its root disk."""
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    before = snapshot(cinder, host)
    with pytest.raises(errors.InputError) as info:
        operations.boot(cinder, host, get_transport("native"), "vm1", vol)
    assert str(info.value) == (f"a domain named 'vm1' already exists on hosta and does "
                               f"not boot from volume {vol}")
    assert snapshot(cinder, host) == before
    host.hypervisor.add_domain("empty", active=False)   # shut off, its vda a local image
    with pytest.raises(errors.InputError, match="'empty' already exists on hosta"):
        operations.boot(cinder, host, get_transport("native"), "empty", vol)


def test_a_repeated_boot_of_a_shut_off_guest_says_what_to_do(cinder, host):
    vol = cinder.create_volume()
    operations.boot(cinder, host, get_transport("native"), "vm9", vol, virt_type="qemu")
    host.hypervisor.destroy("vm9")
    with pytest.raises(errors.VolumeStateError) as info:
        operations.boot(cinder, host, get_transport("native"), "vm9", vol)
    assert str(info.value) == (
        f"domain 'vm9' exists on hosta with volume {vol} as vda but is shut off: start "
        "it (virsh start) or remove it first")


def test_a_repeated_boot_finds_its_guest_running_though_no_longer_defined(cinder, host):
    vol = cinder.create_volume()
    operations.boot(cinder, host, get_transport("native"), "vm9", vol, virt_type="qemu")
    host.hypervisor.undefine("vm9")                    # running, no longer defined
    again = operations.boot(cinder, host, get_transport("native"), "vm9", vol)
    assert again.already and again.device == "vda"
