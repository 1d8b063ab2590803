"""Multi-step operations with undo.

A ``Transaction`` runs the steps of an operation's table (``plans``); each successful
step that the table declares with an undo registers it. When a step fails, the undos run
in reverse order. An undo that fails stops the undoing: every step stands on the ones
before it (a guest that kept its disk still needs the host's connection and the
attachment), so the earlier steps are left in place. The failed undo and the steps left
in place are named in the ``OperationFailed`` that is raised, so the operator (or
``attachflow recover``, which settles it from the real state) knows exactly what is left.
A step that cannot be gone back on once started (``Rule.FORWARD_ONCE_ASKED``) and that
failed after it may have taken effect undoes nothing: the error says what to do next.

With an ``OperationLog`` (see ``journal``), each step is written to the journal before it
runs and again when it succeeds (with what its declared ``note`` says of its result: the
ids recovery will need), is undone, or fails to be undone.

``Problems`` is that collection: ``(what, error)`` pairs in the order they happened,
rendered as one ``"what: error"`` line each. Steps that must all be attempted whatever
happens (undoing, or finishing a move that cannot be undone) report through it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from attachflow.errors import AttachflowError, AuthError, InputError, OperationFailed
from attachflow.events import Emitter, StepDone, StepStarted, StepUndone, UndoFailed
from attachflow.plans import Rule

if TYPE_CHECKING:
    from attachflow.journal import OperationLog
    from attachflow.plans import Step

LOG = logging.getLogger("attachflow.steps")

_SENT = threading.local()


def change_sent() -> None:
    """Count a request that may have changed something, as a side's client sends it (the
    storage API's writes). A step that failed on a request that never left this machine
    changed nothing only if no request of its own went before: this tells."""
    _SENT.count = _sent() + 1


def _sent() -> int:
    return getattr(_SENT, "count", 0)


def _certainly_unapplied(exc: BaseException, sent_before: int) -> bool:
    """A refusal, or a request that never reached its server with none sent before it
    in the step: the step had no effect, so its own undo is not needed."""
    if isinstance(exc, (InputError, AuthError)):
        return True
    return getattr(exc, "sent", True) is False and _sent() == sent_before


class Problems:
    """What could not be done: ``(what, error)`` pairs, kept in order."""

    def __init__(self) -> None:
        self._pairs: list[tuple[str, BaseException]] = []

    def add(self, what: str, exc: BaseException) -> None:
        self._pairs.append((what, exc))

    def extend(self, other: Problems) -> None:
        self._pairs.extend(other.pairs())

    def pairs(self) -> list[tuple[str, BaseException]]:
        return list(self._pairs)

    def lines(self) -> list[str]:
        """One line per problem: ``"what: error"``."""
        return [f"{what}: {exc}" for what, exc in self._pairs]

    def __iter__(self) -> Iterator[tuple[str, BaseException]]:
        return iter(self.pairs())

    def __len__(self) -> int:
        return len(self._pairs)

    def __bool__(self) -> bool:
        return bool(self._pairs)


class Transaction:
    """Steps of one operation; ``emit`` receives each step's events (see ``events``).

    Only steps of an operation's table run (``plans``): a step's declaration says whether
    it has an undo, what the journal keeps of its result, and what happens when it fails
    after it may have taken effect."""

    def __init__(self, operation: str, emit: Emitter | None = None,
                 log: OperationLog | None = None):
        self.operation = operation
        self.emit = emit or Emitter()
        self.log = log
        self._undo: list[tuple[Step, Callable[[], Any]]] = []
        self.completed: list[str] = []

    def run(self, step: Step, do: Callable[[], Any],
            undo: Callable[[Any], Any] | None = None) -> Any:
        """Run ``step``; ``undo(result)`` takes it back, given exactly when the step's
        declaration has an undo."""
        if (undo is None) != (step.spec.undo is None):
            raise TypeError(f"step '{step}' is declared "
                            f"{'with' if step.spec.undo else 'without'} an undo")
        if self.log is not None:
            self.log.step_started(step)
        self.emit(StepStarted(self.operation, step.name))
        sent_before = _sent()
        try:
            result = do()
        except BaseException as exc:
            # A step that changes something and failed for a reason other than a
            # refusal (a timeout, a lost answer) may have taken effect all the same.
            self.rollback(step, exc, uncertain=undo is not None and not
                          _certainly_unapplied(exc, sent_before))
            raise AssertionError("unreachable")  # rollback always raises
        self.completed.append(step.name)
        if undo is not None:
            self._undo.append((step, lambda: undo(result)))
        if self.log is not None:
            note = step.spec.note
            self.log.step_done(step, note(result) if note is not None else None,
                               undoable=undo is not None)
        self.emit(StepDone(self.operation, step.name))
        return result

    def remember(self, **values: Any) -> None:
        """Keep ``values`` in the journal's context of this operation, for recovery."""
        if self.log is not None:
            self.log.add_context(**values)

    def rollback(self, failed: Step, cause: BaseException, uncertain: bool = False) -> None:
        if isinstance(cause, KeyboardInterrupt):
            LOG.warning("%s interrupted at %s; undoing", self.operation, failed)
        if uncertain and failed.spec.rule is Rule.FORWARD_ONCE_ASKED:
            # Asked once, the effect may still complete outside attachflow (a guest
            # unplugging the disk): undoing the earlier steps would pull the ground from
            # under it. They stay; recover finishes the operation once it can.
            raise OperationFailed(self.operation, failed.name, cause, uncertain=True,
                                  next_step=failed.spec.hint) from cause
        if not self._undo and isinstance(cause, AttachflowError) and not uncertain:
            raise cause  # nothing had changed yet: the error speaks for itself
        failures = Problems()
        pending = list(reversed(self._undo))
        self._undo.clear()
        for index, (step, undo) in enumerate(pending):
            try:
                undo()
            except Exception as exc:
                failures.add(step.name, exc)
                if self.log is not None:
                    self.log.undo_failed(step, str(exc))
                self.emit(UndoFailed(self.operation, step.name, str(exc)))
                # Each step stands on the ones before it: a guest that kept its disk
                # still needs the host connection and the attachment. So the earlier
                # steps stay as they are, named, for a human or `attachflow recover`.
                for kept, _undo in pending[index + 1:]:
                    failures.add(kept.name, AttachflowError(
                        f"left in place because undoing '{step}' failed"))
                    if self.log is not None:
                        self.log.undo_failed(kept, f"left in place: undoing '{step}' failed")
                break
            else:
                if self.log is not None:
                    self.log.step_undone(step)
                self.emit(StepUndone(self.operation, step.name))
        raise OperationFailed(self.operation, failed.name, cause, failures.pairs(),
                              uncertain=uncertain) from cause
