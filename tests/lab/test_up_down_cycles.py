"""`attachflow lab down` leaves nothing behind, however busy the lab was, cycle after cycle.

Runs after the other lab modules (it takes the lab down and up again, five times). Each
cycle leaves work behind for down to clean up: a running guest (a QEMU process libvirtd
forked away from its supervisor), a process started by hand inside a host's namespace, and
open ssh connection-sharing masters; then `lab down` must return with no process of the
lab left, found by name in /proc, not by the lab's own bookkeeping.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

import attachflow.lab as lab_api
from attachflow.lab import layout
from labenv import evaluated
from leftovers import cgroup_dir, daemon_pids, leftovers

pytestmark = pytest.mark.lab

CYCLES = 5


def _start_guest(host: str) -> str:
    """A transient diskless guest: QEMU runs (the firmware finds nothing to boot)."""
    name = f"cycle-{uuid.uuid4().hex[:8]}"
    xml = (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory>"
           "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
           "<devices><serial type='pty'/></devices></domain>")
    subprocess.run(["virsh", "-c", layout.libvirt_uri(host), "create", "/dev/stdin"],
                   input=xml, text=True, check=True, capture_output=True, timeout=60)
    return name


def test_five_up_down_cycles_leave_no_process():
    lab_api.up(echo=lambda _m: None)
    # Daemon-like processes that are not the lab's: anything else found later is a leak.
    outside = {pid: cmd for pid, cmd in daemon_pids().items()
               if str(lab_api.state_dir()) not in cmd and layout.RABBIT_NODE not in cmd}
    in_lab = {int(pid) for procs in cgroup_dir().rglob("cgroup.procs")
              for pid in procs.read_text().split()}
    outside = {p: c for p, c in outside.items() if p not in in_lab}
    previous_env = evaluated(lab_api.env_lines())
    for cycle in range(CYCLES):
        guest = _start_guest("hosta")
        # A process an operator started by hand inside hostb's network namespace.
        stray = subprocess.Popen(["ip", "netns", "exec", f"{layout.NETNS_PREFIX}hostb",
                                  "sleep", "600"])
        running = lab_api.status()
        assert running["state"] == "up", (cycle, running)
        qemu = [c for c in daemon_pids().values() if f"guest={guest}" in c]
        assert qemu, f"cycle {cycle}: the guest's QEMU is not running"

        t0 = time.monotonic()
        lab_api.down(echo=lambda _m: None)
        took = time.monotonic() - t0
        stray.wait(timeout=5)  # raises if the process outlived the lab
        left = leftovers(before=outside)
        assert not left, f"cycle {cycle}: lab down ({took:.1f}s) left {left}"

        # Every other lab runs without Keystone, as `lab up --auth noauth` asks.
        auth = "noauth" if cycle % 2 == 1 else "keystone"
        status = lab_api.up(echo=lambda _m: None, auth=auth)
        assert status["state"] == "up", (cycle, status)
        assert status["auth"] == auth
        assert ("keystone" in status["components"]) == (auth == "keystone")
        assert status["supervisor"]["processes"] > 0
        # Cinder answers a client set up by `lab env`, in a shell that evaluated the
        # previous lab's lines (of the other kind) before: nothing of those is left.
        env = evaluated(lab_api.env_lines(), base=previous_env)
        previous_env = env
        assert ("OS_AUTH_TYPE" in env) == (auth == "noauth")
        assert ("OS_CLOUD" in env) == (auth == "keystone")
        assert "OS_PASSWORD" not in env
        from attachflow.identity import make_session
        sess, endpoint = make_session(env=env)
        from cinderclient import client
        volumes = client.Client("3.71", session=sess, endpoint_override=endpoint).volumes
        assert volumes.list() == []
        if auth == "noauth":
            with pytest.raises(lab_api.LabError, match="runs with noauth"):
                lab_api.up(echo=lambda _m: None, auth="keystone")
