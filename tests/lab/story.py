"""The one story that Cinder, libvirt on every host, tgtd and the hosts' secrets must tell
about a guest's volumes, read where an operator would look and with no code of
attachflow's: the domain's XML with a plain XML parser, tgtd through ``tgtadm``, Cinder
through python-cinderclient.

For each volume, either it is attached to the guest, and then
- the guest is defined on exactly one host (its home), persistently, and the disk with
  the volume's serial is in its persistent definition, and in its live one when it runs;
- Cinder has exactly one attachment, "attached", to the guest's uuid, and the volume is
  "in-use";
- tgtd exports the volume's file in one target, with exactly the CHAP account Cinder's
  target file names bound to it, and exactly one initiator logged in, the home host's
  QEMU, when the guest runs (none when it is off);
- the home host has the volume's libvirt secret, and no other host has it;

or it is not, and then no host's definition has the disk, Cinder has no attachment and
says "available", tgtd has no target for it and Cinder no target file, and no host has
its secret.
"""

from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET

# The initiator name attachflow's native transport gives QEMU on a host is this prefix,
# a colon and the host's name; it is read from the product's constant so a rename shows.
from attachflow.connectors.iscsi_native import INITIATOR_PREFIX

HOSTS = ("hosta", "hostb")


@dataclasses.dataclass(frozen=True)
class SeenDisk:
    """A ``<disk>`` of a domain's XML, as the test reads it."""

    serial: str
    disk_type: str
    target_dev: str
    alias: str | None
    source_path: str | None     # <source dev=...> (a block device)
    source_name: str | None     # <source name=...> (an iSCSI target/LUN)
    secret_usage: str | None    # <auth><secret usage=...> (CHAP, QEMU's initiator)


def read_disk(domain_xml: str, serial: str) -> SeenDisk | None:
    """The disk with ``serial`` in a domain's XML, or None; more than one is a failure."""
    found = [el for el in ET.fromstring(domain_xml).iterfind("./devices/disk")
             if (el.findtext("serial") or "").strip() == serial]
    assert len(found) <= 1, f"{len(found)} disks with serial {serial}"
    if not found:
        return None
    el = found[0]
    source, target, alias = el.find("source"), el.find("target"), el.find("alias")
    secret = el.find("./auth/secret")
    if secret is None:
        secret = el.find("./source/auth/secret")
    return SeenDisk(
        serial=serial, disk_type=el.get("type", ""),
        target_dev=target.get("dev", "") if target is not None else "",
        alias=alias.get("name") if alias is not None else None,
        source_path=source.get("dev") if source is not None else None,
        source_name=source.get("name") if source is not None else None,
        secret_usage=secret.get("usage") if secret is not None else None)


@dataclasses.dataclass(frozen=True)
class Definition:
    """The guest as one host has it."""

    host: str
    active: bool
    persistent: bool
    uuid: str
    live_xml: str | None
    persistent_xml: str | None

    def disk(self, serial: str) -> tuple[SeenDisk | None, SeenDisk | None]:
        """(live, persistent) disk with ``serial``."""
        return (read_disk(self.live_xml, serial) if self.live_xml else None,
                read_disk(self.persistent_xml, serial) if self.persistent_xml else None)


def definitions(lab, dom: str) -> list[Definition]:
    """The guest on every host that has it defined or running."""
    import libvirt
    out = []
    for host in HOSTS:
        try:
            d = lab.conn(host).lookupByName(dom)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            continue
        active, persistent = bool(d.isActive()), bool(d.isPersistent())
        out.append(Definition(
            host, active, persistent, d.UUIDString(),
            d.XMLDesc(0) if active else None,
            d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) if persistent else None))
    return out


def where(lab, dom: str) -> dict[str, bool]:
    """Host -> whether ``dom`` runs there, for the hosts that have it."""
    return {d.host: d.active for d in definitions(lab, dom)}


def settled(read, expected, timeout: float = 10.0):
    """``read()`` once it returns ``expected``, or its last answer after ``timeout``: a
    session QEMU has just closed leaves tgtd's list a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        seen = read()
        if seen == expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.2)


def chap_account_of(lab, volume_id: str) -> tuple[str, str] | None:
    """(user, password) of the CHAP account Cinder's target file for the volume names
    (None: no file)."""
    files = list((lab.state / "cinder" / "volumes").glob(f"*{volume_id}*"))
    assert len(files) <= 1, files
    if not files:
        return None
    for line in files[0].read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["incominguser"]:
            return parts[1], parts[2]
    raise AssertionError(f"{files[0]} names no incominguser")


def chap_user_of(lab, volume_id: str) -> str | None:
    account = chap_account_of(lab, volume_id)
    return account[0] if account else None


def assert_one_story(lab, volumes: list[str], dom: str) -> str | None:
    """Cinder, the guest's definitions, tgtd and libvirt's secrets agree on every
    volume; returns the host that has the guest, or None."""
    defs = definitions(lab, dom)
    assert len(defs) <= 1, \
        f"{dom} defined on {[(d.host, 'running' if d.active else 'off') for d in defs]}"
    home = defs[0] if defs else None
    if home is not None:
        assert home.persistent, f"{dom} runs on {home.host} without a persistent definition"
    for volume_id in volumes:
        _volume_story(lab, volume_id, dom, home)
    return home.host if home else None


def _volume_story(lab, volume_id: str, dom: str, home: Definition | None) -> None:
    live, persistent = home.disk(volume_id) if home else (None, None)
    if home is not None and home.active:
        assert (live is None) == (persistent is None), \
            (f"{volume_id} on {home.host}: in the live definition {live is not None}, "
             f"in the persistent one {persistent is not None}")
    attached = persistent is not None
    atts = list(lab.cinder.attachments.list(search_opts={"volume_id": volume_id}))
    vol = lab.volume(volume_id)
    target = lab.target_of(volume_id)
    if not attached:
        assert atts == [], (volume_id, [(a.id, a.instance, a.status) for a in atts])
        assert vol.status == "available", (volume_id, vol.status)
        assert target is None, (volume_id, "still exported", target)
        assert chap_user_of(lab, volume_id) is None, (volume_id, "target file left")
    else:
        assert [(a.instance, a.status) for a in atts] == [(home.uuid, "attached")], \
            (volume_id, [(a.id, a.instance, a.status) for a in atts])
        assert vol.status == "in-use", (volume_id, vol.status)
        assert target is not None, (volume_id, "attached but not exported")
        assert target["backing"] == [str(lab.volume_file(volume_id))], (volume_id, target)
        assert target["accounts"] == [chap_user_of(lab, volume_id)], (volume_id, target)
        wanted = [f"{INITIATOR_PREFIX}:{home.host}"] if home.active else []
        seen = settled(lambda: lab.initiators_of(volume_id), wanted)
        assert seen == wanted, (volume_id, "sessions", seen, "expected", wanted)
    for host in HOSTS:
        usages = [u for u in lab.secrets(host) if volume_id in u]
        expected = 1 if attached and host == home.host else 0
        assert len(usages) == expected, (volume_id, host, usages)
