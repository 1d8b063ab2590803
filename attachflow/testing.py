"""In-memory twins of the three side effects, shipped with the product for fast tests.

Each enforces the real service's rules as observed on real Cinder, libvirt and os-brick,
so a flow that would fail on the real thing fails here too:

- ``FakeCinder``: the volume state machine of both attach APIs; one attachment per
  non-multiattach volume except a second one for the same instance (live migration);
  duplicate connectors refused on update; CHAP credentials per export.
- ``FakeHypervisor``: domains with live and persistent definitions; device names unique
  per domain; hot-plug only on a running domain; network disks need their secret and
  the right CHAP password to log in; secrets unique by usage.
- ``FakeBrick``: os-brick's connect/disconnect with CHAP checked against the target.

``fail(name, exc, times, after)`` on any of them makes the next call(s) of that method raise.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid as uuidlib
from typing import Any

from attachflow import domxml, errors
from attachflow.brick import HostConnector
from attachflow.cinder_side import StorageAPI
from attachflow.compute_side import ComputeHost, DomainRef, Hypervisor
from attachflow.hosts import HostConfig
from attachflow.model import ConnectionInfo, NewAttachment, Secret, Volume, VolumeAttachment
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


class FakeCinder(_Faults, StorageAPI):
    portal = "198.18.0.1:3260"

    def __init__(self, version: tuple[int, int] = (3, 71)):
        self._init_faults()
        self.version = version
        self.volumes: dict[str, _Volume] = {}

    # -- test helpers ---------------------------------------------------------------------
    def create_volume(self, size: int = 1, multiattach: bool = False) -> str:
        vid = str(uuidlib.uuid4())
        self.volumes[vid] = _Volume(vid, size, multiattach=multiattach,
                                    chap_user="u" + vid[:19],
                                    chap_password="p" + uuidlib.uuid4().hex[:15])
        return vid

    def iqn(self, volume_id: str) -> str:
        return f"iqn.2010-10.org.openstack:volume-{volume_id}"

    def credentials_for(self, iqn: str) -> tuple[str, str] | None:
        """What the target accepts for ``iqn``, if it is exported."""
        for vol in self.volumes.values():
            if self.iqn(vol.id) == iqn and vol.exported:
                return vol.chap_user, vol.chap_password
        return None

    def _vol(self, volume_id: str) -> _Volume:
        if volume_id not in self.volumes:
            raise errors.StorageNotFound(f"volume {volume_id} could not be found", 404)
        return self.volumes[volume_id]

    def _conn(self, vol: _Volume) -> dict[str, Any]:
        vol.exported = True
        return {"target_discovered": False, "target_portal": self.portal,
                "target_iqn": self.iqn(vol.id), "target_lun": 1, "volume_id": vol.id,
                "auth_method": "CHAP", "auth_username": vol.chap_user,
                "auth_password": vol.chap_password, "encrypted": False,
                "access_mode": "rw", "discard": False}

    def _attachment(self, attachment_id: str) -> tuple[_Volume, _Attachment]:
        for vol in self.volumes.values():
            if attachment_id in vol.attachments:
                return vol, vol.attachments[attachment_id]
        raise errors.StorageNotFound(f"attachment {attachment_id} not found", 404)

    def _settle(self, vol: _Volume) -> None:
        if not vol.attachments:
            vol.status, vol.exported = "available", False
        elif any(a.status == "attached" for a in vol.attachments.values()):
            vol.status = "in-use"
        elif any(a.status == "attaching" for a in vol.attachments.values()):
            vol.status = "attaching"
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
        others = [a for a in vol.attachments.values() if a.instance_id != instance_id]
        if vol.status not in ("available", "in-use", "reserved", "attaching") or \
                (not vol.multiattach and others):
            raise errors.VolumeStateError(
                f"Invalid volume: volume {volume_id} status must be available or "
                f"in-use with multiattach, but it is {vol.status}")
        att = _Attachment(str(uuidlib.uuid4()), instance_id, connector,
                          "attaching" if connector else "reserved",
                          (connector or {}).get("mountpoint"))
        vol.attachments[att.id] = att
        self._settle(vol)
        if connector:
            return NewAttachment(att.id, self._flat(vol, att))
        return NewAttachment(att.id, None)

    def attachment_update(self, attachment_id, volume_id, connector):
        self._enter("attachment_update")
        vol, att = self._attachment(attachment_id)
        if any(a.connector for a in vol.attachments.values() if a.id != attachment_id):
            raise errors.VolumeStateError("duplicate connectors detected on volume")
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
        raw = dict(self._conn(vol), driver_volume_type="iscsi", attachment_id=att.id)
        return ConnectionInfo.from_cinder(raw, vol.id)

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
        vol.legacy_connector = connector
        # The legacy nested shape, through the adapter's own parser.
        return ConnectionInfo.from_cinder({"driver_volume_type": "iscsi",
                                           "data": self._conn(vol)}, volume_id)

    def terminate_connection(self, volume_id, connector):
        # As Cinder's tgt helper: terminating does not remove the export; os-detach of
        # the last attachment (or deleting the last attachment) does.
        self._enter("terminate_connection")
        vol = self._vol(volume_id)
        vol.legacy_connector = None

    def attach(self, volume_id, instance_id, mountpoint, host_name, mode="rw"):
        self._enter("attach")
        vol = self._vol(volume_id)
        if vol.status != "attaching":
            raise errors.VolumeStateError(
                f"Invalid volume: volume {volume_id} is {vol.status}, not attaching")
        att = _Attachment(str(uuidlib.uuid4()), instance_id, {"host": host_name},
                          "attached", mountpoint)
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


class FakeHypervisor(_Faults, Hypervisor):
    """``network`` maps libvirt URIs to the hypervisors a migration can reach."""

    def __init__(self, host_name: str = "local", target: FakeCinder | None = None,
                 network: dict[str, "FakeHypervisor"] | None = None):
        self._init_faults()
        self.host_name = host_name
        self.target = target
        self.network = network if network is not None else {}
        self.domains: dict[str, _Domain] = {}
        self.secrets: dict[str, str] = {}
        self.refuse_detach: set[str] = set()  # target devs whose guest will not let go
        self.sessions: set[tuple[str, str]] = set()  # (domain, iqn) logged in by QEMU
        # migration: a job in flight, what the tests do while it runs, what it ended with
        self.job: dict[str, Any] | None = None
        self.during_migration: Any = None  # callable(fake) run while the job is active
        self.fail_after_switch: BaseException | None = None
        self.completed: dict[str, dict[str, Any]] = {}
        self.max_downtime: int | None = None
        self.postcopy_started = False
        self._release = threading.Event()  # a blocked job goes on (or ends)
        self._aborted = False

    def add_domain(self, name: str, active: bool = True, persistent: bool = True,
                   devices: tuple[str, ...] = ("vda",)) -> str:
        uuid = str(uuidlib.uuid4())
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

    def lookup(self, name):
        self._enter("lookup")
        d = self._dom(name)
        return DomainRef(d.name, d.uuid, d.active, d.persistent)

    def domain(self, name, inactive=False, migratable=False):
        d = self._dom(name)
        live = d.active and not inactive
        disks = [x.with_alias(f"virtio-disk{i}") for i, x in enumerate(d.live)] if live \
            else d.config
        # Through the XML, as libvirt hands it over.
        return domxml.Domain.parse(domxml.assemble(
            d.name, d.uuid, disks, d.live_meta if live else d.config_meta).to_xml())

    def _login(self, domain: str, disk: domxml.Disk) -> None:
        src = disk.source
        if not isinstance(src, domxml.NetworkISCSISource):
            return
        if src.secret_usage and src.secret_usage not in self.secrets:
            raise errors.HypervisorError(
                f"attach disk on {self.host_name}: no secret with usage '{src.secret_usage}'")
        if self.target is not None:
            creds = self.target.credentials_for(src.iqn)
            given = (src.auth_username, self.secrets.get(src.secret_usage or ""))
            if creds is None:
                raise errors.HypervisorError(
                    f"attach disk on {self.host_name}: iSCSI target {src.iqn} not found")
            if creds != given:
                raise errors.HypervisorError(
                    f"attach disk on {self.host_name}: iSCSI login failed: "
                    "Authentication failure")
        self.sessions.add((domain, src.iqn))

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

    def define_domain(self, domain):
        self._enter("define_domain")
        # Through the XML, as libvirt receives it.
        domain = domxml.Domain.parse(domain.to_xml(pretty=True))
        if domain.name in self.domains:
            raise errors.HypervisorError(
                f"define domain: domain '{domain.name}' already exists")
        dom = _Domain(domain.name, domain.uuid, active=False, persistent=True)
        dom.config = list(domain.disks)
        dom.config_meta = domain.volume_entries()
        self.domains[domain.name] = dom

    def start(self, name):
        self._enter("start")
        d = self._dom(name)
        if d.active:
            raise errors.HypervisorError("start domain: already running")
        for disk in d.config:
            self._login(name, disk)
        d.active, d.live, d.live_meta = True, list(d.config), dict(d.config_meta)

    def destroy(self, name):
        self._enter("destroy")
        d = self._dom(name)
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


    def migrate(self, name, request):
        self._enter("migrate")
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
        self._release.clear()
        self._aborted = False
        self.job = {"type": 2, "data_processed": 0, "data_remaining": 64 << 20,
                    "data_total": 64 << 20, "time_elapsed": 0}
        try:
            if self.during_migration is not None:
                self.during_migration(self)
            if self._aborted:
                raise errors.HypervisorError("live migration: operation aborted: "
                                             "migration out job: canceled by client")
            live = domxml.Domain.parse(request.dest.to_xml())
            for disk in live.disks:  # QEMU on the destination logs in before the switch-over
                dest._login(name, disk)
        finally:
            self.job = None
        persist = domxml.Domain.parse((request.persist or request.dest).to_xml())
        moved = _Domain(name, d.uuid, active=True, persistent=True,
                        live=[x.without_alias() for x in live.disks],
                        config=list(persist.disks), live_meta=live.volume_entries(),
                        config_meta=persist.volume_entries())
        dest.domains[name] = moved
        dest.completed[name] = {"downtime": 25, "time_elapsed": 1200}
        del self.domains[name]
        self.sessions = {s for s in self.sessions if s[0] != name}
        if self.fail_after_switch is not None:
            raise self.fail_after_switch

    def job_stats(self, name, completed=False):
        self._dom(name)
        if completed:
            return dict(self.completed.get(name, {"type": 0}))
        return dict(self.job or {"type": 0})

    def abort_job(self, name):
        self._enter("abort_job")
        self._aborted = True
        self._release.set()

    def wait_for_abort(self, timeout: float = 5.0) -> bool:
        """For ``during_migration`` hooks: block like a long job until it is aborted or
        switched to post-copy (which lets it finish)."""
        return self._release.wait(timeout)

    def start_postcopy(self, name):
        self._enter("start_postcopy")
        self.postcopy_started = True
        self._release.set()

    def set_max_downtime(self, name, milliseconds):
        self.max_downtime = milliseconds


class FakeBrick(_Faults, HostConnector):
    """os-brick on one host: sessions to targets, CHAP checked against ``target``."""

    def __init__(self, host: str, target: FakeCinder | None = None):
        self._init_faults()
        self.host = host
        self.target = target
        self.sessions: dict[str, str] = {}  # path -> iqn

    def properties(self, my_ip, multipath):
        self._enter("properties")
        return {"platform": "x86_64", "os_type": "linux", "ip": my_ip, "host": self.host,
                "multipath": multipath, "initiator": f"iqn.1993-08.org.debian:01:{self.host}"}

    def connect(self, protocol, props, multipath):
        self._enter("connect")
        if self.target is not None:
            creds = self.target.credentials_for(props["target_iqn"])
            if creds != (props.get("auth_username"), props.get("auth_password")):
                raise errors.HostError("os-brick connect_volume (ISCSI): login failed")
        path = (f"/dev/disk/by-path/ip-{props['target_portal']}-iscsi-"
                f"{props['target_iqn']}-lun-{props['target_lun']}")
        self.sessions[path] = props["target_iqn"]
        return {"type": "block", "path": path}

    def disconnect(self, protocol, props, device_info, multipath):
        self._enter("disconnect")
        self.sessions.pop(device_info.get("path", ""), None)


class FakeRunner(Runner):
    """A host's shell that answers ``true``; ``refuse`` makes it behave like an SSH
    server that is down."""

    def __init__(self, name: str):
        self.name = name
        self.refuse = False
        self.commands: list[list[str]] = []

    def ping(self, timeout=5):
        if self.refuse:
            raise errors.HostError(f"ssh {self.name}:22: Connection refused")

    def run(self, argv, stdin=None, timeout=300):
        if self.refuse:
            raise errors.HostError(f"ssh root@{self.name}: Connection refused")
        self.commands.append(list(argv))
        return (0, b"", b"") if argv == ["true"] else (127, b"", b"command not found")


def fake_host(name: str = "local", target: FakeCinder | None = None,
              address: str = "198.18.0.11",
              network: dict[str, FakeHypervisor] | None = None) -> ComputeHost:
    """A compute host of twins; hosts sharing ``network`` can migrate to each other."""
    uri = f"test+fake://{name}/system"
    cfg = HostConfig(name=name, address=address, hostname=name, libvirt_uri=uri)
    hv = FakeHypervisor(name, target, network)
    hv.network[uri] = hv
    return ComputeHost(cfg, hypervisor=hv, brick=FakeBrick(name, target),
                       runner=FakeRunner(name))
