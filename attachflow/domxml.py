"""Libvirt XML as small data objects: disks, secrets, the volume record in a domain's
metadata, and a minimal volume-backed domain. Pure functions, no libvirt calls: what they
produce can be printed, diffed and compared with golden files before anything is applied.
"""

from __future__ import annotations

import dataclasses
import json
import string
import xml.etree.ElementTree as ET
from typing import Any

from attachflow.errors import InputError
from attachflow.model import Portal

METADATA_NS = "https://attachflow.dev/xmlns/volumes/1"
METADATA_KEY = "attachflow"


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
    source: DiskSource
    target_dev: str
    serial: str
    bus: str = "virtio"
    readonly: bool = False
    discard: bool = False


@dataclasses.dataclass(frozen=True)
class DiskInfo:
    """A disk as found in a domain's XML."""

    device: str
    target_dev: str
    serial: str | None
    disk_type: str
    source: DiskSource | None
    alias: str | None
    xml: str


def _source_element(parent: ET.Element, source: DiskSource) -> None:
    if isinstance(source, BlockSource):
        ET.SubElement(parent, "source", dev=source.path)
        return
    src = ET.SubElement(parent, "source", protocol="iscsi", name=f"{source.iqn}/{source.lun}")
    for portal in source.hosts:
        ET.SubElement(src, "host", name=portal.host, port=str(portal.port))
    if source.initiator_iqn:
        ET.SubElement(ET.SubElement(src, "initiator"), "iqn", name=source.initiator_iqn)
    if source.auth_username:
        auth = ET.SubElement(src, "auth", username=source.auth_username)
        ET.SubElement(auth, "secret", type="iscsi", usage=source.secret_usage or "")


def disk_element(spec: DiskSpec) -> ET.Element:
    block = isinstance(spec.source, BlockSource)
    disk = ET.Element("disk", type="block" if block else "network", device="disk")
    driver = {"name": "qemu", "type": "raw", "cache": "none"}
    if block:
        driver["io"] = "native"
    if spec.discard:
        driver["discard"] = "unmap"
    ET.SubElement(disk, "driver", driver)
    _source_element(disk, spec.source)
    ET.SubElement(disk, "target", dev=spec.target_dev, bus=spec.bus)
    if spec.readonly:
        ET.SubElement(disk, "readonly")
    ET.SubElement(disk, "serial").text = spec.serial
    return disk


def to_string(elem: ET.Element) -> str:
    ET.indent(elem, space="  ")
    return ET.tostring(elem, encoding="unicode") + "\n"


def disk_xml(spec: DiskSpec) -> str:
    return to_string(disk_element(spec))


def secret_xml(usage: str, description: str) -> str:
    secret = ET.Element("secret", ephemeral="no", private="yes")
    ET.SubElement(secret, "description").text = description
    usage_el = ET.SubElement(secret, "usage", type="iscsi")
    ET.SubElement(usage_el, "target").text = usage
    return to_string(secret)


def _parse(xml: str) -> ET.Element:
    try:
        return ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(f"malformed XML: {exc}") from None


def _parse_source(disk: ET.Element) -> DiskSource | None:
    src = disk.find("source")
    if src is None:
        return None
    if disk.get("type") == "block" and src.get("dev"):
        return BlockSource(src.get("dev", ""))
    if disk.get("type") == "network" and src.get("protocol") == "iscsi":
        iqn, _, lun = (src.get("name") or "").rpartition("/")
        auth = src.find("auth")
        secret = auth.find("secret") if auth is not None else None
        initiator = src.find("initiator/iqn")
        return NetworkISCSISource(
            iqn=iqn, lun=int(lun or 0),
            hosts=tuple(Portal(h.get("name", ""), int(h.get("port", "3260")))
                        for h in src.findall("host")),
            auth_username=auth.get("username") if auth is not None else None,
            secret_usage=secret.get("usage") if secret is not None else None,
            initiator_iqn=initiator.get("name") if initiator is not None else None)
    return None


def disks(domain_xml: str) -> list[DiskInfo]:
    root = _parse(domain_xml)
    out = []
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        serial = disk.find("serial")
        alias = disk.find("alias")
        out.append(DiskInfo(
            device=disk.get("device", "disk"),
            target_dev=target.get("dev", "") if target is not None else "",
            serial=serial.text if serial is not None else None,
            disk_type=disk.get("type", ""),
            source=_parse_source(disk),
            alias=alias.get("name") if alias is not None else None,
            xml=ET.tostring(disk, encoding="unicode")))
    return out


def find_disk(domain_xml: str, serial: str) -> DiskInfo | None:
    for disk in disks(domain_xml):
        if disk.serial == serial:
            return disk
    return None


def device_names(prefix: str = "vd"):
    """vda..vdz, vdaa..vdzz: the order libvirt and the kernel use."""
    letters = string.ascii_lowercase
    for a in letters:
        yield prefix + a
    for a in letters:
        for b in letters:
            yield prefix + a + b


def next_free_device(*domain_xmls: str, prefix: str = "vd") -> str:
    taken = {d.target_dev for xml in domain_xmls for d in disks(xml)}
    for name in device_names(prefix):
        if name not in taken:
            return name
    raise InputError(f"no free {prefix}X device name left")


# -- the volume records kept in the domain's own metadata ------------------------------
# Keeping them in the domain means the state travels with the guest (live migration
# copies metadata) and detach needs no local database: what was attached, through which
# API and attachment, and the non-secret part of its connection info.

def volume_records(metadata_xml: str | None) -> dict[str, dict[str, Any]]:
    if not metadata_xml:
        return {}
    root = _parse(metadata_xml)
    out = {}
    for vol in root.iter():
        if vol.tag.endswith("volume") and vol.get("id"):
            out[vol.get("id")] = json.loads(vol.text or "{}")
    return out


def metadata_xml(records: dict[str, dict[str, Any]]) -> str:
    root = ET.Element("volumes")
    for volume_id in sorted(records):
        ET.SubElement(root, "volume", id=volume_id).text = json.dumps(
            records[volume_id], sort_keys=True)
    return ET.tostring(root, encoding="unicode")


def domain_metadata(domain_xml: str) -> str | None:
    root = _parse(domain_xml)
    meta = root.find("metadata")
    if meta is None:
        return None
    for child in meta:
        if child.tag.startswith("{" + METADATA_NS + "}"):
            # Drop the namespace so volume_records sees plain tags.
            for el in child.iter():
                el.tag = el.tag.split("}", 1)[-1]
            return ET.tostring(child, encoding="unicode")
    return None


@dataclasses.dataclass(frozen=True)
class DirectBoot:
    """Boot a kernel and initrd from the host's files instead of the volume's own boot
    loader; the volume is still vda."""

    kernel: str
    initrd: str | None = None
    cmdline: str | None = None


def console_log(name: str) -> str:
    return f"/var/log/libvirt/qemu/{name}-console.log"


def domain_xml(name: str, uuid: str, memory_mib: int, vcpus: int, virt_type: str,
               disk: DiskSpec, records: dict[str, dict[str, Any]],
               emulator: str | None = None, direct_boot: DirectBoot | None = None) -> str:
    """A minimal volume-backed domain: the volume is vda; ACPI on machine 'pc' so that
    virtio disks can be hot-plugged (and unplugged: the guest OS ejects them); the
    serial console is logged to /var/log/libvirt/qemu/NAME-console.log."""
    dom = ET.Element("domain", type=virt_type)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "uuid").text = uuid
    meta = ET.SubElement(dom, "metadata")
    vols = ET.SubElement(meta, f"{{{METADATA_NS}}}volumes")
    for volume_id in sorted(records):
        ET.SubElement(vols, f"{{{METADATA_NS}}}volume", id=volume_id).text = json.dumps(
            records[volume_id], sort_keys=True)
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
    devices.append(disk_element(disk))
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=console_log(name), append="off")
    ET.SubElement(devices, "memballoon", model="none")
    ET.register_namespace(METADATA_KEY, METADATA_NS)
    return to_string(dom)


# -- rewriting a domain for another host (live migration) ---------------------------------

def _register_namespaces(xml: str) -> None:
    # keep the prefixes other tools chose for their metadata
    import io
    for _event, (prefix, uri) in ET.iterparse(io.StringIO(xml), events=("start-ns",)):
        if prefix:
            ET.register_namespace(prefix, uri)


def rewrite_for_host(domain_xml: str, sources: dict[str, DiskSource],
                     records: dict[str, dict[str, Any]]) -> str:
    """The same domain with each volume's disk source replaced (matched by serial; target,
    address, alias and driver kept) and attachflow's volume records replaced."""
    _register_namespaces(domain_xml)
    ET.register_namespace(METADATA_KEY, METADATA_NS)
    root = _parse(domain_xml)
    found = set()
    for disk in root.findall("devices/disk"):
        serial = disk.findtext("serial")
        if serial not in sources:
            continue
        found.add(serial)
        old = disk.find("source")
        index = list(disk).index(old) if old is not None else 1
        if old is not None:
            disk.remove(old)
        scratch = ET.Element("disk")
        _source_element(scratch, sources[serial])
        disk.insert(index, scratch[0])
        disk.set("type", "block" if isinstance(sources[serial], BlockSource) else "network")
    missing = set(sources) - found
    if missing:
        raise InputError(f"no disk with serial {', '.join(sorted(missing))} in the domain")
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        root.insert(3, meta)
    for child in list(meta):
        if child.tag.startswith("{" + METADATA_NS + "}"):
            meta.remove(child)
    vols = ET.SubElement(meta, f"{{{METADATA_NS}}}volumes")
    for volume_id in sorted(records):
        ET.SubElement(vols, f"{{{METADATA_NS}}}volume", id=volume_id).text = json.dumps(
            records[volume_id], sort_keys=True)
    return ET.tostring(root, encoding="unicode")
