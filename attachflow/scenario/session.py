"""One ``scenario run``: every scenario of every file in order through one ``Runner``,
which scenarios are left out and why, and where the run stops.

A scenario that needs the compute-node VMs runs only when they are asked for; after a
scenario that did not pass the rest are not run unless ``keep_going``; an interrupt
(Ctrl-C, SIGTERM) ends the run once the running scenario has cleaned up. A scenario not
run is reported as skipped with its reason, never as passed. Side effects: only through
the ``Runner``'s actions.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from attachflow.scenario.engine import Interrupted, Runner
from attachflow.scenario.results import ERROR, FAILED, PASSED, SKIPPED, ScenarioResult
from attachflow.scenario.spec import Scenario, Suite

NEEDS_NODES = "needs the compute-node VMs: run with --kernel-nodes (attachflow lab up " \
              "--kernel-nodes)"
AFTER_FAILURE = "not run: an earlier scenario did not pass (--keep-going runs the rest)"
AFTER_INTERRUPT = "not run: the run was interrupted"


@dataclasses.dataclass
class Report:
    suites: list[tuple[str, list[ScenarioResult]]]
    interrupted: bool = False

    @property
    def results(self) -> list[ScenarioResult]:
        return [r for _name, results in self.suites for r in results]

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def passed(self) -> bool:
        """Nothing failed, nothing was left behind, and the run was not cut short."""
        return not self.interrupted and all(r.outcome in (PASSED, SKIPPED)
                                            for r in self.results)

    def summary(self) -> str:
        parts = [f"{self.count(o)} {o}" for o in (PASSED, FAILED, ERROR, SKIPPED)
                 if self.count(o)]
        return f"{len(self.results)} scenarios: {', '.join(parts) or 'none'}"


def selected(suites: Sequence[Suite], only: Sequence[str] = ()) -> list[Suite]:
    """The suites with only the scenarios whose name (or suite/name) starts with one of
    ``only`` (all when empty)."""
    if not only:
        return list(suites)
    def wanted(sc: Scenario) -> bool:
        return any(sc.name.startswith(o) or f"{sc.suite}/{sc.name}".startswith(o)
                   for o in only)
    return [dataclasses.replace(s, scenarios=tuple(filter(wanted, s.scenarios)))
            for s in suites]


def run(suites: Sequence[Suite], runner: Runner, *, kernel_nodes: bool = False,
        keep_going: bool = False,
        starting: Callable[[Scenario], None] | None = None,
        finished: Callable[[ScenarioResult], None] | None = None) -> Report:
    report = Report([(s.name, []) for s in suites])
    stop_reason = ""
    for (_name, results), suite in zip(report.suites, suites):
        for sc in suite.scenarios:
            reason = stop_reason or (NEEDS_NODES if sc.kernel_nodes and not kernel_nodes
                                     else "")
            if reason:
                results.append(ScenarioResult(sc.suite, sc.name, sc.where, 0.0, (),
                                              skipped=reason))
                continue
            if starting is not None:
                starting(sc)
            try:
                result = runner.run(sc)
            except Interrupted as exc:
                result = exc.result
                report.interrupted = True
                stop_reason = AFTER_INTERRUPT
            results.append(result)
            if finished is not None:
                finished(result)
            if result.outcome != PASSED and not keep_going and not stop_reason:
                stop_reason = AFTER_FAILURE
    return report
