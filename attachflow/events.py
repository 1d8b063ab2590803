"""Progress of an operation, as typed events.

Every operation reports each step as it starts, succeeds, is undone or fails to be undone,
and a migration reports its job's progress. A caller passes a listener (any callable
taking an ``Event``); every event also goes to the standard ``logging`` logger
``attachflow.events`` (steps at DEBUG, undos at INFO, an undo that failed at WARNING,
migration progress at DEBUG), so a program that only configures logging sees them too.
No event carries a secret: steps are named by volume, domain and host only.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, ClassVar

LOG = logging.getLogger("attachflow.events")


@dataclasses.dataclass(frozen=True)
class Event:
    """Something that happened in ``operation`` (e.g. "attach VOL to vm1")."""

    operation: str
    kind: ClassVar[str] = "event"
    level: ClassVar[int] = logging.DEBUG
    template: ClassVar[str] = "{operation}: {kind}"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.kind, **dataclasses.asdict(self)}

    def describe(self) -> str:
        """The event as one log line."""
        return self.template.format(kind=self.kind, **dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class StepStarted(Event):
    step: str
    kind: ClassVar[str] = "step_started"
    template: ClassVar[str] = "{operation}: {step} ..."


@dataclasses.dataclass(frozen=True)
class StepDone(Event):
    step: str
    kind: ClassVar[str] = "step_done"
    template: ClassVar[str] = "{operation}: {step} done"


@dataclasses.dataclass(frozen=True)
class StepUndone(Event):
    step: str
    kind: ClassVar[str] = "step_undone"
    level: ClassVar[int] = logging.INFO
    template: ClassVar[str] = "{operation}: undid {step}"


@dataclasses.dataclass(frozen=True)
class UndoFailed(Event):
    step: str
    error: str
    kind: ClassVar[str] = "undo_failed"
    level: ClassVar[int] = logging.WARNING
    template: ClassVar[str] = "{operation}: could NOT undo {step}: {error}"


@dataclasses.dataclass(frozen=True)
class MigrationProgress(Event):
    """The migration job's counters: bytes of guest memory and disks."""

    elapsed: float  # seconds since the job started, to a tenth
    processed: int
    remaining: int
    total: int
    kind: ClassVar[str] = "progress"

    @property
    def fraction(self) -> float:
        return min(1.0, self.processed / self.total) if self.total else 0.0

    def describe(self) -> str:
        return (f"{self.operation}: {self.fraction * 100:.1f}% "
                f"({self.processed >> 20} MiB sent, {self.remaining >> 20} MiB left, "
                f"{self.elapsed:.1f} s)")


Listener = Callable[[Event], None]


class Emitter:
    """Hands each event to the logger and to the caller's listener, if any."""

    def __init__(self, listener: Listener | None = None):
        self.listener = listener

    def __call__(self, event: Event) -> None:
        if LOG.isEnabledFor(event.level):
            LOG.log(event.level, "%s", event.describe())
        if self.listener is None:
            return
        try:
            self.listener(event)
        except Exception:  # a listener's bug must not stop (or half-undo) an operation
            LOG.warning("progress listener %r failed on %s", self.listener, event.kind,
                        exc_info=True)
