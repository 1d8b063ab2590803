"""tgtd, the storage host's iSCSI target, which Cinder's tgtadm helper drives.

Side effects owned: the tgtd daemon, the tgt include file that makes ``tgt-admin`` read
Cinder's per-volume target files, and tgtd's control socket directory.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from attachflow.lab import layout, machine_paths
from attachflow.lab.component import Component, Lab, Status
from attachflow.lab.errors import LabError
from attachflow.lab.shell import run, wait_for
from attachflow.lab.supervision import Program

_SHOW = ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"]


def _tgtd_pids() -> set[int]:
    found = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() == "tgtd":
                    found.add(int(d.name))
    return found


def parse_targets(text: str) -> dict[str, dict]:
    """tgtadm's target list -> {iqn: {accounts, initiators, backing}}."""
    targets: dict[str, dict] = {}
    current = None
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^Target (\d+): (\S+)$", line)
        if m:
            current = targets.setdefault(m.group(2), {"tid": m.group(1), "accounts": [],
                                                      "initiators": [], "backing": []})
            section = None
            continue
        if current is None:
            continue
        if line in ("I_T nexus information:", "LUN information:", "Account information:",
                    "ACL information:"):
            section = line
            continue
        if section == "I_T nexus information:" and line.startswith("Initiator:"):
            current["initiators"].append(line.split()[1])
        elif section == "LUN information:" and line.startswith("Backing store path:"):
            path = line.split(":", 1)[1].strip()
            if path and path != "None":
                current["backing"].append(path)
        elif section == "Account information:" and line:
            current["accounts"].append(line.split()[0])
    return targets


def targets() -> dict[str, dict]:
    """tgtd's targets now, as ``parse_targets`` gives them."""
    return parse_targets(run(_SHOW, timeout=30).stdout)


class Tgtd(Component):
    name = "tgtd"
    requires = ("network",)
    apt_packages = ("tgt", "libiscsi-bin")
    ready_timeout = 15

    def volumes_dir(self) -> Path:
        return layout.path("cinder", "volumes")

    def programs(self) -> list[Program]:
        portal = f"portal={layout.STORAGE_IP}:{layout.ISCSI_PORT}"
        # tgtd ignores SIGTERM: down empties it and asks it to exit first.
        return [Program("tgtd", ["tgtd", "-f", "--iscsi", portal], group=self.name,
                        stop_signal="KILL", stop_wait=3)]

    def up(self, lab: Lab) -> None:
        if not lab.program_pids(["tgtd"]):
            others = _tgtd_pids() - lab.cgroup.pids(self.name)
            if others:
                raise LabError(f"a tgtd not started by the lab is running (pid "
                               f"{min(others)}); Cinder's tgtadm helper talks to the "
                               "default tgtd control socket, so stop it first")
        machine_paths.note_created([layout.TGT_RUN_DIR])
        self.volumes_dir().mkdir(parents=True, exist_ok=True)
        layout.render("tgt-include.conf", layout.TGT_INCLUDE,
                      volumes_dir=str(self.volumes_dir()))
        super().up(lab)

    def ready(self, lab: Lab) -> bool:
        if run(_SHOW, check=False, timeout=10).returncode != 0:
            return False
        # tgtd's command line takes one portal; the second (multipath) is added live.
        portals = run(["tgtadm", "--lld", "iscsi", "--mode", "portal", "--op", "show"],
                      timeout=10).stdout
        second = f"{layout.STORAGE_IP_2}:{layout.ISCSI_PORT}"
        if second not in portals:
            run(["tgtadm", "--lld", "iscsi", "--mode", "portal", "--op", "new", "--param",
                 f"portal={second}"], timeout=10)
        return True

    def down(self, lab: Lab) -> list[str]:
        if lab.program_pids(["tgtd"]):
            for line in run(_SHOW, check=False, timeout=10).stdout.splitlines():
                if line.startswith("Target ") and ":" in line:
                    tid = line.split()[1].rstrip(":")
                    run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete",
                         "--force", "--tid", tid], check=False, timeout=10)
            run(["tgtadm", "--op", "delete", "--mode", "system"], check=False, timeout=10)
            with contextlib.suppress(LabError):
                wait_for("tgtd exit", lambda: not lab.program_pids(["tgtd"]), timeout=3,
                         interval=0.05)
        problems = super().down(lab)
        layout.TGT_INCLUDE.unlink(missing_ok=True)
        if not _tgtd_pids() and layout.TGT_RUN_DIR.is_dir():
            # tgtd leaves its control socket behind when stopped by a signal.
            for f in layout.TGT_RUN_DIR.glob("socket.0*"):
                with contextlib.suppress(OSError):
                    f.unlink()
        return problems

    def status(self, lab: Lab) -> Status:
        st = super().status(lab)
        st.address = f"{layout.STORAGE_IP}:{layout.ISCSI_PORT}"
        st.details["portal"] = st.address
        st.details["portals"] = [f"{ip}:{layout.ISCSI_PORT}"
                                 for ip in (layout.STORAGE_IP, layout.STORAGE_IP_2)]
        if st.state == "up":
            out = run(_SHOW, check=False, timeout=10).stdout
            st.details["targets"] = sum(1 for l in out.splitlines() if l.startswith("Target "))
        return st
