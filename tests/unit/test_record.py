"""The volume record kept in a domain's metadata: its JSON form, defaults, and the
operations that write it."""

import dataclasses
import json

import pytest

from attachflow import domxml, errors, operations, record
from attachflow.cinder_side import StorageAttachment
from attachflow.connectors import get_transport
from attachflow.model import ConnectionInfo, Portal
from attachflow.record import VolumeRecord

RAW = {"driver_volume_type": "iscsi", "target_portal": "198.18.0.1:3260",
       "target_iqn": "iqn.2010-10.org.openstack:volume-v1", "target_lun": 1,
       "auth_method": "CHAP", "auth_username": "user", "auth_password": "secret-pw",
       "access_mode": "ro", "discard": True}


def attachment(attachment_id="a1", api="attachments", host="hosta"):
    return StorageAttachment("v1", "guest-uuid", api, attachment_id,
                             ConnectionInfo.from_cinder(RAW, "v1"),
                             {"host": host, "initiator": "iqn.x:" + host})


def test_json_round_trip_keeps_everything_but_the_secret():
    rec = VolumeRecord.for_attachment(attachment(), "native", "hosta", "vdb")
    data = rec.to_json()
    assert "secret-pw" not in json.dumps(data)
    again = VolumeRecord.from_json("v1", json.loads(json.dumps(data)))
    assert again == rec
    assert again.connection.portal == Portal("198.18.0.1", 3260)
    assert again.connection.lun == 1 and again.connection.access_mode == "ro"
    assert again.connection.discard and again.connection.auth_password is None
    assert again.connector == {"host": "hosta", "initiator": "iqn.x:hosta"}


def test_a_move_keeps_the_volume_and_device_and_takes_the_new_connection():
    rec = VolumeRecord.for_attachment(attachment(), "kernel", "hosta", "vdc")
    moved = rec.moved_to(attachment("a2", host="hostb"), "hostb")
    assert (moved.volume_id, moved.device, moved.transport, moved.api) == \
        ("v1", "vdc", "kernel", "attachments")
    assert moved.attachment_id == "a2" and moved.host == "hostb"
    assert moved.connector["host"] == "hostb"


def test_a_move_records_the_destination_connection_without_its_secret():
    rec = VolumeRecord.for_attachment(attachment(), "kernel", "hosta", "vdc")
    new_raw = dict(RAW, target_portal="198.18.0.2:3260",
                   target_iqn="iqn.2010-10.org.openstack:volume-v1-b", target_lun=4)
    dest = StorageAttachment("v1", "guest-uuid", "attachments", "a2",
                             ConnectionInfo.from_cinder(new_raw, "v1"), {"host": "hostb"})
    moved = rec.moved_to(dest, "hostb")
    assert moved.connection == dest.connection.without_secrets()
    assert (moved.connection.portal, moved.connection.lun) == (Portal("198.18.0.2", 3260), 4)
    assert moved.connection.auth_password is None
    assert moved.connector == {"host": "hostb"}


def _disk(disk_type: str) -> domxml.Disk:
    source = domxml.BlockSource("/dev/sdx") if disk_type == "block" else \
        domxml.NetworkISCSISource("iqn.t", 1, (Portal("198.18.0.1", 3260),))
    return domxml.Disk.build(domxml.DiskSpec(source, "vdd", "v1"))


def test_defaults_of_records_written_without_a_field():
    assert VolumeRecord.from_json("v1", {"api": "legacy"}, _disk("block")).api \
        == "legacy"
    assert VolumeRecord.from_json("v1", {}, _disk("block")).api is None  # negotiated
    assert VolumeRecord.from_json("v1", {}, _disk("block")).transport == "kernel"
    assert VolumeRecord.from_json("v1", {}, _disk("network")).transport == "native"
    no_conn = VolumeRecord.from_json("v1", {"transport": "native"})
    assert no_conn.connection.driver_volume_type == "unknown"
    with pytest.raises(errors.InputError, match="names no transport"):
        VolumeRecord.from_json("v1", {})


def test_records_read_from_and_written_to_the_domain():
    rec = VolumeRecord.for_attachment(attachment(), "native", "hosta", "vdb")
    dom = domxml.assemble("vm", "u", [_disk("network")], record.entries({"v1": rec}))
    assert record.read(domxml.Domain.parse(dom.to_xml())) == {"v1": rec}
    assert record.metadata_xml({}) is None  # no volume, no trace
    broken = domxml.assemble("vm", "u", [], {"v1": "not json"})
    with pytest.raises(errors.InputError, match="record of volume v1 is not JSON"):
        record.read(broken)


def test_detaching_one_volume_keeps_the_records_of_the_others(cinder, host):
    host.hypervisor.add_domain("vm1")
    vols = [cinder.create_volume() for _ in range(3)]
    for vol in vols:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    before = record.read(host.hypervisor.domain("vm1"))
    operations.detach(cinder, host, vols[1], "vm1")
    for inactive in (False, True):
        after = record.read(host.hypervisor.domain("vm1", inactive=inactive))
        assert after == {v: before[v] for v in (vols[0], vols[2])}


def test_a_multipath_connection_is_disconnected_as_one(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("kernel", multipath=True), vol, "vm1")
    rec = record.read(host.hypervisor.domain("vm1"))[vol]
    assert rec.multipath and rec.connector["multipath"] is True
    seen = []
    real = host.brick.disconnect
    host.brick.disconnect = lambda proto, props, info, multipath: (
        seen.append(multipath), real(proto, props, info, multipath))
    operations.detach(cinder, host, vol, "vm1")
    assert seen == [True] and not host.brick.sessions


def test_every_default_of_a_record_written_without_fields():
    bare = VolumeRecord.from_json("v1", {"transport": "native"})
    assert bare == VolumeRecord("v1", None, "native", None, "", "", {},
                                ConnectionInfo.from_record({}, "v1"))
    assert bare.connection.volume_id == "v1" and not bare.multipath
    # an api attachflow does not know is left to negotiation
    assert VolumeRecord.from_json("v1", {"transport": "native", "api": "v2"}).api is None
    assert VolumeRecord.from_json("v1", {"transport": "kernel", "api": "attachments"}).api \
        == "attachments"
    # the disk tells the device; a recorded device or transport wins over the disk's
    assert VolumeRecord.from_json("v1", {}, _disk("block")).device == "vdd"
    kept = VolumeRecord.from_json("v1", {"transport": "native", "device": "vdf",
                                         "host": "hostb", "attachment_id": "a9",
                                         "connector": {"host": "hostb"}}, _disk("block"))
    assert (kept.transport, kept.device, kept.host, kept.attachment_id, kept.connector) \
        == ("native", "vdf", "hostb", "a9", {"host": "hostb"})


def test_records_without_transport_or_device_are_read_from_the_domain_disk():
    dom = domxml.assemble("vm", "u", [_disk("block")],
                          {"v1": json.dumps({"api": "legacy", "host": "hosta"})})
    (rec,) = record.read(domxml.Domain.parse(dom.to_xml())).values()
    assert (rec.volume_id, rec.api, rec.transport, rec.device, rec.host) == \
        ("v1", "legacy", "kernel", "vdd", "hosta")
    assert rec.connection.volume_id == "v1"


def test_only_a_kernel_connection_made_with_multipath_is_multipath():
    def rec(transport, connector):
        return VolumeRecord.from_json("v1", {"transport": transport, "connector": connector})
    assert rec("kernel", {"multipath": True}).multipath is True
    assert rec("kernel", {"multipath": False}).multipath is False
    assert rec("kernel", {}).multipath is False
    # QEMU's own initiator has no multipath, whatever the connector said
    assert rec("native", {"multipath": True}).multipath is False


def test_equal_records_are_stored_as_the_same_text():
    """However the connector's fields came in, equal records give identical metadata."""
    one = VolumeRecord.for_attachment(attachment(), "native", "hosta", "vdb")
    other = dataclasses.replace(one, connector=dict(reversed(list(one.connector.items()))))
    assert one == other and list(one.connector) != list(other.connector)
    assert record.entries({"v1": one}) == record.entries({"v1": other})
    assert record.metadata_xml({"v1": one}) == record.metadata_xml({"v1": other})
