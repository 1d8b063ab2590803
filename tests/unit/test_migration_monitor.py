"""The migration monitor's decisions, called directly with made-up clocks and job
statistics: no migration, no thread. The timeout action comes when the completion timeout
is reached and not a poll earlier, once, as configured (abort or post-copy); the max
downtime is set once, and only when a job exists."""

import logging

import pytest

from attachflow import errors
from attachflow import migration_monitor as mm
from attachflow.migration_monitor import Action, MonitorState

JOB = {"type": 2, "data_processed": 3 << 20, "data_remaining": 5 << 20,
       "data_total": 8 << 20}
NO_JOB = {"type": 0}
GIB_KIB = 1 << 20


# -- completion_timeout -----------------------------------------------------------------------

@pytest.mark.parametrize("memory_kib,expected", [
    (GIB_KIB, 800.0),
    (4 * GIB_KIB, 3200.0),
    (GIB_KIB // 2, 400.0),
    (GIB_KIB // 16, 60.0),   # 50 s by memory: the floor
    (0, 60.0),
])
def test_completion_timeout_from_memory(memory_kib, expected):
    assert mm.completion_timeout(memory_kib) == expected
    assert mm.completion_timeout(memory_kib, None) == expected


def test_configured_completion_timeout_wins_even_below_the_floor():
    assert mm.completion_timeout(4 * GIB_KIB, 5) == 5.0
    assert isinstance(mm.completion_timeout(4 * GIB_KIB, 5), float)
    assert mm.completion_timeout(GIB_KIB // 16, 7200.0) == 7200.0


# -- next_action: the completion timeout -------------------------------------------------------

@pytest.mark.parametrize("on_timeout,action", [("abort", Action.ABORT),
                                               ("postcopy", Action.POSTCOPY)])
def test_timeout_action_at_and_after_the_limit_not_before(on_timeout, action):
    state = MonitorState()
    for elapsed in (0.0, 0.5, 59.5, 59.999):
        assert mm.next_action(elapsed, 60.0, on_timeout, state, JOB) is Action.NONE, elapsed
    assert mm.next_action(60.0, 60.0, on_timeout, state, JOB) is action
    assert mm.next_action(60.5, 60.0, on_timeout, state, JOB) is action
    assert mm.next_action(6000.0, 60.0, on_timeout, state, JOB) is action


def test_timeout_action_comes_at_the_first_poll_past_the_limit_only():
    """Polls every half second on a fake clock: nothing for the first 19 polls (9.5 s),
    the abort at the 20th (10 s) and nothing after it."""
    state, actions = MonitorState(), []
    for poll in range(1, 41):
        elapsed = poll * 0.5
        action = mm.next_action(elapsed, 10.0, "abort", state, JOB)
        state = state.after(action)
        actions.append((elapsed, action))
    assert [a for a in actions if a[1] is not Action.NONE] == [(10.0, Action.ABORT)]
    assert state.timed_out and not state.switched_to_postcopy


def test_no_second_abort_and_never_postcopy_after_an_abort():
    aborted = MonitorState().after(Action.ABORT)
    assert aborted.timed_out
    for on_timeout in ("abort", "postcopy"):
        assert mm.next_action(61.0, 60.0, on_timeout, aborted, JOB) is Action.NONE
        assert mm.next_action(600.0, 60.0, on_timeout, aborted, NO_JOB) is Action.NONE


def test_no_second_switch_to_postcopy_and_never_an_abort_after_it():
    switched = MonitorState().after(Action.POSTCOPY)
    assert switched.switched_to_postcopy and not switched.timed_out
    for on_timeout in ("abort", "postcopy"):
        assert mm.next_action(61.0, 60.0, on_timeout, switched, JOB) is Action.NONE


def test_timeout_does_not_wait_for_a_job():
    # as before: a job that never shows up in the statistics is still aborted
    assert mm.next_action(61.0, 60.0, "abort", MonitorState(), NO_JOB) is Action.ABORT
    assert mm.next_action(61.0, 60.0, "abort", MonitorState(), {}) is Action.ABORT


# -- next_action: the max downtime -----------------------------------------------------------

def test_max_downtime_only_once_a_job_exists():
    state = MonitorState()
    assert mm.next_action(0.5, 60.0, "abort", state, NO_JOB, 300) is Action.NONE
    assert mm.next_action(0.5, 60.0, "abort", state, {}, 300) is Action.NONE
    assert mm.next_action(0.5, 60.0, "abort", state, JOB, 300) is Action.SET_MAX_DOWNTIME


def test_max_downtime_set_once():
    state = MonitorState().after(Action.SET_MAX_DOWNTIME)
    assert state.max_downtime_set
    for elapsed in (1.0, 2.0, 30.0):
        assert mm.next_action(elapsed, 60.0, "abort", state, JOB, 300) is Action.NONE


@pytest.mark.parametrize("max_downtime_ms", [None, 0])
def test_no_max_downtime_unless_configured(max_downtime_ms):
    assert mm.next_action(1.0, 60.0, "abort", MonitorState(), JOB,
                          max_downtime_ms) is Action.NONE


def test_max_downtime_then_timeout_action_when_both_are_due():
    state = MonitorState()
    first = mm.next_action(60.0, 60.0, "postcopy", state, JOB, 300)
    assert first is Action.SET_MAX_DOWNTIME
    state = state.after(first)
    assert mm.next_action(60.0, 60.0, "postcopy", state, JOB, 300) is Action.POSTCOPY
    state = state.after(Action.POSTCOPY)
    assert mm.next_action(60.0, 60.0, "postcopy", state, JOB, 300) is Action.NONE


def test_no_action_repeats_over_a_whole_run():
    state, taken = MonitorState(), []
    for poll in range(1, 200):
        stats = NO_JOB if poll < 4 else JOB
        while (action := mm.next_action(poll * 0.5, 30.0, "postcopy", state, stats,
                                        250)) is not Action.NONE:
            taken.append((poll, action))
            state = state.after(action)
    assert taken == [(4, Action.SET_MAX_DOWNTIME), (60, Action.POSTCOPY)]


# -- progress_event --------------------------------------------------------------------------

def test_progress_event_from_job_statistics():
    event = mm.progress_event(12.345, JOB)
    assert event == mm.ProgressEvent(elapsed=12.3, processed=3 << 20, remaining=5 << 20,
                                     total=8 << 20)
    assert event.to_dict() == {"event": "progress", "elapsed": 12.3,
                               "processed": 3 << 20, "remaining": 5 << 20,
                               "total": 8 << 20}


def test_progress_event_only_while_a_job_exists():
    assert mm.progress_event(1.0, NO_JOB) is None
    assert mm.progress_event(1.0, {}) is None
    assert mm.progress_event(1.0, {"type": 1}).to_dict() == {
        "event": "progress", "elapsed": 1.0, "processed": 0, "remaining": 0, "total": 0}


# -- Monitor, on a fake clock and a fake worker ----------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Worker:
    """Stands for the migration thread: alive for ``polls`` joins, each of which moves
    the clock on by the interval asked for."""

    def __init__(self, clock, polls):
        self.clock, self.left = clock, polls

    def is_alive(self):
        return self.left > 0

    def join(self, timeout=None):
        self.clock.now += timeout
        self.left -= 1


class Hypervisor:
    def __init__(self, stats=None):
        self.stats = stats  # a list, one entry per poll: dict, or an exception to raise
        self.calls = []
        self.refuse = {}  # method -> how many calls to refuse

    def _call(self, method, name):
        self.calls.append(method)
        if name != "vm":  # as libvirt: only the domain being migrated has a job
            raise errors.DomainNotFound(f"domain '{name}' not found")
        if self.refuse.get(method):
            self.refuse[method] -= 1
            raise errors.HypervisorError(f"{method} refused")

    def job_stats(self, name):
        if name != "vm":
            raise errors.DomainNotFound(f"domain '{name}' not found")
        out = self.stats.pop(0) if self.stats else JOB
        if isinstance(out, Exception):
            raise out
        return dict(out)

    def set_max_downtime(self, name, milliseconds):
        self._call(f"set_max_downtime {milliseconds}", name)

    def abort_job(self, name):
        self._call("abort_job", name)

    def start_postcopy(self, name):
        self._call("start_postcopy", name)


def run(hv, polls, timeout=10.0, **kwargs):
    clock = Clock()
    events = []
    monitor = mm.Monitor(hv, "vm", timeout, progress=events.append, clock=clock,
                         interval=0.5, **kwargs)
    monitor.run(Worker(clock, polls))
    return monitor, events


def test_monitor_aborts_once_at_the_timeout():
    hv = Hypervisor()
    monitor, events = run(hv, 40)
    assert hv.calls == ["abort_job"]
    assert monitor.timed_out and not monitor.switched_to_postcopy
    assert len(events) == 39  # the last join sees the worker gone: no poll
    assert [e["elapsed"] for e in events[:3]] == [0.5, 1.0, 1.5]


def test_monitor_does_not_act_before_the_timeout():
    hv = Hypervisor()
    monitor, _ = run(hv, 20)  # polls at 0.5 .. 9.5 s
    assert hv.calls == [] and not monitor.timed_out


def test_monitor_switches_to_postcopy_once_and_sets_downtime_once():
    hv = Hypervisor([NO_JOB, NO_JOB])
    monitor, events = run(hv, 40, on_timeout="postcopy", max_downtime_ms=300)
    assert hv.calls == ["set_max_downtime 300", "start_postcopy"]
    assert monitor.switched_to_postcopy and not monitor.timed_out
    assert events[0]["elapsed"] == 1.5  # no progress while there was no job


def test_monitor_polls_on_through_failed_job_stats():
    hv = Hypervisor([errors.HypervisorError("domain not found")] * 25)
    monitor, events = run(hv, 30)
    # the timeout passed while the statistics failed; the abort comes at the first
    # poll that has them
    assert hv.calls == ["abort_job"] and monitor.timed_out
    assert events[0]["elapsed"] == 13.0 and len(events) == 4


def test_monitor_retries_a_refused_action_at_the_next_poll():
    hv = Hypervisor()
    hv.refuse = {"abort_job": 2, "set_max_downtime 300": 1}
    monitor, _ = run(hv, 30, max_downtime_ms=300)
    assert hv.calls == ["set_max_downtime 300", "set_max_downtime 300",
                        "abort_job", "abort_job", "abort_job"]
    assert monitor.timed_out


def test_a_refused_max_downtime_does_not_hold_up_the_timeout_action():
    hv = Hypervisor()
    hv.refuse = {"set_max_downtime 300": 100}
    monitor, _ = run(hv, 25, max_downtime_ms=300)
    assert hv.calls.count("abort_job") == 1 and monitor.timed_out
    # tried at every poll, the abort in the same poll as the 20th try
    assert hv.calls.index("abort_job") == 20


def test_monitor_without_progress_callback():
    hv = Hypervisor()
    clock = Clock()
    monitor = mm.Monitor(hv, "vm", 1.0, clock=clock, interval=0.5)
    monitor.run(Worker(clock, 5))
    assert hv.calls == ["abort_job"]


def test_monitor_polls_at_the_module_interval_by_default(monkeypatch):
    monkeypatch.setattr(mm, "POLL_INTERVAL", 2.0)
    clock, seen = Clock(), []
    monitor = mm.Monitor(Hypervisor(), "vm", 100.0, progress=seen.append, clock=clock)
    monitor.run(Worker(clock, 5))
    assert [e["elapsed"] for e in seen] == [2.0, 4.0, 6.0, 8.0]


def test_monitor_polls_at_the_interval_it_was_given():
    clock, seen = Clock(), []
    monitor = mm.Monitor(Hypervisor(), "vm", 100.0, progress=seen.append, clock=clock,
                         interval=2.0)
    monitor.run(Worker(clock, 4))
    assert [e["elapsed"] for e in seen] == [2.0, 4.0, 6.0]


def test_the_debug_log_says_why_a_poll_did_nothing(caplog):
    caplog.set_level(logging.DEBUG, logger="attachflow.migration_monitor")
    hv = Hypervisor([errors.HypervisorError("domain not found"), JOB, JOB])
    hv.refuse = {"abort_job": 1}
    run(hv, 4, timeout=1.0)
    assert [r.getMessage() for r in caplog.records] == [
        "vm: no job statistics: domain not found",
        "vm: abort failed: abort_job refused"]
    assert hv.calls == ["abort_job", "abort_job"]
