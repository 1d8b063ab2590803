"""The lab as the benchmarks use it: its storage API (python-cinderclient behind the lab's
Keystone), libvirt on its hosts, the volumes and guests a benchmark makes, and their
removal.

Owns everything a benchmark creates on the lab: ``cleanup`` removes the guests on both
hosts, the libvirt secrets of the benchmark's volumes, their attachments and the volumes,
whatever state a failed run left them in.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
import uuid

from benchmarks.common import af, run, use_lab_env

HOSTS = ("hosta", "hostb")
VOLUME_API = "3.71"


@dataclasses.dataclass
class Guest:
    name: str
    root: str
    data: list[str]
    host: str

    @property
    def volumes(self) -> list[str]:
        return [self.root, *self.data]


def other(host: str) -> str:
    return "hostb" if host == "hosta" else "hosta"


class Lab:
    def __init__(self, bring_up: bool = True):
        import attachflow.lab as manager
        self.manager = manager
        if bring_up:
            manager.up(echo=lambda line: print(f"  lab: {line}", flush=True))
        self.env = use_lab_env()
        from cinderclient import client
        from attachflow.identity import make_session
        self.session, _endpoint = make_session()
        self.cinder = client.Client(VOLUME_API, session=self.session)
        self.volumes: list[str] = []
        self.guests: list[str] = []
        self._conns: dict[str, object] = {}

    # -- libvirt ---------------------------------------------------------------------------
    def uri(self, host: str) -> str:
        from attachflow.hosts import load_host
        return load_host(host).libvirt_uri

    def conn(self, host: str, fresh: bool = False):
        """This process's libvirt connection to ``host`` (``fresh``: a new one, the
        caller's own), on the event loop attachflow runs for its own connections."""
        if fresh or host not in self._conns:
            from attachflow.compute_side import _libvirt
            opened = _libvirt().open(self.uri(host))
            if fresh:
                return opened
            self._conns[host] = opened
        return self._conns[host]

    def stop(self, host: str, names: list[str]) -> None:
        """Stop the guests (a guest with no OS never releases a hot-plugged disk; a
        stopped one has only its persistent definition, from which a disk goes at once)."""
        for name in names:
            self.conn(host).lookupByName(name).destroy()

    def start(self, host: str, names: list[str]) -> None:
        for name in names:
            self.conn(host).lookupByName(name).create()

    # -- volumes and guests ----------------------------------------------------------------
    def new_volumes(self, count: int, name: str = "bench") -> list[str]:
        """``count`` new 1 GiB volumes, created at once and waited for together."""
        made = [self.cinder.volumes.create(1, name=name).id for _ in range(count)]
        self.volumes += made
        waiting = set(made)
        deadline = time.monotonic() + 60 + 5 * count
        while waiting and time.monotonic() < deadline:
            for vol in list(waiting):
                status = self.cinder.volumes.get(vol).status
                if status == "available":
                    waiting.discard(vol)
                elif status == "error":
                    raise RuntimeError(f"volume {vol} went into error")
            time.sleep(0.2 if waiting else 0)
        if waiting:
            raise RuntimeError(f"volumes {sorted(waiting)} did not become available")
        return made

    def boot(self, host: str, memory: int, with_os: bool, data: int = 0) -> Guest:
        """A guest booted by ``attachflow boot`` from a new root volume, with ``data``
        more volumes attached by ``attachflow attach``; ``with_os``: the lab's tiny guest
        OS, running when this returns (it answers hot-unplugs), else no OS at all."""
        name = f"bench-{uuid.uuid4().hex[:6]}"
        root, *more = self.new_volumes(1 + data)
        self.guests.append(name)
        run(af("boot", name, "--volume", root, "--host", host, "--memory", str(memory),
               *([] if with_os else ["--no-kernel"])))
        if with_os:
            self.wait_booted(host, name)
        for vol in more:
            run(af("attach", vol, name, "--host", host))
        return Guest(name, root, more, host)

    def boot_many(self, count: int, host: str, memory: int, parallel: int = 4
                  ) -> list[Guest]:
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            return list(pool.map(lambda _i: self.boot(host, memory, with_os=False),
                                 range(count)))

    def wait_booted(self, host: str, name: str, timeout: float = 300) -> None:
        from attachflow.lab.guest import READY_MARKER
        log = (self.manager.state_dir() / "hosts" / host / "var-log-libvirt" / "qemu"
               / f"{name}-console.log")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.exists() and READY_MARKER in log.read_text(errors="replace"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"guest {name} did not boot within {timeout:.0f} s")

    def copy_secrets(self, guest: Guest, to_host: str) -> None:
        """The libvirt secrets of ``guest``'s disks, defined on ``to_host`` too, so that a
        raw ``virsh migrate`` can move it with its XML unchanged (made ahead, not timed)."""
        import libvirt
        from attachflow import domxml
        xml = self.conn(guest.host).lookupByName(guest.name).XMLDesc(0)
        conn = self.conn(to_host)
        for vol in guest.volumes:
            disk = domxml.find_disk(xml, vol)
            att = self.cinder.volumes.get(vol).attachments[0]["attachment_id"]
            password = self.cinder.attachments.show(att).connection_info["auth_password"]
            try:
                conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI,
                                         disk.source.secret_usage).undefine()
            except libvirt.libvirtError:
                pass
            secret = conn.secretDefineXML(domxml.secret_xml(disk.source.secret_usage,
                                                            "bench"))
            secret.setValue(password.encode())

    def attachments(self, volume: str) -> list[str]:
        return [a["attachment_id"] for a in self.cinder.volumes.get(volume).attachments]

    # -- cleanup ---------------------------------------------------------------------------
    def cleanup(self) -> None:
        """Remove every guest (on both hosts), secret, attachment and volume this run
        made; each failure is printed and the rest goes on."""
        for host in HOSTS:
            self._remove_guests(host)
            self._remove_secrets(host)
        for vol in self.volumes:
            try:
                for att in self.attachments(vol):
                    self.cinder.attachments.delete(att)
                self._wait_settled(vol)
                self.cinder.volumes.delete(vol)
            except Exception as exc:  # a volume deleted already, or Cinder's refusal
                print(f"  cleanup of volume {vol}: {exc}", flush=True)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _remove_guests(self, host: str) -> None:
        import libvirt
        for name in self.guests:
            try:
                dom = self.conn(host).lookupByName(name)
            except libvirt.libvirtError:
                continue
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError as exc:
                print(f"  cleanup of guest {name} on {host}: {exc}", flush=True)

    def _remove_secrets(self, host: str) -> None:
        import libvirt
        for secret in self.conn(host).listAllSecrets():
            usage = secret.usageID() or ""
            if any(vol in usage for vol in self.volumes):
                try:
                    secret.undefine()
                except libvirt.libvirtError as exc:
                    print(f"  cleanup of secret {usage} on {host}: {exc}", flush=True)

    def _wait_settled(self, volume: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cinder.volumes.get(volume).status in ("available", "error"):
                return
            time.sleep(0.2)
