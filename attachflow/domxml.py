"""Libvirt XML as small round-trip types: a ``Domain`` parsed once per fetch, its ``Disk``
devices, secrets, and a minimal volume-backed domain. Each type keeps the element it was
parsed from, unknown children included, and writes it back as it found it apart from
what was changed (the way virt-manager's virtinst works). Pure: no libvirt calls, so what
these produce can be printed, diffed and compared with golden files before anything is
applied. The only module of attachflow that handles XML.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import re
import string
import xml.etree.ElementTree as ET
from typing import Iterable, Mapping

from attachflow import validate
from attachflow.errors import InputError
from attachflow.model import (ISCSI_NAME, LUN_MAX, PORT_MAX, PORTAL_HOST, Portal,
                              is_lun, is_port, shown)

# attachflow's element in a domain's <metadata>: what record.py keeps there.
METADATA_NS = "https://attachflow.dev/xmlns/volumes/1"
METADATA_KEY = "attachflow"
ET.register_namespace(METADATA_KEY, METADATA_NS)


@dataclasses.dataclass(frozen=True)
class BlockSource:
    """A host block device (kernel initiator): ``<disk type='block'>``."""

    path: str


@dataclasses.dataclass(frozen=True)
class NetworkISCSISource:
    """QEMU's own iSCSI initiator: ``<disk type='network'><source protocol='iscsi'>``."""

    iqn: str
    lun: int
    hosts: tuple[Portal, ...]
    auth_username: str | None = None
    secret_usage: str | None = None
    initiator_iqn: str | None = None


DiskSource = BlockSource | NetworkISCSISource


@dataclasses.dataclass(frozen=True)
class DiskSpec:
    """What attachflow asks for when it builds a disk."""
    source: DiskSource
    target_dev: str
    serial: str
    bus: str = "virtio"
    readonly: bool = False
    discard: bool = False


def _parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(f"malformed XML: {exc}") from exc


def _to_string(elem: ET.Element, pretty: bool = True) -> str:
    if pretty:
        elem = copy.deepcopy(elem)
        ET.indent(elem, space="  ")
    return ET.tostring(elem, encoding="unicode") + ("\n" if pretty else "")


# What the values attachflow writes into XML may hold: libvirt's schema patterns, and
# never a character XML 1.0 cannot carry or a control character. Values come from users,
# from the storage side and from os-brick; whatever does not fit is refused here, the
# one place XML is made, rather than handed to libvirt.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ufffe\uffff]")
_IQN = (ISCSI_NAME, "an iSCSI name")
_HOST = (PORTAL_HOST, "a DNS name or IP address")
_ABS_PATH = (re.compile(r"/.{0,4095}", re.S), "an absolute path")
_OBJECT = (re.compile(r"[^/\n]{1,255}"), "a name without '/'")
_TEXT = (re.compile(r".{1,4096}", re.S), "text")
_SERIAL = (re.compile(r"[A-Za-z0-9_.+\- ]{1,64}"), "a disk serial")


def _fits(what: str, value: object, rule: tuple[re.Pattern[str], str]) -> str:
    pattern, meaning = rule
    if not isinstance(value, str) or not pattern.fullmatch(value) or _CONTROL.search(value):
        raise InputError(f"{what} {shown(value)} cannot go into libvirt's XML: it must "
                         f"be {meaning} without control characters")
    return value


def _check_source(source: DiskSource) -> None:
    if isinstance(source, BlockSource):
        _fits("the block device", source.path, _ABS_PATH)
        return
    _fits("the iSCSI target", source.iqn, _IQN)
    if not is_lun(source.lun):
        raise InputError(f"LUN {shown(source.lun)} is not a number from 0 to {LUN_MAX}")
    if not source.hosts:
        raise InputError("an iSCSI disk needs a portal")
    for portal in source.hosts:
        _fits("the portal host", portal.host, _HOST)
        if not is_port(portal.port):
            raise InputError(f"portal port {shown(portal.port)} is not from 1 to {PORT_MAX}")
    if source.initiator_iqn is not None:
        _fits("the initiator name", source.initiator_iqn, _IQN)
    if (source.auth_username is None) != (source.secret_usage is None):
        raise InputError("CHAP needs both a user name and a secret")
    if source.auth_username is not None:
        _fits("the CHAP user name", source.auth_username, (_OBJECT[0], "a name"))
        _fits("the secret's usage name", source.secret_usage, _OBJECT)


def _source_element(source: DiskSource) -> ET.Element:
    _check_source(source)
    if isinstance(source, BlockSource):
        return ET.Element("source", dev=source.path)
    src = ET.Element("source", protocol="iscsi", name=f"{source.iqn}/{source.lun}")
    for portal in source.hosts:
        ET.SubElement(src, "host", name=portal.host, port=str(portal.port))
    if source.initiator_iqn:
        ET.SubElement(ET.SubElement(src, "initiator"), "iqn", name=source.initiator_iqn)
    if source.auth_username:
        auth = ET.SubElement(src, "auth", username=source.auth_username)
        ET.SubElement(auth, "secret", type="iscsi", usage=source.secret_usage or "")
    return src


def _parse_source(disk: ET.Element) -> DiskSource | None:
    src = disk.find("source")
    if src is None:
        return None
    if disk.get("type") == "block" and src.get("dev"):
        return BlockSource(src.get("dev", ""))
    if disk.get("type") == "network" and src.get("protocol") == "iscsi":
        name = src.get("name") or ""
        iqn, _, lun = name.rpartition("/")
        if not iqn or not lun.isdigit():  # libvirt reads a name without /LUN as LUN 0
            iqn, lun = name, "0"
        auth = src.find("auth")
        secret = auth.find("secret") if auth is not None else None
        initiator = src.find("initiator/iqn")
        return NetworkISCSISource(
            iqn=iqn, lun=int(lun),
            hosts=tuple(Portal(h.get("name", ""), int(h.get("port", "3260")))
                        for h in src.findall("host")),
            auth_username=auth.get("username") if auth is not None else None,
            secret_usage=secret.get("usage") if secret is not None else None,
            initiator_iqn=initiator.get("name") if initiator is not None else None)
    return None


class Disk:
    """One ``<disk>`` device, parsed once; unknown children are kept."""

    def __init__(self, element: ET.Element):
        self._el = element
        target = element.find("target")
        alias = element.find("alias")
        self.device = element.get("device", "disk")
        self.disk_type = element.get("type", "")
        self.target_dev = target.get("dev", "") if target is not None else ""
        self.serial = element.findtext("serial")
        self.alias = alias.get("name") if alias is not None else None
        self.source = _parse_source(element)

    @classmethod
    def build(cls, spec: DiskSpec) -> "Disk":
        validate.check_device(spec.target_dev)
        _fits("the disk serial", spec.serial, _SERIAL)
        block = isinstance(spec.source, BlockSource)
        disk = ET.Element("disk", type="block" if block else "network", device="disk")
        driver = {"name": "qemu", "type": "raw", "cache": "none"}
        if block:
            driver["io"] = "native"
        if spec.discard:
            driver["discard"] = "unmap"
        ET.SubElement(disk, "driver", driver)
        disk.append(_source_element(spec.source))
        ET.SubElement(disk, "target", dev=spec.target_dev, bus=spec.bus)
        if spec.readonly:
            ET.SubElement(disk, "readonly")
        ET.SubElement(disk, "serial").text = spec.serial
        return cls(disk)

    @classmethod
    def parse(cls, xml: str) -> "Disk":
        return cls(_parse(xml))

    @property
    def readonly(self) -> bool:
        return self._el.find("readonly") is not None

    def without_alias(self) -> "Disk":
        """The same disk without the alias libvirt gave it: libvirt refuses to hot-plug a
        device that carries a non-user alias."""
        el = copy.deepcopy(self._el)
        for alias in el.findall("alias"):
            el.remove(alias)
        return Disk(el)

    def with_source(self, source: DiskSource) -> "Disk":
        """The same disk (target, address, alias, driver kept) with another source."""
        el = copy.deepcopy(self._el)
        old = el.find("source")
        index = list(el).index(old) if old is not None else 1
        if old is not None:
            el.remove(old)
        el.insert(index, _source_element(source))
        el.set("type", "block" if isinstance(source, BlockSource) else "network")
        return Disk(el)

    def with_alias(self, alias: str) -> "Disk":
        """The disk as libvirt shows it once QEMU runs it, with its device alias."""
        el = self.without_alias().element()
        ET.SubElement(el, "alias", name=alias)
        return Disk(el)

    def element(self) -> ET.Element:
        return copy.deepcopy(self._el)

    def to_xml(self) -> str:
        return _to_string(self._el)

    def __repr__(self) -> str:
        return f"Disk({self.target_dev}, serial={self.serial}, {self.disk_type})"


def secret_xml(usage: str, description: str) -> str:
    secret = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(secret, "description").text = description
    usage_el = ET.SubElement(secret, "usage", type="iscsi")
    ET.SubElement(usage_el, "target").text = usage
    return _to_string(secret)


_MEMORY_UNITS = {"b": 1 / 1024, "bytes": 1 / 1024, "kib": 1, "k": 1, "mib": 1024, "m": 1024,
                 "gib": 1 << 20, "g": 1 << 20}


class Domain:
    """A domain's XML, parsed once per fetch; everything is kept for writing it back."""

    def __init__(self, root: ET.Element, source_xml: str | None = None):
        self._root = root
        self._source_xml = source_xml
        self.name = root.findtext("name") or ""
        self.uuid = root.findtext("uuid") or ""
        self.disks = [Disk(el) for el in root.findall("devices/disk")]

    @classmethod
    def parse(cls, xml: str) -> "Domain":
        # Keep the prefixes other tools chose for their metadata when writing back.
        # ElementTree reserves ns0, ns1, ... for itself and refuses to register them.
        try:
            for _event, (prefix, uri) in ET.iterparse(io.StringIO(xml), events=("start-ns",)):
                if prefix and not re.fullmatch(r"ns\d+", prefix):
                    try:
                        ET.register_namespace(prefix, uri)
                    except ValueError:
                        pass
        except ET.ParseError as exc:
            raise InputError(f"malformed XML: {exc}") from exc
        return cls(_parse(xml), xml)

    def disk(self, serial: str) -> Disk | None:
        for disk in self.disks:
            if disk.serial == serial:
                return disk
        return None

    def device_names(self) -> set[str]:
        return {d.target_dev for d in self.disks}

    @property
    def memory_kib(self) -> int:
        mem = self._root.find("currentMemory")
        if mem is None:
            mem = self._root.find("memory")
        if mem is None or not (mem.text or "").strip().isdigit():
            return 1 << 20
        factor = _MEMORY_UNITS.get((mem.get("unit") or "KiB").lower(), 1)
        return int(int(mem.text) * factor)

    # -- attachflow's metadata (read and written by record.py only) ---------------------
    def volume_entries(self) -> dict[str, str]:
        """volume id -> the JSON text of its record, from attachflow's metadata."""
        meta = self._root.find("metadata")
        vols = meta.find(f"{{{METADATA_NS}}}volumes") if meta is not None else None
        if vols is None:
            return {}
        return {v.get("id"): v.text or "{}" for v in vols.findall(f"{{{METADATA_NS}}}volume")
                if v.get("id")}

    def with_changes(self, sources: Mapping[str, DiskSource] | None = None,
                     volume_entries: Mapping[str, str] | None = None) -> "Domain":
        """A copy with the disks of the given serials pointed at new sources (targets,
        addresses, aliases and drivers kept) and attachflow's metadata replaced."""
        root = copy.deepcopy(self._root)
        devices = root.find("devices")
        wanted = dict(sources or {})
        for index, el in enumerate(list(devices) if devices is not None else []):
            serial = el.findtext("serial") if el.tag == "disk" else None
            if serial in wanted:
                devices.remove(el)
                devices.insert(index, Disk(el).with_source(wanted.pop(serial)).element())
        if wanted:
            raise InputError(f"no disk with serial {', '.join(sorted(wanted))} in the domain")
        if volume_entries is not None:
            _set_volume_entries(root, volume_entries)
        return Domain(root)

    def to_xml(self, pretty: bool = False) -> str:
        if not pretty and self._source_xml is not None:
            return self._source_xml
        return _to_string(self._root, pretty)


def _volumes_element(entries: Mapping[str, str], namespaced: bool = True) -> ET.Element:
    # In a whole domain the element carries attachflow's namespace; libvirt's
    # setMetadata takes it plain and adds the namespace itself.
    ns = f"{{{METADATA_NS}}}" if namespaced else ""
    vols = ET.Element(f"{ns}volumes")
    for volume_id in sorted(entries):
        ET.SubElement(vols, f"{ns}volume", id=volume_id).text = entries[volume_id]
    return vols


def _domain_head(name: str, uuid: str, volume_entries: Mapping[str, str],
                 virt_type: str) -> ET.Element:
    dom = ET.Element("domain", type=virt_type)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "uuid").text = uuid
    if volume_entries:
        ET.SubElement(dom, "metadata").append(_volumes_element(volume_entries))
    return dom


def _set_volume_entries(root: ET.Element, entries: Mapping[str, str]) -> None:
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        root.insert(3, meta)
    for child in list(meta):
        if child.tag.startswith("{" + METADATA_NS + "}"):
            meta.remove(child)
    if entries:
        meta.append(_volumes_element(entries))


def volume_metadata_xml(entries: Mapping[str, str]) -> str | None:
    """attachflow's metadata element as libvirt's setMetadata takes it (None: remove it;
    a domain with no volume keeps no trace)."""
    if not entries:
        return None
    return ET.tostring(_volumes_element(entries, namespaced=False), encoding="unicode")


def parse_volume_metadata(xml: str | None) -> dict[str, str]:
    """The inverse of ``volume_metadata_xml``."""
    if not xml:
        return {}
    return {v.get("id"): v.text or "{}" for v in _parse(xml).iter()
            if v.tag.endswith("volume") and v.get("id")}


def assemble(name: str, uuid: str, disks: Iterable[Disk], volume_entries: Mapping[str, str],
             virt_type: str = "qemu") -> Domain:
    """A bare domain of these disks and records, as libvirt shows a definition."""
    dom = _domain_head(name, uuid, volume_entries, virt_type)
    devices = ET.SubElement(dom, "devices")
    for disk in disks:
        devices.append(disk.element())
    return Domain(dom)


def find_disk(domain_xml: str, serial: str) -> Disk | None:
    """The disk with ``serial`` in a domain's XML (for scripts and checks)."""
    return Domain.parse(domain_xml).disk(serial)


def device_names(prefix: str = "vd"):
    """vda..vdz, vdaa..vdzz: the order libvirt and the kernel use."""
    letters = string.ascii_lowercase
    for a in letters:
        yield prefix + a
    for a in letters:
        for b in letters:
            yield prefix + a + b


def next_free_device(domains: Iterable[Domain], prefix: str = "vd") -> str:
    taken = {name for dom in domains for name in dom.device_names()}
    for name in device_names(prefix):
        if name not in taken:
            return name
    raise InputError(f"no free {prefix}X device name left")


@dataclasses.dataclass(frozen=True)
class DirectBoot:
    """Boot a kernel and initrd from the host's files instead of the volume's own boot
    loader; the volume is still vda."""

    kernel: str
    initrd: str | None = None
    cmdline: str | None = None


def console_log(name: str) -> str:
    return f"/var/log/libvirt/qemu/{name}-console.log"


def build_domain(name: str, uuid: str, memory_mib: int, vcpus: int, virt_type: str,
                 disk: Disk, volume_entries: Mapping[str, str],
                 emulator: str | None = None, direct_boot: DirectBoot | None = None
                 ) -> Domain:
    """A minimal volume-backed domain: the volume is vda; ACPI on machine 'pc' so that
    virtio disks can be hot-plugged (and unplugged: the guest OS ejects them); the
    serial console is logged to /var/log/libvirt/qemu/NAME-console.log."""
    validate.check_new_domain(name)
    if direct_boot:
        _fits("the kernel", direct_boot.kernel, _ABS_PATH)
        if direct_boot.initrd:
            _fits("the initrd", direct_boot.initrd, _ABS_PATH)
        if direct_boot.cmdline:
            _fits("the kernel command line", direct_boot.cmdline, _TEXT)
    if emulator:
        _fits("the emulator", emulator, _ABS_PATH)
    dom = _domain_head(name, uuid, volume_entries, virt_type)
    ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(dom, "vcpu").text = str(vcpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    if direct_boot:
        ET.SubElement(os_el, "kernel").text = direct_boot.kernel
        if direct_boot.initrd:
            ET.SubElement(os_el, "initrd").text = direct_boot.initrd
        if direct_boot.cmdline:
            ET.SubElement(os_el, "cmdline").text = direct_boot.cmdline
    else:
        ET.SubElement(os_el, "boot", dev="hd")
    ET.SubElement(ET.SubElement(dom, "features"), "acpi")
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "destroy"
    devices = ET.SubElement(dom, "devices")
    if emulator:
        ET.SubElement(devices, "emulator").text = emulator
    devices.append(disk.element())
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=console_log(name), append="off")
    ET.SubElement(devices, "memballoon", model="none")
    return Domain(dom)


def pretty(xml: str) -> str:
    """Indented XML, for showing a change as a diff."""
    return _to_string(_parse(xml))
