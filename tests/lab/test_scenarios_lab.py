"""The shipped scenarios, run on the lab as CI runs them: ``attachflow scenario run
scenarios/*.yaml --junit out.xml``. Each scenario checks Cinder, both XMLs, the hosts'
sessions and secrets, tgtd's sessions and the bytes (through the guest's block backend
and in the file tgtd exports) after its steps; this checks the run as a whole: every
scenario passed or was skipped with its reason, the JUnit file validates, and the lab
is left exactly as it was found, also when a scenario fails and when the run is
interrupted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

import test_e2e

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "schemas" / "junit.xsd"
SHIPPED = ["smoke", "migration", "faults", "many-volumes", "cycles", "kernel-nodes"]


def scenario_files(*names: str) -> list[str]:
    return [str(ROOT / "scenarios" / f"{name}.yaml") for name in names]


def lab_state(lab):
    """The lab's state, on new libvirt connections: the faults scenario restarts the
    hosts' libvirtd, which ends the connections the checks had."""
    lab._conns.clear()
    return test_e2e.lab_state(lab)


def unfinished(lab) -> list:
    return lab.af_json("operations")


def assert_validates(path: Path) -> None:
    proc = subprocess.run(["xmllint", "--noout", "--schema", str(SCHEMA), str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_shipped_scenarios_pass_and_leave_the_lab_as_it_was(lab, tmp_path):
    before = lab_state(lab)
    out = tmp_path / "results.xml"
    proc = lab.af("scenario", "run", *scenario_files(*SHIPPED), "--junit", str(out),
                  "-f", "json", expect=None)
    results = json.loads(proc.stdout)
    outcomes = {(r["suite"], r["scenario"]): r["outcome"] for r in results}
    assert proc.returncode == 0, (outcomes, proc.stderr[-3000:])
    assert outcomes == {
        ("smoke", "attach-verify-detach[api=attachments]"): "passed",
        ("smoke", "attach-verify-detach[api=legacy]"): "passed",
        ("smoke", "other-host[api=attachments]"): "passed",
        ("smoke", "other-host[api=legacy]"): "passed",
        ("migration", "there-and-back[api=attachments]"): "passed",
        ("migration", "there-and-back[api=legacy]"): "passed",
        ("faults", "rollback[api=attachments]"): "passed",
        ("faults", "rollback[api=legacy]"): "passed",
        ("many-volumes", "eight-volumes"): "passed",
        ("cycles", "hundred-cycles"): "passed",
        # the compute-node VMs are the kernel tier's; here the scenario says so
        ("kernel-nodes", "kernel-there-and-back"): "skipped",
    }, outcomes
    for r in results:
        if r["outcome"] == "passed":
            assert r["steps"] and all(s["outcome"] == "passed" for s in r["steps"]), r
            assert not r["left_behind"]
    # one progress line per step on stderr, with its time
    assert "passed   verify 0x3c on data1 in vm" in proc.stderr
    assert_validates(out)
    from junitparser import JUnitXml
    xml = JUnitXml.fromfile(str(out))
    assert [s.name for s in xml] == SHIPPED
    assert (xml.tests, xml.failures, xml.errors, xml.skipped) == (11, 0, 0, 1)
    assert lab_state(lab) == before
    assert unfinished(lab) == []


DEVIANT = """\
suite: deviant
scenarios:
  - name: wrong-pattern
    volumes: {root: {size: 1}, data: {size: 1}}
    guests: {vm: {host: hosta, memory: 256, root: root}}
    steps:
      - boot: vm
      - attach: {volume: data, guest: vm}
      - write: {guest: vm, volume: data, pattern: a5}
      - verify: {guest: vm, volume: data, pattern: 5a}
      - detach: {volume: data, guest: vm}
"""


def test_a_scenario_that_does_not_hold_fails_with_its_evidence_and_leaves_nothing(
        lab, tmp_path):
    before = lab_state(lab)
    path = tmp_path / "deviant.yaml"
    path.write_text(DEVIANT)
    out = tmp_path / "results.xml"
    proc = lab.af("scenario", "run", str(path), "--junit", str(out), "-f", "json",
                  expect=1)
    [result] = json.loads(proc.stdout)
    assert result["outcome"] == "failed", result
    failed = [s for s in result["steps"] if s["outcome"] == "failed"]
    assert [s["step"] for s in failed] == ["verify 0x5a on data in vm"]
    assert failed[0]["where"] == f"{path}:10"
    assert failed[0]["expected"] == "0x5a over 1048576 bytes at 0"
    assert "Pattern verification failed" in failed[0]["seen"], failed
    assert [s["outcome"] for s in result["steps"]][-1] == "not run"  # the detach
    assert not result["left_behind"]
    assert proc.stderr.strip().splitlines()[-1] == \
        "attachflow: error: 1 scenarios: 1 failed"
    assert_validates(out)
    assert "verify 0x5a on data in vm" in out.read_text()
    assert lab_state(lab) == before
    assert unfinished(lab) == []


def test_an_interrupted_run_removes_what_it_made(lab, tmp_path):
    """SIGTERM in the middle of a scenario: its clean-up runs, the next scenarios are
    not started, and the lab is as it was."""
    before = lab_state(lab)
    out = tmp_path / "results.xml"
    proc = subprocess.Popen(["attachflow", "scenario", "run",
                             *scenario_files("migration"), "--junit", str(out),
                             "-f", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen = ""
    deadline = time.monotonic() + 300
    while "passed   write 0x4d on data2 in vm" not in seen:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, seen
        seen += line
        assert time.monotonic() < deadline, seen
    proc.send_signal(signal.SIGTERM)
    stdout, rest = proc.communicate(timeout=300)
    assert proc.returncode == 130, (seen, rest)
    assert "attachflow: interrupted" in rest.strip().splitlines()[-1], rest
    results = json.loads(stdout)
    assert [r["outcome"] for r in results] == ["error", "skipped"], results
    assert results[1]["skipped"] == "not run: the run was interrupted"
    assert not results[0]["left_behind"], results[0]
    assert_validates(out)
    assert lab_state(lab) == before
    assert unfinished(lab) == []
