"""A compute host: a network, mount and UTS namespace of its own with private libvirt
state, running virtlogd, libvirtd and sshd on the host's address.

Side effects owned: the host's directory in the state dir (libvirt config and state, logs,
its /etc/hosts and initiator name), the namespace holder and the three daemons, every
process they start (QEMU), and the mount points the hosts need on the machine.
"""

from __future__ import annotations

import contextlib
import shutil
import uuid
from pathlib import Path

from attachflow.lab import guest, layout, machine_paths
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError
from attachflow.lab.network import netns
from attachflow.lab.shell import port_open, run, tail, wait_for
from attachflow.lab.ssh import client_key, host_dir, known_hosts
from attachflow.lab.supervision import Program

# Directories that must exist in the root mount namespace to serve as bind mount points
# inside the hosts; created on demand and removed by down().
MOUNT_POINTS = ["/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
                "/var/cache/libvirt", "/root/.ssh"]
_CAPS_CACHE = layout.CACHE_DIR / "qemu-capabilities"
PARTS = ("namespaces", "virtlogd", "libvirtd", "sshd")


def virsh_ok(host: str, timeout: float = 20) -> bool:
    uri = layout.libvirt_uri(host)
    cp = run(["virsh", "-c", uri, "list", "--all"], check=False, timeout=timeout)
    if cp.returncode != 0:
        raise LabError(f"virsh -c {uri} list: {tail(cp.stderr)}")
    return True


class ComputeHost(Component):
    apt_packages = ("libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",
                    "qemu-system-x86", "qemu-block-extra", "qemu-utils", "open-iscsi",
                    "openssh-server", "util-linux")
    requires = ("network", "ssh-keys")

    def __init__(self, host: str) -> None:
        self.name = host
        self.address = layout.HOSTS[host]
        self.dir = host_dir(host)
        self._warm = False

    def _program_names(self) -> dict[str, str]:
        return {part: f"{self.name}-{'ns' if part == 'namespaces' else part}"
                for part in PARTS}

    def programs(self) -> list[Program]:
        enter = str(self.dir / "enter")
        n = self._program_names()
        return [
            Program(n["namespaces"], ["ip", "netns", "exec", netns(self.name), "unshare",
                                      "--mount", "--uts", "--propagation", "private",
                                      "sh", str(self.dir / "setup.sh")],
                    group=self.name, autorestart=False),
            Program(n["virtlogd"], [enter, "virtlogd"], group=self.name),
            Program(n["libvirtd"], [enter, "libvirtd"], group=self.name),
            Program(n["sshd"], [enter, "/usr/sbin/sshd", "-D", "-f",
                                str(self.dir / "sshd_config"), "-E",
                                str(self.dir / "log" / "sshd.log")], group=self.name),
        ]

    def _write_files(self) -> None:
        for sub in ("etc-libvirt", "var-lib-libvirt/qemu", "var-log-libvirt/qemu",
                    "var-cache-libvirt", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        etc = self.dir / "etc-libvirt"
        uuid_file = self.dir / "host_uuid"
        if not uuid_file.exists():
            uuid_file.write_text(str(uuid.uuid4()))
        # The machine's other libvirt files (network, nwfilter defaults) as installed.
        if Path("/etc/libvirt").is_dir():
            for f in Path("/etc/libvirt").iterdir():
                if f.is_file() and not (etc / f.name).exists():
                    shutil.copy2(f, etc / f.name)
        values = dict(host=self.name, address=self.address, host_dir=str(self.dir),
                      host_uuid=uuid_file.read_text().strip(),
                      initiator=layout.initiator_name(self.name))
        for name in ("libvirtd.conf", "qemu.conf", "virtlogd.conf", "libvirt.conf"):
            layout.render(f"host/{name}", etc / name, **values)
        for name in ("hosts", "initiatorname.iscsi", "sshd_config"):
            layout.render(f"host/{name}", self.dir / name, **values)
        for name in ("setup.sh", "enter"):
            layout.render(f"host/{name}", self.dir / name, 0o755, **values)
        # libvirtd probes QEMU (seconds of TCG start-ups per host) unless it finds a valid
        # capabilities cache; it checks QEMU's and its own versions and re-probes when
        # they differ, so a stale copy costs nothing.
        caps = self.dir / "var-cache-libvirt" / "qemu" / "capabilities"
        if _CAPS_CACHE.is_dir() and not caps.is_dir():
            shutil.copytree(_CAPS_CACHE, caps)

    def hosts_entry(self) -> str:
        """This host's entry in the hosts file that `lab env` points attachflow at."""
        q = layout.toml_string
        return layout.render_text(
            "host/hosts-entry.toml", host=self.name, address=q(self.address),
            ssh_key=q(str(client_key())), known_hosts=q(str(known_hosts())),
            libvirt_uri=q(layout.libvirt_uri(self.name)),
            remote_command=q(layout.remote_command()),
            # The hosts see the lab machine's state dir, where the guest image is.
            boot_kernel=q(str(guest.image_dir() / "vmlinuz")),
            boot_initrd=q(str(guest.image_dir() / "initrd.img")),
            boot_cmdline=q(guest.CMDLINE))

    def up(self, lab: Lab) -> None:
        machine_paths.note_created([Path(mp) for mp in MOUNT_POINTS], make=True)
        self._write_files()
        n = self._program_names()
        sup = lab.supervisor
        if not lab.program_pids([n["namespaces"]]):
            # Fresh namespaces mean fresh mounts: nothing of the old ones may stay.
            for part in reversed(PARTS[1:]):
                sup.stop(n[part])
            lab.cgroup.kill(self.name)
            pid_file = self.dir / "ns.pid"
            pid_file.unlink(missing_ok=True)
            sup.start(n["namespaces"])

            def prepared() -> bool:
                pids = lab.program_pids([n["namespaces"]])
                return bool(pids) and pid_file.exists() and \
                    int(pid_file.read_text()) == pids[0]
            wait_for(f"{self.name} namespaces", prepared, timeout=10, interval=0.02,
                     dead=lambda: sup.failure([n["namespaces"]]))
        for part in PARTS[1:]:
            sup.start(n[part])

    def ready(self, lab: Lab) -> bool:
        if not port_open(self.address, 22):
            return False
        virsh_ok(self.name)
        if not self._warm:
            # libvirtd probes QEMU's capabilities on first need (seconds of TCG
            # start-ups); pay that here rather than in the first domain start.
            run(["virsh", "-c", layout.libvirt_uri(self.name), "capabilities"], timeout=120)
            self._warm = True
            caps = self.dir / "var-cache-libvirt" / "qemu" / "capabilities"
            if caps.is_dir() and not _CAPS_CACHE.is_dir():
                tmp = _CAPS_CACHE.with_name(f"{_CAPS_CACHE.name}.{self.name}.tmp")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(caps, tmp)
                with contextlib.suppress(OSError):  # the other host may have been first
                    tmp.rename(_CAPS_CACHE)
                shutil.rmtree(tmp, ignore_errors=True)
        return True

    def status(self, lab: Lab) -> Status:
        infos = lab.supervisor.infos()
        parts = {}
        for part, prog in self._program_names().items():
            info = infos.get(prog)
            alive = bool(info and info.alive)
            parts[part] = {"state": "up" if alive else "down",
                           "pid": info.pid if alive and info else None}
        st = Status("up" if all(p["state"] == "up" for p in parts.values()) else "down",
                    [p["pid"] for p in parts.values() if p["pid"]], address=self.address,
                    details={"netns": netns(self.name),
                             "libvirt_uri": layout.libvirt_uri(self.name),
                             "ssh": f"root@{self.address}:22", **parts})
        if st.state == "up":
            try:
                virsh_ok(self.name, timeout=10)
            except LabError as e:
                st.state = "down"
                parts["libvirtd"]["state"] = "not answering"
                st.details["error"] = str(e)
        return st
