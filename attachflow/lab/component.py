"""What every lab component is, and how the lab brings them up and down in order.

A component (the network, tgtd, MariaDB, a Cinder service, a compute host, ...) declares
what it needs installed, which components must be ready before it starts, the daemons
supervisord runs for it, and four operations: ``up`` (configure and start; idempotent),
``ready`` (a probe), ``down`` (stop and remove what it put on the machine) and ``status``.
``bring_up`` starts each component as soon as everything it requires is ready, so
independent ones start in parallel; ``bring_down`` goes in the reverse order.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from attachflow.lab import layout
from attachflow.lab.errors import LabError
from attachflow.lab.shell import wait_for
from attachflow.lab.cgroup import Cgroup
from attachflow.lab.supervision import Program, Supervisor


@dataclass
class Status:
    """A component's state as ``lab status`` shows it."""
    state: str                          # up, down, starting, not answering, ...
    pids: list[int] = field(default_factory=list)   # the supervised daemons
    address: str | None = None          # where it answers: host:port, a socket, a bridge
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self, ready_seconds: float | None, processes: int) -> dict[str, Any]:
        """``processes``: all processes in the component's cgroup, the supervised daemons
        and whatever they started (QEMU, helpers)."""
        out: dict[str, Any] = {"state": self.state, "pid": self.pids[0] if self.pids else None,
                               "pids": self.pids, "processes": processes,
                               "address": self.address, "ready_seconds": ready_seconds}
        out.update(self.details)
        return out


class Lab:
    """What components share: the supervisor, the cgroup, progress output, timings."""

    def __init__(self, echo: Callable[[str], None] = lambda _m: None) -> None:
        self.echo = echo
        self.cgroup = Cgroup()
        self.supervisor = Supervisor(self.cgroup)
        self._times_lock = threading.Lock()

    def record_ready(self, name: str, seconds: float) -> None:
        """Keep how long a component took to become ready when it was brought up; an
        `up` that finds it running already does not overwrite that."""
        with self._times_lock:
            times = layout.load_json(layout.path("ready-seconds.json"), {})
            if name in times:
                return
            times[name] = round(seconds, 2)
            layout.write(layout.path("ready-seconds.json"),
                         json.dumps(times, indent=1, sort_keys=True) + "\n")

    def ready_times(self) -> dict[str, float]:
        return layout.load_json(layout.path("ready-seconds.json"), {})

    def program_pids(self, names: Iterable[str]) -> list[int]:
        infos = self.supervisor.infos()
        return [i.pid for n in names if (i := infos.get(n)) and i.alive and i.pid]

    def program_status(self, names: list[str]) -> tuple[str, list[int]]:
        """"up" when every program runs, and the pids of those that do (one query)."""
        infos = self.supervisor.infos()
        running = [i for n in names if (i := infos.get(n)) and i.alive and i.pid]
        return ("up" if len(running) == len(names) else "down",
                [i.pid for i in running])


class Component:
    """Base of the lab's components; subclasses override what applies to them."""

    name: str = ""
    # Components that must be ready before this one starts.
    requires: tuple[str, ...] = ()
    # Components that must have started (not necessarily be ready) before this one starts:
    # for daemons that retry until a peer answers, so their start-up overlaps the peer's.
    after: tuple[str, ...] = ()
    apt_packages: tuple[str, ...] = ()
    pip_packages: tuple[str, ...] = ()
    ready_timeout: float = 60.0
    # Probes cost CPU that the starting daemons need (the machine has two cores): poll
    # no faster than the component becomes ready anyway.
    poll_interval: float = 0.2

    def programs(self) -> list[Program]:
        """The daemons supervisord runs for this component (none by default)."""
        return []

    def up(self, lab: Lab) -> None:
        """Configure and start; a running component is left as it is."""
        for prog in self.programs():
            lab.supervisor.start(prog.name)

    def ready(self, lab: Lab) -> bool:
        return True

    def down(self, lab: Lab) -> list[str]:
        """Stop and remove what this component put on the machine; returns problems."""
        for prog in reversed(self.programs()):
            lab.supervisor.stop(prog.name)
        if self.programs():
            lab.cgroup.kill(self.name)
        return []

    def status(self, lab: Lab) -> Status:
        names = [p.name for p in self.programs()]
        state, pids = lab.program_status(names)
        return Status(state, pids)


def ordered(components: list[Component], others_stay: bool = False) -> list[Component]:
    """Components in an order where each comes after everything it requires.
    ``others_stay``: some of the lab's components only (taken down while the rest keeps
    running), so what they require may be outside the list."""
    by_name = {c.name: c for c in components}
    done: list[Component] = []
    seen: set[str] = set()

    def visit(c: Component, path: tuple[str, ...]) -> None:
        if c.name in seen:
            return
        if c.name in path:
            raise LabError(f"components require each other: {' -> '.join(path + (c.name,))}")
        for r in (*c.requires, *c.after):
            if r not in by_name and others_stay:
                continue
            if r not in by_name:
                raise LabError(f"{c.name} requires {r}, which is not a lab component")
            visit(by_name[r], path + (c.name,))
        seen.add(c.name)
        done.append(c)

    for c in components:
        visit(c, ())
    return done


def _up_one(lab: Lab, comp: Component, t0: float) -> None:
    lab.echo(f"[{time.monotonic() - t0:5.1f}s] {comp.name:<18} starting")
    started = time.monotonic()
    comp.up(lab)
    names = [p.name for p in comp.programs()]
    wait_for(comp.name, lambda: comp.ready(lab), timeout=comp.ready_timeout,
             interval=comp.poll_interval,
             dead=(lambda: lab.supervisor.failure(names)) if names else None)
    took = time.monotonic() - started
    lab.record_ready(comp.name, took)
    lab.echo(f"[{time.monotonic() - t0:5.1f}s] {comp.name:<18} ready ({took:.1f}s)")


def bring_up(lab: Lab, components: list[Component]) -> None:
    """Start every component once those it requires are ready; parallel where possible.

    On the first failure no further component starts; the ones already starting finish
    (or fail) and the first error is raised."""
    t0 = time.monotonic()
    pending = ordered(components)
    started: set[str] = set()
    ready: set[str] = set()
    errors: list[Exception] = []
    running: dict[concurrent.futures.Future, str] = {}
    with concurrent.futures.ThreadPoolExecutor(max(1, len(pending))) as pool:
        while pending or running:
            if not errors:
                startable = [c for c in pending if all(r in ready for r in c.requires)
                             and all(a in started for a in c.after)]
                for comp in startable:
                    pending.remove(comp)
                    started.add(comp.name)
                    running[pool.submit(_up_one, lab, comp, t0)] = comp.name
                if startable:
                    continue  # a start may let an `after` dependent start at once
            if not running:
                break
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in finished:
                name = running.pop(fut)
                try:
                    fut.result()
                    ready.add(name)
                except Exception as e:  # collect all, report the first
                    lab.echo(f"[{time.monotonic() - t0:5.1f}s] {name:<18} FAILED: {e}")
                    errors.append(e)
    if errors:
        raise errors[0]


def bring_down(lab: Lab, components: list[Component]) -> list[str]:
    """Every component's ``down`` once everything that requires it, or starts after it,
    is down; independent ones in parallel. Returns what could not be undone. (A Cinder
    service whose broker is gone first spends seconds reconnecting before it exits.)
    Components they require that are not in the list stay as they are."""
    comps = ordered(components, others_stay=True)
    dependents = {c.name: {d.name for d in comps if c.name in (*d.requires, *d.after)}
                  for c in comps}
    done: set[str] = set()
    problems: list[str] = []
    running: dict[concurrent.futures.Future, str] = {}

    t0 = time.monotonic()

    def down_one(comp: Component) -> list[str]:
        started = time.monotonic()
        try:
            problems = [f"{comp.name}: {p}" for p in comp.down(lab)]
        except Exception as e:  # reported; the other components still go down
            problems = [f"{comp.name}: {e}"]
        lab.echo(f"[{time.monotonic() - t0:5.1f}s] {comp.name:<18} "
                 f"{'down' if not problems else 'NOT fully down'} "
                 f"({time.monotonic() - started:.1f}s)")
        return problems

    with concurrent.futures.ThreadPoolExecutor(max(1, len(comps))) as pool:
        pending = list(reversed(comps))
        while pending or running:
            for comp in [c for c in pending if dependents[c.name] <= done]:
                pending.remove(comp)
                running[pool.submit(down_one, comp)] = comp.name
            finished, _ = concurrent.futures.wait(
                running, return_when=concurrent.futures.FIRST_COMPLETED)
            for fut in finished:
                done.add(running.pop(fut))
                problems += fut.result()
    return problems
