"""SSH between the lab's machines: keys and known hosts (``ssh-keys``), and the check that
every compute host reaches every other over ssh, as qemu+ssh migrations do (``ssh-mesh``).

Side effects owned: the key pairs, known_hosts and authorized_keys files in the state dir,
and the ssh wrapper that libvirt's qemu+ssh transport runs.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from attachflow.lab import layout
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError
from attachflow.lab.shell import port_open, run, tail


def host_dir(host: str) -> Path:
    return layout.path("hosts", host)


def client_key() -> Path:
    return layout.path("ssh", "id_ed25519")


def known_hosts() -> Path:
    return layout.path("ssh", "known_hosts")


def _keygen(key: Path, comment: str) -> None:
    if not key.exists():
        key.parent.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)])


def _pub(key: Path) -> str:
    return Path(str(key) + ".pub").read_text().strip()


def ssh_argv(host: str, *remote: str) -> list[str]:
    """ssh from the root namespace to a lab host, through the lab's wrapper."""
    return [str(layout.ssh_wrapper()), f"root@{layout.address(host)}", "--", *remote]


class SshKeys(Component):
    name = "ssh-keys"
    apt_packages = ("openssh-client",)

    def up(self, lab: Lab) -> None:
        sdir = layout.path("ssh")
        sdir.mkdir(parents=True, exist_ok=True)
        os.chmod(sdir, 0o700)
        _keygen(client_key(), "attachflow-lab")
        # The compute-node VMs' keys too, whether or not they are brought up: the known
        # hosts file then serves either kind of lab.
        machines = {**layout.HOSTS, **layout.NODES}
        known = []
        for host, addr in machines.items():
            _keygen(host_dir(host) / "ssh_host_ed25519_key", f"root@{host}")
            _keygen(host_dir(host) / "root-ssh" / "id_ed25519", f"root@{host}")
            host_key = " ".join(_pub(host_dir(host) / "ssh_host_ed25519_key").split()[:2])
            known.append(f"{host},{addr} {host_key}\n")
        layout.write(known_hosts(), "".join(known))
        authorized = [_pub(client_key())] + [
            _pub(host_dir(h) / "root-ssh" / "id_ed25519") for h in machines]
        for host in machines:
            rs = host_dir(host) / "root-ssh"
            os.chmod(rs, 0o700)
            layout.write(rs / "authorized_keys", "\n".join(authorized) + "\n", 0o600)
            layout.write(rs / "known_hosts", "".join(known))
            layout.render("ssh/client-config", rs / "config", 0o600)
        mux = str(sdir / "cm-%C")
        # ssh refuses control paths longer than a unix socket name once %C is expanded.
        mux_options = (f"-o ControlMaster=auto -o ControlPath={shlex.quote(mux)} "
                       "-o ControlPersist=30 ") if len(mux) + 40 < 100 else ""
        layout.render("ssh/wrapper", layout.ssh_wrapper(), 0o755,
                      key=shlex.quote(str(client_key())),
                      known_hosts=shlex.quote(str(known_hosts())),
                      clients_cgroup=shlex.quote(str(lab.cgroup.group(self.name))),
                      mux_options=mux_options)

    def down(self, lab: Lab) -> list[str]:
        # Connection-sharing masters started by libvirt clients (not by supervisord).
        lab.cgroup.kill(self.name)
        return []

    def status(self, lab: Lab) -> Status:
        ok = client_key().exists() and layout.ssh_wrapper().exists()
        return Status("up" if ok else "down", details={"key": str(client_key()), "known_hosts": str(known_hosts())})


class SshMesh(Component):
    """Every compute host logs in to every other with the lab's keys."""
    ready_timeout = 20

    def __init__(self, hosts: tuple[str, ...], name: str = "ssh-mesh") -> None:
        self.name = name
        self.hosts = hosts
        self.requires = hosts

    def _pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a in self.hosts for b in self.hosts if a != b]

    def _check(self, src: str, dst: str) -> str | None:
        cp = run(ssh_argv(src, "ssh", dst, "hostname"), check=False, timeout=30)
        if cp.returncode != 0 or cp.stdout.strip() != dst:
            return f"ssh {src} -> {dst}: {tail(cp.stderr) or cp.stdout.strip()}"
        return None

    def ready(self, lab: Lab) -> bool:
        for src, dst in self._pairs():
            why = self._check(src, dst)
            if why:
                raise LabError(why)
        return True

    def status(self, lab: Lab) -> Status:
        if not all(port_open(layout.address(h), 22) for h in self.hosts):
            return Status("down", details={"pairs": [f"{a}->{b}" for a, b in self._pairs()]})
        # One direction per pair is enough to show the keys and daemons agree.
        failures = [w for a, b in self._pairs()[:1] if (w := self._check(a, b))]
        return Status("down" if failures else "up",
                      details={"pairs": [f"{a}->{b}" for a, b in self._pairs()],
                               **({"error": failures[0]} if failures else {})})
