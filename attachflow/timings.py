"""Where one command's time goes, by phase: the interpreter and imports before the
command ran, configuration, each Keystone login, the microversion negotiation, each
host connection (SSH, libvirt), each storage call, each libvirt call and each host-call.

The side effect owned here is this process's record of phases, kept in memory and shown
by ``--timings`` and ``--debug``; each command starts it afresh (``reset``), and a
program that uses the library for long keeps only the newest ``KEPT`` entries.
Recording costs a clock read and an append."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import threading
import time
from typing import Iterator

KINDS = ("start-up", "configuration", "keystone", "negotiation", "connection", "storage",
         "libvirt", "host-call")


@dataclasses.dataclass(frozen=True)
class Timing:
    kind: str       # one of KINDS
    what: str       # the call, as --debug names it; never a secret
    seconds: float


KEPT = 2000
_LOCK = threading.Lock()
_RECORD: collections.deque[Timing] = collections.deque(maxlen=KEPT)


def reset() -> None:
    with _LOCK:
        _RECORD.clear()


def record(kind: str, what: str, seconds: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"not a phase: {kind}")
    with _LOCK:
        _RECORD.append(Timing(kind, what, seconds))


@contextlib.contextmanager
def phase(kind: str, what: str) -> Iterator[None]:
    """Time the block as ``kind``/``what``, whether it returns or raises."""
    started = time.monotonic()
    try:
        yield
    finally:
        record(kind, what, time.monotonic() - started)


def since_process_start() -> float | None:
    """Seconds since this process was started (the interpreter and imports, when asked
    as the command begins); None where /proc does not say."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - started)


def taken() -> list[Timing]:
    with _LOCK:
        return list(_RECORD)


def report(total: float) -> list[str]:
    """Lines for stderr: each phase's calls and seconds, then the sum per kind against
    the command's ``total`` wall time (the rest is attachflow's own work and waits)."""
    entries = taken()
    lines = ["timings (seconds):"]
    for t in entries:
        lines.append(f"  {t.seconds:8.3f}  {t.kind:<13} {t.what}")
    sums = {k: sum(t.seconds for t in entries if t.kind == k) for k in KINDS}
    # host connections and calls may overlap (volumes in parallel): sums are of calls
    lines.append("  per kind: " + ", ".join(
        f"{k} {v:.3f}" for k, v in sums.items() if v) + f"; command total {total:.3f}")
    return lines
