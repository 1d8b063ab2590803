"""What of the lab is still on the machine, looked up independently of the lab's own code:
namespaces, links, tgtd targets, files, mounts, and processes found by name in /proc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import attachflow.lab as lab_api
from attachflow.lab import layout
from attachflow.lab.computehost import MOUNT_POINTS

# Programs the lab runs; after `lab down` none may be left that was not there before.
DAEMONS = {"tgtd", "mariadbd", "beam.smp", "epmd", "erl_child_setup", "inet_gethost",
           "libvirtd", "virtlogd", "sshd", "supervisord", "qemu-system-x86", "cinder-api",
           "cinder-schedule", "gunicorn", "cinder-volume", "privsep-helper", "sleep", "ssh"}


def cgroup_dir() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[2] == "cgroup2":
            return Path(fields[1]) / layout.CGROUP_NAME
    raise AssertionError("no cgroup2 mount")


def daemon_pids() -> dict[int, str]:
    """pid -> command line of every running process named like a lab daemon. Zombies
    (exited, waiting for the machine's init to reap them) run nothing and do not count."""
    found = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":
                continue
            comm = (p / "comm").read_text().strip()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if comm in DAEMONS or comm.startswith("python") and "cinder-" in cmd:
            found[int(p.name)] = cmd[:100]
    return found


def leftovers(before: dict[int, str] | None = None) -> list[str]:
    """Everything of the lab still on the machine (empty when clean). ``before``: the
    daemon-like processes that ran before the lab and are not its own."""
    found = []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line.split()[0]}" for line in netns.splitlines()
              if line.startswith(layout.NETNS_PREFIX)]
    for link in [layout.BRIDGE] + [layout.VETH_PREFIX + h for h in lab_api.HOSTS] + \
            [layout.TAP_PREFIX + n for n in layout.NODES]:
        if subprocess.run(["ip", "link", "show", link], capture_output=True).returncode == 0:
            found.append(f"link {link}")
    if cgroup_dir().exists():
        found.append(f"cgroup {cgroup_dir()}")
    tgt = subprocess.run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
                         capture_output=True, text=True)
    if tgt.returncode == 0:
        found += [line for line in tgt.stdout.splitlines() if line.startswith("Target ")]
    for path in (lab_api.state_dir(), layout.TGT_INCLUDE):
        if path.exists():
            found.append(f"file {path}")
    state = str(lab_api.state_dir())
    for pid, cmd in daemon_pids().items():
        if before is not None and pid not in before:
            found.append(f"process {pid}: {cmd}")
        elif state in cmd or layout.RABBIT_NODE in cmd:
            found.append(f"process {pid}: {cmd}")
    if state in Path("/proc/self/mountinfo").read_text():
        found.append("mount under the state dir")
    return found


def machine_paths() -> dict[str, bool]:
    """Paths of the machine the lab may create and must then remove again."""
    from attachflow.lab.shell import is_mount_point
    paths = [*MOUNT_POINTS, str(layout.NETNS_DIR), str(layout.TGT_RUN_DIR)]
    state = {p: os.path.exists(p) for p in paths}
    state["mount /run/netns"] = is_mount_point(layout.NETNS_DIR)
    return state
