"""Golden files of the XML attachflow hands to libvirt. Regenerate deliberately with
ATTACHFLOW_REGEN_GOLDEN=1 and review the diff."""

import os
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from attachflow import domxml
from attachflow.connectors.iscsi_native import secret_usage
from attachflow.errors import InputError
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


# -- what a user sees of the XML attachflow writes and reads -------------------------------

def _children(xml: str, path: str = ".") -> list[str]:
    return [child.tag for child in ET.fromstring(xml).find(path)]


@pytest.mark.parametrize("parse", [domxml.Disk.parse, domxml.Domain.parse, domxml.pretty,
                                   domxml.parse_volume_metadata,
                                   lambda xml: domxml.find_disk(xml, "s1")])
def test_malformed_xml_is_an_input_error(parse):
    with pytest.raises(InputError, match="^malformed XML: "):
        parse("<domain><devices></domain>")


def test_a_disk_without_optional_parts_is_written_without_them():
    source = domxml.NetworkISCSISource(
        "iqn.x:v", 0, (Portal("10.0.0.1", 3260), Portal("10.0.0.2", 3261)))
    disk = domxml.Disk.build(domxml.DiskSpec(source, "vdc", "v1", bus="scsi", readonly=True,
                                             discard=True))
    assert disk.to_xml() == (
        '<disk type="network" device="disk">\n'
        '  <driver name="qemu" type="raw" cache="none" discard="unmap" />\n'
        '  <source protocol="iscsi" name="iqn.x:v/0">\n'
        '    <host name="10.0.0.1" port="3260" />\n'
        '    <host name="10.0.0.2" port="3261" />\n'
        '  </source>\n'
        '  <target dev="vdc" bus="scsi" />\n'
        '  <readonly />\n'
        '  <serial>v1</serial>\n'
        '</disk>\n')
    assert disk.readonly and disk.disk_type == "network" and disk.device == "disk"
    assert domxml.Disk.parse(disk.to_xml()).source == source
    block = domxml.Disk.build(domxml.DiskSpec(domxml.BlockSource("/dev/sdb"), "vdd", "v2",
                                              discard=True))
    assert block.to_xml() == (
        '<disk type="block" device="disk">\n'
        '  <driver name="qemu" type="raw" cache="none" io="native" discard="unmap" />\n'
        '  <source dev="/dev/sdb" />\n'
        '  <target dev="vdd" bus="virtio" />\n'
        '  <serial>v2</serial>\n'
        '</disk>\n')
    assert not block.readonly and block.disk_type == "block"
    assert repr(block) == "Disk(vdd, serial=v2, block)"


def test_chap_without_a_secret_usage_is_refused():
    # libvirt's schema takes no empty usage name; a CHAP user with no secret would
    # only fail at login
    source = domxml.NetworkISCSISource("iqn.x:v", 2, (Portal("10.0.0.1", 3260),),
                                       auth_username="u")
    with pytest.raises(InputError, match="CHAP needs both"):
        domxml.Disk.build(domxml.DiskSpec(source, "vdc", "v1"))


def _disk(xml: str) -> domxml.Disk:
    return domxml.Disk.parse(xml)


def test_sources_attachflow_does_not_handle_read_as_none():
    assert _disk("<disk type='block'><target dev='vdb'/></disk>").source is None
    assert _disk("<disk type='block' device='cdrom'><source/></disk>").source is None
    assert _disk("<disk type='file'><source file='/images/a.qcow2'/></disk>").source is None
    assert _disk("<disk type='network'><source protocol='rbd' name='pool/img'>"
                 "<host name='m1'/></source></disk>").source is None
    assert _disk("<disk type='network'><source dev='/dev/sdb'/></disk>").source is None
    assert _disk("<disk type='block'><source protocol='iscsi' name='iqn.x/1'/></disk>"
                 ).source is None
    assert _disk("<disk type='block'><source dev='/dev/sdb'/></disk>").source == \
        domxml.BlockSource("/dev/sdb")


def test_an_iscsi_source_as_libvirt_may_write_it():
    disk = _disk("<disk type='network' device='lun'><source protocol='iscsi' "
                 "name='iqn.2010-10.org.openstack:volume-x/12'><host name='198.18.0.1'/>"
                 "<host port='3270'/><auth username='chap'><secret type='iscsi' "
                 "uuid='4f2e'/></auth></source><target dev='sda' bus='scsi'/></disk>")
    assert disk.source == domxml.NetworkISCSISource(
        iqn="iqn.2010-10.org.openstack:volume-x", lun=12,
        hosts=(Portal("198.18.0.1", 3260), Portal("", 3270)), auth_username="chap",
        secret_usage=None, initiator_iqn=None)
    assert disk.device == "lun" and disk.target_dev == "sda"
    assert disk.serial is None and disk.alias is None and not disk.readonly
    bare = _disk("<disk type='network'><source protocol='iscsi' name='iqn.x:v/0'>"
                 "<auth username='chap'/></source></disk>").source
    assert (bare.iqn, bare.lun, bare.hosts) == ("iqn.x:v", 0, ())
    assert bare.auth_username == "chap" and bare.secret_usage is None
    nameless = _disk("<disk type='network'><source protocol='iscsi'/></disk>").source
    assert (nameless.iqn, nameless.lun, nameless.auth_username) == ("", 0, None)
    assert _disk("<disk type='network'><source protocol='iscsi' name='iqn.x:v/lun1'/>"
                 "</disk>").source.iqn == "iqn.x:v/lun1"
    assert _disk("<disk type='network'><source protocol='iscsi' name='/3'/></disk>"
                 ).source.iqn == "/3"
    assert _disk("<disk type='network'><source protocol='iscsi' name='/3'/></disk>"
                 ).source.lun == 0


def test_a_disk_element_with_nothing_but_its_tag():
    disk = _disk("<disk/>")
    assert (disk.device, disk.disk_type, disk.target_dev, disk.serial, disk.alias,
            disk.source) == ("disk", "", "", None, None, None)
    assert _disk("<disk><target bus='virtio'/></disk>").target_dev == ""


def test_a_new_source_takes_the_old_ones_place_and_sets_the_disk_type():
    old = _disk("<disk type='block' device='disk'><driver name='qemu'/>"
                "<source dev='/dev/sdb'/><target dev='vdb' bus='virtio'/>"
                "<serial>v1</serial><alias name='virtio-disk1'/></disk>")
    source = domxml.NetworkISCSISource("iqn.x:v", 1, (Portal("10.0.0.1", 3260),))
    new = old.with_source(source)
    assert new.source == source and new.disk_type == "network"
    assert _children(new.to_xml()) == ["driver", "source", "target", "serial", "alias"]
    assert new.alias == "virtio-disk1" and new.target_dev == "vdb" and new.serial == "v1"
    assert old.source == domxml.BlockSource("/dev/sdb") and old.disk_type == "block"
    back = new.with_source(domxml.BlockSource("/dev/sdc"))
    assert back.disk_type == "block" and back.source == domxml.BlockSource("/dev/sdc")
    assert _children(back.to_xml()) == ["driver", "source", "target", "serial", "alias"]
    # a disk that had no source gets it right after its first element, the driver
    empty = _disk("<disk type='block' device='cdrom'><driver name='qemu'/>"
                  "<target dev='hdc'/><readonly/></disk>")
    filled = empty.with_source(domxml.BlockSource("/dev/sr0"))
    assert _children(filled.to_xml()) == ["driver", "source", "target", "readonly"]
    assert filled.source == domxml.BlockSource("/dev/sr0") and filled.readonly
    assert empty.source is None
    # a source written first, or after the target, stays where it was
    first = _disk("<disk type='block'><source dev='/dev/a'/><target dev='vdb'/>"
                  "<serial>v1</serial></disk>").with_source(domxml.BlockSource("/dev/b"))
    assert _children(first.to_xml()) == ["source", "target", "serial"]
    late = _disk("<disk type='block'><target dev='vdb'/><serial>v1</serial>"
                 "<source dev='/dev/a'/></disk>").with_source(domxml.BlockSource("/dev/b"))
    assert _children(late.to_xml()) == ["target", "serial", "source"]
    assert late.source == domxml.BlockSource("/dev/b")


def test_the_alias_libvirt_gives_replaces_any_other():
    disk = _disk("<disk type='block'><source dev='/dev/x'/><target dev='vdb'/>"
                 "<alias name='ua-mine'/><alias name='ua-two'/></disk>")
    live = disk.with_alias("virtio-disk3")
    assert live.alias == "virtio-disk3" and live.to_xml().count("<alias ") == 1
    assert disk.alias == "ua-mine" and disk.to_xml().count("<alias ") == 2
    assert "<alias " not in disk.without_alias().to_xml()
    assert live.without_alias().alias is None


def test_a_disk_element_is_a_copy():
    disk = _disk("<disk type='block'><source dev='/dev/x'/><target dev='vdb'/></disk>")
    disk.element().find("target").set("dev", "vdz")
    assert disk.target_dev == "vdb" and 'dev="vdb"' in disk.to_xml()


def _memory(xml: str) -> int:
    return domxml.Domain.parse(f"<domain><name>vm</name>{xml}<devices/></domain>").memory_kib


@pytest.mark.parametrize("xml,kib", [
    ("<memory>2048</memory>", 2048),
    ("<memory unit='KiB'>2048</memory>", 2048),
    ("<memory unit='k'>2048</memory>", 2048),
    ("<memory unit='b'>4096</memory>", 4),
    ("<memory unit='bytes'>1048576</memory>", 1024),
    ("<memory unit='MiB'>64</memory>", 65536),
    ("<memory unit='M'>3</memory>", 3072),
    ("<memory unit='mib'>2</memory>", 2048),
    ("<memory unit='GiB'>2</memory>", 2 << 20),
    ("<memory unit='G'>3</memory>", 3 << 20),
    ("<memory unit='parsecs'>5</memory>", 5),
    ("<memory unit='MiB'> 8 </memory>", 8192),
    ("<memory unit='GiB'>4</memory><currentMemory unit='MiB'>512</currentMemory>", 524288),
    ("<currentMemory>4096</currentMemory><memory>8192</memory>", 4096),
    ("", 1 << 20),
    ("<memory unit='MiB'></memory>", 1 << 20),
    ("<memory unit='MiB'>lots</memory>", 1 << 20),
    ("<currentMemory unit='MiB'>-1</currentMemory><memory>8</memory>", 1 << 20),
])
def test_memory_in_kib_as_libvirt_counts_it(xml, kib):
    assert _memory(xml) == kib


def test_records_are_read_only_from_attachflows_own_element():
    ns = domxml.METADATA_NS
    dom = domxml.Domain.parse(
        f"<domain xmlns:attachflow='{ns}' xmlns:o='urn:other'><name>vm</name><uuid>u</uuid>"
        "<metadata><o:volumes><o:volume id='x'>no</o:volume></o:volumes>"
        "<attachflow:volumes><attachflow:volume id='a'>{\"api\": \"legacy\"}</attachflow:volume>"
        "<attachflow:volume id='b'/><attachflow:volume>{}</attachflow:volume><attachflow:volume id=''>{}</attachflow:volume>"
        "<o:volume id='c'>no</o:volume></attachflow:volumes></metadata><devices/></domain>")
    assert dom.volume_entries() == {"a": '{"api": "legacy"}', "b": "{}"}
    assert domxml.Domain.parse("<domain><name>vm</name></domain>").volume_entries() == {}
    assert domxml.Domain.parse("<domain><metadata><o:volumes xmlns:o='urn:o'/></metadata>"
                               "</domain>").volume_entries() == {}
    nameless = domxml.Domain.parse("<domain/>")
    assert (nameless.name, nameless.uuid, nameless.disks) == ("", "", [])


def test_volume_metadata_for_set_metadata_and_back():
    entries = {"b": '{"api": "attachments"}', "a": "{}"}
    xml = domxml.volume_metadata_xml(entries)
    assert xml == ('<volumes><volume id="a">{}</volume>'
                   '<volume id="b">{"api": "attachments"}</volume></volumes>')
    assert domxml.parse_volume_metadata(xml) == entries
    assert domxml.volume_metadata_xml({}) is None
    assert domxml.parse_volume_metadata(None) == {}
    assert domxml.parse_volume_metadata("") == {}
    # as libvirt's getMetadata gives it back: with the namespace on every element
    ns = domxml.METADATA_NS
    assert domxml.parse_volume_metadata(
        f"<attachflow:volumes xmlns:attachflow='{ns}'><attachflow:volume id='a'/><attachflow:volume>{{}}</attachflow:volume>"
        "<attachflow:other id='z'>x</attachflow:other><attachflow:volume id=''>{}</attachflow:volume></attachflow:volumes>"
    ) == {"a": "{}"}


def test_a_bare_definition_as_libvirt_shows_it():
    disk = domxml.Disk.build(domxml.DiskSpec(domxml.BlockSource("/dev/sdb"), "vdc", "v1"))
    dom = domxml.assemble("vm", "u1", [disk], {"b": "{}", "a": ""})
    compact = (
        '<domain xmlns:attachflow="https://attachflow.dev/xmlns/volumes/1" type="qemu">'
        '<name>vm</name><uuid>u1</uuid><metadata><attachflow:volumes>'
        '<attachflow:volume id="a" /><attachflow:volume id="b">{}</attachflow:volume>'
        '</attachflow:volumes></metadata><devices><disk type="block" device="disk">'
        '<driver name="qemu" type="raw" cache="none" io="native" /><source dev="/dev/sdb" />'
        '<target dev="vdc" bus="virtio" /><serial>v1</serial></disk></devices></domain>')
    assert dom.to_xml() == compact
    pretty = dom.to_xml(pretty=True)
    assert pretty.endswith("</domain>\n") and "\n  <name>vm</name>\n" in pretty
    assert dom.to_xml() == compact  # showing it indented does not change it
    assert domxml.pretty(compact) == pretty
    assert domxml.Domain.parse(pretty).volume_entries() == {"a": "{}", "b": "{}"}
    assert domxml.assemble("vm", "u1", [], {}, "kvm").to_xml() == (
        '<domain type="kvm"><name>vm</name><uuid>u1</uuid><devices /></domain>')


def test_a_domain_is_written_back_as_libvirt_gave_it():
    xml = "<domain type='kvm'>\n <name>vm</name>\n <devices/>\n</domain>"
    dom = domxml.Domain.parse(xml)
    assert dom.to_xml() == xml
    assert dom.to_xml(pretty=True) == (
        '<domain type="kvm">\n  <name>vm</name>\n  <devices />\n</domain>\n')
    assert dom.with_changes().to_xml() == (
        '<domain type="kvm">\n <name>vm</name>\n <devices />\n</domain>')


def test_changes_keep_the_order_of_devices_and_other_metadata():
    xml = ("<domain type='kvm' xmlns:o='urn:o'><name>vm</name><uuid>u</uuid>"
           "<memory>1024</memory><vcpu>1</vcpu><devices><emulator>/usr/bin/qemu</emulator>"
           "<disk type='block'><source dev='/dev/a'/><target dev='vda'/>"
           "<serial>a</serial></disk><serial type='pty'/>"
           "<disk type='block'><source dev='/dev/b'/><target dev='vdb'/>"
           "<serial>b</serial></disk><disk type='file'><target dev='vdc'/></disk>"
           "</devices></domain>")
    dom = domxml.Domain.parse(xml)
    changed = dom.with_changes({"a": domxml.BlockSource("/dev/A"),
                                "b": domxml.BlockSource("/dev/B")}, {"a": "{}"})
    out = changed.to_xml()
    assert _children(out, "devices") == ["emulator", "disk", "serial", "disk", "disk"]
    assert [d.target_dev for d in changed.disks] == ["vda", "vdb", "vdc"]
    assert [d.source for d in changed.disks] == [
        domxml.BlockSource("/dev/A"), domxml.BlockSource("/dev/B"), None]
    # the domain had no <metadata>: it is put after name, uuid and memory
    assert _children(out) == ["name", "uuid", "memory", "metadata", "vcpu", "devices"]
    assert domxml.Domain.parse(out).volume_entries() == {"a": "{}"}
    # records replaced, other tools' metadata kept; no records: no attachflow element
    other = domxml.Domain.parse(
        f"<domain xmlns:o='urn:o' xmlns:attachflow='{domxml.METADATA_NS}'><name>vm</name>"
        "<metadata><o:keep>1</o:keep><attachflow:volumes><attachflow:volume id='old'>{}</attachflow:volume>"
        "</attachflow:volumes><attachflow:stray/></metadata><devices/></domain>")
    replaced = other.with_changes(volume_entries={"new": "{}"})
    assert replaced.volume_entries() == {"new": "{}"}
    assert _children(replaced.to_xml(), "metadata") == [
        "{urn:o}keep", f"{{{domxml.METADATA_NS}}}volumes"]
    emptied = other.with_changes(volume_entries={}).to_xml()
    assert _children(emptied, "metadata") == ["{urn:o}keep"]
    assert other.with_changes().volume_entries() == {"old": "{}"}
    assert "<metadata />" in domxml.Domain.parse("<domain><name>vm</name></domain>"
                                                 ).with_changes(volume_entries={}).to_xml()
    # a domain without devices takes records, and no source change
    bare = domxml.Domain.parse("<domain><name>vm</name></domain>")
    assert bare.with_changes({}, {"v": "{}"}).volume_entries() == {"v": "{}"}
    with pytest.raises(InputError, match="no disk with serial a, b in the domain"):
        bare.with_changes({"b": domxml.BlockSource("/dev/B"),
                           "a": domxml.BlockSource("/dev/A")})


def test_a_default_namespace_in_metadata_stays_where_it_was():
    xml = ("<domain><name>vm</name><metadata><app xmlns='urn:app'>1</app></metadata>"
           "<devices><disk type='block'><source dev='/dev/a'/><target dev='vda'/>"
           "<serial>a</serial></disk></devices></domain>")
    out = domxml.Domain.parse(xml).with_changes(
        {"a": domxml.BlockSource("/dev/b")}, {"a": "{}"}).to_xml()
    again = domxml.Domain.parse(out)
    assert again.name == "vm" and again.disk("a").source == domxml.BlockSource("/dev/b")
    assert again.volume_entries() == {"a": "{}"}


def test_disks_are_found_by_serial():
    dom = domxml.Domain.parse(
        "<domain><devices><disk type='block'><source dev='/dev/a'/><target dev='vda'/>"
        "<serial>a</serial></disk><disk type='block'><source dev='/dev/b'/>"
        "<target dev='vdb'/><serial>b</serial></disk></devices></domain>")
    assert dom.disk("b").target_dev == "vdb" and dom.disk("a").target_dev == "vda"
    assert dom.disk("c") is None
    assert dom.device_names() == {"vda", "vdb"}
    assert domxml.find_disk(dom.to_xml(), "b").source == domxml.BlockSource("/dev/b")


def test_device_names_in_kernel_order_and_running_out():
    names = list(domxml.device_names())
    assert names[:3] == ["vda", "vdb", "vdc"] and names[25:28] == ["vdz", "vdaa", "vdab"]
    assert names[-1] == "vdzz" and len(names) == len(set(names)) == 26 + 26 * 26
    assert next(domxml.device_names("sd")) == "sda"
    assert domxml.next_free_device([_domain("vda")]) == "vdb"
    assert domxml.next_free_device([]) == "vda"
    assert domxml.next_free_device([_domain("sda", "vda")], prefix="sd") == "sdb"
    full = _domain(*names)
    with pytest.raises(InputError, match="^no free vdX device name left$"):
        domxml.next_free_device([full])
    assert domxml.next_free_device([full], "sd") == "sda"


def test_a_domain_booted_from_a_kernel_with_a_given_emulator():
    disk = domxml.Disk.build(domxml.DiskSpec(domxml.BlockSource("/dev/sdb"), "vda", "v1"))
    dom = domxml.build_domain("vm2", "u2", 256, 2, "kvm", disk, {},
                              emulator="/usr/bin/qemu-system-x86_64",
                              direct_boot=domxml.DirectBoot("/boot/vmlinuz"))
    assert dom.to_xml() == (
        '<domain type="kvm"><name>vm2</name><uuid>u2</uuid><memory unit="MiB">256</memory>'
        '<vcpu>2</vcpu><os><type arch="x86_64" machine="pc">hvm</type>'
        '<kernel>/boot/vmlinuz</kernel></os><features><acpi /></features>'
        '<on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot>'
        '<on_crash>destroy</on_crash><devices>'
        '<emulator>/usr/bin/qemu-system-x86_64</emulator>'
        '<disk type="block" device="disk"><driver name="qemu" type="raw" cache="none" '
        'io="native" /><source dev="/dev/sdb" /><target dev="vda" bus="virtio" />'
        '<serial>v1</serial></disk><serial type="pty">'
        '<log file="/var/log/libvirt/qemu/vm2-console.log" append="off" /></serial>'
        '<memballoon model="none" /></devices></domain>')
    assert dom.memory_kib == 256 * 1024 and dom.name == "vm2" and dom.uuid == "u2"
    assert dom.volume_entries() == {}
    assert domxml.console_log("vm2") == "/var/log/libvirt/qemu/vm2-console.log"
    initrd_only = domxml.build_domain("vm2", "u2", 256, 2, "kvm", disk, {},
                                      direct_boot=domxml.DirectBoot("/k", initrd="/i"))
    assert _children(initrd_only.to_xml(), "os") == ["type", "kernel", "initrd"]
    assert _children(initrd_only.to_xml(), "devices") == ["disk", "serial", "memballoon"]
    cmdline_only = domxml.build_domain("vm2", "u2", 256, 2, "kvm", disk, {},
                                       direct_boot=domxml.DirectBoot("/k", cmdline="quiet"))
    assert _children(cmdline_only.to_xml(), "os") == ["type", "kernel", "cmdline"]


def test_a_prefix_never_seen_before_is_kept_when_written_back():
    # ElementTree's prefixes are process-wide: a fresh one shows what parsing does.
    prefix = "tool" + uuid.uuid4().hex[:8]
    xml = (f"<domain xmlns:{prefix}='urn:{prefix}'><name>vm</name><metadata>"
           f"<{prefix}:keep>yes</{prefix}:keep></metadata><devices/></domain>")
    out = domxml.Domain.parse(xml).with_changes(volume_entries={"v": "{}"}).to_xml()
    assert f"<{prefix}:keep>yes</{prefix}:keep>" in out
    assert f'xmlns:{prefix}="urn:{prefix}"' in out
