"""Multi-step operations with undo.

A ``Transaction`` runs named steps; each successful step may register its undo. When a
step fails, the undos run in reverse order; an undo that fails does not stop the others
(errors are collected, as os-brick's ExceptionChainer does) and is named in the
``OperationFailed`` that is raised, so the operator knows exactly what is left.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from attachflow.errors import AttachflowError, OperationFailed

LOG = logging.getLogger("attachflow.steps")


class Transaction:
    def __init__(self, operation: str):
        self.operation = operation
        self._undo: list[tuple[str, Callable[[], Any]]] = []
        self.completed: list[str] = []

    def run(self, name: str, do: Callable[[], Any],
            undo: Callable[[Any], Any] | None = None) -> Any:
        LOG.debug("%s: step %s", self.operation, name)
        try:
            result = do()
        except BaseException as exc:
            self.rollback(name, exc)
            raise AssertionError("unreachable")  # rollback always raises
        self.completed.append(name)
        if undo is not None:
            self._undo.append((name, lambda: undo(result)))
        return result

    def rollback(self, failed_step: str, cause: BaseException) -> None:
        if isinstance(cause, KeyboardInterrupt):
            LOG.warning("%s interrupted at %s; undoing", self.operation, failed_step)
        if not self._undo and isinstance(cause, AttachflowError):
            raise cause  # nothing had changed yet: the error speaks for itself
        failures: list[tuple[str, BaseException]] = []
        for name, undo in reversed(self._undo):
            LOG.debug("%s: undo %s", self.operation, name)
            try:
                undo()
            except Exception as exc:  # collect, keep undoing the rest
                LOG.debug("%s: undo %s failed: %s", self.operation, name, exc)
                failures.append((name, exc))
        self._undo.clear()
        raise OperationFailed(self.operation, failed_step, cause, failures) from cause
