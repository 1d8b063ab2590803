"""Killing attachflow mid-operation on the lab, and what the journal says of it.

``run_killed(args, boundary=N)`` runs the command through ``killpoint.py``, which kills
the process the moment its journal commits step boundary N: the crash point is exact.
``run_killed(args, delay=S)`` kills it after S seconds from outside, wherever it is.
The journal is read read-only, as any observer could, without locking anything.

``Sweep`` holds what a boundary sweep of one operation reached, and checks it: every
boundary of the operation's step table was on the path of a whole run (``sweep_coverage``
names the exemptions), and every boundary the sweep aimed at was the one it killed at.
A sweep aims at one boundary in K (``ATTACHFLOW_CRASH_SAMPLE=K``, 3 unset): those whose
number is the commit count modulo K, so K consecutive commits cover them all; or, with
``ATTACHFLOW_CRASH_SAMPLE=all``, at every boundary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from sweep_coverage import assert_covered

KILLPOINT = Path(__file__).with_name("killpoint.py")
DEFAULT_SAMPLE = 3
Boundary = tuple[str, str]   # (step key, state)


def journal_path() -> Path:
    return Path(os.environ["ATTACHFLOW_STATE_DIR"]) / "journal.sqlite"


@dataclasses.dataclass(frozen=True)
class Record:
    """The operation a process ran, as its journal rows show it."""

    op_id: str | None
    state: str | None
    step: str | None                            # the step reached, as users see it
    rows: tuple[tuple[str, str, str | None], ...] = ()   # (key, state, subject)

    @property
    def boundaries(self) -> list[Boundary]:
        return [(key, state) for key, state, _subject in self.rows]


NOTHING = Record(None, None, None)


def record_of(pid: int) -> Record:
    """The newest operation ``pid`` began, or NOTHING."""
    path = journal_path()
    if not path.exists():
        return NOTHING
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                            timeout=5)) as db:
        try:
            row = db.execute("SELECT id, step, state FROM operations WHERE pid = ? "
                             "ORDER BY started DESC LIMIT 1", (pid,)).fetchone()
        except sqlite3.OperationalError as exc:
            # A journal the command is creating this moment has no tables yet.
            if "no such table" not in str(exc):
                raise
            return NOTHING
        if row is None:
            return NOTHING
        rows = db.execute("SELECT key, state, subject FROM steps WHERE op_id = ? "
                          "ORDER BY seq", (row[0],)).fetchall()
    return Record(row[0], row[2], row[1], tuple(rows))


def boundaries_of(pid: int) -> tuple[str | None, int, str | None, str | None]:
    """(operation id, step boundaries recorded, last step, state) of ``pid``'s operation."""
    rec = record_of(pid)
    return rec.op_id, len(rec.rows), rec.step, rec.state


def unfinished() -> list[tuple[str, str]]:
    """(kind, state) of the operations the journal holds unfinished."""
    with contextlib.closing(sqlite3.connect(f"file:{journal_path()}?mode=ro", uri=True,
                                            timeout=5)) as db:
        return db.execute("SELECT kind, state FROM operations WHERE state IN "
                          "('running', 'incomplete', 'needs-human')").fetchall()


@dataclasses.dataclass(frozen=True)
class Ended:
    """The command ran to its end before the kill was due."""

    returncode: int
    record: Record


@dataclasses.dataclass(frozen=True)
class Crashed:
    """The command was killed with its operation running; ``boundary`` rows written."""

    boundary: int
    last: Boundary | None
    record: Record


def run_killed(args: list[str], boundary: int | None = None,
               delay: float | None = None) -> Ended | Crashed:
    """Run ``attachflow ARGS`` and kill it at step boundary ``boundary`` (exactly), or
    after ``delay`` seconds."""
    assert (boundary is None) != (delay is None)
    if boundary is not None:
        command = [sys.executable, str(KILLPOINT), str(boundary), *args]
    else:
        command = ["attachflow", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        _out, err = proc.communicate(timeout=delay if delay is not None else 300)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    rec = record_of(proc.pid)
    if proc.returncode != -signal.SIGKILL or rec.state != "running":
        # ended by itself, or killed before its operation began or after it finished
        return Ended(proc.returncode, rec)
    if boundary is not None:
        assert len(rec.rows) == boundary, (args, "killed at", len(rec.rows), "not",
                                           boundary, err[-2000:])
    last = rec.boundaries[-1] if rec.rows else None
    return Crashed(len(rec.rows), last, rec)


def sample() -> tuple[int, int]:
    """(K, offset): a sweep aims at the boundaries n with n % K == offset.
    ``ATTACHFLOW_CRASH_SAMPLE``: ``all`` for every boundary; K for one in K, rotating
    with the commit (the count of commits that lead to HEAD); unset, one in
    DEFAULT_SAMPLE (what a default run, CI's, takes: three commits cover them all)."""
    spec = os.environ.get("ATTACHFLOW_CRASH_SAMPLE", str(DEFAULT_SAMPLE)).strip()
    if spec == "all":
        return 1, 0
    k = int(spec)
    assert k >= 1, f"ATTACHFLOW_CRASH_SAMPLE={spec}: one in K needs K >= 1"
    count = subprocess.run(["git", "rev-list", "--count", "HEAD"], capture_output=True,
                           text=True, check=True, cwd=Path(__file__).parent).stdout
    return k, int(count) % k


def aimed(k: int, offset: int):
    """The boundary numbers a sweep aims at, in order: 1, 2, ... or those of one in K."""
    n = offset if offset > 0 else k
    while True:
        yield n
        n += k


class Sweep:
    """What one operation's boundary sweep reached."""

    def __init__(self, kind: str, label: str):
        self.kind, self.label = kind, label
        self.k, self.offset = sample()
        self.crashed: dict[int, Boundary | None] = {}
        self.whole: Record | None = None     # a run that ended by itself

    @property
    def done(self) -> bool:
        return self.whole is not None

    def add(self, n: int, result: Ended | Crashed) -> Ended | Crashed:
        if isinstance(result, Crashed):
            self.crashed[n] = result.last
        else:
            assert result.returncode == 0, (self.label, n, result)
            self.whole = result.record
        return result

    def check(self) -> None:
        """Every boundary of the table on a whole run's path, every aimed one hit."""
        assert self.whole is not None, f"{self.label}: never ran to its end"
        whole = self.whole.boundaries
        assert_covered(self.kind, whole)
        for n, last in sorted(self.crashed.items()):
            assert last == whole[n - 1], (self.label, n, last, whole[n - 1])
        wanted = {n for n in range(1, len(whole) + 1) if n % self.k == self.offset % self.k}
        assert set(self.crashed) == wanted, (self.label, sorted(self.crashed), sorted(wanted))

    def summary(self) -> str:
        scope = "every boundary" if self.k == 1 else \
            f"one in {self.k} (n % {self.k} == {self.offset})"
        total = len(self.whole.rows) if self.whole else "?"
        return (f"{self.label}: {len(self.crashed)} kills of {total} boundaries, {scope}: "
                f"{sorted(self.crashed)}")
