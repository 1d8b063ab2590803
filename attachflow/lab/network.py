"""The lab network: bridge ``afbr0`` with the storage address in the root namespace, and one
network namespace per compute host joined to it by a veth pair.

Side effects owned: the bridge, the veths, the ``af-*`` network namespaces, and /run/netns
when the lab created it (``ip netns add`` makes it and bind-mounts it onto itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

from attachflow.lab import layout
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.shell import is_mount_point, run, tail

_CREATED = "created-netns.json"


def namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.strip() and line.startswith(layout.NETNS_PREFIX)]


def link_exists(name: str) -> bool:
    return run(["ip", "link", "show", name], check=False).returncode == 0


def netns(host: str) -> str:
    return layout.NETNS_PREFIX + host


def add_portal(ip: str) -> None:
    """One of the storage side's portal addresses on the bridge (tgtd listens on all)."""
    cidr = f"{ip}/{layout.PREFIX_LEN}"
    if f" {cidr} " not in run(["ip", "-o", "-4", "addr", "show", "dev",
                               layout.BRIDGE]).stdout:
        run(["ip", "addr", "add", cidr, "dev", layout.BRIDGE])


class Network(Component):
    name = "network"
    apt_packages = ("iproute2",)

    def up(self, lab: Lab) -> None:
        bridge = layout.BRIDGE
        if not link_exists(bridge):
            run(["ip", "link", "add", bridge, "type", "bridge"])
        # The storage side's two portals: every volume has two paths (multipath).
        for ip in (layout.STORAGE_IP, layout.STORAGE_IP_2):
            add_portal(ip)
        run(["ip", "link", "set", bridge, "up"])
        existing = namespaces()
        if not existing:
            created = layout.load_json(layout.path(_CREATED), {})
            created.setdefault("dir", not layout.NETNS_DIR.exists())
            created.setdefault("mount", not is_mount_point(layout.NETNS_DIR))
            layout.write(layout.path(_CREATED), json.dumps(created))
        for host, addr in layout.HOSTS.items():
            ns, veth = netns(host), layout.VETH_PREFIX + host
            if ns not in existing:
                run(["ip", "netns", "add", ns])
            if not link_exists(veth):
                run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                     "netns", ns])
            run(["ip", "link", "set", veth, "master", bridge, "up"])
            inner = ["ip", "netns", "exec", ns]
            run(inner + ["ip", "link", "set", "lo", "up"])
            run(inner + ["ip", "link", "set", "eth0", "up"])
            cidr_h = f"{addr}/{layout.PREFIX_LEN}"
            if f" {cidr_h} " not in run(inner + ["ip", "-o", "-4", "addr", "show", "dev",
                                                 "eth0"]).stdout:
                run(inner + ["ip", "addr", "add", cidr_h, "dev", "eth0"])

    def down(self, lab: Lab) -> list[str]:
        problems = []
        for ns in namespaces():
            # The hosts' own processes are gone with their cgroups by now; anything still
            # in a lab namespace was started there by hand and would keep it alive.
            for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            cp = run(["ip", "netns", "del", ns], check=False)
            if cp.returncode != 0:
                problems.append(f"ip netns del {ns}: {tail(cp.stderr)}")
        self._release_netns_dir(problems)
        for link in [layout.BRIDGE] + [layout.VETH_PREFIX + h for h in layout.HOSTS]:
            if link_exists(link):
                cp = run(["ip", "link", "del", link], check=False)
                # A veth vanishes with its peer's namespace, possibly meanwhile (the
                # kernel then says "Cannot find device" or "No such device"): only a
                # link that is still there is a problem.
                if cp.returncode != 0 and link_exists(link):
                    problems.append(f"ip link del {link}: {tail(cp.stderr)}")
        return problems

    @staticmethod
    def _release_netns_dir(problems: list[str]) -> None:
        created = layout.load_json(layout.path(_CREATED), {})
        nsdir = layout.NETNS_DIR
        if not nsdir.is_dir() or any(nsdir.iterdir()):
            return  # other namespaces live there: not the lab's to take away
        if created.get("mount") and is_mount_point(nsdir):
            cp = run(["umount", str(nsdir)], check=False)
            if cp.returncode != 0:
                problems.append(f"umount {nsdir}: {tail(cp.stderr)}")
        if created.get("dir"):
            with contextlib.suppress(OSError):
                nsdir.rmdir()

    def status(self, lab: Lab) -> Status:
        up = link_exists(layout.BRIDGE)
        return Status("up" if up else "down",
                      address=f"{layout.STORAGE_IP}/{layout.PREFIX_LEN}",
                      details={"bridge": layout.BRIDGE, "namespaces": namespaces()})

