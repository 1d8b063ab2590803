"""Watching a live migration job: progress, max downtime and the completion timeout.

The decisions are pure functions of what the monitor has seen so far, so that they can be
checked without a migration or a thread:

    completion_timeout   how long the job may run: as configured, else 800 s per GiB of
                         guest memory (as Nova does) and never under a minute
    next_action          what to do at this poll: nothing, set the max downtime (once, as
                         soon as a job exists), or, once the timeout is reached, abort the
                         job or switch it to post-copy (once: never both, never twice)
    progress_event       the job's statistics as a progress event, while a job exists

``Monitor`` polls the hypervisor every ``POLL_INTERVAL`` seconds and acts on them. A
failed ``job_stats`` is not an error (the domain may already be gone from the source):
the monitor polls on. An action the hypervisor refuses is not taken, and is decided
again at the next poll.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from typing import Any, Callable, Mapping, Protocol

from attachflow import errors

LOG = logging.getLogger("attachflow.migration_monitor")

POLL_INTERVAL = 0.5
SECONDS_PER_GIB = 800  # completion timeout per GiB of guest memory, as Nova does
MIN_COMPLETION_TIMEOUT = 60.0


class Action(enum.Enum):
    NONE = "none"
    SET_MAX_DOWNTIME = "set max downtime"
    ABORT = "abort"
    POSTCOPY = "switch to post-copy"


@dataclasses.dataclass(frozen=True)
class MonitorState:
    """What the monitor has done so far."""

    max_downtime_set: bool = False
    timed_out: bool = False  # the job was aborted at the completion timeout
    switched_to_postcopy: bool = False

    @property
    def timeout_handled(self) -> bool:
        return self.timed_out or self.switched_to_postcopy

    def after(self, action: Action) -> MonitorState:
        if action is Action.SET_MAX_DOWNTIME:
            return dataclasses.replace(self, max_downtime_set=True)
        if action is Action.ABORT:
            return dataclasses.replace(self, timed_out=True)
        if action is Action.POSTCOPY:
            return dataclasses.replace(self, switched_to_postcopy=True)
        return self


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    elapsed: float  # seconds since the monitor started, to a tenth
    processed: int  # bytes
    remaining: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {"event": "progress", "elapsed": self.elapsed, "processed": self.processed,
                "remaining": self.remaining, "total": self.total}


def completion_timeout(memory_kib: int, configured: float | None = None) -> float:
    """Seconds the migration may take before the timeout action."""
    if configured is not None:
        return float(configured)
    return max(MIN_COMPLETION_TIMEOUT, SECONDS_PER_GIB * memory_kib / (1 << 20))


def job_exists(stats: Mapping[str, Any]) -> bool:
    """Whether libvirt's job statistics describe a job (type is not VIR_DOMAIN_JOB_NONE)."""
    return bool(stats.get("type", 0))


def timeout_reached(elapsed: float, timeout: float) -> bool:
    return elapsed >= timeout


def next_action(elapsed: float, timeout: float, on_timeout: str, state: MonitorState,
                stats: Mapping[str, Any], max_downtime_ms: int | None = None) -> Action:
    """The one action due now, given the seconds elapsed since the job started, the
    completion timeout, what to do on timeout ("abort" or "postcopy"), what has been done
    so far and the job's statistics. The max downtime is set first, as soon as a job
    exists. An action already taken is never due again, and the timeout leads to one
    action only."""
    if max_downtime_ms and not state.max_downtime_set and job_exists(stats):
        return Action.SET_MAX_DOWNTIME
    if not state.timeout_handled and timeout_reached(elapsed, timeout):
        return Action.POSTCOPY if on_timeout == "postcopy" else Action.ABORT
    return Action.NONE


def progress_event(elapsed: float, stats: Mapping[str, Any]) -> ProgressEvent | None:
    """The job's progress, or None when there is no job."""
    if not job_exists(stats):
        return None
    return ProgressEvent(elapsed=round(elapsed, 1), processed=stats.get("data_processed", 0),
                         remaining=stats.get("data_remaining", 0),
                         total=stats.get("data_total", 0))


class JobControl(Protocol):
    """The part of the source hypervisor the monitor uses."""

    def job_stats(self, name: str) -> dict[str, Any]: ...
    def set_max_downtime(self, name: str, milliseconds: int) -> None: ...
    def abort_job(self, name: str) -> None: ...
    def start_postcopy(self, name: str) -> None: ...


class Worker(Protocol):
    """The thread running the migration."""

    def is_alive(self) -> bool: ...
    def join(self, timeout: float | None = None) -> None: ...


class Monitor:
    """Watches the migration job of ``domain`` while ``worker`` runs it."""

    def __init__(self, hypervisor: JobControl, domain: str, timeout: float,
                 on_timeout: str = "abort", max_downtime_ms: int | None = None,
                 progress: Callable[[dict[str, Any]], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 interval: float | None = None):
        self.hypervisor = hypervisor
        self.domain = domain
        self.timeout = timeout
        self.on_timeout = on_timeout
        self.max_downtime_ms = max_downtime_ms
        self.progress = progress
        self.clock = clock
        self.interval = interval  # None: POLL_INTERVAL as it is when run() starts
        self.state = MonitorState()

    @property
    def timed_out(self) -> bool:
        return self.state.timed_out

    @property
    def switched_to_postcopy(self) -> bool:
        return self.state.switched_to_postcopy

    def run(self, worker: Worker) -> None:
        interval = POLL_INTERVAL if self.interval is None else self.interval
        start = self.clock()
        while worker.is_alive():
            worker.join(interval)
            if not worker.is_alive():
                break
            self.poll(start)

    def poll(self, start: float) -> None:
        """One look at the job, ``start`` being the clock's time when the job started."""
        try:
            stats = self.hypervisor.job_stats(self.domain)
        except errors.AttachflowError as exc:
            LOG.debug("%s: no job statistics: %s", self.domain, exc)
            return  # the domain may be gone from the source already
        elapsed = self.clock() - start
        event = progress_event(elapsed, stats)
        if event is not None and self.progress is not None:
            self.progress(event.to_dict())
        # Every action due is tried once per poll; one that fails counts as tried for
        # this poll only, so that it does not hold up the next one and is retried later.
        tried = self.state
        while True:
            action = next_action(elapsed, self.timeout, self.on_timeout, tried, stats,
                                 self.max_downtime_ms)
            if action is Action.NONE:
                return
            tried = tried.after(action)
            if self._act(action):
                self.state = self.state.after(action)

    def _act(self, action: Action) -> bool:
        try:
            if action is Action.SET_MAX_DOWNTIME:
                self.hypervisor.set_max_downtime(self.domain, self.max_downtime_ms)
            elif action is Action.ABORT:
                self.hypervisor.abort_job(self.domain)
            elif action is Action.POSTCOPY:
                self.hypervisor.start_postcopy(self.domain)
        except errors.AttachflowError as exc:
            LOG.debug("%s: %s failed: %s", self.domain, action.value, exc)
            return False
        return True
