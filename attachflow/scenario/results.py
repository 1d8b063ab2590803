"""What a scenario run found: one ``ScenarioResult`` per scenario, one ``StepResult`` per
step as it ran (repeats unrolled), and what clean-up could not remove. Plain values:
the JUnit writer (``junit``), the terminal summary and ``-f json`` all read these.
Side effects: none.
"""

from __future__ import annotations

import dataclasses
from typing import Any

PASSED = "passed"
FAILED = "failed"      # an expectation was not met: the backend or the hosts deviate
ERROR = "error"        # the step could not be carried out (a host unreachable, a bug)
NOT_RUN = "not run"    # after a failed step
SKIPPED = "skipped"    # a scenario not run at all, with the reason (never a pass)
OUTCOMES = (PASSED, FAILED, ERROR, NOT_RUN)


@dataclasses.dataclass(frozen=True)
class StepResult:
    label: str                     # "attach data to vm"
    where: str                     # file:line of the step
    outcome: str
    seconds: float = 0.0
    expected: str = ""             # for a failure: what the step expected
    seen: str = ""                 # and what it saw
    output_tail: tuple[str, ...] = ()   # the last lines of the command's output

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.label, "where": self.where, "outcome": self.outcome,
                "seconds": round(self.seconds, 3), "expected": self.expected,
                "seen": self.seen, "output_tail": list(self.output_tail)}


@dataclasses.dataclass(frozen=True)
class ScenarioResult:
    suite: str
    name: str
    where: str
    seconds: float
    steps: tuple[StepResult, ...]
    left_behind: tuple[str, ...] = ()   # each: what, and the command that removes it
    skipped: str = ""                   # why the scenario was not run, when it was not

    @property
    def first_problem(self) -> StepResult | None:
        return next((s for s in self.steps if s.outcome in (FAILED, ERROR)), None)

    @property
    def outcome(self) -> str:
        if self.skipped:
            return SKIPPED
        problem = self.first_problem
        if problem is not None:
            return problem.outcome
        # a run that passed but could not remove what it made leaves the lab changed
        return ERROR if self.left_behind else PASSED

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "scenario": self.name, "where": self.where,
                "outcome": self.outcome, "seconds": round(self.seconds, 3),
                "steps": [s.to_dict() for s in self.steps],
                "left_behind": list(self.left_behind), "skipped": self.skipped}
