"""Running one scenario: its steps in order, each timed, the first failure stopping the
rest, and everything the scenario made removed at its end, whatever happened.

What a step does on real hosts is the ``Actions`` seam's (the lab's or a two-node KVM
lab's implementation); this module owns the order, the outcome of each step, the names
(every volume and guest carries the run id, so two runs on one lab never collide) and
the clean-up: the resources are removed in the reverse order of their making, after a
failure and on an interrupt too, and what cannot be removed is reported with the
command that removes it. Side effects: only through ``Actions``.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any, Callable, ContextManager, Iterator, Mapping, Protocol

from attachflow import errors
from attachflow.scenario.results import (ERROR, FAILED, NOT_RUN, PASSED, ScenarioResult,
                                         StepResult)
from attachflow.scenario.spec import GuestSpec, Scenario, Step, VolumeSpec, size_bytes

OUTPUT_LINES = 20  # the last lines of a failed command's output a result keeps


class Deviation(Exception):
    """What a step expected and what it saw instead: the scenario fails there."""

    def __init__(self, expected: str, seen: str, output: tuple[str, ...] = ()):
        super().__init__(f"expected {expected}, saw {seen}")
        self.expected, self.seen, self.output = expected, seen, output


@dataclasses.dataclass(frozen=True)
class Stamp:
    """A data pattern: ``byte`` repeated over ``length`` bytes from ``offset``."""
    byte: int
    offset: int = 0
    length: int = 1024 * 1024

    def __str__(self) -> str:
        return f"0x{self.byte:02x} over {self.length} bytes at {self.offset}"


class Actions(Protocol):
    """What steps do to the storage and the hosts. Each method raises ``Deviation`` when
    what it sees is not what it was asked to find, and ``AttachflowError`` when it
    cannot do its work; ``AttachflowError.exit_code`` is the command's exit code."""

    def create_volume(self, name: str, spec: VolumeSpec) -> str: ...
    def delete_volume(self, volume_id: str) -> None: ...
    def boot(self, name: str, host: str, root_volume_id: str, memory_mib: int,
             api: str, transport: str) -> None: ...
    def delete_guest(self, name: str, host: str) -> None: ...
    def attach(self, volume_id: str, guest: str, host: str, device: str | None,
               api: str, transport: str) -> None: ...
    def detach(self, volume_id: str, guest: str, host: str, api: str,
               transport: str) -> None: ...
    def write(self, guest: str, host: str, volume_id: str, stamp: Stamp) -> None: ...
    def verify(self, guest: str, host: str, volume_id: str, stamp: Stamp) -> None: ...
    def migrate(self, guest: str, source: str, destination: str, api: str,
                transport: str) -> None: ...
    def fault(self, name: str, source: str | None,
              destination: str | None) -> ContextManager[None]: ...
    def observe(self, volume_id: str | None, guest: str | None, host: str | None,
                hosts: tuple[str, ...] = ()) -> Mapping[str, Any]:
        """What a user would check: for a volume its status, attachments, the hosts
        they are for and, per host of ``hosts``, its sessions and secrets; for a guest
        where it runs (``runs_on``) and, with a volume, where its disk is (``disk``:
        live, persistent, both or absent)."""
        ...
    def snapshot(self, hosts: tuple[str, ...]) -> Mapping[str, Any]:
        """What a refused step must leave as it was, looked at on ``hosts``."""
        ...


@dataclasses.dataclass
class _Made:
    """One resource the scenario made, and how to remove it."""
    what: str
    remove: Callable[[], None]
    command: Callable[[], str]   # what an operator runs when the removal failed, as of then


@dataclasses.dataclass
class _State:
    run_id: str
    volume_ids: dict[str, str] = dataclasses.field(default_factory=dict)
    guest_hosts: dict[str, str] = dataclasses.field(default_factory=dict)
    made: list[_Made] = dataclasses.field(default_factory=list)

    def guest_name(self, name: str) -> str:
        return f"{name}-{self.run_id}"


def new_run_id() -> str:
    return uuid.uuid4().hex[:6]


class Runner:
    """Runs scenarios with one ``Actions``. ``progress`` hears each step as it ends."""

    def __init__(self, actions: Actions, run_id: str | None = None,
                 progress: Callable[[str, StepResult], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.actions = actions
        self.run_id = run_id or new_run_id()
        self.progress = progress
        self.clock = clock
        self._running: tuple[str, str] | None = None
        self._count = 0   # scenarios run: each one's names differ from the last one's

    def run(self, scenario: Scenario) -> ScenarioResult:
        """The scenario's result, its clean-up done. An interrupt (Ctrl-C, SIGTERM as
        KeyboardInterrupt) cleans up too, then raises ``Interrupted`` with the result."""
        started = self.clock()
        self._count += 1
        state = _State(f"{self.run_id}-{self._count}")
        steps = list(_unrolled(scenario.steps))
        done: list[StepResult] = []
        ran = 0
        interrupted: BaseException | None = None
        try:
            if self._prepare(scenario, state, done):
                for step in steps:
                    result = self._step(scenario, step, state)
                    done.append(result)
                    ran += 1
                    if result.outcome != PASSED:
                        break
        except KeyboardInterrupt as exc:
            interrupted = exc
            label, where = self._running or ("start", scenario.where)
            self._running = None
            done.append(StepResult(label, where, ERROR, 0.0, seen="the run was interrupted"))
            if any(s.label == label and s.where == where for s in steps[ran:ran + 1]):
                ran += 1  # a step of the scenario's own, not its volumes' making
        finally:
            left = self._clean_up(state)
        done += [StepResult(s.label, s.where, NOT_RUN) for s in steps[ran:]]
        result = ScenarioResult(scenario.suite, scenario.name, scenario.where,
                                self.clock() - started, tuple(done), tuple(left))
        if interrupted is not None:
            raise Interrupted(result) from interrupted
        return result

    # -- the scenario's own volumes and guests --------------------------------------------
    def _prepare(self, scenario: Scenario, state: _State, done: list[StepResult]) -> bool:
        """The scenario's volumes, each a step of its result; whether all were made."""
        for guest in scenario.guests:
            state.guest_hosts[guest.name] = guest.host
        for vol in scenario.volumes:
            result = self._timed(f"create volume {vol.name}", scenario.where,
                                 lambda vol=vol: self._create(vol, scenario, state))
            done.append(result)
            if self.progress is not None:
                self.progress(scenario.name, result)
            if result.outcome != PASSED:
                return False
        return True

    def _create(self, vol: VolumeSpec, scenario: Scenario, state: _State) -> None:
        name = f"{scenario.suite}-{state.run_id}-{vol.name}"
        volume_id = self.actions.create_volume(name, vol)
        state.volume_ids[vol.name] = volume_id
        state.made.append(_Made(f"volume {name} ({volume_id})",
                                lambda: self.actions.delete_volume(volume_id),
                                lambda: f"openstack volume delete {volume_id}"))

    # -- one step ---------------------------------------------------------------------------
    def _step(self, scenario: Scenario, step: Step, state: _State) -> StepResult:
        result = self._timed(step.label, step.where,
                             lambda: self._do(scenario, step, state))
        if self.progress is not None:
            self.progress(scenario.name, result)
        return result

    def _timed(self, label: str, where: str, fn: Callable[[], None]) -> StepResult:
        started = self.clock()
        self._running = (label, where)  # what an interrupt stops (it passes through)
        try:
            fn()
        except BaseException as exc:
            if _interrupted(exc):
                raise KeyboardInterrupt from exc  # an operation undone on its way out
            if not isinstance(exc, Exception):
                raise
            result = _failed(label, where, self.clock() - started, exc)
        else:
            result = StepResult(label, where, PASSED, self.clock() - started)
        self._running = None
        return result

    def _do(self, scenario: Scenario, step: Step, state: _State) -> None:
        handler = getattr(self, f"_{step.kind}")
        handler(scenario, step, state)

    def _guest(self, scenario: Scenario, name: str) -> GuestSpec:
        return next(g for g in scenario.guests if g.name == name)

    def _boot(self, scenario, step, state):
        guest = self._guest(scenario, step.args["guest"])
        name, host = state.guest_name(guest.name), state.guest_hosts[guest.name]
        self.actions.boot(name, host, state.volume_ids[guest.root], guest.memory_mib,
                          scenario.api, scenario.transport)
        # removed before the volumes (made earlier), from wherever the guest runs then
        state.made.append(_Made(
            f"guest {name}", lambda: self.actions.delete_guest(
                name, state.guest_hosts[guest.name]),
            lambda: f"attachflow delete {name} --host {state.guest_hosts[guest.name]} "
                    "--force"))

    def _attach(self, scenario, step, state):
        guest, volume = step.args["guest"], step.args["volume"]
        self.actions.attach(state.volume_ids[volume], state.guest_name(guest),
                            state.guest_hosts[guest], step.args.get("device"),
                            scenario.api, scenario.transport)

    def _detach(self, scenario, step, state):
        guest, volume = step.args["guest"], step.args["volume"]
        self.actions.detach(state.volume_ids[volume], state.guest_name(guest),
                            state.guest_hosts[guest], scenario.api, scenario.transport)

    def _write(self, scenario, step, state):
        guest = step.args["guest"]
        self.actions.write(state.guest_name(guest), state.guest_hosts[guest],
                           state.volume_ids[step.args["volume"]], _stamp(step))

    def _verify(self, scenario, step, state):
        guest = step.args["guest"]
        self.actions.verify(state.guest_name(guest), state.guest_hosts[guest],
                            state.volume_ids[step.args["volume"]], _stamp(step))

    def _migrate(self, scenario, step, state):
        guest, destination = step.args["guest"], step.args["to"]
        self.actions.migrate(state.guest_name(guest), state.guest_hosts[guest], destination,
                             scenario.api, scenario.transport)
        state.guest_hosts[guest] = destination

    def _delete(self, scenario, step, state):
        guest = step.args["guest"]
        name = state.guest_name(guest)
        self.actions.delete_guest(name, state.guest_hosts[guest])
        state.made = [m for m in state.made if m.what != f"guest {name}"]

    def _fault(self, scenario, step, state):
        (inner,) = step.inner
        target = inner.inner[0] if inner.kind == "expect_failure" else inner
        guest = target.args.get("guest")
        source = state.guest_hosts[guest] if guest else None
        destination = target.args.get("to")
        # "nothing changed" is judged with the fault undone on both sides: a host whose
        # daemon is stopped cannot be looked at
        hosts = _hosts(scenario)
        before = self.actions.snapshot(hosts) if _unchanged(inner) else None
        with self.actions.fault(step.args["name"], source, destination):
            if inner.kind == "expect_failure":
                self._refused(scenario, inner, state)
            else:
                self._do(scenario, inner, state)
        if before is not None:
            _compare(before, self.actions.snapshot(hosts))

    def _expect_failure(self, scenario, step, state):
        hosts = _hosts(scenario)
        before = self.actions.snapshot(hosts) if _unchanged(step) else None
        self._refused(scenario, step, state)
        if before is not None:
            _compare(before, self.actions.snapshot(hosts))

    def _refused(self, scenario, step, state):
        """The step of an ``expect_failure`` failed as it says; nothing else checked."""
        (inner,) = step.inner
        hosts_before = dict(state.guest_hosts)
        try:
            self._do(scenario, inner, state)
        except errors.AttachflowError as exc:
            wanted_exit, wanted_message = step.args.get("exit"), step.args.get("message")
            if wanted_exit is not None and exc.exit_code != wanted_exit:
                raise Deviation(f"exit {wanted_exit}", f"exit {exc.exit_code}: {exc}")
            if wanted_message and wanted_message not in str(exc):
                raise Deviation(f"a message with '{wanted_message}'", str(exc))
        else:
            raise Deviation(f"'{inner.label}' to fail", "it succeeded")
        # a refused step moved nothing: the guests are where they were
        state.guest_hosts.update(hosts_before)

    def _expect(self, scenario, step, state):
        args = step.args
        volume = state.volume_ids.get(args.get("volume", ""))
        guest = args.get("guest")
        guest_name = state.guest_name(guest) if guest else None
        host = state.guest_hosts.get(guest) if guest else None
        hosts = tuple(sorted({h for key in ("sessions", "secrets")
                              for h in args.get(key, {})}))
        seen = self.actions.observe(volume, guest_name, host, hosts)
        wrong = []
        for key, wanted in args.items():
            if key in ("volume", "guest"):
                continue
            got = seen.get(key)
            if key == "attached_to":
                wanted, got = sorted(wanted), sorted(got or [])
            elif key in ("sessions", "secrets"):  # per host: only the hosts named
                got = {host: (got or {}).get(host, 0) for host in wanted}
            if got != wanted:
                wrong.append((key, wanted, got))
        if wrong:
            raise Deviation(", ".join(f"{k} {w}" for k, w, _ in wrong),
                            ", ".join(f"{k} {g}" for k, _, g in wrong))

    # -- the end ----------------------------------------------------------------------------
    def _clean_up(self, state: _State) -> list[str]:
        left = []
        # a guest's deletion detaches and releases its volumes; the volumes go last
        for made in reversed(state.made):
            try:
                made.remove()
            except Exception as exc:  # noqa: BLE001 - every later removal is still tried
                left.append(f"{made.what}: {exc}; remove it with: {made.command()}")
        return left


class Interrupted(Exception):
    """The run was interrupted; ``result`` is the scenario's, its clean-up done."""

    def __init__(self, result: ScenarioResult):
        super().__init__(f"interrupted in {result.name}")
        self.result = result


def _unchanged(step: Step) -> bool:
    return step.kind == "expect_failure" and bool(step.args.get("unchanged"))


def _hosts(scenario: Scenario) -> tuple[str, ...]:
    """Every host the scenario names: its guests' and its migrations' destinations."""
    found = {g.host for g in scenario.guests}
    found.update(s.args["to"] for s in _all_steps(scenario.steps) if s.kind == "migrate")
    return tuple(sorted(found))


def _all_steps(steps: tuple[Step, ...]) -> Iterator[Step]:
    for step in steps:
        yield step
        yield from _all_steps(step.inner)


def _compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> None:
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        raise Deviation("nothing changed", "; ".join(
            f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed))


def _failed(label: str, where: str, seconds: float, exc: Exception) -> StepResult:
    """A step that raised: failed when it saw a deviation, else in error (it could not
    do its work: a host unreachable, a refusal, a bug)."""
    if isinstance(exc, Deviation):
        return StepResult(label, where, FAILED, seconds, exc.expected, exc.seen,
                          exc.output[-OUTPUT_LINES:])
    seen = (f"{type(exc).__name__} (exit {exc.exit_code})"
            if isinstance(exc, errors.AttachflowError) else type(exc).__name__)
    return StepResult(label, where, ERROR, seconds, seen=seen,
                      output_tail=tuple(str(exc).splitlines()[-OUTPUT_LINES:]))


def _interrupted(exc: BaseException | None) -> bool:
    """Whether ``exc`` is an interrupt, or an error an interrupt caused (an operation
    that undid its steps when interrupted raises its own error from it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _stamp(step: Step) -> Stamp:
    return Stamp(int(step.args["pattern"], 16),
                 size_bytes(step.args.get("offset", "0")),
                 size_bytes(step.args.get("length", "1M")))


def _unrolled(steps: tuple[Step, ...]) -> Iterator[Step]:
    for step in steps:
        if step.kind == "repeat":
            for _ in range(step.args["times"]):
                yield from _unrolled(step.inner)
        else:
            yield step
