"""Faults while attachflow works, on the lab: the storage API down for a while, libvirtd
restarted mid-operation. Each is made the way it happens to an operator (supervisorctl
stops or restarts the daemon), at a moment chosen from the operations journal: the
command is paused (SIGSTOP) at a named step, the fault made, and the command resumed.

What is checked is what a user checks: the command's exit and its one error line, then
Cinder's attachments and status, the domain's XML, tgtd's sessions and libvirt's
secrets telling one story (after `attachflow recover` when the command says one is
needed), and the pattern on the volume intact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from attachflow.lab.layout import VENV
from crashes import boundaries_of, unfinished
from story import assert_one_story
from test_crash_recovery import assert_data, data_volume, guest, own_journal, recover

__all__ = ["guest", "own_journal"]  # fixtures, used by name


def supervisorctl(lab, action: str, program: str) -> None:
    config = lab.manager.status()["supervisor"]["config"]
    subprocess.run([str(VENV / "bin" / "supervisorctl"), "-c", config, action, program],
                   check=True, capture_output=True, timeout=120)


def wait_for_storage(lab) -> None:
    """Until Cinder answers again (its API takes seconds to start listening)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            lab.cinder.volumes.list(limit=1)
            return
        except Exception:
            assert time.monotonic() < deadline, "Cinder's API did not come back"
            time.sleep(1)


def paused_at(args: list[str], step: str) -> subprocess.Popen:
    """``attachflow ARGS`` started and stopped (SIGSTOP) once its journal shows ``step``
    begun or passed."""
    proc = subprocess.Popen(["attachflow", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, (args, proc.communicate())
        _op, _count, current, _state = boundaries_of(proc.pid)
        if current is not None and current.startswith(step):
            os.kill(proc.pid, signal.SIGSTOP)
            return proc
        assert time.monotonic() < deadline, f"{args} never reached {step}"
        time.sleep(0.002)


def test_a_storage_api_restarting_when_a_command_starts_is_waited_for(lab, cleanup, guest):
    dom, root = guest("attachments")
    vol = data_volume(lab, cleanup)
    supervisorctl(lab, "stop", "cinder-api")
    try:
        proc = subprocess.Popen(["attachflow", "attach", vol, dom, "--host", "hosta",
                                 "-f", "json"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(5)
    finally:
        supervisorctl(lab, "start", "cinder-api")
        wait_for_storage(lab)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["volume_id"] == vol
    assert assert_one_story(lab, [root, vol], dom) == "hosta"
    assert_data(lab, vol, "hosta", dom)
    lab.af("detach", vol, dom, "--host", "hosta")
    assert_one_story(lab, [root, vol], dom)


def test_a_storage_api_lost_before_a_write_fails_the_command_and_recover_settles_it(
        lab, cleanup, guest):
    """The write is not sent twice; the undo that needs Cinder cannot run while it is
    down, so the command says to recover; once Cinder is back, recover settles it."""
    dom, root = guest("attachments")
    vol = data_volume(lab, cleanup)
    proc = paused_at(["attach", vol, dom, "--host", "hosta"], "record in domain metadata")
    try:
        supervisorctl(lab, "stop", "cinder-api")
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        supervisorctl(lab, "start", "cinder-api")
        wait_for_storage(lab)
    assert proc.returncode in (1, 5), (out, err)
    # progress lines (an undo that could not run) may come first; the error is one line
    error = err.strip().splitlines()[-1]
    assert error.startswith("attachflow: error: ") and "storage API" in error, err
    assert "could NOT undo" in error and "attachflow recover" in error, err
    assert unfinished() != []
    recover(lab, twice=True)
    assert_one_story(lab, [root, vol], dom)
    assert_data(lab, vol, "hosta", dom)


@pytest.mark.parametrize("command,step", [("attach", "guest attach"),
                                          ("detach", "guest detach (live)")])
def test_libvirtd_restarted_mid_operation_is_reconnected(lab, cleanup, guest, command,
                                                         step):
    dom, root = guest("attachments")
    vol = data_volume(lab, cleanup)
    if command == "detach":
        lab.af("attach", vol, dom, "--host", "hosta")
    proc = paused_at([command, vol, dom, "--host", "hosta"], step)
    try:
        supervisorctl(lab, "restart", "hosta-libvirtd")
        lab._conns.pop("hosta", None)  # the checks' own connection went with it
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert unfinished() == []
    assert assert_one_story(lab, [root, vol], dom) == "hosta"
    assert_data(lab, vol, "hosta", dom)
    assert (lab.disk("hosta", dom, vol) is None) == (command == "detach")
    if command == "attach":
        lab.af("detach", vol, dom, "--host", "hosta")


def _guest_without_an_os(lab, cleanup, host: str = "hosta") -> str:
    """A running persistent guest whose firmware finds nothing to boot: no OS answers a
    hot-unplug, as a hung or unaware guest would not."""
    dom = f"deaf-{os.urandom(3).hex()}"
    cleanup["domains"].append((host, dom))
    xml = (f"<domain type='qemu'><name>{dom}</name><memory unit='MiB'>64</memory>"
           "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
           # ACPI: the PCI bus takes hot-plugged disks; no OS is there to answer.
           "<features><acpi/></features>"
           "<devices><serial type='pty'/></devices></domain>")
    lab.conn(host).defineXML(xml).create()
    return dom


@pytest.mark.parametrize("api", ["attachments", "legacy"])
def test_a_guest_that_never_answers_the_unplug_is_told_and_finished_once_stopped(
        lab, cleanup, own_journal, api):
    dom = _guest_without_an_os(lab, cleanup)
    vol = data_volume(lab, cleanup)
    lab.af("attach", vol, dom, "--host", "hosta", "--api", api)
    proc = lab.af("detach", vol, dom, "--host", "hosta", "--timeout", "5", expect=1)
    error = proc.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("attachflow: error: "), proc.stderr
    op_id = error[0].split("'attachflow recover ")[1].split("'")[0]
    assert "did not release" in error[0] and "earlier steps kept" in error[0], error
    assert error[0].endswith(f"once it has, or once the guest is stopped, 'attachflow "
                             f"recover {op_id}' finishes the detach"), error
    # Not recovered behind the user's back (that would wait for the guest again), and
    # not a human's yet: incomplete, for recover.
    assert unfinished() == [("detach", "incomplete")]
    assert lab.disk("hosta", dom, vol) is not None
    assert lab.disk("hosta", dom, vol, inactive=True) is None
    assert [a.instance for a in lab.cinder.attachments.list(
        search_opts={"volume_id": vol})] == [lab.conn("hosta").lookupByName(dom).UUIDString()]
    # While the guest holds on, recover says what a human must do, and changes nothing.
    still = lab.af("recover", op_id, "--unplug-wait", "3", "-f", "json", expect=5)
    [result] = json.loads(still.stdout)
    assert "stop the guest" in result["problem"], result
    assert unfinished() == [("detach", "needs-human")]
    assert lab.disk("hosta", dom, vol) is not None
    refused = lab.af("detach", vol, dom, "--host", "hosta", expect=5)
    assert f"attachflow recover {op_id}" in refused.stderr, refused.stderr
    # The operator stops the guest; recover then finishes the detach.
    lab.conn("hosta").lookupByName(dom).destroy()
    [done] = recover(lab, twice=True)
    assert done["decision"] == "forward", done
    assert lab.disk("hosta", dom, vol, inactive=True) is None
    assert lab.attachments(vol) == [] and lab.volume(vol).status == "available"
    assert_one_story(lab, [vol], dom)
    assert_data(lab, vol, None, dom)
