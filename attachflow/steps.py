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

Independent chains of steps (one per volume of a migration) can run side by side
(``Transaction.run_side_by_side``), each on a branch of the transaction that only keeps
what it did; the transaction waits for all of them before it goes on or undoes, because a
step that has started cannot be called back.

``Problems`` is that collection: ``(what, error)`` pairs in the order they happened,
rendered as one ``"what: error"`` line each. Steps that must all be attempted whatever
happens (undoing, or finishing a move that cannot be undone) report through it.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

from attachflow.errors import AttachflowError, AuthError, InputError, OperationFailed
from attachflow.events import Emitter, StepDone, StepStarted, StepUndone, UndoFailed
from attachflow.plans import Rule

if TYPE_CHECKING:
    from attachflow.journal import OperationLog
    from attachflow.plans import Step

LOG = logging.getLogger("attachflow.steps")
T = TypeVar("T")
# Side by side chains are storage requests and host-calls that mostly wait: beyond this
# many, the services queue them anyway.
MAX_SIDE_BY_SIDE = 8


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
        # Set on a branch (see run_side_by_side): a failure is kept for the transaction
        # to settle instead of being undone here.
        self._branch = False
        self.started: Step | None = None
        self.failure: tuple[Step, BaseException, bool] | None = None

    def run(self, step: Step, do: Callable[[], Any],
            undo: Callable[[Any], Any] | None = None) -> Any:
        """Run ``step``; ``undo(result)`` takes it back, given exactly when the step's
        declaration has an undo."""
        if (undo is None) != (step.spec.undo is None):
            raise TypeError(f"step '{step}' is declared "
                            f"{'with' if step.spec.undo else 'without'} an undo")
        if self.log is not None:
            self.log.step_started(step)
        self.started = step
        self.emit(StepStarted(self.operation, step.name))
        try:
            result = do()
        except BaseException as exc:
            # A step that changes something and failed for a reason other than a
            # refusal (a timeout, a lost answer) may have taken effect all the same.
            uncertain = undo is not None and not isinstance(exc, (InputError, AuthError))
            if self._branch:
                self.failure = (step, exc, uncertain)
                raise
            self.rollback(step, exc, uncertain=uncertain)
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

    def run_side_by_side(self, chains: Sequence[Callable[[Transaction], T]]) -> list[T]:
        """Run independent ``chains`` at once, each as ``chain(branch)`` with steps run on
        ``branch.run``; their results, in the order given.

        Once all have returned, their undos join this transaction's in that order, as if
        they had run one after the other. When one failed, or the wait was interrupted,
        everything every chain did is undone once all have stopped, and the first failure
        (in that order) is the one raised; another chain's step that failed and may have
        taken effect is named as not undone."""
        if len(chains) <= 1:
            return [chain(self) for chain in chains]
        branches = [self._new_branch() for _ in chains]
        with ThreadPoolExecutor(max_workers=min(len(chains), MAX_SIDE_BY_SIDE),
                                thread_name_prefix="steps") as pool:
            futures = [pool.submit(chain, branch) for chain, branch in zip(chains, branches)]
            interrupted = _wait_all(futures)
        for branch in branches:
            self._undo.extend(branch._undo)
            self.completed.extend(branch.completed)
        for branch, future in zip(branches, futures):
            if branch.failure is None and future.exception() is not None:
                # Not a step's failure (the journal could not be written, say): as when
                # steps run one by one, it is raised as it is and nothing is undone.
                raise future.exception()
        failures = [branch.failure for branch in branches if branch.failure is not None]
        if interrupted is None and not failures:
            return [future.result() for future in futures]
        if failures:
            (step, cause, uncertain), others = failures[0], failures[1:]
        else:
            step = next((b.started for b in reversed(branches) if b.started), None)
            cause, uncertain, others = interrupted, False, []
            if step is None:
                raise cause  # interrupted before any step started: nothing was done
        self.rollback(step, cause, uncertain=uncertain, also_failed=others)
        raise AssertionError("unreachable")

    def _new_branch(self) -> Transaction:
        branch = type(self)(self.operation, self.emit, self.log)
        branch._branch = True
        return branch

    def remember(self, **values: Any) -> None:
        """Keep ``values`` in the journal's context of this operation, for recovery."""
        if self.log is not None:
            self.log.add_context(**values)

    def rollback(self, failed: Step, cause: BaseException, uncertain: bool = False,
                 also_failed: Sequence[tuple[Step, BaseException, bool]] = ()) -> None:
        """Undo what was done and raise. ``also_failed``: steps of other side by side
        chains that failed too; those that may have taken effect cannot be undone (their
        undo is only known once they succeed) and are named as left."""
        if isinstance(cause, KeyboardInterrupt):
            LOG.warning("%s interrupted at %s; undoing", self.operation, failed)
        if uncertain and failed.spec.rule is Rule.FORWARD_ONCE_ASKED:
            # Asked once, the effect may still complete outside attachflow (a guest
            # unplugging the disk): undoing the earlier steps would pull the ground from
            # under it. They stay; recover finishes the operation once it can.
            raise OperationFailed(self.operation, failed.name, cause, uncertain=True,
                                  next_step=failed.spec.hint) from cause
        left_uncertain = [(step, exc) for step, exc, maybe in also_failed if maybe]
        for step, exc, maybe in also_failed:
            if not maybe:
                LOG.warning("%s: '%s' failed as well: %s", self.operation, step, exc)
        if not self._undo and isinstance(cause, AttachflowError) and not uncertain \
                and not left_uncertain:
            raise cause  # nothing had changed yet: the error speaks for itself
        failures = Problems()
        for step, exc in left_uncertain:
            failures.add(step.name, AttachflowError(
                f"failed as well and may have taken effect: {exc}"))
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


def _wait_all(futures: list) -> BaseException | None:
    """Wait until every future is done, however often the wait is interrupted: a chain
    cannot be called back, and undoing before it stopped would race it. Returns the first
    interruption, if any."""
    interrupted: BaseException | None = None
    while True:
        try:
            wait(futures)
            return interrupted
        except BaseException as exc:  # Ctrl-C, or SIGTERM turned into an exception
            if interrupted is None:
                interrupted = exc
                LOG.warning("interrupted; waiting for the steps under way to stop")

