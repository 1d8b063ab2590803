"""What the lab needs on the machine: Debian packages, the accounts libvirtd insists on,
and a virtual environment with Cinder and supervisord.

Side effects owned: apt installs, the ``kvm``/``libvirt-qemu`` accounts, and the virtual
environment under /opt/attachflow-lab. None of it is removed by ``down``.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable

from attachflow.lab import layout
from attachflow.lab.component import Component
from attachflow.lab.shell import run

# supervisord runs the daemons of every component (supervision.py).
SUPERVISOR_PIP = ("supervisor",)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def missing_apt(components: list[Component]) -> list[str]:
    wanted = _unique(p for c in components for p in c.apt_packages)
    cp = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *wanted],
             check=False)
    installed = {line.split()[0] for line in cp.stdout.splitlines()
                 if line.endswith(" installed")}
    return [p for p in wanted if p not in installed]


def _system_accounts(echo: Callable[[str], None]) -> None:
    # libvirtd resolves its compiled-in default QEMU user and group before it reads
    # qemu.conf (which says root), so they must exist; Debian creates them in
    # libvirt-daemon-system, which needs systemd and is not used here.
    if run(["getent", "group", "kvm"], check=False).returncode != 0:
        echo("creating group kvm")
        run(["groupadd", "-r", "kvm"])
    if run(["getent", "group", "libvirt-qemu"], check=False).returncode != 0:
        echo("creating group libvirt-qemu")
        run(["groupadd", "-r", "libvirt-qemu"])
    if run(["getent", "passwd", "libvirt-qemu"], check=False).returncode != 0:
        echo("creating user libvirt-qemu")
        run(["useradd", "-r", "-g", "kvm", "-d", "/var/lib/libvirt", "-s",
             "/usr/sbin/nologin", "libvirt-qemu"])


def install(components: list[Component], echo: Callable[[str], None]) -> None:
    """Install whatever the components need and the machine lacks."""
    missing = missing_apt(components)
    if missing:
        echo(f"installing Debian packages: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-q"], env=env, timeout=600)
        # With recommends, as the lab was proven with: a slimmer set is untested.
        run(["apt-get", "install", "-y", "-q", *missing], env=env, timeout=1800)
    _system_accounts(echo)
    pip = _unique([*SUPERVISOR_PIP, *(p for c in components for p in c.pip_packages)])
    venv = layout.VENV
    ready = venv / ".attachflow-lab-ready"
    if not ready.exists() or ready.read_text().split() != pip:
        echo(f"installing {', '.join(pip)} into {venv} (pip, about a minute)")
        if not (venv / "bin" / "python").exists():
            run([sys.executable, "-m", "venv", str(venv)], timeout=300)
        run([str(venv / "bin" / "pip"), "install", "-q", *pip], timeout=1800)
        ready.write_text(" ".join(pip) + "\n")
