"""The lab's cgroup: ``attachflow-lab`` on the machine's cgroup v2 hierarchy, with one
sub-group per component.

Side effect owned: those cgroups, and the SIGKILL of what is left in them. Every process
the lab starts goes in through the ``in-cgroup`` launcher and stays there with all its
descendants, however they daemonize, so the lab's processes are exactly the cgroup's.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from attachflow.lab import layout
from attachflow.lab.errors import LabError



class Cgroup:
    """``attachflow-lab`` and its per-component sub-groups on the cgroup v2 hierarchy."""

    def __init__(self) -> None:
        self.root = self._find_root() / layout.CGROUP_NAME

    @staticmethod
    def _find_root() -> Path:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
        raise LabError("no cgroup v2 hierarchy is mounted (the lab keeps its processes in "
                       "a cgroup so that it can find and stop all of them)")

    def group(self, name: str) -> Path:
        """The sub-group of one component, created on first use."""
        g = self.root / name
        try:
            g.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LabError(f"cannot create cgroup {g}: {e.strerror}") from e
        return g

    def pids(self, name: str | None = None) -> set[int]:
        top = self.root / name if name else self.root
        found: set[int] = set()
        if not top.is_dir():
            return found
        for procs in top.rglob("cgroup.procs"):
            try:
                found.update(int(p) for p in procs.read_text().split())
            except OSError:
                continue
        return found

    def populated(self, name: str | None = None) -> bool:
        top = self.root / name if name else self.root
        try:
            events = (top / "cgroup.events").read_text()
        except OSError:
            return False
        return "populated 1" in events

    def kill(self, name: str | None = None, timeout: float = 10) -> None:
        """SIGKILL every process of the group (and sub-groups); return once it is empty."""
        top = self.root / name if name else self.root
        if not top.is_dir():
            return
        kill_file = top / "cgroup.kill"
        if kill_file.exists():
            kill_file.write_text("1")
        else:  # kernels before 5.14: one by one, until none is left
            for pid in self.pids(name):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        while self.populated(name):
            if time.monotonic() > deadline:
                raise LabError(f"processes of cgroup {top} still alive after SIGKILL: "
                               f"{sorted(self.pids(name))}")
            if not kill_file.exists():
                for pid in self.pids(name):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)

    def remove(self) -> None:
        if not self.root.is_dir():
            return
        for g in sorted((p for p in self.root.rglob("*") if p.is_dir()),
                        key=lambda p: len(p.parts), reverse=True):
            g.rmdir()
        self.root.rmdir()
