"""The floor attachflow's attach and detach are measured against: only the calls an attach
and a detach need, made directly with python-cinderclient and libvirt-python in one warm
process. No checks, no journal, no records, no undo.

Attach: attachment create with the host's connector (its answer is the connection), a
libvirt secret with the CHAP password, attachDeviceFlags (live and persistent),
attachment complete. Detach: detachDeviceFlags (persistent, then live, waiting until the
guest released the disk), the secret undefined, attachment delete. ``release`` is the
detach of a stopped guest (no OS to release a disk live), for the parallel floor.
"""

from __future__ import annotations

import dataclasses
import threading


@dataclasses.dataclass
class FloorAttachment:
    volume: str
    attachment: str
    secret: object
    xml: str
    dom: object


class Floor:
    def __init__(self, cinder, conn, connector: dict):
        """``conn``: a libvirt connection to the host, ``connector``: the host's
        connector properties as attachflow sends them (native transport)."""
        import libvirt
        self.libvirt = libvirt
        self.cinder = cinder
        self.conn = conn
        self.connector = connector
        self.removed = threading.Event()
        self._watched: set[str] = set()
        self._doms: dict[str, tuple[object, str]] = {}

    def domain(self, name: str) -> tuple[object, str]:
        """The domain and its UUID, looked up once (a warm process knows its guests)."""
        if name not in self._doms:
            dom = self.conn.lookupByName(name)
            self._doms[name] = (dom, dom.UUIDString())
        return self._doms[name]

    def watch(self, dom_name: str) -> None:
        """Be told when a disk leaves ``dom_name`` (for a live detach)."""
        dom, dom_uuid = self.domain(dom_name)
        if dom_uuid not in self._watched:
            self.conn.domainEventRegisterAny(
                dom, self.libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                lambda *_a: self.removed.set(), None)
            self._watched.add(dom_uuid)

    def attach(self, volume_id: str, dom_name: str, device: str) -> FloorAttachment:
        lv = self.libvirt
        dom, dom_uuid = self.domain(dom_name)
        att = self.cinder.attachments.create(volume_id, self.connector, dom_uuid)
        ci = att["connection_info"]
        usage = f"floor/{volume_id}"
        secret = self.conn.secretDefineXML(
            f"<secret ephemeral='no' private='yes'><usage type='iscsi'><target>{usage}"
            "</target></usage></secret>")
        secret.setValue(ci["auth_password"].encode())
        host, port = ci["target_portal"].rsplit(":", 1)
        xml = (f"<disk type='network' device='disk'><driver name='qemu' type='raw' "
               f"cache='none'/><source protocol='iscsi' name='{ci['target_iqn']}/"
               f"{ci['target_lun']}'><host name='{host}' port='{port}'/>"
               f"<auth username='{ci['auth_username']}'><secret type='iscsi' "
               f"usage='{usage}'/></auth></source><target dev='{device}' bus='virtio'/>"
               f"<serial>{volume_id}</serial></disk>")
        dom.attachDeviceFlags(xml, lv.VIR_DOMAIN_AFFECT_LIVE | lv.VIR_DOMAIN_AFFECT_CONFIG)
        self.cinder.attachments.complete(att["id"])
        return FloorAttachment(volume_id, att["id"], secret, xml, dom)

    def detach(self, fa: FloorAttachment) -> None:
        """Live detach from a running guest with an OS, waiting until it let go."""
        lv = self.libvirt
        self.removed.clear()
        fa.dom.detachDeviceFlags(fa.xml, lv.VIR_DOMAIN_AFFECT_CONFIG)
        fa.dom.detachDeviceFlags(fa.xml, lv.VIR_DOMAIN_AFFECT_LIVE)
        while f"<serial>{fa.volume}</serial>" in fa.dom.XMLDesc(0):
            self.removed.wait(0.05)
            self.removed.clear()
        fa.secret.undefine()
        self.cinder.attachments.delete(fa.attachment)

    def release(self, fa: FloorAttachment) -> None:
        """Detach from a stopped guest: the persistent definition, the secret, the
        attachment."""
        fa.dom.detachDeviceFlags(fa.xml, self.libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        fa.secret.undefine()
        self.cinder.attachments.delete(fa.attachment)

    def attach_detach(self, volume_id: str, dom_name: str, device: str = "vdc") -> None:
        self.detach(self.attach(volume_id, dom_name, device))
