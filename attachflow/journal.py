"""The operations journal: every attach, detach, boot and migration, step by step.

Each operation gets an id and a row; each step is written before it runs and again when
it succeeds, is undone or fails to be undone, so that after any interruption (a killed
process, a lost terminal, a rebooted orchestrator) ``attachflow recover`` knows what the
operation was doing and how far it got. The side effect owned here is the journal file:
an SQLite database in the state directory (``/var/lib/attachflow`` unless
``ATTACHFLOW_STATE_DIR`` or ``--state-dir`` says otherwise), readable by root only,
written with ``synchronous=FULL`` so that every record is on disk before the step it
announces runs.

Nothing secret is ever written: what the operations hand in is already free of CHAP
passwords (connection info is kept in its ``to_record`` form), and ``_scrubbed`` drops
any secret-named key that would still reach the file.

Finished operations are kept for ``RETENTION_DAYS`` so that ``attachflow operations
--all`` can show them; the journal holds nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from attachflow import errors
from attachflow.plans import Step, StepDef
from attachflow.model import is_secret_key
from attachflow.settings import env_value

DEFAULT_STATE_DIR = "/var/lib/attachflow"
FILE_NAME = "journal.sqlite"
RETENTION_DAYS = 30

# Operation states. An operation is written "running" before its first step; it ends
# "done", "failed" (with nothing left: refused, or every step undone), or "incomplete"
# (it failed, or finished, with something it could not do: recover finishes it).
# Recover ends an operation "recovered", or "needs-human" with what it could not settle.
RUNNING, DONE, FAILED, INCOMPLETE = "running", "done", "failed", "incomplete"
RECOVERED, NEEDS_HUMAN = "recovered", "needs-human"
UNFINISHED = frozenset({RUNNING, INCOMPLETE, NEEDS_HUMAN})
STATES = frozenset({RUNNING, DONE, FAILED, INCOMPLETE, RECOVERED, NEEDS_HUMAN})

# Step states, in the order a step goes through them.
STARTED, STEP_DONE, STEP_UNDONE, UNDO_FAILED = "started", "done", "undone", "undo-failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    host TEXT NOT NULL,
    destination TEXT,
    domain TEXT NOT NULL,
    volumes TEXT NOT NULL,
    started REAL NOT NULL,
    updated REAL NOT NULL,
    machine TEXT NOT NULL,
    pid INTEGER NOT NULL,
    step TEXT,
    context TEXT NOT NULL,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    op_id TEXT NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT,
    key TEXT,
    subject TEXT,
    PRIMARY KEY (op_id, seq)
);
CREATE INDEX IF NOT EXISTS operations_by_state ON operations(state);
"""


def state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env_value(env, "ATTACHFLOW_STATE_DIR") or DEFAULT_STATE_DIR)


def private_dir(path: Path) -> Path:
    """``path`` made if missing, readable by its owner only (the parents too, when this
    makes them: umask does not widen what is created here)."""
    missing = []
    current = path
    while not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    return path


def volume_key(volume_id: str) -> str:
    return f"volume:{volume_id}"


def domain_key(domain: str) -> str:
    return f"domain:{domain}"


@dataclasses.dataclass(frozen=True)
class StepEntry:
    name: str                       # as users saw it
    state: str
    at: float
    data: Mapping[str, Any] | None = None
    key: str | None = None          # the step's identity in its plan (``plans``)
    subject: str | None = None      # the volume of a per-volume step

    def is_step(self, spec: StepDef, subject: str | None = None) -> bool:
        if self.key is not None:
            return self.key == spec.key and self.subject == subject
        return spec.matches_label(self.name, subject)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "at": _iso(self.at),
                **({"data": dict(self.data)} if self.data else {})}


@dataclasses.dataclass(frozen=True)
class OperationEntry:
    """One operation as the journal has it."""

    id: str
    kind: str                       # attach, detach, boot, migrate
    state: str
    host: str
    destination: str | None         # a migration's destination host
    domain: str
    volumes: tuple[str, ...]
    started: float
    updated: float
    machine: str                    # where the process that ran it ran
    pid: int
    step: str | None                # the last step reached
    context: Mapping[str, Any]      # what recovery needs: ids, records, connectors
    outcome: str | None             # the error, or what recover did
    steps: tuple[StepEntry, ...] = ()

    @property
    def resources(self) -> frozenset[str]:
        return frozenset([domain_key(self.domain), *map(volume_key, self.volumes)])

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED

    def step_state(self, spec: StepDef, subject: str | None = None) -> str | None:
        """The last state recorded for the step ``spec`` (of volume ``subject``, for a
        per-volume step); None when it never started."""
        found = [s.state for s in self.steps if s.is_step(spec, subject)]
        return found[-1] if found else None

    def step_data(self, spec: StepDef, subject: str | None = None
                  ) -> Mapping[str, Any] | None:
        """What the step ``spec`` recorded when it succeeded."""
        for entry in reversed(self.steps):
            if entry.is_step(spec, subject) and entry.data is not None:
                return entry.data
        return None

    def to_dict(self, shown_state: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": shown_state or self.state,
                "host": self.host, "destination": self.destination, "domain": self.domain,
                "volumes": list(self.volumes), "started": _iso(self.started),
                "updated": _iso(self.updated), "machine": self.machine, "pid": self.pid,
                "step": self.step, "outcome": self.outcome,
                "steps": [s.to_dict() for s in self.steps]}


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _scrubbed(value: Any) -> Any:
    """``value`` without any secret-named key, at any depth."""
    if isinstance(value, Mapping):
        return {str(k): _scrubbed(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_scrubbed(value), sort_keys=True, default=str)


def _add_step_identity(db: sqlite3.Connection) -> None:
    """Journals written before steps carried their identity get the two columns; their
    rows keep NULL there and are found by name (``StepDef.matches_label``)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(steps)")}
    for column in ("key", "subject"):
        if column not in columns:
            db.execute(f"ALTER TABLE steps ADD COLUMN {column} TEXT")


class Journal:
    """The journal file of one state directory. Safe to share between threads and
    processes: every write is its own short SQLite transaction."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self._db: sqlite3.Connection | None = None
        # One connection per journal, used by the threads of one operation (a
        # migration finishes its volumes in parallel): one statement group at a time.
        self._lock = threading.RLock()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Journal:
        return cls(state_dir(env))

    # -- the file ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        with self._lock:
            return self._connect_locked()

    def _connect_locked(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            private_dir(self.directory)
            # Created root-only before SQLite opens it; SQLite gives its -wal and -shm
            # files the database file's mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            _add_step_identity(db)
        except (OSError, sqlite3.Error) as exc:
            raise errors.JournalError(
                f"cannot open the operations journal {self.path}: {exc} (set "
                "ATTACHFLOW_STATE_DIR or --state-dir to a directory you can write)") from exc
        self._db = db
        return db

    def _write(self, *statements: tuple[str, Iterable[Any]]) -> None:
        """Run ``statements`` as one transaction: on disk when this returns."""
        with self._lock:
            self._write_locked(statements)

    def _write_locked(self, statements) -> None:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    db.execute(sql, tuple(args))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise errors.JournalError(f"cannot write the operations journal {self.path}: "
                                      f"{exc}") from exc

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- writing ---------------------------------------------------------------------------
    def begin(self, op_id: str, kind: str, host: str, domain: str, volumes: Iterable[str],
              context: Mapping[str, Any], destination: str | None = None) -> OperationLog:
        """A new operation, written before it does anything."""
        self.prune()
        now = time.time()
        self._write((
            "INSERT INTO operations (id, kind, state, host, destination, domain, volumes, "
            "started, updated, machine, pid, step, context) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            (op_id, kind, RUNNING, host, destination, domain, json.dumps(list(volumes)),
             now, now, socket.gethostname(), os.getpid(), _dumps(context))))
        return OperationLog(self, op_id)

    def prune(self, days: float = RETENTION_DAYS) -> None:
        """Forget finished operations older than ``days``."""
        finished = [s for s in STATES if s not in UNFINISHED]
        self._write((f"DELETE FROM operations WHERE updated < ? AND state IN "
                     f"({','.join('?' * len(finished))})",
                     (time.time() - days * 86400, *finished)))

    # -- reading ---------------------------------------------------------------------------
    def get(self, op_id: str) -> OperationEntry | None:
        found = self._select("WHERE id = ?", (op_id,))
        return found[0] if found else None

    def find(self, prefix: str) -> OperationEntry:
        """The operation whose id is or starts with ``prefix`` (as ``operations``
        shows ids shortened)."""
        found = self._select("WHERE id LIKE ? ESCAPE '\\'",
                             (prefix.replace("\\", "\\\\").replace("%", "\\%")
                              .replace("_", "\\_") + "%",))
        if not found:
            raise errors.InputError(f"no operation {prefix} in the journal {self.path}")
        if len(found) > 1:
            raise errors.InputError(f"operation id {prefix} is ambiguous "
                                    f"({', '.join(e.id for e in found)})")
        return found[0]

    def operations(self, unfinished_only: bool = True) -> list[OperationEntry]:
        if unfinished_only:
            return self._select(f"WHERE state IN ({','.join('?' * len(UNFINISHED))})",
                                tuple(sorted(UNFINISHED)))
        return self._select("", ())

    def touching(self, resources: Iterable[str]) -> list[OperationEntry]:
        """Unfinished operations that involve any of ``resources``."""
        wanted = set(resources)
        return [op for op in self.operations() if op.resources & wanted]

    def _select(self, where: str, args: tuple) -> list[OperationEntry]:
        with self._lock:
            return self._select_locked(where, args)

    def _select_locked(self, where: str, args: tuple) -> list[OperationEntry]:
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT id, kind, state, host, destination, domain, volumes, started, "
                f"updated, machine, pid, step, context, outcome FROM operations {where} "
                "ORDER BY started, id", args).fetchall()
            steps: dict[str, list[StepEntry]] = {r[0]: [] for r in rows}
            if rows:
                marks = ",".join("?" * len(rows))
                for op_id, name, state, at, data, key, subject in db.execute(
                        f"SELECT op_id, name, state, at, data, key, subject FROM steps "
                        f"WHERE op_id IN ({marks}) ORDER BY op_id, seq",
                        [r[0] for r in rows]):
                    steps[op_id].append(StepEntry(name, state, at,
                                                  json.loads(data) if data else None,
                                                  key, subject))
        except sqlite3.Error as exc:
            raise errors.JournalError(f"cannot read the operations journal {self.path}: "
                                      f"{exc}") from exc
        return [OperationEntry(r[0], r[1], r[2], r[3], r[4], r[5], tuple(json.loads(r[6])),
                               r[7], r[8], r[9], r[10], r[11], json.loads(r[12]), r[13],
                               tuple(steps[r[0]])) for r in rows]

    def counts(self) -> dict[str, int]:
        """Rows per table: what the file holds, for checking it holds nothing more than
        ``operations --all`` shows."""
        with self._lock:
            db = self._connect()
            return {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    for table in ("operations", "steps")}


class OperationLog:
    """The writer of one operation's records."""

    def __init__(self, journal: Journal, op_id: str):
        self.journal = journal
        self.id = op_id
        self._seq = 0
        self.changed = False        # a step with an undo succeeded: something to undo
        self.state = RUNNING
        self.outcome: str | None = None

    def _step(self, step: Step, state: str, data: Mapping[str, Any] | None = None) -> None:
        self._seq += 1
        now = time.time()
        self.journal._write(
            ("INSERT INTO steps (op_id, seq, name, state, at, data, key, subject) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
             (self.id, self._seq, step.name, state, now,
              _dumps(data) if data is not None else None, step.key, step.subject)),
            ("UPDATE operations SET step = ?, updated = ? WHERE id = ?",
             (f"{step.name} ({state})", now, self.id)))

    def step_started(self, step: Step) -> None:
        self._step(step, STARTED)

    def step_done(self, step: Step, data: Mapping[str, Any] | None = None,
                  undoable: bool = True) -> None:
        self.changed = self.changed or undoable
        self._step(step, STEP_DONE, data)

    def step_undone(self, step: Step) -> None:
        self._step(step, STEP_UNDONE)

    def undo_failed(self, step: Step, error: str) -> None:
        self._step(step, UNDO_FAILED, {"error": error})

    def add_context(self, **values: Any) -> None:
        """Add to what recovery will need (e.g. an id learnt during the operation)."""
        entry = self.journal.get(self.id)
        context = dict(entry.context if entry else {})
        context.update(values)
        self.journal._write(("UPDATE operations SET context = ?, updated = ? WHERE id = ?",
                             (_dumps(context), time.time(), self.id)))

    def finish(self, state: str, outcome: str | None = None) -> None:
        if state not in STATES or state == RUNNING:
            raise ValueError(f"not a final state: {state}")
        self.journal._write((
            "UPDATE operations SET state = ?, outcome = ?, updated = ? WHERE id = ?",
            (state, outcome, time.time(), self.id)))
        self.state, self.outcome = state, outcome


def settle(journal: Journal, op_id: str, state: str, outcome: str) -> None:
    """Record how recover left operation ``op_id``."""
    OperationLog(journal, op_id).finish(state, outcome)
