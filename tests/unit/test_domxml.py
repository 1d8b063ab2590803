"""Golden files of the XML attachflow hands to libvirt. Regenerate deliberately with
ATTACHFLOW_REGEN_GOLDEN=1 and review the diff."""

import os
from pathlib import Path

import pytest

from attachflow import domxml
from attachflow.connectors.iscsi_native import secret_usage
from attachflow.model import Portal

GOLDEN = Path(__file__).parent.parent / "golden"
NATIVE = domxml.NetworkISCSISource(
    iqn="iqn.2010-10.org.openstack:volume-0b1c", lun=1, hosts=(Portal("198.18.0.1", 3260),),
    auth_username="chapuser", secret_usage=secret_usage("0b1c", "4f2e"),
    initiator_iqn="iqn.2024-01.dev.attachflow:hosta")
BLOCK = domxml.BlockSource("/dev/disk/by-path/ip-198.18.0.1:3260-iscsi-iqn.2010-10.org."
                           "openstack:volume-0b1c-lun-1")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("ATTACHFLOW_REGEN_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize("name,source", [("disk-native.xml", NATIVE),
                                         ("disk-kernel.xml", BLOCK)])
def test_disk_xml(name, source):
    golden(name, domxml.disk_xml(domxml.DiskSpec(source, "vdb", "0b1c")))


def test_secret_xml():
    golden("secret.xml", domxml.secret_xml(secret_usage("0b1c", "4f2e"), "CHAP for 0b1c"))


def test_domain_xml():
    spec = domxml.DiskSpec(NATIVE, "vda", "0b1c")
    xml = domxml.domain_xml("vm1", "4f2e0000-0000-4000-8000-000000000001", 64, 1, "qemu",
                            spec, {"0b1c": {"api": "attachments", "attachment_id": "a1"}})
    golden("domain.xml", xml)
    direct = domxml.domain_xml("vm1", "4f2e0000-0000-4000-8000-000000000001", 64, 1, "qemu",
                               spec, {}, direct_boot=domxml.DirectBoot(
                                   "/lab/vmlinuz", "/lab/initrd.img", "console=ttyS0"))
    golden("domain-direct-boot.xml", direct)
    assert domxml.volume_records(domxml.domain_metadata(xml)) == {
        "0b1c": {"api": "attachments", "attachment_id": "a1"}}


def test_parse_back_what_we_write():
    for source in (NATIVE, BLOCK):
        xml = f"<domain><devices>{domxml.disk_xml(domxml.DiskSpec(source, 'vdc', 's1'))}" \
              "</devices></domain>"
        disk = domxml.find_disk(xml, "s1")
        assert disk.target_dev == "vdc" and disk.source == source
    assert domxml.find_disk("<domain><devices/></domain>", "s1") is None


def test_next_free_device_skips_taken_names_in_live_and_persistent():
    live = "<domain><devices>" + "".join(
        f"<disk type='file'><target dev='vd{c}'/></disk>" for c in "abcd") + "</devices></domain>"
    config = "<domain><devices><disk type='file'><target dev='vde'/></disk></devices></domain>"
    assert domxml.next_free_device(live, config) == "vdf"
    many = "<domain><devices>" + "".join(
        f"<disk type='file'><target dev='{d}'/></disk>"
        for d, _ in zip(domxml.device_names(), range(26))) + "</devices></domain>"
    assert domxml.next_free_device(many) == "vdaa"
