"""Scenario results as JUnit XML: what CI systems read back from the file."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from junitparser import Error, Failure, JUnitXml

from attachflow.scenario import junit
from attachflow.scenario.results import ScenarioResult, StepResult


def passed(name="a[api=legacy]"):
    return ScenarioResult("smoke", name, "f.yaml:3", 1.5, (
        StepResult("boot vm", "f.yaml:4", "passed", 1.0),
        StepResult("attach data to vm", "f.yaml:5", "passed", 0.5)))


def failed():
    return ScenarioResult("smoke", "b", "f.yaml:9", 2.5, (
        StepResult("boot vm", "f.yaml:10", "passed", 1.0),
        StepResult("expect volume=data, status=available", "f.yaml:12", "failed", 0.2,
                   "status available", "status in-use",
                   ("detach: waiting", "connection auth_password: 'chap-secret-1234'")),
        StepResult("detach data from vm", "f.yaml:13", "not run")))


def test_one_testsuite_per_file_one_testcase_per_scenario(tmp_path):
    out = tmp_path / "out.xml"
    junit.write(out, [("smoke", [passed(), failed()]),
                      ("migration", [passed("there-and-back")])])
    xml = JUnitXml.fromfile(str(out))
    suites = list(xml)
    assert [(s.name, s.tests, s.failures, s.errors) for s in suites] == [
        ("smoke", 2, 1, 0), ("migration", 1, 0, 0)]
    assert (xml.tests, xml.failures) == (3, 1)
    cases = list(suites[0])
    assert [(c.classname, c.name, c.time) for c in cases] == [
        ("smoke", "a[api=legacy]", 1.5), ("smoke", "b", 2.5)]
    assert cases[0].is_passed and not cases[1].is_passed


def test_a_failure_carries_the_step_what_was_expected_what_was_seen_and_the_output(tmp_path):
    out = tmp_path / "out.xml"
    junit.write(out, [("smoke", [failed()])])
    case = next(iter(next(iter(JUnitXml.fromfile(str(out))))))
    (failure,) = case.result
    assert isinstance(failure, Failure)
    assert failure.message == ("expect volume=data, status=available (f.yaml:12): expected "
                               "status available, saw status in-use")
    assert "last lines of the output:\ndetach: waiting\n" in failure.text
    # every step's time, the ones not run too
    assert case.system_out.splitlines() == [
        "   1.000 s  passed   boot vm  (f.yaml:10)",
        "   0.200 s  failed   expect volume=data, status=available  (f.yaml:12)",
        "   0.000 s  not run  detach data from vm  (f.yaml:13)"]


def test_a_secret_in_the_output_is_masked(tmp_path):
    out = tmp_path / "out.xml"
    junit.write(out, [("smoke", [failed()])])
    text = out.read_text()
    assert "chap-secret-1234" not in text and "auth_password" in text


def test_an_error_and_what_was_left_behind_are_errors(tmp_path):
    errored = ScenarioResult("smoke", "c", "f.yaml:20", 0.4, (
        StepResult("migrate vm to hostb", "f.yaml:21", "error", 0.4,
                   output_tail=("attachflow: error: hostb: cannot connect",)),),
        left_behind=("volume smoke-1a2b-data (0f7e...): openstack volume delete 0f7e",))
    out = tmp_path / "out.xml"
    junit.write(out, [("smoke", [errored])])
    case = next(iter(next(iter(JUnitXml.fromfile(str(out))))))
    kinds = [(type(r), r.message) for r in case.result]
    assert kinds == [(Error, "migrate vm to hostb (f.yaml:21)"),
                     (Error, "clean-up could not remove everything the scenario made")]
    assert "openstack volume delete 0f7e" in case.result[1].text
    assert errored.outcome == "error"


def test_passed_but_left_something_behind_is_not_a_pass():
    result = ScenarioResult("s", "x", "f:1", 0.1, (StepResult("boot vm", "f:2", "passed"),),
                            left_behind=("guest x on hosta: virsh undefine x",))
    assert result.outcome == "error"


def test_the_elements_are_in_the_order_junit_readers_expect(tmp_path):
    # testsuites > testsuite(name, tests, failures, errors, time, timestamp, hostname)
    # > testcase(name, classname, time) > failure|error ..., then system-out
    out = tmp_path / "out.xml"
    junit.write(out, [("smoke", [failed()])])
    root = ET.parse(out).getroot()
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert {"name", "tests", "failures", "errors", "time", "timestamp",
            "hostname"} <= set(suite.attrib)
    case = suite.find("testcase")
    assert [child.tag for child in case] == ["failure", "system-out"]


def test_an_unknown_outcome_is_refused():
    with pytest.raises(ValueError):
        StepResult("boot vm", "f:1", "fine")


def test_terminal_colours_and_control_characters_do_not_break_the_file(tmp_path):
    coloured = ScenarioResult("smoke", "d", "f.yaml:1", 0.1, (
        StepResult("boot vm", "f.yaml:2", "error", 0.1,
                   output_tail=("\x1b[31mattachflow: error:\x1b[0m boot failed\x07",)),))
    out = tmp_path / "out.xml"
    junit.write(out, [("smoke", [coloured])])
    case = next(iter(next(iter(JUnitXml.fromfile(str(out))))))
    assert "attachflow: error: boot failed?" in case.result[0].text


SCHEMA = Path(__file__).parent.parent / "schemas" / "junit.xsd"


def xmllint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["xmllint", "--noout", "--schema", str(SCHEMA), str(path)],
                          capture_output=True, text=True)


def skipped():
    return ScenarioResult("kernel-nodes", "k", "k.yaml:5", 0.0, (),
                          skipped="needs the compute-node VMs")


def test_every_outcome_validates_against_the_junit_schema(tmp_path):
    out = tmp_path / "out.xml"
    errored = ScenarioResult("smoke", "c", "f.yaml:20", 0.3, (
        StepResult("boot vm", "f.yaml:21", "error", 0.3, seen="HostError (exit 1)"),),
        ("volume x: refused; remove it with: openstack volume delete x",))
    junit.write(out, [("smoke", [passed(), failed(), errored]),
                      ("kernel-nodes", [skipped()])])
    proc = xmllint(out)
    assert proc.returncode == 0, proc.stderr
    [suite] = [s for s in JUnitXml.fromfile(str(out)) if s.name == "kernel-nodes"]
    assert suite.skipped == 1 and suite.failures == 0 and suite.errors == 0


def test_the_schema_check_can_fail(tmp_path):
    out = tmp_path / "out.xml"
    junit.write(out, [("smoke", [passed()])])
    out.write_text(out.read_text().replace('classname="smoke"', ""))
    proc = xmllint(out)
    assert proc.returncode != 0 and "classname" in proc.stderr, proc.stderr
