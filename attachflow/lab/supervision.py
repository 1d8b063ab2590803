"""The lab's processes: supervisord runs its daemons, one cgroup (cgroup.py) holds all
they spawn.

Side effects owned: the supervisord process and its files (``<state>/supervisor``).

Why both: supervisord starts, stops, restarts and logs the daemons and knows their pids,
but daemons fork away from it (epmd from RabbitMQ, oslo.privsep helpers from
cinder-volume, QEMU from libvirtd, ssh connection-sharing masters from libvirt clients).
Every process started through ``in-cgroup`` stays in its component's cgroup with all its
descendants, so the lab's processes are exactly the processes of that cgroup: ``status``
counts them per component, and ``down`` ends with the cgroup empty and removed.
"""

from __future__ import annotations

import http.client
import shlex
import socket
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

from attachflow.lab import layout
from attachflow.lab.cgroup import Cgroup
from attachflow.lab.errors import LabError
from attachflow.lab.shell import read_tail, run, tail, wait_for


# ---------------------------------------------------------------------------------------
# supervisord
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Program:
    """One daemon as supervisord runs it, in the cgroup of its component."""
    name: str
    command: list[str]
    group: str
    env: dict[str, str] = field(default_factory=dict)
    directory: str = "/"
    stop_signal: str = "TERM"
    stop_wait: int = 10
    # A daemon whose start prepared state that a restart would not redo (a namespace
    # holder) is not restarted behind the lab's back.
    autorestart: bool = True


@dataclass(frozen=True)
class ProcessInfo:
    name: str
    state: str           # supervisord's state name: RUNNING, STARTING, EXITED, FATAL, ...
    pid: int | None
    started: float       # epoch seconds of the last start, 0 if never started
    log: str

    @property
    def alive(self) -> bool:
        return self.state in ("RUNNING", "STARTING", "STOPPING") and bool(self.pid)


_DEAD_STATES = ("EXITED", "FATAL", "BACKOFF")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path, self._timeout = path, timeout

    def make_connection(self, host):  # noqa: ARG002 - one socket, whatever the host
        return _UnixConnection(self._path, self._timeout)


def _quote_env(env: dict[str, str]) -> str:
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return ",".join(f"{k}={q(v)}" for k, v in sorted(env.items()))


class Supervisor:
    """supervisord of the lab, over its XML-RPC interface on a unix socket."""

    def __init__(self, cgroup: Cgroup) -> None:
        self.cgroup = cgroup
        self.dir = layout.path("supervisor")
        self.conf = self.dir / "supervisord.conf"
        self.socket = self.dir / "supervisor.sock"
        self.launcher = self.dir / "in-cgroup"

    # -- configuration ------------------------------------------------------------------
    def write_config(self, programs: list[Program]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        layout.render("in-cgroup", self.launcher, 0o755)
        layout.render("supervisord.conf", self.conf, 0o600, conf=str(self.conf),
                      socket=str(self.socket))
        pdir = self.dir / "programs"
        pdir.mkdir(exist_ok=True)
        wanted = set()
        for prog in programs:
            command = [str(self.launcher), str(self.cgroup.group(prog.group)), *prog.command]
            text = layout.render_text(
                "program.conf", name=prog.name,
                command=shlex.join(command).replace("%", "%%"),
                directory=prog.directory,
                environment=_quote_env(prog.env).replace("%", "%%") or 'LANG="C.UTF-8"',
                autorestart="unexpected" if prog.autorestart else "false",
                stop_signal=prog.stop_signal, stop_wait=str(prog.stop_wait))
            file = pdir / f"{prog.name}.conf"
            wanted.add(file)
            if not file.exists() or file.read_text() != text:
                layout.write(file, text, 0o600)
        for stale in set(pdir.glob("*.conf")) - wanted:
            stale.unlink()

    # -- the daemon itself --------------------------------------------------------------
    def _rpc(self, timeout: float = 30):
        return xmlrpc.client.ServerProxy(
            "http://localhost/RPC2", transport=_UnixTransport(str(self.socket), timeout))

    def answering(self) -> bool:
        try:
            return self._rpc(5).supervisor.getState()["statename"] == "RUNNING"
        except (OSError, xmlrpc.client.Error):
            return False

    def pid(self) -> int | None:
        try:
            return int(self._rpc(5).supervisor.getPID())
        except (OSError, xmlrpc.client.Error):
            return None

    def ensure_running(self) -> None:
        """Start supervisord if it does not answer, else make it re-read its programs."""
        if self.answering():
            self._update()
            return
        # Daemons left without their supervisor (it was killed) would hold the ports and
        # sockets the new ones need; they are the lab's, found in its cgroup.
        self.cgroup.kill()
        bin_ = layout.VENV / "bin" / "supervisord"
        self.socket.unlink(missing_ok=True)
        # supervisord forks itself into the background; the child stays in the cgroup.
        run([str(self.launcher), str(self.cgroup.group("supervisor")), str(bin_), "-c",
             str(self.conf)], env=dict(layout.DAEMON_ENV), timeout=30)
        wait_for("supervisord", self.answering, timeout=15, interval=0.05,
                 dead=lambda: None if self.pid_file_alive() else
                 "exited; see " + str(layout.path("log", "supervisord.log")) + ": "
                 + tail(read_tail(layout.path("log", "supervisord.log"))))

    def pid_file_alive(self) -> bool:
        try:
            pid = int((self.dir / "supervisord.pid").read_text())
        except (OSError, ValueError):
            return True  # not written yet: still starting
        return Path(f"/proc/{pid}").exists()

    def _update(self) -> None:
        """Apply program files that changed since supervisord read them."""
        rpc = self._rpc()
        added, changed, removed = rpc.supervisor.reloadConfig()[0]
        for name in removed + changed:
            try:
                rpc.supervisor.stopProcessGroup(name)
            except xmlrpc.client.Fault:
                pass
            rpc.supervisor.removeProcessGroup(name)
        for name in changed + added:
            rpc.supervisor.addProcessGroup(name)

    def shutdown(self) -> None:
        if not self.answering():
            return
        try:
            self._rpc(60).supervisor.stopAllProcesses(True)
            self._rpc(5).supervisor.shutdown()
        except (OSError, xmlrpc.client.Error):
            pass
        wait_for("supervisord exit", lambda: not self.answering(), timeout=20,
                 interval=0.05)

    # -- programs -----------------------------------------------------------------------
    def infos(self) -> dict[str, ProcessInfo]:
        """Every program's state; empty when supervisord does not run. A supervisord that
        runs but does not answer is an error: callers must not take its daemons for
        dead (and start them again, or kill what they started)."""
        if not self.socket.exists():
            return {}
        try:
            raw = self._rpc(10).supervisor.getAllProcessInfo()
        except (FileNotFoundError, ConnectionRefusedError):
            return {}  # a socket left behind by a supervisord that is gone
        except (OSError, xmlrpc.client.Error) as e:
            raise LabError(f"supervisord at {self.socket} does not answer: {e}") from e
        return {r["name"]: ProcessInfo(r["name"], r["statename"], r["pid"] or None,
                                       float(r["start"] or 0), r["stdout_logfile"])
                for r in raw}

    def info(self, name: str) -> ProcessInfo | None:
        return self.infos().get(name)

    def start(self, name: str) -> None:
        """Start a program unless it runs; returns at once (readiness is the caller's)."""
        info = self.info(name)
        if info is None:
            raise LabError(f"supervisord knows no program {name}")
        if info.alive:
            return
        try:
            self._rpc().supervisor.startProcess(name, False)
        except xmlrpc.client.Fault as e:
            if "ALREADY_STARTED" not in e.faultString:
                raise LabError(f"{name}: supervisord could not start it: "
                               f"{e.faultString}") from e

    def stop(self, name: str) -> None:
        """Stop a program and wait until it is gone (SIGKILL after its stop_wait)."""
        info = self.info(name)
        if info is None or not info.alive:
            return
        try:
            self._rpc(120).supervisor.stopProcess(name, True)
        except xmlrpc.client.Fault as e:
            if "NOT_RUNNING" not in e.faultString:
                raise LabError(f"{name}: supervisord could not stop it: "
                               f"{e.faultString}") from e

    def failure(self, names: list[str]) -> str | None:
        """Why one of ``names`` is not running after it was started, with its log's tail."""
        try:
            infos = self.infos()
        except LabError:
            return None  # not known to have failed: the wait goes on
        for name in names:
            info = infos.get(name)
            if info is not None and info.state in _DEAD_STATES:
                return (f"{name} exited ({info.state}); see {info.log}: "
                        + tail(read_tail(Path(info.log))))
        return None
