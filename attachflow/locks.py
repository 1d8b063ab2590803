"""Locks that keep two operations on one volume or one domain from interleaving.

The side effect owned here is the lock directory (``locks/`` in the state directory):
one file per volume or domain an operation touches, and one per running operation.
They are ``flock`` locks (through the ``filelock`` library): the kernel releases them
when the process that holds them dies, however it dies, so a lock is never left held by
a dead process. What a dead process leaves is its operation, still "running" in the
journal while nobody holds its operation lock: that is how an interrupted operation is
told from a running one (``held``).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import filelock

from attachflow import errors
from attachflow.journal import private_dir


def _file_name(key: str) -> str:
    # Keys carry user-given names (a domain may be called anything libvirt accepts):
    # the file is named by a digest, with the kind in front for a human reading ls.
    kind = key.split(":", 1)[0]
    return f"{kind}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


class LockDir:
    def __init__(self, directory: Path | str):
        self.directory = Path(directory) / "locks"

    def _lock(self, name: str) -> filelock.FileLock:
        private_dir(self.directory)
        return filelock.FileLock(self.directory / name, mode=0o600, thread_local=False)

    @contextlib.contextmanager
    def resources(self, keys: Sequence[str], wait: float,
                  holder: Callable[[str], str]) -> Iterator[None]:
        """Hold the locks of ``keys``, taken in sorted order (so that two operations
        wanting overlapping sets cannot deadlock), waiting up to ``wait`` seconds in
        all. A key still held then is ``Busy``, with ``holder(key)`` naming who has it."""
        deadline = time.monotonic() + wait
        with contextlib.ExitStack() as held:
            for key in sorted(set(keys)):
                lock = self._lock(_file_name(key))
                try:
                    lock.acquire(timeout=max(0.0, deadline - time.monotonic()),
                                 poll_interval=0.1)
                except filelock.Timeout as exc:
                    raise errors.Busy(f"{key.replace(':', ' ', 1)} is busy: {holder(key)}"
                                      + (f"; waited {wait:g} s" if wait else "")) from exc
                held.callback(lock.release)
            yield

    @contextlib.contextmanager
    def operation(self, op_id: str) -> Iterator[None]:
        """Held for as long as operation ``op_id`` runs in this process."""
        lock = self._lock(f"op-{op_id}.lock")
        lock.acquire(timeout=0)
        try:
            yield
        finally:
            lock.release()
            # Its name is unique: nobody waits for it, so the file can go.
            (self.directory / f"op-{op_id}.lock").unlink(missing_ok=True)

    def held(self, op_id: str) -> bool:
        """Whether a live process runs operation ``op_id`` now."""
        path = self.directory / f"op-{op_id}.lock"
        if not path.exists():
            return False
        lock = filelock.FileLock(path, mode=0o600, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return True
        lock.release()
        return False
