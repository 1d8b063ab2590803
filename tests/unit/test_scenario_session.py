"""A run of several scenarios: which run, which are skipped and why, where the run stops,
and an interrupt raised as an operation's error (its undo done) still stops it."""

from __future__ import annotations

from attachflow import errors
from attachflow.scenario import engine, session, spec
from test_scenario_engine import MemoryLab

FILE = """\
suite: s
scenarios:
  - name: first
    volumes: {root: {size: 1}, data: {size: 1}}
    guests: {vm: {host: hosta, root: root}}
    steps:
      - boot: vm
      - attach: {volume: data, guest: vm}
      - write: {guest: vm, volume: data, pattern: a5}
      - verify: {guest: vm, volume: data, pattern: %s}
      - detach: {volume: data, guest: vm}
  - name: nodes
    kernel_nodes: true
    volumes: {root: {size: 1}}
    guests: {vm: {host: nodea, root: root}}
    steps:
      - boot: vm
  - name: last
    volumes: {root: {size: 1}}
    guests: {vm: {host: hosta, root: root}}
    steps:
      - boot: vm
"""


def suites(pattern="a5"):
    return [spec.parse(FILE % pattern, "s.yaml")]


def outcomes(report):
    return [(r.name, r.outcome, r.skipped) for r in report.results]


def test_scenarios_for_the_nodes_are_skipped_with_the_reason_without_them():
    lab = MemoryLab()
    report = session.run(suites(), engine.Runner(lab, run_id="r"))
    assert outcomes(report) == [("first", "passed", ""),
                                ("nodes", "skipped", session.NEEDS_NODES),
                                ("last", "passed", "")]
    assert report.passed and report.summary() == "3 scenarios: 2 passed, 1 skipped"
    report = session.run(suites(), engine.Runner(MemoryLab(), run_id="r"),
                         kernel_nodes=True)
    assert [o for _n, o, _s in outcomes(report)] == ["passed"] * 3


def test_the_run_stops_after_a_failure_unless_told_to_keep_going():
    report = session.run(suites("5a"), engine.Runner(MemoryLab(), run_id="r"))
    assert outcomes(report) == [("first", "failed", ""),
                                ("nodes", "skipped", session.AFTER_FAILURE),
                                ("last", "skipped", session.AFTER_FAILURE)]
    assert not report.passed
    assert report.summary() == "3 scenarios: 1 failed, 2 skipped"
    report = session.run(suites("5a"), engine.Runner(MemoryLab(), run_id="r"),
                         keep_going=True)
    assert [o for _n, o, _s in outcomes(report)] == ["failed", "skipped", "passed"]


def test_an_interrupt_that_an_operation_turned_into_its_error_still_stops_the_run():
    """attachflow's operations undo their steps on Ctrl-C and raise their own error from
    the interrupt: the run stops there, cleans up, and starts nothing more."""
    lab = MemoryLab()
    original = lab.attach

    def attach(*args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise errors.OperationFailed("attach", "guest attach", exc) from exc
    lab.attach = attach
    started = []
    report = session.run(suites(), engine.Runner(lab, run_id="r"),
                         starting=lambda sc: started.append(sc.name))
    lab.attach = original
    assert report.interrupted and not report.passed
    assert started == ["first"]
    assert outcomes(report)[1:] == [("nodes", "skipped", session.AFTER_INTERRUPT),
                                    ("last", "skipped", session.AFTER_INTERRUPT)]
    first = report.results[0]
    assert first.outcome == "error" and first.steps[3].seen == "the run was interrupted"
    assert (lab.volumes, lab.guests) == ({}, {})  # cleaned up


def test_only_picks_scenarios_by_name_or_suite_and_name():
    picked = session.selected(suites(), ["s/la", "fir"])
    assert [sc.name for sc in picked[0].scenarios] == ["first", "last"]
