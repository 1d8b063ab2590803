"""In-memory twins of the three side effects, for fast tests: test fixtures, not product.

Each enforces the real service's rules as observed on real Cinder, libvirt and os-brick,
so a flow that would fail on the real thing fails here too:

- ``FakeCinder``: the volume state machine of both attach APIs; one attachment per
  non-multiattach volume except a second one for the same instance (live migration);
  duplicate connectors refused on update; an iSCSI export needs the connector's
  ``initiator``; CHAP credentials per export; os-attach's mode is 'rw' or 'ro', and a
  read-only volume refuses 'rw'. ``create_volume`` makes volumes whose connection info
  varies as real backends' does: read-only (``access_mode`` 'ro'), another LUN, several
  portals (``target_portals``/``target_iqns``/``target_luns``, also returned for a
  multipath connector, as Cinder's iSCSI helpers do), discovery CHAP, or another
  ``driver_volume_type`` than iSCSI.
- ``FakeHypervisor``: domains with live and persistent definitions; definitions need a
  valid UUID, unique across domains; device names unique per domain; hot-plug only on a
  running domain; disks are checked as libvirt parses them; QEMU opens each disk's
  source: an iSCSI source logs in with the target's IQN, LUN, portal (one host only) and
  CHAP (its secret must exist), a block device must exist on the host, and a read-only
  volume (which the target exports write-protected) opens only as ``<readonly/>``;
  secrets unique by usage; a migration's destination definition keeps the source's ABI
  (name, UUID, disks) and needs no other domain with its UUID there; post-copy starts
  only in a migration started with the post-copy flag, and is not aborted.
- ``FakeBrick``: os-brick's connect/disconnect: connect logs in to the portal(s), IQN
  and LUN it is given with CHAP checked against the target (discovery CHAP when it has
  to discover the portals); disconnect takes away the target(s) the connection names,
  a target without a session being nothing to do.

``fail(name, exc, times, after)`` on any of them makes the next call(s) of that method raise.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid as uuidlib
from typing import Any, Sequence

from attachflow import domxml, errors
from attachflow.brick import HostConnector
from attachflow.cinder_side import StorageAPI
from attachflow.compute_side import ComputeHost, DomainRef, Hypervisor
from attachflow.hosts import HostConfig
from attachflow.model import (AttachmentSummary, ConnectionInfo, NewAttachment, Portal,
                              Secret, Volume, VolumeAttachment)
from attachflow.remote import Runner


class _Faults:
    def _init_faults(self):
        self._faults: dict[str, list[BaseException | None]] = {}
        self.calls: list[str] = []

    def fail(self, method: str, exc: BaseException, times: int = 1, after: int = 0) -> None:
        """The next ``times`` calls of ``method`` raise ``exc``, after ``after`` calls
        that succeed."""
        self._faults.setdefault(method, []).extend([None] * after + [exc] * times)

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        queue = self._faults.get(method)
        if queue:
            exc = queue.pop(0)
            if exc is not None:
                raise exc


@dataclasses.dataclass
class _Attachment:
    id: str
    instance_id: str | None
    connector: dict[str, Any] | None
    status: str  # reserved | attaching | attached
    mountpoint: str | None = None
    mode: str = "rw"  # the attach mode: 'rw' or 'ro'


STORAGE_IP = "198.18.0.1"


@dataclasses.dataclass
class _Volume:
    id: str
    size: int
    status: str = "available"
    multiattach: bool = False
    attachments: dict[str, _Attachment] = dataclasses.field(default_factory=dict)
    exported: bool = False
    chap_user: str = ""
    chap_password: str = ""
    legacy_connector: dict[str, Any] | None = None
    # how the backend exports it
    readonly: bool = False  # admin metadata 'readonly': True
    driver_volume_type: str = "iscsi"
    lun: int = 1
    portals: tuple[str, ...] = (f"{STORAGE_IP}:3260",)
    discovery_user: str = ""  # discovery CHAP on the target's portals, if set
    discovery_password: str = ""


class FakeCinder(_Faults, StorageAPI):
    portal = f"{STORAGE_IP}:3260"

    def __init__(self, version: tuple[int, int] = (3, 71)):
        self._init_faults()
        self.version = version
        self.volumes: dict[str, _Volume] = {}

    # -- test helpers ---------------------------------------------------------------------
    def create_volume(self, size: int = 1, multiattach: bool = False, *,
                      readonly: bool = False, lun: int = 1,
                      portals: int | Sequence[str] = 1, discovery_chap: bool = False,
                      driver_volume_type: str = "iscsi") -> str:
        """A new available volume. By default it is exported as the lab exports volumes:
        iSCSI, LUN 1, read-write, one portal, session CHAP only. ``readonly`` sets its
        read-only flag (connection ``access_mode`` 'ro'); ``lun`` is the LUN of its
        export; ``portals`` is a number of portals or their addresses (more than one: the
        connection lists them all); ``discovery_chap`` puts discovery CHAP on the portals;
        ``driver_volume_type`` 'rbd' (or any other) exports it without iSCSI."""
        vid = str(uuidlib.uuid4())
        if isinstance(portals, int):
            portals = [f"198.18.{i}.1:3260" for i in range(portals)]
        vol = _Volume(vid, size, multiattach=multiattach, chap_user="u" + vid[:19],
                      chap_password="p" + uuidlib.uuid4().hex[:15], readonly=readonly,
                      driver_volume_type=driver_volume_type, lun=lun,
                      portals=tuple(str(Portal.parse(p)) for p in portals))
        if discovery_chap:
            vol.discovery_user = "d" + vid[:19]
            vol.discovery_password = "q" + uuidlib.uuid4().hex[:15]
        self.volumes[vid] = vol
        return vid

    def iqn(self, volume_id: str) -> str:
        return f"iqn.2010-10.org.openstack:volume-{volume_id}"

    def target(self, iqn: str, portal: str | None = None) -> _Volume | None:
        """The exported iSCSI volume behind ``iqn`` (reachable at ``portal``, if given)."""
        for vol in self.volumes.values():
            if vol.driver_volume_type == "iscsi" and vol.exported \
                    and self.iqn(vol.id) == iqn \
                    and (portal is None or str(Portal.parse(portal)) in vol.portals):
                return vol
        return None

    def credentials_for(self, iqn: str) -> tuple[str, str] | None:
        """What the target accepts for ``iqn``, if it is exported."""
        vol = self.target(iqn)
        return (vol.chap_user, vol.chap_password) if vol is not None else None

    def _vol(self, volume_id: str) -> _Volume:
        if volume_id not in self.volumes:
            raise errors.StorageNotFound(f"volume {volume_id} could not be found", 404)
        return self.volumes[volume_id]

    @staticmethod
    def _connector_problem(vol: _Volume, connector: dict[str, Any]) -> str | None:
        # The iSCSI target helpers' validate_connector; other drivers ask for nothing.
        if vol.driver_volume_type == "iscsi" and not (connector or {}).get("initiator"):
            return "Invalid input received: Connector doesn't have required " \
                "information: initiator"
        return None

    @staticmethod
    def _access_mode(vol: _Volume) -> str:
        # As Cinder's _parse_connection_options: the mode of an os-attach already done,
        # else what the read-only flag says.
        for att in vol.attachments.values():
            if att.status == "attached":
                return att.mode
        return "ro" if vol.readonly else "rw"

    def _conn(self, vol: _Volume, connector: dict[str, Any]) -> dict[str, Any]:
        vol.exported = True
        mode = self._access_mode(vol)
        if vol.driver_volume_type != "iscsi":
            return {"name": f"volumes/volume-{vol.id}", "hosts": [STORAGE_IP],
                    "ports": ["6789"], "cluster_name": "ceph", "auth_enabled": True,
                    "auth_username": "cinder", "secret_type": "ceph",
                    "secret_uuid": "7c3b1d7e-0f52-4c43-9a3e-3f1e0b3c2a10",
                    "volume_id": vol.id, "encrypted": False, "access_mode": mode,
                    "discard": True}
        iqn = self.iqn(vol.id)
        out = {"target_discovered": False, "target_portal": vol.portals[0],
               "target_iqn": iqn, "target_lun": vol.lun, "volume_id": vol.id,
               "auth_method": "CHAP", "auth_username": vol.chap_user,
               "auth_password": vol.chap_password, "encrypted": False,
               "access_mode": mode, "discard": False}
        # Cinder's iSCSI helpers list every portal when there are several, or when the
        # connector asks for multipath.
        if len(vol.portals) > 1 or connector.get("multipath"):
            out.update(target_portals=list(vol.portals),
                       target_iqns=[iqn] * len(vol.portals),
                       target_luns=[vol.lun] * len(vol.portals))
        if vol.discovery_user:
            out.update(discovery_auth_method="CHAP",
                       discovery_auth_username=vol.discovery_user,
                       discovery_auth_password=vol.discovery_password)
        return out

    def _attachment(self, attachment_id: str) -> tuple[_Volume, _Attachment]:
        for vol in self.volumes.values():
            if attachment_id in vol.attachments:
                return vol, vol.attachments[attachment_id]
        raise errors.StorageNotFound(f"attachment {attachment_id} not found", 404)

    def _settle(self, vol: _Volume) -> None:
        # As Cinder: a connection being made (a migration's second one too) makes the
        # volume "attaching" even while another attachment is attached.
        states = {a.status for a in vol.attachments.values()}
        if not states:
            vol.status, vol.exported = "available", False
        elif "attaching" in states:
            vol.status = "attaching"
        elif "attached" in states:
            vol.status = "in-use"
        else:
            vol.status = "reserved"

    # -- StorageAPI -------------------------------------------------------------------------
    def get_volume(self, volume_id):
        self._enter("get_volume")
        if volume_id not in self.volumes:
            raise errors.VolumeNotFound(f"volume {volume_id} not found in Cinder")
        vol = self.volumes[volume_id]
        return Volume(id=vol.id, name=None, status=vol.status, size=vol.size,
                      multiattach=vol.multiattach, attachments=tuple(
                          VolumeAttachment(a.id, a.instance_id,
                                           (a.connector or {}).get("host"), a.mountpoint)
                          for a in vol.attachments.values()))

    def attachment_create(self, volume_id, instance_id, connector):
        self._enter("attachment_create")
        vol = self._vol(volume_id)
        # As Cinder's _attachment_reserve: available (or in-use, multiattach), or
        # in-use / reserved with an attachment of the same instance (a migration's).
        free = ("available", "in-use") if vol.multiattach else ("available",)
        same_instance = vol.status in ("in-use", "reserved") and instance_id and any(
            a.instance_id == instance_id for a in vol.attachments.values())
        if vol.status not in free and not same_instance:
            raise errors.VolumeStateError(
                f"Invalid volume: Volume {volume_id} status must be "
                f"{' or '.join(free)} to reserve, but the current status is {vol.status}.")
        problem = self._connector_problem(vol, connector) if connector else None
        att = _Attachment(str(uuidlib.uuid4()), instance_id,
                          None if problem else connector,
                          "attaching" if connector and not problem else "reserved",
                          (connector or {}).get("mountpoint"),
                          "ro" if vol.readonly else "rw")
        vol.attachments[att.id] = att
        self._settle(vol)
        if problem:
            # As Cinder: the reservation is made first and stays when the connection
            # fails; the answer (500) does not name it.
            raise errors.StorageUnavailable(
                f"Unable to create attachment for volume ({problem}).", 500)
        if connector:
            return NewAttachment(att.id, self._flat(vol, att))
        return NewAttachment(att.id, None)

    def attachment_update(self, attachment_id, volume_id, connector):
        self._enter("attachment_update")
        vol, att = self._attachment(attachment_id)
        # As Cinder's attachment_update: on a volume that is not multiattach with more
        # than one attachment, none may have a connection yet (a migration's second
        # attachment is made with its connector, by attachment_create, instead).
        if not vol.multiattach and len(vol.attachments) > 1 and \
                any(a.connector for a in vol.attachments.values()):
            raise errors.VolumeStateError("Resource conflict: duplicate connectors "
                                          f"detected on volume {vol.id}")
        problem = self._connector_problem(vol, connector)
        if problem:  # the target helper's validate_connector: HTTP 400
            raise errors.VolumeStateError(problem)
        att.connector, att.status = connector, "attaching"
        self._settle(vol)
        return self._flat(vol, att)

    def attachment_show(self, attachment_id, volume_id):
        self._enter("attachment_show")
        vol, att = self._attachment(attachment_id)
        if not att.connector:
            return None
        return self._flat(vol, att)

    def _flat(self, vol: _Volume, att: _Attachment) -> ConnectionInfo:
        # The attachments API's flat shape, through the adapter's own parser.
        raw = dict(self._conn(vol, att.connector or {}), access_mode=att.mode,
                   driver_volume_type=vol.driver_volume_type, attachment_id=att.id)
        return ConnectionInfo.from_cinder(raw, vol.id)

    def attachments_of(self, volume_id):
        self._enter("attachments_of")
        return [AttachmentSummary(a.id, a.instance_id, a.status)
                for a in self._vol(volume_id).attachments.values()]

    def attachment_complete(self, attachment_id):
        self._enter("attachment_complete")
        vol, att = self._attachment(attachment_id)
        if not att.connector:
            raise errors.VolumeStateError("attachment has no connector to complete")
        att.status = "attached"
        self._settle(vol)

    def attachment_delete(self, attachment_id):
        self._enter("attachment_delete")
        try:
            vol, att = self._attachment(attachment_id)
        except errors.StorageNotFound:
            return  # as the real adapter: a 404 on delete is done
        if att.instance_id is None and att.connector is None:
            raise errors.StorageUnavailable("server error 500 (asks the compute service)",
                                            500)
        del vol.attachments[attachment_id]
        self._settle(vol)

    def reserve(self, volume_id):
        self._enter("reserve")
        vol = self._vol(volume_id)
        if vol.status != "available" and not (vol.multiattach and vol.status == "in-use"):
            raise errors.VolumeStateError(
                f"Invalid volume: Volume status must be available to reserve, but the "
                f"current status is {vol.status}.")
        vol.status = "attaching"

    def unreserve(self, volume_id):
        self._enter("unreserve")
        vol = self._vol(volume_id)
        if vol.status == "attaching":
            exported = vol.exported
            self._settle(vol)
            vol.exported = exported  # unreserve leaves an export in place

    def initialize_connection(self, volume_id, connector):
        self._enter("initialize_connection")
        vol = self._vol(volume_id)
        problem = self._connector_problem(vol, connector)
        if problem:
            raise errors.VolumeStateError(problem)
        vol.legacy_connector = connector
        # The legacy nested shape, through the adapter's own parser.
        return ConnectionInfo.from_cinder({"driver_volume_type": vol.driver_volume_type,
                                           "data": self._conn(vol, connector)}, volume_id)

    def terminate_connection(self, volume_id, connector):
        # As Cinder's tgt helper: terminating does not remove the export; os-detach of
        # the last attachment (or deleting the last attachment) does.
        self._enter("terminate_connection")
        vol = self._vol(volume_id)
        vol.legacy_connector = None

    def attach(self, volume_id, instance_id, mountpoint, host_name, mode="rw"):
        self._enter("attach")
        if mode not in ("rw", "ro"):
            raise errors.VolumeStateError(
                "Invalid request to attach volume with an invalid mode. Attaching mode "
                "should be 'rw' or 'ro'")
        vol = self._vol(volume_id)
        if vol.status != "attaching":
            raise errors.VolumeStateError(
                f"Invalid volume: volume {volume_id} is {vol.status}, not attaching")
        if vol.readonly and mode != "ro":
            raise errors.VolumeStateError(
                f"Invalid volume: attaching volume {volume_id} in mode '{mode}': the "
                "volume is read-only")
        if any(a.mode != mode for a in vol.attachments.values()):
            raise errors.VolumeStateError("Invalid volume: being attached by different mode")
        att = _Attachment(str(uuidlib.uuid4()), instance_id, {"host": host_name},
                          "attached", mountpoint, mode)
        vol.attachments[att.id] = att
        vol.status = "in-use"

    def begin_detaching(self, volume_id):
        self._enter("begin_detaching")
        vol = self._vol(volume_id)
        if vol.status != "in-use":
            raise errors.VolumeStateError(f"Invalid volume: volume is {vol.status}, "
                                          "must be in-use to begin detaching")
        vol.status = "detaching"

    def roll_detaching(self, volume_id):
        self._enter("roll_detaching")
        vol = self._vol(volume_id)
        if vol.status == "detaching":
            vol.status = "in-use"

    def detach(self, volume_id, attachment_id):
        self._enter("detach")
        vol = self._vol(volume_id)
        if attachment_id is None:
            if len(vol.attachments) != 1:
                raise errors.VolumeStateError("attachment id required")
            attachment_id = next(iter(vol.attachments))
        if attachment_id not in vol.attachments:
            raise errors.VolumeStateError(f"Invalid volume: attachment {attachment_id} "
                                          "is not attached")
        del vol.attachments[attachment_id]
        self._settle(vol)


@dataclasses.dataclass
class _Domain:
    name: str
    uuid: str
    active: bool
    persistent: bool
    live: list[domxml.Disk] = dataclasses.field(default_factory=list)
    config: list[domxml.Disk] = dataclasses.field(default_factory=list)
    live_meta: dict[str, str] = dataclasses.field(default_factory=dict)
    config_meta: dict[str, str] = dataclasses.field(default_factory=dict)
    defined: domxml.Domain | None = None  # the whole definition, as libvirt received it


class FakeHypervisor(_Faults, Hypervisor):
    """``network`` maps libvirt URIs to the hypervisors a migration can reach; ``brick``
    is the host's os-brick, whose block devices QEMU can open."""

    def __init__(self, host_name: str = "local", target: FakeCinder | None = None,
                 network: dict[str, "FakeHypervisor"] | None = None,
                 brick: "FakeBrick | None" = None):
        self._init_faults()
        self.host_name = host_name
        self.target = target
        self.network = network if network is not None else {}
        self.brick = brick
        self.domains: dict[str, _Domain] = {}
        self.secrets: dict[str, str] = {}
        self.refuse_detach: set[str] = set()  # target devs whose guest will not let go
        self.ignore_shutdown: set[str] = set()  # domains whose guest OS ignores ACPI
        self.sessions: set[tuple[str, str]] = set()  # (domain, iqn) logged in by QEMU
        # migration: a job in flight, what the tests do while it runs, what it ended with
        self.job: dict[str, Any] | None = None
        self.during_migration: Any = None  # callable(fake) run while the job is active
        self.fail_after_switch: BaseException | None = None
        self.completed: dict[str, dict[str, Any]] = {}
        self.max_downtime: int | None = None
        self.postcopy_started = False
        self.migrations: list[Any] = []  # every MigrationRequest this host was given
        self._release = threading.Event()  # a blocked job goes on (or ends)
        self._aborted = False

    def add_domain(self, name: str, active: bool = True, persistent: bool = True,
                   devices: tuple[str, ...] = ("vda",), uuid: str | None = None) -> str:
        uuid = uuid or str(uuidlib.uuid4())
        dom = _Domain(name, uuid, active, persistent)
        for dev in devices:
            disk = domxml.Disk.build(domxml.DiskSpec(
                domxml.BlockSource(f"/images/{name}-{dev}"), dev, f"local-{dev}"))
            if persistent:
                dom.config.append(disk)
            if active:
                dom.live.append(disk)
        self.domains[name] = dom
        return uuid

    def _dom(self, name: str) -> _Domain:
        if name not in self.domains:
            raise errors.DomainNotFound(f"domain '{name}' not found on host {self.host_name}")
        return self.domains[name]

    def hostname(self):
        self._enter("hostname")
        return self.host_name

    def list_domains(self):
        self._enter("list_domains")
        return [DomainRef(d.name, d.uuid, d.active, d.persistent)
                for _, d in sorted(self.domains.items())]

    def lookup(self, name):
        self._enter("lookup")
        d = self._dom(name)
        return DomainRef(d.name, d.uuid, d.active, d.persistent)

    def domain(self, name, inactive=False, migratable=False):
        d = self._dom(name)
        # A transient domain has no persistent definition: libvirt formats its live one
        # (without runtime-only parts) when asked for the inactive XML.
        live = d.active and (not inactive or not d.persistent)
        disks = [x.with_alias(f"virtio-disk{i}") for i, x in enumerate(d.live)] if live \
            else d.config
        if live and inactive:  # aliases are runtime-only
            disks = list(d.live)
        # Through the XML, as libvirt hands it over.
        return domxml.Domain.parse(domxml.assemble(
            d.name, d.uuid, disks, d.live_meta if live else d.config_meta).to_xml())

    # -- what libvirt checks when it parses a disk, and what QEMU does when it opens one -----
    def _check_disk(self, what: str, disk: domxml.Disk) -> None:
        el = disk.element()
        if not disk.target_dev:
            raise errors.HypervisorError(f"{what}: XML error: missing target information "
                                         "for device")
        src = el.find("source")
        if disk.disk_type == "block" and (src is None or not src.get("dev")):
            raise errors.HypervisorError(f"{what}: XML error: missing source for block disk "
                                         f"{disk.target_dev}")
        if disk.disk_type == "network" and src is not None \
                and src.get("protocol") == "iscsi":
            if not src.get("name"):
                raise errors.HypervisorError(f"{what}: XML error: missing name for disk "
                                             "source")
            if len(src.findall("host")) != 1:
                raise errors.HypervisorError(f"{what}: unsupported configuration: protocol "
                                             "'iscsi' accepts only one host")
            secret = src.find("auth/secret")
            if src.find("auth") is not None and (secret is None or not (
                    secret.get("usage") or secret.get("uuid"))):
                raise errors.HypervisorError(f"{what}: XML error: missing usage or uuid of "
                                             "the secret of the disk's auth")

    def _login(self, domain: str, disk: domxml.Disk) -> None:
        """QEMU opens the disk's source: logs in to an iSCSI target with what the disk
        names, or opens a host block device."""
        src = disk.source
        where = f"attach disk on {self.host_name}"
        if isinstance(src, domxml.BlockSource):
            self._open_block(where, disk, src)
            return
        if not isinstance(src, domxml.NetworkISCSISource):
            return
        if src.secret_usage and src.secret_usage not in self.secrets:
            raise errors.HypervisorError(
                f"{where}: no secret with usage '{src.secret_usage}'")
        if self.target is not None:
            creds = self.target.credentials_for(src.iqn)
            given = (src.auth_username, self.secrets.get(src.secret_usage or ""))
            if creds is None:
                raise errors.HypervisorError(f"{where}: iSCSI target {src.iqn} not found")
            portal = str(src.hosts[0]) if len(src.hosts) == 1 else ""
            vol = self.target.target(src.iqn, portal)
            if vol is None:
                raise errors.HypervisorError(
                    f"{where}: iSCSI: Failed to connect to {portal or 'no portal'}: the "
                    f"target {src.iqn} is not served there")
            if creds != given:
                raise errors.HypervisorError(f"{where}: iSCSI login failed: "
                                             "Authentication failure")
            if src.lun != vol.lun:
                raise errors.HypervisorError(
                    f"{where}: iSCSI: Failed to open LUN {src.lun} of {src.iqn}: SENSE "
                    "KEY:ILLEGAL_REQUEST(5) ASCQ:LOGICAL_UNIT_NOT_SUPPORTED(0x2500)")
            if vol.readonly and not disk.readonly:
                raise errors.HypervisorError(
                    f"{where}: Cannot open a write protected LUN as read-write")
        self.sessions.add((domain, src.iqn))

    def _open_block(self, where: str, disk: domxml.Disk, src: domxml.BlockSource) -> None:
        if self.brick is None or not src.path.startswith("/dev/"):
            return  # local images, or a host whose devices the twin does not know
        if not self.brick.has_device(src.path):
            raise errors.HypervisorError(
                f"{where}: Could not open '{src.path}': No such file or directory")
        if self.brick.read_only(src.path) and not disk.readonly:
            raise errors.HypervisorError(
                f"{where}: Could not open '{src.path}': Read-only file system")

    def attach_device(self, name, disk, live, config):
        self._enter("attach_device")
        d = self._dom(name)
        if live and not d.active:
            raise errors.HypervisorError("attach disk: domain is not running")
        if disk.alias is not None and disk.alias.startswith("virtio-disk"):
            raise errors.HypervisorError("attach disk: non-user device alias "
                                         f"'{disk.alias}' is not allowed")
        # Stored as the device was given (libvirt keeps what it was told).
        disk = domxml.Disk.parse(disk.to_xml())
        self._check_disk("attach disk", disk)
        dev = disk.target_dev
        for disks, wanted in ((d.live, live), (d.config, config)):
            if wanted and any(x.target_dev == dev for x in disks):
                raise errors.HypervisorError(f"attach disk: target {dev} already exists")
        if live:
            self._login(name, disk)
            d.live.append(disk)
        if config:
            d.config.append(disk)

    def detach_device(self, name, disk, live, config, timeout):
        self._enter("detach_device")
        d = self._dom(name)
        dev = disk.target_dev
        for disks, wanted, where in ((d.config, config, "persistent"),
                                     (d.live, live, "live")):
            if not wanted:
                continue
            match = [x for x in disks if x.target_dev == dev]
            if not match:
                raise errors.HypervisorError(f"detach disk: disk {dev} not found ({where})")
            if where == "live" and dev in self.refuse_detach:
                raise errors.DeviceRemovalTimeout(
                    f"guest '{name}' did not release {dev} within {timeout:.0f} s")
            disks.remove(match[0])
            if where == "live" and isinstance(match[0].source, domxml.NetworkISCSISource):
                self.sessions.discard((name, match[0].source.iqn))

    def set_metadata(self, name, metadata, live, config):
        self._enter("set_metadata")
        d = self._dom(name)
        entries = domxml.parse_volume_metadata(metadata)
        if live:
            d.live_meta = entries
        if config:
            d.config_meta = dict(entries)

    def define_secret(self, usage, value: Secret, description):
        self._enter("define_secret")
        if usage in self.secrets:
            raise errors.HypervisorError(f"define secret: a secret for usage '{usage}' "
                                         "already exists")
        self.secrets[usage] = value.reveal()

    def undefine_secret(self, usage):
        self._enter("undefine_secret")
        return self.secrets.pop(usage, None) is not None

    def _same_uuid(self, what: str, name: str, uuid: str) -> None:
        """libvirt keeps one domain per UUID and one UUID per name."""
        for other in self.domains.values():
            if other.uuid == uuid and other.name != name:
                raise errors.HypervisorError(
                    f"{what}: operation failed: domain '{other.name}' already exists with "
                    f"uuid {uuid}")
            if other.name == name and other.uuid != uuid:
                raise errors.HypervisorError(
                    f"{what}: operation failed: domain '{name}' is already defined with "
                    f"uuid {other.uuid}")

    def define_domain(self, domain):
        self._enter("define_domain")
        # Through the XML, as libvirt receives it.
        domain = domxml.Domain.parse(domain.to_xml(pretty=True))
        uuid = _libvirt_uuid("define domain", domain.uuid)
        for disk in domain.disks:
            self._check_disk("define domain", disk)
        self._same_uuid("define domain", domain.name, uuid)
        if domain.name in self.domains:
            raise errors.HypervisorError(
                f"define domain: domain '{domain.name}' already exists")
        dom = _Domain(domain.name, uuid, active=False, persistent=True)
        dom.config = list(domain.disks)
        dom.config_meta = domain.volume_entries()
        dom.defined = domain
        self.domains[domain.name] = dom

    def start(self, name):
        self._enter("start")
        d = self._dom(name)
        if d.active:
            raise errors.HypervisorError("start domain: already running")
        for disk in d.config:
            self._login(name, disk)
        d.active, d.live, d.live_meta = True, list(d.config), dict(d.config_meta)

    def shutdown(self, name):
        # a guest OS that honours ACPI powers off; one in ``ignore_shutdown`` does not
        self._enter("shutdown")
        d = self._dom(name)
        if d.active and name not in self.ignore_shutdown:
            self._power_off(d)

    def destroy(self, name):
        self._enter("destroy")
        self._power_off(self._dom(name))

    def _power_off(self, d: _Domain) -> None:
        name = d.name
        d.active, d.live = False, []
        self.sessions = {s for s in self.sessions if s[0] != name}
        if not d.persistent:
            del self.domains[name]

    def undefine(self, name):
        self._enter("undefine")
        d = self._dom(name)
        if d.active:
            d.persistent = False
        else:
            del self.domains[name]

    @staticmethod
    def _check_abi(d: _Domain, xml: domxml.Domain, which: str) -> None:
        """The destination's definition must keep the guest's ABI: name, UUID, and (the
        live one) the same disks (device, bus, target, serial) in the same order."""
        what = f"live migration: unsupported configuration ({which} XML)"
        if xml.name != d.name:
            raise errors.HypervisorError(f"{what}: Target domain name '{xml.name}' does not "
                                         f"match source '{d.name}'")
        if _libvirt_uuid("live migration", xml.uuid) != d.uuid:
            raise errors.HypervisorError(f"{what}: Target domain uuid {xml.uuid} does not "
                                         f"match source {d.uuid}")
        if which != "destination":
            return
        source = d.live
        if len(xml.disks) != len(source):
            raise errors.HypervisorError(f"{what}: Target domain disk count "
                                         f"{len(xml.disks)} does not match source "
                                         f"{len(source)}")
        for mine, theirs in zip(source, xml.disks):
            if _abi(mine) != _abi(theirs):
                raise errors.HypervisorError(
                    f"{what}: Target disk {_abi(theirs)} does not match source {_abi(mine)}")

    def migrate(self, name, request):
        self._enter("migrate")
        self.migrations.append(request)
        d = self._dom(name)
        if not d.active:
            raise errors.HypervisorError("live migration: domain is not running")
        dest = self.network.get(request.dest_uri)
        if dest is None:
            raise errors.HypervisorError(f"live migration: cannot connect to "
                                         f"{request.dest_uri}")
        if name in dest.domains:
            raise errors.HypervisorError(f"live migration: domain '{name}' already exists "
                                         "on the destination")
        dest._same_uuid("live migration", name, d.uuid)
        live = domxml.Domain.parse(request.dest.to_xml())
        self._check_abi(d, live, "destination")
        persist = domxml.Domain.parse((request.persist or request.dest).to_xml())
        if request.persist is not None:
            self._check_abi(d, persist, "persistent")
        for disk in live.disks + persist.disks:
            dest._check_disk("live migration", disk)
        self._release.clear()
        self._aborted = False
        self.job = {"type": 2, "data_processed": 0, "data_remaining": 64 << 20,
                    "data_total": 64 << 20, "time_elapsed": 0,
                    "postcopy": request.postcopy, "postcopy_active": False}
        try:
            if self.during_migration is not None:
                self.during_migration(self)
            if self._aborted:
                raise errors.HypervisorError("live migration: operation aborted: "
                                             "migration out job: canceled by client")
            for disk in live.disks:  # QEMU on the destination logs in before the switch-over
                dest._login(name, disk)
        finally:
            self.job = None
        moved = _Domain(name, d.uuid, active=True, persistent=True,
                        live=[x.without_alias() for x in live.disks],
                        config=list(persist.disks), live_meta=live.volume_entries(),
                        config_meta=persist.volume_entries())
        dest.domains[name] = moved
        # what libvirt keeps on the destination: VIR_DOMAIN_JOB_COMPLETED, every byte sent
        dest.completed[name] = {"type": 3, "downtime": 25, "time_elapsed": 1200,
                                "data_processed": 64 << 20, "data_remaining": 0,
                                "data_total": 64 << 20}
        del self.domains[name]
        self.sessions = {s for s in self.sessions if s[0] != name}
        if self.fail_after_switch is not None:
            raise self.fail_after_switch

    def job_stats(self, name, completed=False):
        self._dom(name)
        if completed:
            return dict(self.completed.get(name, {"type": 0}))
        return {k: v for k, v in (self.job or {"type": 0}).items()
                if k not in ("postcopy", "postcopy_active")}

    def abort_job(self, name):
        self._enter("abort_job")
        job = self.job
        if job is None:
            raise errors.HypervisorError("abort job: Requested operation is not valid: no "
                                         "job is active on the domain")
        if job["postcopy_active"]:
            raise errors.HypervisorError("abort job: Requested operation is not valid: "
                                         "cannot abort migration in post-copy mode")
        self._aborted = True
        self._release.set()

    def wait_for_abort(self, timeout: float = 5.0) -> bool:
        """For ``during_migration`` hooks: block like a long job until it is aborted or
        switched to post-copy (which lets it finish)."""
        return self._release.wait(timeout)

    def start_postcopy(self, name):
        self._enter("start_postcopy")
        job = self.job
        if job is None:
            raise errors.HypervisorError(
                "start post-copy: Requested operation is not valid: post-copy can only be "
                "started while outgoing migration is in progress")
        if not job["postcopy"]:
            raise errors.HypervisorError(
                "start post-copy: Requested operation is not valid: post-copy migration is "
                "not enabled: switching to post-copy requires migration to be started with "
                "VIR_MIGRATE_POSTCOPY flag")
        job["postcopy_active"] = True
        self.postcopy_started = True
        self._release.set()

    def set_max_downtime(self, name, milliseconds):
        self.max_downtime = milliseconds


def _libvirt_uuid(what: str, text: str) -> str:
    """A domain's UUID as libvirt reads it: 32 hex digits, dashes anywhere between them;
    none at all makes a new one; anything else is refused."""
    if not text.strip():
        return str(uuidlib.uuid4())
    digits = text.strip().replace("-", "")
    if len(digits) != 32 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise errors.HypervisorError(f"{what}: XML error: malformed uuid element "
                                     f"'{text}'")
    return str(uuidlib.UUID(digits))


def _abi(disk: domxml.Disk) -> tuple[str, str, str | None, str | None]:
    target = disk.element().find("target")
    return (disk.device, disk.target_dev, target.get("bus") if target is not None else None,
            disk.serial)


def _by_path(portal: str, iqn: str, lun: int) -> str:
    return f"/dev/disk/by-path/ip-{portal}-iscsi-{iqn}-lun-{lun}"


class FakeBrick(_Faults, HostConnector):
    """os-brick on one host: iSCSI sessions to targets, the SCSI disks they bring and the
    multipath devices over them; logins checked against ``target``."""

    def __init__(self, host: str, target: FakeCinder | None = None):
        self._init_faults()
        self.host = host
        self.target = target
        self.sessions: set[tuple[str, str]] = set()  # (portal, iqn) logged in
        # iscsiadm's node records: one per portal a login was tried on, kept when the
        # login fails, removed by disconnect (as os-brick does on a real host).
        self.records: set[tuple[str, str]] = set()
        self.devices: dict[str, tuple[str, str, int]] = {}  # SCSI disk -> (portal, iqn, lun)
        self.maps: dict[str, tuple[str, ...]] = {}  # multipath device -> its SCSI disks
        self.connected: dict[str, dict[str, Any]] = {}  # device -> the props it came from
        self._next_map = 0

    # -- for the hypervisor twin and for tests --------------------------------------------
    def has_device(self, path: str) -> bool:
        return path in self.devices or path in self.maps

    def read_only(self, path: str) -> bool:
        """Whether the device is write-protected: its volume is read-only."""
        if self.target is None:
            return False
        for disk in self.maps.get(path, (path,)):
            portal, iqn, _lun = self.devices.get(disk, ("", "", 0))
            vol = self.target.target(iqn, portal) if iqn else None
            if vol is not None and vol.readonly:
                return True
        return False

    # -- HostConnector ------------------------------------------------------------------------
    def properties(self, my_ip, multipath):
        self._enter("properties")
        return {"platform": "x86_64", "os_type": "linux", "ip": my_ip, "host": self.host,
                "multipath": multipath, "initiator": f"iqn.1993-08.org.debian:01:{self.host}"}

    @staticmethod
    def _targets(props: dict[str, Any]) -> list[tuple[str, str, int]]:
        """(portal, iqn, lun) of every path the properties name, as os-brick reads them."""
        if all(props.get(k) for k in ("target_portals", "target_iqns", "target_luns")):
            return [(str(Portal.parse(str(p))), str(q), int(n)) for p, q, n in zip(
                props["target_portals"], props["target_iqns"], props["target_luns"])]
        try:
            return [(str(Portal.parse(str(props["target_portal"]))),
                     str(props["target_iqn"]), int(props.get("target_lun", 0)))]
        except KeyError as exc:
            raise errors.HostError(f"os-brick (ISCSI): connection properties lack "
                                   f"{exc.args[0]}") from exc

    def _discover(self, props: dict[str, Any]) -> list[tuple[str, str, int]]:
        """sendtargets discovery on the primary portal, with discovery CHAP if the portal
        asks for it: every portal of the target."""
        portal, iqn, lun = self._targets(props)[0]
        if self.target is None:
            return [(portal, iqn, lun)]
        vol = self.target.target(iqn, portal)
        if vol is None:
            raise errors.HostError(f"os-brick connect_volume (ISCSI): discovery on {portal} "
                                   f"found no target {iqn}")
        if vol.discovery_user and (props.get("discovery_auth_username"),
                                   props.get("discovery_auth_password")) != \
                (vol.discovery_user, vol.discovery_password):
            raise errors.HostError(f"os-brick connect_volume (ISCSI): discovery on {portal} "
                                   "failed: Authentication failure")
        return [(p, iqn, lun) for p in vol.portals]

    def _login(self, props: dict[str, Any], portal: str, iqn: str, lun: int) -> str:
        path = _by_path(portal, iqn, lun)
        self.records.add((portal, iqn))
        if self.target is not None:
            vol = self.target.target(iqn, portal)
            if vol is None:
                raise errors.HostError(f"os-brick connect_volume (ISCSI): login to {iqn} at "
                                       f"{portal} failed: target not found")
            if (vol.chap_user, vol.chap_password) != (props.get("auth_username"),
                                                      props.get("auth_password")):
                raise errors.HostError("os-brick connect_volume (ISCSI): login failed")
            if lun != vol.lun:  # os-brick logs out again when the LUN does not show up
                raise errors.HostError(f"os-brick connect_volume (ISCSI): Volume device not "
                                       f"found at {path}")
        self.sessions.add((portal, iqn))
        self.devices[path] = (portal, iqn, lun)
        self.connected[path] = dict(props)
        return path

    def connect(self, protocol, props, multipath):
        self._enter("connect")
        if protocol != "ISCSI":
            raise errors.HostError(f"os-brick: no connector for protocol {protocol}")
        targets = self._targets(props)
        if multipath and not props.get("target_portals"):
            targets = self._discover(props)
        paths, failure = [], None
        for portal, iqn, lun in targets:
            try:
                paths.append(self._login(props, portal, iqn, lun))
            except errors.HostError as exc:
                failure = exc
                continue
            if not multipath:
                break  # a single path: the first portal that works
        if not paths:
            raise failure or errors.HostError("os-brick connect_volume (ISCSI): no target")
        if not multipath:
            return {"type": "block", "path": paths[0]}
        self._next_map += 1
        dm = f"/dev/dm-{self._next_map}"
        self.maps[dm] = tuple(paths)
        self.connected[dm] = dict(props)
        return {"type": "block", "path": dm, "multipath_id": f"3600{self._next_map:028x}"}

    def disconnect(self, protocol, props, device_info, multipath):
        self._enter("disconnect")
        if protocol != "ISCSI":
            raise errors.HostError(f"os-brick: no connector for protocol {protocol}")
        targets = self._targets(props)
        if multipath and not props.get("target_portals"):
            # without the portals, os-brick reads them from its discovery database
            portal, iqn, lun = targets[0]
            targets = [(p, q, lun) for p, q in sorted(self.sessions) if q == iqn] or targets
        mine = {_by_path(*t) for t in targets}
        path = (device_info or {}).get("path")
        if path and self.has_device(path) and not set(self.maps.get(path, (path,))) & mine:
            raise errors.HostError(f"os-brick disconnect_volume (ISCSI): device {path} does "
                                   f"not belong to {targets[0][1]} LUN {targets[0][2]}")
        for dm, disks in list(self.maps.items()):
            if set(disks) & mine:
                del self.maps[dm]
                self.connected.pop(dm, None)
        for disk in mine:  # a target without a session is nothing to do
            self.devices.pop(disk, None)
            self.connected.pop(disk, None)
        in_use = {(p, q) for p, q, _ in self.devices.values()}
        self.sessions = {s for s in self.sessions if s in in_use}
        named = {(p, q) for p, q, _ in targets}
        self.records = {r for r in self.records if r in in_use or r not in named}


class FakeRunner(Runner):
    """A host's shell that answers ``true`` and ``test -r PATH`` (true for the paths in
    ``files``); ``refuse`` makes it behave like an SSH server that is down."""

    def __init__(self, name: str):
        self.name = name
        self.refuse = False
        self.commands: list[list[str]] = []
        self.files: set[str] = set()

    def ping(self, timeout=5):
        if self.refuse:
            raise errors.HostError(f"ssh {self.name}:22: Connection refused")

    def run(self, argv, stdin=None, timeout=300):
        if self.refuse:
            raise errors.HostError(f"ssh root@{self.name}: Connection refused")
        self.commands.append(list(argv))
        if argv[:2] == ["test", "-r"] and len(argv) == 3:
            return (0 if argv[2] in self.files else 1, b"", b"")
        return (0, b"", b"") if argv == ["true"] else (127, b"", b"command not found")


def fake_host(name: str = "local", target: FakeCinder | None = None,
              address: str = "198.18.0.11",
              network: dict[str, FakeHypervisor] | None = None) -> ComputeHost:
    """A compute host of twins; hosts sharing ``network`` can migrate to each other."""
    uri = f"test+fake://{name}/system"
    cfg = HostConfig(name=name, address=address, hostname=name, libvirt_uri=uri)
    brick = FakeBrick(name, target)
    hv = FakeHypervisor(name, target, network, brick=brick)
    hv.network[uri] = hv
    return ComputeHost(cfg, hypervisor=hv, brick=brick, runner=FakeRunner(name))
