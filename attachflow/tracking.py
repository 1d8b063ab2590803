"""One operation's life: its locks, its journal entry and how it ended.

``Tracker.operation`` is what every attach, detach, boot and migration runs inside:

1. the locks of the volumes and the domain it touches, waiting up to ``lock_wait``
   seconds for an operation that holds one (then ``Busy``, naming it);
2. a refusal (``RecoveryNeeded``) when an earlier operation on any of them was
   interrupted or left something behind: ``attachflow recover`` must settle it first;
3. the operation's own lock (held while it runs: a journal entry still "running" whose
   lock nobody holds was interrupted) and its journal entry, before the first step;
4. its final state: done; failed with nothing left; or incomplete, for recover.

Recover itself takes the same locks (``Tracker.settling``), so it never races a live
operation or another recover.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from typing import Any, Iterator, Mapping

from attachflow import errors, validate
from attachflow.journal import (DONE, FAILED, INCOMPLETE, RUNNING, Journal, OperationEntry,
                                OperationLog, domain_key, volume_key)
from attachflow.locks import LockDir
from attachflow.settings import seconds_setting

# How long a new operation waits for another one on the same volume or domain. An
# attach or detach takes seconds; a live migration can take minutes, and an operation
# that queues behind it for longer than this is better told so.
DEFAULT_LOCK_WAIT = 60.0

# Shown instead of "running" for an operation whose process is gone.
INTERRUPTED = "interrupted"


@dataclasses.dataclass(frozen=True)
class Scope:
    """What an operation touches: the domain (by name) and its volumes."""

    kind: str
    host: str
    domain: str
    volumes: tuple[str, ...]
    destination: str | None = None

    @property
    def keys(self) -> list[str]:
        return [domain_key(self.domain), *map(volume_key, self.volumes)]


class Tracker:
    def __init__(self, journal: Journal, lock_wait: float = DEFAULT_LOCK_WAIT):
        self.journal = journal
        self.locks = LockDir(journal.directory)
        self.lock_wait = lock_wait

    @classmethod
    def from_env(cls, env: Mapping[str, str], lock_wait: float | None = None) -> Tracker:
        if lock_wait is None:
            lock_wait = seconds_setting(env, "ATTACHFLOW_LOCK_WAIT", DEFAULT_LOCK_WAIT,
                                        kind="wait")
        else:
            validate.check_number("the lock wait", lock_wait, "wait")
        return cls(Journal.from_env(env), lock_wait)

    # -- what the journal shows ------------------------------------------------------------
    def shown_state(self, op: OperationEntry) -> str:
        """The state as a user should read it: "running" only while a process runs it."""
        if op.state == RUNNING and not self.locks.held(op.id):
            return INTERRUPTED
        return op.state

    def describe(self, op: OperationEntry) -> str:
        """One phrase naming an operation, for messages."""
        return (f"{op.kind} {op.id[:8]} ({self.shown_state(op)}, pid {op.pid} on "
                f"{op.machine}, started {time.strftime('%H:%M:%S', time.localtime(op.started))}"
                f", at {op.step or 'its start'})")

    def _holder(self, key: str) -> str:
        running = [op for op in self.journal.touching([key]) if self.locks.held(op.id)]
        if running:
            return "held by " + "; ".join(self.describe(op) for op in running)
        return "held by another attachflow process (a recover, or one starting)"

    def refuse_if_pending(self, scope: Scope) -> None:
        """``RecoveryNeeded`` when an unfinished operation touches ``scope``'s volumes or
        domain (checked before anything else, by operations made of several)."""
        pending = [op for op in self.journal.touching(scope.keys)
                   if not self.locks.held(op.id) or op.state != RUNNING]
        if pending:
            op = pending[0]
            left = ", ".join(sorted(k.replace(":", " ", 1)
                                    for k in op.resources & set(scope.keys)))
            raise errors.RecoveryNeeded(
                f"{scope.kind} refused: {self.describe(op)} was not finished and may have "
                f"left {left} half-done; run 'attachflow recover {op.id[:8]}' first")

    # -- an operation ----------------------------------------------------------------------
    @contextlib.contextmanager
    def operation(self, scope: Scope, context: Mapping[str, Any]) -> Iterator[OperationLog]:
        with self.locks.resources(scope.keys, self.lock_wait, self._holder):
            self.refuse_if_pending(scope)
            op_id = str(uuid.uuid4())
            with self.locks.operation(op_id):
                log = self.journal.begin(op_id, scope.kind, scope.host, scope.domain,
                                         scope.volumes, context, scope.destination)
                try:
                    yield log
                except errors.OperationFailed as exc:
                    exc.operation_id = log.id  # first: the message may name it
                    log.finish(INCOMPLETE if exc.undo_failures or exc.uncertain
                               else FAILED, str(exc))
                    raise
                except errors.AttachflowError as exc:
                    # Raised outside a step: before the first one (a refusal, nothing
                    # changed), or where a step's own undo is not the whole story.
                    log.finish(FAILED if not log.changed else INCOMPLETE, str(exc))
                    exc.operation_id = log.id
                    raise
                except BaseException as exc:
                    # Anything else (a bug, an interrupt between steps): recover looks.
                    log.finish(INCOMPLETE if log.changed else FAILED,
                               f"{type(exc).__name__}: {exc}")
                    raise
                else:
                    if log.state == RUNNING:
                        log.finish(DONE, log.outcome)

    @contextlib.contextmanager
    def settling(self, op: OperationEntry) -> Iterator[OperationEntry | None]:
        """For recover: hold ``op``'s locks; yield it as the journal has it then, or None
        when it is running in a live process or was settled meanwhile."""
        with self.locks.resources(sorted(op.resources), self.lock_wait, self._holder):
            now = self.journal.get(op.id)
            if now is None or not now.unfinished or self.locks.held(op.id):
                yield None
                return
            yield now


def tracked(tracker: Tracker | None, scope: Scope, context: Mapping[str, Any]
            ) -> contextlib.AbstractContextManager[OperationLog | None]:
    """``tracker.operation``, or nothing at all without a tracker (the operations'
    functions used on their own, as the in-memory tests do)."""
    if tracker is None:
        return contextlib.nullcontext(None)
    return tracker.operation(scope, context)
