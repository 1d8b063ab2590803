"""Commands on a compute host: the remote shell.

The side effect owned here is running a command on a host over SSH (``SSHRunner`` with
paramiko, host keys always checked) behind the ``Runner`` seam; its in-memory twin, for
the tests, is ``FakeRunner`` in ``tests/unit/twins.py``.
"""

from __future__ import annotations

import abc
import logging
import os
import select
import shlex
import socket
import threading
import time

from attachflow import errors, timings
from attachflow.hosts import HostConfig


LOG = logging.getLogger("attachflow.ssh")

class Runner(abc.ABC):
    @abc.abstractmethod
    def run(self, argv: list[str], stdin: bytes | None = None,
            timeout: float | None = None) -> tuple[int, bytes, bytes]:
        """``timeout``: seconds for the whole command; None is the host's setting."""

    @abc.abstractmethod
    def ping(self, timeout: float = 5) -> None:
        """Raise HostError unless the host's SSH server answers right now."""

    def open_stream(self, argv: list[str], timeout: float | None = None) -> Stream | None:
        """Start ``argv`` on the host and keep it running, to exchange lines with it
        (``Stream``); None from a runner that runs one command at a time only."""
        return None

    def close(self) -> None:
        pass


class Stream(abc.ABC):
    """A command kept running on a host that answers each line it reads with one line."""

    @abc.abstractmethod
    def readline(self, timeout: float | None = None) -> bytes | None:
        """The next line the command wrote (without its newline); None once it has
        ended or its channel closed; TimeoutError after ``timeout`` seconds (None: the
        host's command timeout)."""

    @abc.abstractmethod
    def exchange(self, line: bytes, timeout: float | None = None) -> bytes:
        """Send ``line`` and return the command's answering line. HostError when the
        channel closes before the answer (the request may have run on the host) or the
        answer takes longer than ``timeout`` (None: the host's command timeout)."""

    @abc.abstractmethod
    def close(self) -> None: ...


class SSHRunner(Runner):
    """paramiko, known-hosts checking on: an unknown or changed host key is an error."""

    def __init__(self, cfg: HostConfig):
        self.cfg = cfg
        self._timeout = cfg.connect_timeout
        self._client = None
        self._connect_lock = threading.Lock()

    def _connect(self):
        # One SSH connection per host, however many threads ask for it first.
        with self._connect_lock:
            return self._connect_once()

    def _connect_once(self):
        if self._client is not None:
            transport = self._client.get_transport()
            if transport is not None and transport.is_active():
                return self._client
            # The link dropped (the host rebooted, a network blip, sshd restarted):
            # a new connection, not an error on every later command.
            LOG.debug("ssh %s@%s: connection lost; connecting again", self.cfg.ssh_user,
                      self.cfg.address)
            _close_quietly(self._client)
            self._client = None
        import paramiko
        import tenacity
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            if self.cfg.known_hosts:
                client.load_host_keys(os.path.expanduser(self.cfg.known_hosts))
            else:
                client.load_system_host_keys()
        except OSError as exc:
            raise errors.HostError(f"{self.cfg.name}: known hosts: {exc}") from exc

        def connect():
            client.connect(self.cfg.address, port=self.cfg.ssh_port,
                           username=self.cfg.ssh_user,
                           key_filename=os.path.expanduser(self.cfg.ssh_key)
                           if self.cfg.ssh_key else None,
                           timeout=self._timeout, banner_timeout=self._timeout,
                           auth_timeout=self._timeout, allow_agent=False)

        try:
            # Only a refused or timed-out TCP connect is retried: host key and auth
            # failures are answers, not accidents.
            with timings.phase("connection", f"ssh {self.cfg.name}"):
                tenacity.Retrying(
                    retry=tenacity.retry_if_exception_type((ConnectionRefusedError,
                                                            socket.timeout)),
                    stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.5),
                    reraise=True)(connect)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise errors.HostError(f"ssh {self.cfg.ssh_user}@{self.cfg.address}: "
                                   f"{_describe(exc)}") from exc
        transport = client.get_transport()
        if transport is not None:
            # A link that dies silently is noticed within a minute, not at the command's
            # timeout.
            transport.set_keepalive(KEEPALIVE)
        self._client = client
        return client

    def ping(self, timeout=5):
        # A fresh TCP connection and the server's banner: cheap, and unlike a shared
        # or pooled SSH connection it shows that sshd answers now.
        try:
            with socket.create_connection((self.cfg.address, self.cfg.ssh_port),
                                          timeout=timeout) as sock:
                banner = sock.recv(256)
        except OSError as exc:
            raise errors.HostError(f"ssh {self.cfg.address}:{self.cfg.ssh_port}: "
                                   f"{exc.strerror or exc}") from exc
        if not banner.startswith(b"SSH-"):
            raise errors.HostError(f"{self.cfg.address}:{self.cfg.ssh_port} does not speak "
                                   "SSH")
        LOG.debug("ssh %s@%s:%d answers (%s)", self.cfg.ssh_user, self.cfg.address,
                  self.cfg.ssh_port, banner.decode(errors="replace").strip())

    def run(self, argv, stdin=None, timeout=None):
        timeout = self.cfg.command_timeout if timeout is None else timeout
        client = self._connect()
        import paramiko
        command = shlex.join(argv)
        # argv never carries secrets (they go on stdin), so the message may name it
        where = f"ssh {self.cfg.ssh_user}@{self.cfg.address}: {' '.join(command.split())}"
        deadline = time.monotonic() + timeout
        chan = None
        try:
            # Held until the end: paramiko's stdin file sends EOF when it is collected.
            files = client.exec_command(command, timeout=timeout)
            chan = files[0].channel
            started = time.monotonic()
            answer = _exchange(chan, stdin or b"", deadline)
            if answer[0] == -1 and not chan.status_event.is_set():
                # The channel closed without the command's exit status: the link went
                # down mid-command, which may have run on the host, in part or whole.
                raise errors.HostError(f"{where}: the connection was lost before the "
                                       "command finished (it may have run on the host)")
            LOG.debug("%s -> exit %d (%.0f ms)", where, answer[0],
                      (time.monotonic() - started) * 1000)
            return answer
        except (paramiko.SSHException, OSError, EOFError) as exc:
            # paramiko says "Timeout opening channel." when the same deadline expires
            if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
                raise errors.HostError(f"{where}: timed out after {timeout:g} s") from exc
            raise errors.HostError(f"{where}: {_describe(exc)}") from exc
        finally:
            if chan is not None:
                _close_quietly(chan)

    def open_stream(self, argv, timeout=None):
        timeout = self.cfg.command_timeout if timeout is None else timeout
        client = self._connect()
        import paramiko
        command = shlex.join(argv)
        where = f"ssh {self.cfg.ssh_user}@{self.cfg.address}: {command}"
        try:
            transport = client.get_transport()
            if transport is None:
                raise EOFError
            chan = transport.open_session(timeout=timeout)
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise errors.HostError(f"{where}: {_describe(exc)}") from exc
        LOG.debug("%s: started, kept open", where)
        return SSHStream(chan, where, self.cfg.command_timeout)

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None


class SSHStream(Stream):
    """A command on an SSH channel that stays open: lines to its stdin, lines back from
    its stdout; what it writes on stderr is kept (its last lines explain an end)."""

    def __init__(self, chan, where: str, default_timeout: float):
        self._chan = chan
        self._where = where
        self._timeout = default_timeout
        self._out = bytearray()
        self._err = bytearray()

    def _last_words(self) -> str:
        lines = self._err.decode(errors="replace").strip().splitlines()
        return f" ({lines[-1]})" if lines else ""

    def readline(self, timeout=None):
        deadline = time.monotonic() + (self._timeout if timeout is None else timeout)
        chan = self._chan
        while b"\n" not in self._out:
            if chan.recv_stderr_ready():
                self._err = (self._err + chan.recv_stderr(_CHUNK))[-4096:]
                continue
            if chan.recv_ready():
                data = chan.recv(_CHUNK)
                self._out += data
                if data:
                    continue
            if not chan.recv_ready() and (chan.eof_received or chan.closed):
                while chan.recv_stderr_ready():   # what it said as it went
                    self._err = (self._err + chan.recv_stderr(_CHUNK))[-4096:]
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            # readable when stdout data, EOF or the close arrives; stderr is polled
            select.select([chan], [], [], min(left, 0.05))
        line, _newline, rest = bytes(self._out).partition(b"\n")
        self._out = bytearray(rest)
        return line

    def exchange(self, line, timeout=None):
        timeout = self._timeout if timeout is None else timeout
        try:
            self._chan.sendall(line + b"\n")
            answer = self.readline(timeout)
        except TimeoutError as exc:
            raise errors.HostError(f"{self._where}: no answer within {timeout:g} s") from exc
        except OSError as exc:
            answer = None
            LOG.debug("%s: %s", self._where, _describe(exc))
        if answer is None:
            raise errors.HostError(f"{self._where}: the connection was lost before the "
                                   "request finished (it may have run on the host)"
                                   f"{self._last_words()}")
        return answer

    def close(self):
        _close_quietly(self._chan)


_CHUNK = 32768
# Seconds between SSH keepalive messages on an idle connection.
KEEPALIVE = 15
# The longest wait for something the channel's file descriptor does not signal: room in
# the window for more stdin, or the exit status once the output has ended.
_SHORT_WAIT = 0.01


def _exchange(chan, stdin: bytes, deadline: float) -> tuple[int, bytes, bytes]:
    """Feed ``stdin`` to the command on ``chan`` and collect its stdout and stderr, both
    at once, until it has ended them and exited; TimeoutError once ``deadline`` passes.

    Reading one stream to its end before the other would stall as soon as the command
    fills the SSH window with the other, and writing all of stdin before reading would
    stall a command that answers as it reads. Only calls that cannot block are made:
    recv when data is buffered, send when the window has room.
    """
    out, err = bytearray(), bytearray()
    sent = 0
    if not stdin:
        chan.shutdown_write()
    while True:
        if time.monotonic() >= deadline:
            raise TimeoutError
        # Data arrives before the EOF that follows it: once EOF is seen, empty buffers
        # mean both streams are complete.
        ended = chan.eof_received or chan.closed
        busy = False
        if chan.recv_ready():
            out += chan.recv(_CHUNK)
            busy = True
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(_CHUNK)
            busy = True
        if ended and not busy and chan.exit_status_ready():
            break
        if sent < len(stdin) and chan.send_ready():
            try:
                sent += chan.send(stdin[sent:sent + _CHUNK])
            except OSError:
                if not chan.closed:
                    raise
                sent = len(stdin)  # the command is gone; its exit status tells the rest
            else:
                busy = True
                if sent == len(stdin):
                    chan.shutdown_write()
        if busy:
            continue
        left = max(0.0, deadline - time.monotonic())
        if ended:
            # the descriptor stays readable after EOF: sleep, do not select
            time.sleep(min(left, _SHORT_WAIT))
        else:
            # readable when data, EOF or the channel's close arrives
            select.select([chan], [], [], min(left, _SHORT_WAIT) if sent < len(stdin)
                          else left)
    return chan.recv_exit_status(), bytes(out), bytes(err)


def _describe(exc: BaseException) -> str:
    """One line for an SSH or socket failure."""
    if isinstance(exc, EOFError):
        return "connection closed by the host"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _close_quietly(chan) -> None:
    # Closing also releases the pipe behind chan.fileno(); a failure here must not hide
    # the command's result or the error already on its way.
    try:
        chan.close()
    except Exception:
        pass
