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
    golden(name, domxml.Disk.build(domxml.DiskSpec(source, "vdb", "0b1c")).to_xml())


def test_secret_xml():
    golden("secret.xml", domxml.secret_xml(secret_usage("0b1c", "4f2e"), "CHAP for 0b1c"))


def test_domain_xml():
    disk = domxml.Disk.build(domxml.DiskSpec(NATIVE, "vda", "0b1c"))
    entries = {"0b1c": '{"api": "attachments", "attachment_id": "a1"}'}
    dom = domxml.build_domain("vm1", "4f2e0000-0000-4000-8000-000000000001", 64, 1, "qemu",
                              disk, entries)
    golden("domain.xml", dom.to_xml(pretty=True))
    direct = domxml.build_domain("vm1", "4f2e0000-0000-4000-8000-000000000001", 64, 1,
                                 "qemu", disk, {}, direct_boot=domxml.DirectBoot(
                                     "/lab/vmlinuz", "/lab/initrd.img", "console=ttyS0"))
    golden("domain-direct-boot.xml", direct.to_xml(pretty=True))
    parsed = domxml.Domain.parse(dom.to_xml(pretty=True))
    assert parsed.volume_entries() == entries
    assert parsed.memory_kib == 64 * 1024 and parsed.name == "vm1"


def test_parse_back_what_we_write():
    for source in (NATIVE, BLOCK):
        disk = domxml.Disk.build(domxml.DiskSpec(source, "vdc", "s1", readonly=True))
        again = domxml.Disk.parse(disk.to_xml())
        assert again.target_dev == "vdc" and again.source == source and again.readonly
        dom = domxml.assemble("vm", "u", [disk], {})
        assert domxml.find_disk(dom.to_xml(), "s1").source == source
    assert domxml.find_disk("<domain><devices/></domain>", "s1") is None


def test_unknown_elements_survive_a_change():
    xml = ("<domain type='kvm' xmlns:other='urn:x'><name>vm</name><uuid>u</uuid>"
           "<metadata><other:keep>yes</other:keep></metadata>"
           "<devices><disk type='block' device='disk'><driver name='qemu' cache='none'/>"
           "<source dev='/dev/old'/><target dev='vdb' bus='virtio'/><serial>v1</serial>"
           "<address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/>"
           "<alias name='virtio-disk1'/></disk><video><model type='vga'/></video>"
           "</devices></domain>")
    dom = domxml.Domain.parse(xml)
    changed = dom.with_changes({"v1": domxml.BlockSource("/dev/new")}, {"v1": "{}"})
    again = domxml.Domain.parse(changed.to_xml())
    disk = again.disk("v1")
    assert disk.source == domxml.BlockSource("/dev/new") and disk.alias == "virtio-disk1"
    out = changed.to_xml()
    assert "slot='0x07'" in out.replace('"', "'") and "<video>" in out
    assert "<other:keep>yes</other:keep>" in out
    assert again.volume_entries() == {"v1": "{}"}
    assert dom.disk("v1").source == domxml.BlockSource("/dev/old")  # the original stays
    with pytest.raises(Exception, match="no disk with serial nope"):
        dom.with_changes({"nope": domxml.BlockSource("/dev/x")})


def test_a_disk_for_re_plugging_has_no_alias():
    dom = domxml.Domain.parse(
        "<domain><devices><disk type='block' device='disk'><source dev='/dev/x'/>"
        "<target dev='vdb'/><serial>v1</serial><alias name='virtio-disk1'/></disk>"
        "</devices></domain>")
    disk = dom.disk("v1")
    assert disk.alias == "virtio-disk1"
    assert disk.without_alias().alias is None and "alias" not in disk.without_alias().to_xml()


def _domain(*devs: str) -> domxml.Domain:
    return domxml.Domain.parse("<domain><devices>" + "".join(
        f"<disk type='file'><target dev='{d}'/></disk>" for d in devs) + "</devices></domain>")


def test_next_free_device_skips_taken_names_in_live_and_persistent():
    live = _domain(*(f"vd{c}" for c in "abcd"))
    assert domxml.next_free_device([live, _domain("vde")]) == "vdf"
    many = _domain(*(d for d, _ in zip(domxml.device_names(), range(26))))
    assert domxml.next_free_device([many]) == "vdaa"


def test_prefixes_elementtree_reserves_do_not_stop_parsing():
    xml = ("<domain xmlns:ns0='urn:other'><name>vm</name><metadata><ns0:x>1</ns0:x>"
           "</metadata><devices/></domain>")
    dom = domxml.Domain.parse(xml)
    again = domxml.Domain.parse(dom.with_changes(volume_entries={"v": "{}"}).to_xml())
    assert again.volume_entries() == {"v": "{}"} and again.name == "vm"


def test_an_iscsi_name_without_lun_is_lun_0():
    dom = domxml.Domain.parse(
        "<domain><devices><disk type='network' device='disk'>"
        "<source protocol='iscsi' name='iqn.2010-10.org.openstack:volume-x'>"
        "<host name='198.18.0.1' port='3260'/></source><target dev='vdb'/>"
        "<serial>x</serial></disk></devices></domain>")
    assert dom.disk("x").source.iqn == "iqn.2010-10.org.openstack:volume-x"
    assert dom.disk("x").source.lun == 0
