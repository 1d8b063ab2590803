"""Which step boundaries a crash sweep must reach, read from the operations' own step
tables: every step's "started" and "done" row, except the steps named here with the
reason no run of the swept path records them. A sweep that misses a boundary fails, so a
step added to a table is swept, or exempted here by name, before it can land."""

from __future__ import annotations

from typing import Iterable

from attachflow.journal import STARTED, STEP_DONE
from attachflow.plans import PLANS

# (operation, step key) -> why the swept runs never record it
EXEMPT: dict[tuple[str, str], str] = {
    ("detach", "connector"):
        "read only for a disk attachflow did not attach (no recorded connection)",
    ("detach", "connection-info"):
        "read only for a disk attachflow did not attach (no recorded connection)",
}

Boundary = tuple[str, str]  # (step key, state)


def required(operation: str) -> set[Boundary]:
    return {(spec.key, state) for spec in PLANS[operation]
            if (operation, spec.key) not in EXEMPT for state in (STARTED, STEP_DONE)}


def assert_covered(operation: str, reached: Iterable[Boundary]) -> None:
    """Every boundary of ``operation``'s table was reached, exemptions aside."""
    missing = required(operation) - set(reached)
    assert not missing, (f"{operation}: boundaries never reached: "
                         + ", ".join(f"{key} ({state})" for key, state in sorted(missing)))
