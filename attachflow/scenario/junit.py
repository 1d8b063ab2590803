"""Scenario results as JUnit XML, the format CI systems read: one ``testsuite`` per
scenario file, one ``testcase`` per scenario (``classname`` the suite, ``name`` the
scenario with its matrix combination). A failed or errored scenario carries its first
failed step: the step and where it is written, what was expected, what was seen, and the
last lines of the command's output. Every step's time is in the testcase's
``system-out``; what clean-up could not remove makes the testcase an error.

Written with junitparser rather than by hand; secrets in a command's output are masked
(``redact``). Side effect owned: the file written.
"""

from __future__ import annotations

import datetime
import re
import socket
from pathlib import Path
from typing import Sequence

from attachflow import redact
from attachflow.scenario.results import FAILED, ScenarioResult, StepResult


# terminal colours and the control characters XML 1.0 does not allow in a document
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("?", _ANSI.sub("", text))


def _step_lines(steps: Sequence[StepResult]) -> str:
    return _xml_text("\n".join(f"{s.seconds:8.3f} s  {s.outcome:<7}  {s.label}  ({s.where})"
                               for s in steps))


def _problem_text(step: StepResult) -> tuple[str, str]:
    """The one-line message and the longer text of a failed step."""
    message = f"{step.label} ({step.where})"
    if step.expected or step.seen:
        message += f": expected {step.expected or '?'}, saw {step.seen or '?'}"
    text = [message]
    if step.output_tail:
        text += ["", "last lines of the output:", *step.output_tail]
    # a command's output can quote a connection's CHAP secret or a request's token
    return (_xml_text(redact.mask_text(message)),
            _xml_text(redact.mask_text("\n".join(text))))


def testcase(result: ScenarioResult):
    from junitparser import Error, Failure, Skipped, TestCase
    case = TestCase(result.name, classname=result.suite, time=round(result.seconds, 3))
    if result.skipped:
        case.result = [Skipped(_xml_text(result.skipped))]
        return case
    outcome = []
    problem = result.first_problem
    if problem is not None:
        message, text = _problem_text(problem)
        kind = Failure if problem.outcome == FAILED else Error
        entry = kind(message, type_=problem.outcome)
        entry.text = text
        outcome.append(entry)
    if result.left_behind:
        entry = Error("clean-up could not remove everything the scenario made",
                      type_="left behind")
        entry.text = _xml_text(redact.mask_text("\n".join(result.left_behind)))
        outcome.append(entry)
    if outcome:
        case.result = outcome
    case.system_out = _step_lines(result.steps)
    return case


def document(suites: Sequence[tuple[str, Sequence[ScenarioResult]]]):
    """The JUnit document: (suite name, its scenarios' results) per scenario file."""
    from junitparser import JUnitXml, TestSuite
    xml = JUnitXml()
    hostname = socket.gethostname()
    for name, results in suites:
        suite = TestSuite(name)
        suite.hostname = hostname
        suite.timestamp = datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S")
        for result in results:
            suite.add_testcase(testcase(result))
        suite.update_statistics()
        xml.add_testsuite(suite)
    xml.update_statistics()
    return xml


def write(path: str | Path, suites: Sequence[tuple[str, Sequence[ScenarioResult]]]) -> None:
    document(suites).write(str(path), pretty=True)


