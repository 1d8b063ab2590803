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
from test_crash_recovery import (assert_data, assert_one_story, boundaries_of, data_volume,
                                 guest, own_journal, recover, unfinished)

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
