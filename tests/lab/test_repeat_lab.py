"""On the lab: every operation is safe to repeat (attach twice, detach twice, boot of a
running guest from the same volume), and the boot-time hook example attaches a guest's
declared volumes before it starts and detaches them after it stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_e2e import APIS, assert_attached, assert_detached, boot, lab_state

HOOK = Path(__file__).resolve().parents[2] / "examples" / "hooks" / "attachflow-guest"


@pytest.mark.parametrize("api", APIS)
def test_every_operation_is_safe_to_repeat(lab, cleanup, api):
    vm, root = boot(lab, cleanup, "hosta", api)
    before = lab_state(lab)
    again = lab.af_json("boot", vm, "--volume", root, "--host", "hosta", "--api", api)
    assert again["already"] is True and again["device"] == "vda" and again["steps"] == []
    assert again["schema_version"] == 1
    assert lab_state(lab) == before

    data = lab.create_volume()
    cleanup["volumes"].append(data)
    first = lab.af_json("attach", data, vm, "--host", "hosta", "--api", api)
    assert first["already"] is False and first["device"] == "vdb"
    attached = lab_state(lab)
    again = lab.af_json("attach", data, vm, "--host", "hosta", "--api", api)
    assert again["already"] is True and again["device"] == "vdb"
    assert again["attachment_id"] == lab.attachments(data)[0]["attachment_id"]
    assert lab_state(lab) == attached
    assert_attached(lab, data, "hosta", vm, "vdb")
    refused = lab.af("attach", data, vm, "--host", "hosta", "--device", "vdc", expect=2)
    assert "already attached to" in refused.stderr and "not vdc" in refused.stderr
    assert lab_state(lab) == attached

    lab.af_json("detach", data, vm, "--host", "hosta")
    detached = lab_state(lab)
    again = lab.af_json("detach", data, vm, "--host", "hosta")
    assert again["already"] is True and again["device"] is None
    assert lab_state(lab) == detached
    assert_detached(lab, data, "hosta", vm)
    strict = lab.af("detach", data, vm, "--host", "hosta", "--strict", expect=2)
    assert "is not attached to" in strict.stderr
    assert lab_state(lab) == detached


def run_hook(action: str, vm: str, guests: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HOOK), action, vm, "--host", "hosta",
                           "--guests-dir", str(guests), "--shutdown-timeout", "5"],
                          capture_output=True, text=True, timeout=600, env=os.environ)


def test_the_hook_example_attaches_before_start_and_detaches_after_stop(lab, cleanup,
                                                                          tmp_path):
    vm, root = boot(lab, cleanup, "hosta", "attachments")
    lab.conn("hosta").lookupByName(vm).destroy()       # defined, shut off
    data = lab.create_volume()
    cleanup["volumes"].append(data)
    (tmp_path / f"{vm}.toml").write_text(
        f'transport = "native"\n[[volumes]]\nid = "{data}"\ndevice = "vdc"\n')

    proc = run_hook("start", vm, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{data}: attached as vdc" in proc.stdout and f"{vm}: started" in proc.stdout
    assert lab.conn("hosta").lookupByName(vm).isActive()
    lab.wait_guest_ready("hosta", vm)
    assert_attached(lab, data, "hosta", vm, "vdc")
    assert_attached(lab, root, "hosta", vm, "vda")

    started = lab_state(lab)
    proc = run_hook("start", vm, tmp_path)                # a retried unit
    assert proc.returncode == 0, proc.stderr
    assert f"{data}: already attached as vdc" in proc.stdout and "was running" in proc.stdout
    assert lab_state(lab) == started

    # The lab's guest has no ACPI power-off handler: the hook says so and keeps the
    # volumes; once the guest is off (an operator's `virsh destroy`), stop detaches them.
    proc = run_hook("stop", vm, tmp_path)
    assert proc.returncode == 1 and "did not shut down within 5 s" in proc.stderr
    assert lab_state(lab) == started
    lab.conn("hosta").lookupByName(vm).destroy()
    proc = run_hook("stop", vm, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{data}: detached" in proc.stdout
    assert_detached(lab, data, "hosta", vm)
    assert lab.volume(root).status == "in-use"            # the root volume stays


def test_a_hundred_attach_detach_cycles_leave_nothing_behind(lab, cleanup):
    """One guest, one volume, 100 attach + detach cycles through the library: no
    attachment, host connection, libvirt secret or file descriptor left, and the journal
    holds exactly what `operations --all` shows."""
    import attachflow
    vm, root = boot(lab, cleanup, "hosta", "attachments")
    data = lab.create_volume()
    cleanup["volumes"].append(data)
    before = lab_state(lab)
    with attachflow.Client() as client:
        def cycle():
            assert client.attach(data, vm, host="hosta").device == "vdb"
            assert client.detach(data, vm, host="hosta").already is False
        cycle()  # the first one opens what the client keeps open
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(99):
            cycle()
        assert len(os.listdir("/proc/self/fd")) <= fds, "file descriptors leaked"
        ops = [op for op in client.operations(include_finished=True) if op.domain == vm]
        everything = client.operations(include_finished=True)
        counts = client.tracker.journal.counts()
    assert [(op.kind, op.state) for op in ops].count(("attach", "done")) == 100
    assert [(op.kind, op.state) for op in ops].count(("detach", "done")) == 100
    assert counts == {"operations": len(everything),
                      "steps": sum(len(op.steps) for op in everything)}
    assert_detached(lab, data, "hosta", vm)
    assert lab_state(lab) == before
    assert [u for u in lab.secrets("hosta") if data in u] == []
