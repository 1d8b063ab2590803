"""Scenario steps on real compute hosts: the hosts of a hosts file and the storage API of a
cloud, as any two-node KVM lab has them, through attachflow's own library (``Client``).

Side effects owned: the volumes a run creates and deletes in the storage API; the data
patterns written through a guest's own block backend (qemu-io in QEMU's monitor); the
faults injected on a host over SSH (a service stopped and masked, blackhole routes to the
target's portals refused by policy rules), each undone when its step ends. Boot, attach, detach, migrate and
delete go through ``Client``; ``observe`` and ``snapshot`` only read.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import shlex
import time
from typing import Any, Callable, Iterator, Mapping

from attachflow import bootfiles, errors
from attachflow.client import Client
from attachflow.compute_side import ComputeHost
from attachflow.domxml import BlockSource, NetworkISCSISource
from attachflow.scenario.engine import Deviation, Stamp
from attachflow.scenario.spec import VolumeSpec

# What a guest prints on its serial console once its OS is up (the lab's guest OS does);
# a hot-unplug needs an OS that answers it, so a step after boot waits for this line.
READY_MARKER = "attachflow-guest-ready"
QEMU_LOGS = "/var/log/libvirt/qemu"
LOG_WAIT = 15.0   # qemu-io reports on QEMU's stderr, which virtlogd writes a moment later

# A host's kernel iSCSI sessions: "tcp: [3] 10.0.0.1:3260,1 iqn...:volume-ID (non-flash)"
_SESSION = re.compile(r"^\S+: \[\d+\] (\[[0-9a-fA-F:]+\]|[^:\s]+):(\d+),\d+ (\S+)")
_BY_PATH = re.compile(r"/ip-(\[[0-9a-fA-F:]+\]|[^:/]+):(\d+)-iscsi-")


class HostActions:
    """``engine.Actions`` on the hosts of ``client``'s hosts file."""

    def __init__(self, client: Client, *, virt_type: str = "kvm",
                 ready_marker: str | None = READY_MARKER, boot_timeout: float = 300.0,
                 volume_timeout: float = 120.0, shutdown_timeout: float = 2.0, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.virt_type = virt_type
        self.ready_marker = ready_marker
        self.boot_timeout = boot_timeout
        self.volume_timeout = volume_timeout
        # A scenario's guest holds nothing worth a clean shutdown: it is switched off
        # once it has had this long to answer the power button.
        self.shutdown_timeout = shutdown_timeout
        self._sleep, self._clock = sleep, clock
        self._hosts_of: dict[str, set[str]] = {}   # guest -> every host it was on
        self._volumes: list[str] = []             # what this run made, for snapshot()

    # -- volumes ----------------------------------------------------------------------------
    def create_volume(self, name: str, spec: VolumeSpec) -> str:
        storage = self.client.storage
        volume_id = storage.create_volume(name, spec.size_gib, spec.volume_type)
        try:
            self._wait_status(volume_id, "available", f"volume {name} ({volume_id})")
        except BaseException:
            storage.delete_volume(volume_id)  # not handed to the run: removed here
            raise
        self._volumes.append(volume_id)
        return volume_id

    def _wait_status(self, volume_id: str, wanted: str, what: str) -> None:
        deadline = self._clock() + self.volume_timeout
        while True:
            status = self.client.storage.get_volume(volume_id).status
            if status == wanted:
                return
            if status.startswith("error"):
                raise errors.StorageError(f"{what} went to {status}, not {wanted}")
            if self._clock() > deadline:
                raise errors.StorageError(f"{what} is still {status} after "
                                          f"{self.volume_timeout:.0f} s, not {wanted}")
            self._sleep(0.5)

    def delete_volume(self, volume_id: str) -> None:
        storage = self.client.storage
        storage.delete_volume(volume_id)
        deadline = self._clock() + self.volume_timeout
        while True:
            try:
                status = storage.get_volume(volume_id).status
            except errors.VolumeNotFound:
                return
            if status == "error_deleting" or self._clock() > deadline:
                raise errors.StorageError(f"volume {volume_id} is {status}, not deleted")
            self._sleep(0.5)

    # -- guests -----------------------------------------------------------------------------
    def boot(self, name: str, host: str, root_volume_id: str, memory_mib: int, api: str,
             transport: str) -> None:
        direct = bootfiles.direct_boot_for(self.client.host(host).cfg)
        self._hosts_of.setdefault(name, set()).add(host)
        self.client.boot(name, root_volume_id, host=host, memory_mib=memory_mib,
                         virt_type=self.virt_type, direct_boot=direct, api=api,
                         transport=transport)
        if self.ready_marker:
            self._wait_ready(name, host)

    def _wait_ready(self, name: str, host: str) -> None:
        path = f"{QEMU_LOGS}/{name}-console.log"
        deadline = self._clock() + self.boot_timeout
        while self.ready_marker not in _text(_read_from(self.client.host(host), path, 0)):
            if self._clock() > deadline:
                raise errors.HostError(
                    f"{name} on {host} did not print '{self.ready_marker}' on its console "
                    f"({path}) within {self.boot_timeout:.0f} s")
            self._sleep(0.5)

    def delete_guest(self, name: str, host: str) -> None:
        self.client.delete_guest(name, host=host, shutdown_timeout=self.shutdown_timeout)
        self._hosts_of.pop(name, None)

    def attach(self, volume_id: str, guest: str, host: str, device: str | None, api: str,
               transport: str) -> None:
        self.client.attach(volume_id, guest, host=host, device=device, api=api,
                           transport=transport)

    def detach(self, volume_id: str, guest: str, host: str, api: str,
               transport: str) -> None:
        self.client.detach(volume_id, guest, host=host, api=api, transport=transport)

    def migrate(self, guest: str, source: str, destination: str, api: str,
                transport: str) -> None:
        self._hosts_of.setdefault(guest, set()).update((source, destination))
        self.client.migrate(guest, source=source, destination=destination, api=api)

    # -- data, through the guest's own block backend ---------------------------------------
    def write(self, guest: str, host: str, volume_id: str, stamp: Stamp) -> None:
        log = self._qemu_io(guest, host, volume_id,
                            [f"write -P 0x{stamp.byte:02x} {stamp.offset} {stamp.length}",
                             "flush"], f"wrote {stamp.length}/{stamp.length} bytes")
        if f"wrote {stamp.length}/{stamp.length} bytes" not in log:
            raise Deviation(f"qemu-io to write {stamp}", "no report of the write",
                            tuple(log.splitlines()))

    def verify(self, guest: str, host: str, volume_id: str, stamp: Stamp) -> None:
        done = f"read {stamp.length}/{stamp.length} bytes"
        log = self._qemu_io(guest, host, volume_id,
                            [f"read -P 0x{stamp.byte:02x} {stamp.offset} {stamp.length}"],
                            done, "Pattern verification failed")
        if "Pattern verification failed" in log or done not in log:
            raise Deviation(str(stamp), _mismatch(log), tuple(log.splitlines()))

    def _qemu_io(self, guest: str, host: str, volume_id: str, commands: list[str],
                 *ends: str) -> str:
        """What QEMU reported for ``commands`` run with qemu-io on the disk with serial
        ``volume_id``: its monitor's answer and what its log gained until one of
        ``ends`` shows (or ``LOG_WAIT`` passes)."""
        import libvirt_qemu
        compute = self.client.host(host)
        disk = compute.hypervisor.domain(guest).disk(volume_id)
        if disk is None or not disk.alias:
            raise Deviation(f"a disk with serial {volume_id} in {guest}'s live XML on "
                            f"{host}", "none")
        path = f"{QEMU_LOGS}/{guest}.log"
        start = len(_read_from(compute, path, 0))
        dom = compute.hypervisor.conn.lookupByName(guest)
        answers = [libvirt_qemu.qemuMonitorCommand(
            dom, f'qemu-io -d /machine/peripheral/{disk.alias}/virtio-backend "{command}"',
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP) or "" for command in commands]
        deadline = self._clock() + LOG_WAIT
        while True:
            seen = "".join(answers) + _text(_read_from(compute, path, start))
            if any(end in seen for end in ends) or self._clock() > deadline:
                return seen
            self._sleep(0.1)

    # -- faults -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def fault(self, name: str, source: str | None,
              destination: str | None) -> Iterator[None]:
        if name == "storage-api-down":
            raise errors.InputError(
                "the fault storage-api-down needs a storage service this run controls "
                "(the attachflow lab's); a cloud's own API is not stopped from here")
        if destination is None:
            raise errors.InputError(f"the fault {name} needs a step with a destination")
        host = self.client.host(destination)
        if name == "destination-libvirtd-stopped":
            with self._libvirtd_stopped(destination):
                yield
        elif name == "destination-iscsid-stopped":
            with _units_stopped(host, ("iscsid.socket", "iscsid.service"),
                                restart=("iscsid.socket",)):
                yield
        elif name == "target-portal-unreachable":
            with _unreachable(host, self._portals(source)):
                yield
        else:
            raise errors.InputError(f"unknown fault {name}")

    def _libvirtd_stopped(self, host: str) -> contextlib.AbstractContextManager[None]:
        """libvirtd stopped and masked on ``host`` (its sockets would start it again)."""
        units = ("libvirtd.service", "libvirtd.socket", "libvirtd-ro.socket",
                 "libvirtd-admin.socket")
        return _units_stopped(self.client.host(host), units, restart=units)

    def _portals(self, source: str | None) -> list[tuple[str, int]]:
        """The addresses of the target portals the guests on ``source`` use: from their
        disks' sources (QEMU's initiator, or a by-path device) and the host's sessions."""
        if source is None:
            raise errors.InputError("target-portal-unreachable needs a step with a guest")
        compute = self.client.host(source)
        found: set[tuple[str, int]] = set()
        for guest, hosts in self._hosts_of.items():
            if source not in hosts:
                continue
            try:
                domain = compute.hypervisor.domain(guest)
            except errors.DomainNotFound:
                continue
            for disk in domain.disks:
                if isinstance(disk.source, NetworkISCSISource):
                    found.update((p.host, p.port) for p in disk.source.hosts)
                elif isinstance(disk.source, BlockSource):
                    found.update((m.group(1), int(m.group(2)))
                                 for m in [_BY_PATH.search(disk.source.path)] if m)
        found.update((addr, int(port)) for addr, port, _iqn in _kernel_sessions(compute))
        if not found:
            raise errors.InputError(f"no target portal is in use on {source}")
        return sorted((a.strip("[]"), port) for a, port in found)

    # -- what a user checks -----------------------------------------------------------------
    def observe(self, volume_id: str | None, guest: str | None, host: str | None,
                hosts: tuple[str, ...] = ()) -> Mapping[str, Any]:
        seen: dict[str, Any] = {}
        if volume_id:
            vol = self.client.storage.get_volume(volume_id)
            seen.update(status=vol.status, attachments=len(vol.attachments),
                        attached_to=self._attached_to(vol.attachments))
            seen["sessions"] = {h: self._sessions(h, volume_id) for h in hosts}
            seen["secrets"] = {h: len(self._secrets(h, volume_id)) for h in hosts}
        if guest:
            running = sorted(h for h in self._hosts_of.get(guest, set()) | {host}
                             if h and self._runs(h, guest))
            seen["runs_on"] = running[0] if len(running) == 1 else running or None
            if volume_id and host:
                seen["disk"] = self._disk(host, guest, volume_id)
        return seen

    def _attached_to(self, attachments) -> list[str | None]:
        """The host of each attachment: the one Cinder recorded (its legacy API does),
        else the one that runs the guest whose id the attachment names (Cinder keeps no
        host for an attachment made with the attachments API)."""
        running: dict[str, str] = {}
        for host in sorted(set().union(*self._hosts_of.values()) if self._hosts_of else ()):
            for ref in self.client.host(host).hypervisor.list_domains():
                if ref.active:
                    running[ref.uuid] = host
        return [a.host_name or running.get(a.server_id or "") for a in attachments]

    def _runs(self, host: str, guest: str) -> bool:
        return any(d.name == guest and d.active
                   for d in self.client.host(host).hypervisor.list_domains())

    def _disk(self, host: str, guest: str, volume_id: str) -> str:
        hypervisor = self.client.host(host).hypervisor
        where = []
        for inactive, name in ((False, "live"), (True, "persistent")):
            try:
                if hypervisor.domain(guest, inactive=inactive).disk(volume_id) is not None:
                    where.append(name)
            except errors.DomainNotFound:
                pass
        return {("live", "persistent"): "both", ("live",): "live",
                ("persistent",): "persistent"}.get(tuple(where), "absent")

    def _sessions(self, host: str, volume_id: str) -> int:
        """The host's iSCSI sessions to the volume's target: QEMU's (one per iSCSI disk
        of a running guest) and the kernel's, as the target's name carries the volume
        id (Cinder's reference drivers name targets so)."""
        compute = self.client.host(host)
        count = 0
        for ref in compute.hypervisor.list_domains():
            if not ref.active:
                continue
            try:
                disks = compute.hypervisor.domain(ref.name).disks
            except errors.DomainNotFound:
                continue  # gone between the list and the look
            count += sum(1 for d in disks if isinstance(d.source, NetworkISCSISource)
                         and volume_id in d.source.iqn)
        return count + sum(1 for _a, _p, iqn in _kernel_sessions(compute) if volume_id in iqn)

    def _secrets(self, host: str, volume_id: str) -> list[str]:
        conn = self.client.host(host).hypervisor.conn
        return sorted(u for u in (s.usageID() for s in conn.listAllSecrets())
                      if u and volume_id in u)

    def snapshot(self, hosts: tuple[str, ...]) -> Mapping[str, Any]:
        """What a refused step must leave as it was: no operation unfinished in the
        journal, the run's volumes (status and attachments), where its guests run on
        ``hosts`` and with which disks, and each host's secrets and sessions for those
        volumes."""
        storage = self.client.storage
        # an operation the journal holds unfinished is something half-done for recover
        state: dict[str, Any] = {"unfinished operations": sorted(
            f"{op.kind} {op.domain}" for op in self.client.operations())}
        for volume_id in self._volumes:
            try:
                vol = storage.get_volume(volume_id)
            except errors.VolumeNotFound:
                continue
            state[f"volume {volume_id}"] = (vol.status, sorted(
                (a.attachment_id or "", a.host_name or "") for a in vol.attachments))
            for host in hosts:
                state[f"secrets {host} {volume_id}"] = self._secrets(host, volume_id)
                state[f"sessions {host} {volume_id}"] = self._sessions(host, volume_id)
        for host in hosts:
            hypervisor = self.client.host(host).hypervisor
            for ref in hypervisor.list_domains():
                if ref.name in self._hosts_of:
                    disks = (sorted((d.target_dev, d.serial or "")
                                    for d in hypervisor.domain(ref.name).disks)
                             if ref.active else [])
                    state[f"guest {ref.name} on {host}"] = (ref.active, disks)
        return state


# -- reading and changing a host --------------------------------------------------------------
def _run(host: ComputeHost, argv: list[str]) -> tuple[int, str, str]:
    if host.cfg.local:
        import subprocess
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr
    code, out, err = host.runner.run(argv, timeout=120)
    return code, _text(out), _text(err)


def _checked(host: ComputeHost, argv: list[str]) -> str:
    code, out, err = _run(host, argv)
    if code != 0:
        raise errors.HostError(f"{host.name}: {shlex.join(argv)} exited {code}: "
                               f"{err.strip() or out.strip()}")
    return out


def _read_from(host: ComputeHost, path: str, offset: int) -> bytes:
    """The bytes of ``path`` on ``host`` from ``offset`` on (nothing while it does not
    exist)."""
    if host.cfg.local:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""
    code, out, _err = host.runner.run(["tail", "-c", f"+{offset + 1}", path], timeout=60)
    return out if code == 0 else b""


def _text(data: bytes | str) -> str:
    return data if isinstance(data, str) else data.decode(errors="replace")


def _mismatch(log: str) -> str:
    lines = [line for line in log.splitlines() if "Pattern verification failed" in line]
    return lines[0].strip() if lines else "no report of the read"


def _kernel_sessions(host: ComputeHost) -> list[tuple[str, str, str]]:
    """(portal address, port, target name) of each of the host's kernel iSCSI sessions;
    none on a host without open-iscsi or iscsid (whose initiator is QEMU's alone)."""
    code, out, err = _run(host, ["sh", "-c", "command -v iscsiadm >/dev/null || exit 127; "
                                             "exec iscsiadm -m session"])
    # 21: no sessions; 127: no open-iscsi; 20: no iscsid, so no kernel session either
    if code in (21, 127, 20):
        return []
    if code != 0:
        raise errors.HostError(f"{host.name}: iscsiadm -m session exited {code}: "
                               f"{err.strip()}")
    return [m.groups() for m in map(_SESSION.match, out.splitlines()) if m]


@contextlib.contextmanager
def _units_stopped(host: ComputeHost, units: tuple[str, ...],
                   restart: tuple[str, ...]) -> Iterator[None]:
    """systemd ``units`` stopped and masked for the runtime (socket activation would
    start them again), then unmasked and ``restart`` started."""
    _checked(host, ["systemctl", "mask", "--runtime", "--now", *units])
    try:
        yield
    finally:
        _checked(host, ["systemctl", "unmask", "--runtime", *units])
        _checked(host, ["systemctl", "start", *restart])


@contextlib.contextmanager
def _unreachable(host: ComputeHost, portals: list[tuple[str, int]]) -> Iterator[None]:
    """Policy rules on ``host`` that refuse TCP to each portal (address and port): the
    target does not answer it, and the host's other traffic (SSH, libvirt, on a lab
    whose storage address is also the orchestrator's) still flows."""
    rules = []
    try:
        for address, port in portals:
            ip = ipaddress.ip_address(address)
            rule = ["ip", f"-{ip.version}", "rule", "add", "to", f"{ip}/{ip.max_prefixlen}",
                    "ipproto", "tcp", "dport", str(port), "prohibit"]
            _checked(host, rule)
            rules.append(rule)
        yield
    finally:
        for rule in reversed(rules):
            _checked(host, [*rule[:3], "del", *rule[4:]])
