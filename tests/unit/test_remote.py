import os
import socket
import threading
import time

import paramiko
import pytest

from attachflow import errors
from attachflow.hosts import HostConfig
from attachflow.remote import SSHRunner


def _one_shot_server(payload: bytes):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve():
        conn, _ = server.accept()
        conn.sendall(payload)
        conn.close()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def test_ssh_ping_needs_a_fresh_ssh_banner():
    port = _one_shot_server(b"SSH-2.0-OpenSSH_9.2\r\n")
    SSHRunner(HostConfig("h", "127.0.0.1", ssh_port=port)).ping()
    port = _one_shot_server(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(errors.HostError, match="does not speak SSH"):
        SSHRunner(HostConfig("h", "127.0.0.1", ssh_port=port)).ping()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(errors.HostError, match="refused"):
        SSHRunner(HostConfig("h", "127.0.0.1", ssh_port=port)).ping()


# ---------------------------------------------------------------------------------------
# SSHRunner.run against a scripted channel

WINDOW = 64 * 1024


class ScriptedChannel:
    """The part of paramiko's Channel that SSHRunner uses, in front of a scripted command.

    As over SSH, at most WINDOW bytes of the command's output (stdout and stderr together)
    and WINDOW bytes of its stdin are in flight: a writer blocks until the other end
    reads. Where the real channel would block for good, this one raises socket.timeout as
    the real one does when its timeout expires, so a runner that stalls fails the test
    instead of hanging it.

    ``script`` is what the command does, in order: ``("out", data)``, ``("err", data)``,
    ``("read",)`` (stdin to its end), ``("echo",)`` (stdin to stdout, like cat),
    ``("flood",)`` (stdout forever) or ``("hang",)`` (nothing, forever); then it exits with
    ``status``.
    """

    def __init__(self, script, status=0, fail_recv=None):
        self.script = [list(step) for step in script]
        self.status = status
        self.fail_recv = fail_recv
        self.stdout, self.stderr = bytearray(), bytearray()
        self.stdin_pending = bytearray()  # sent, not yet read by the command
        self.stdin_read = bytearray()     # what the command read
        self.stdin_ended = False
        self.eof_received = False
        self.closed = False
        self.timeout = None
        self._pipe = None
        self._advance()

    def _room(self):
        return WINDOW - len(self.stdout) - len(self.stderr)

    def _advance(self):
        while self.script:
            step = self.script[0]
            kind = step[0]
            if kind in ("out", "err"):
                n = min(self._room(), len(step[1]))
                (self.stdout if kind == "out" else self.stderr).extend(step[1][:n])
                step[1] = step[1][n:]
                if step[1]:
                    return
            elif kind in ("read", "echo"):
                n = len(self.stdin_pending)
                if kind == "echo":
                    n = min(n, self._room())
                    self.stdout.extend(self.stdin_pending[:n])
                self.stdin_read.extend(self.stdin_pending[:n])
                del self.stdin_pending[:n]
                if self.stdin_pending or not self.stdin_ended:
                    return
            elif kind == "drop":  # the SSH link goes down: no EOF, no exit status
                self.closed = True
                return
            elif kind == "flood":
                if len(step) == 1:
                    step.append(time.monotonic())  # when the flood began
                if time.monotonic() - step[1] > 5:
                    raise AssertionError("still reading after 5 s: the timeout was ignored")
                self.stdout.extend(b"y" * min(16, self._room()))
                return
            else:
                return
            self.script.pop(0)
        self.eof_received = True

    # what SSHClient.exec_command sets
    def settimeout(self, timeout):
        self.timeout = timeout

    def fileno(self):
        # never readable: a select on it waits for its whole timeout
        if self._pipe is None:
            self._pipe = os.pipe()
        return self._pipe[0]

    def recv_ready(self):
        return bool(self.stdout)

    def recv_stderr_ready(self):
        return bool(self.stderr)

    def _recv(self, buffer, nbytes):
        if self.fail_recv is not None:
            raise self.fail_recv
        if not buffer:
            if self.eof_received or self.closed:
                return b""
            raise socket.timeout()
        data = bytes(buffer[:nbytes])
        del buffer[:nbytes]
        self._advance()
        return data

    def recv(self, nbytes):
        return self._recv(self.stdout, nbytes)

    def recv_stderr(self, nbytes):
        return self._recv(self.stderr, nbytes)

    def send_ready(self):
        return self.closed or self.stdin_ended or len(self.stdin_pending) < WINDOW

    def send(self, data):
        if self.closed:
            raise OSError("Socket is closed")
        if self.stdin_ended:
            return 0
        n = min(WINDOW - len(self.stdin_pending), len(data))
        if n == 0:
            raise socket.timeout()
        self.stdin_pending.extend(data[:n])
        self._advance()
        return n

    def sendall(self, data):
        while data:
            data = data[self.send(data):]

    def shutdown_write(self):
        self.stdin_ended = True
        self._advance()

    def exit_status_ready(self):
        return self.closed or self.eof_received

    @property
    def status_event(self):
        """Set once the command's exit status arrived (with its EOF, here)."""
        event = threading.Event()
        if self.eof_received:
            event.set()
        return event

    def recv_exit_status(self):
        if not self.exit_status_ready():
            raise AssertionError("recv_exit_status would wait for good")
        return self.status if self.eof_received else -1

    def close(self):
        self.closed = True
        for fd in self._pipe or ():
            os.close(fd)
        self._pipe = None


class ChannelFile:
    """What exec_command returns: files over the one channel. As with paramiko, the stdin
    file ends the command's input when it is closed or collected."""

    def __init__(self, channel, recv=None):
        self.channel = channel
        self._recv = recv

    def __del__(self):
        if self._recv is None:
            self.channel.shutdown_write()

    def write(self, data):
        self.channel.sendall(data)

    def read(self):
        data = bytearray()
        while chunk := self._recv(32768):
            data += chunk
        return bytes(data)


class _LiveTransport:
    def is_active(self):
        return True

    def set_keepalive(self, interval):
        pass


class ScriptedClient:
    """An SSHClient already connected, whose commands run on ``channel``."""

    def __init__(self, channel=None, fail=None):
        self.channel = channel
        self.fail = fail
        self.commands = []

    def get_transport(self):
        return _LiveTransport()

    def exec_command(self, command, timeout=None):
        self.commands.append(command)
        if self.fail is not None:
            raise self.fail
        self.channel.settimeout(timeout)
        return (ChannelFile(self.channel), ChannelFile(self.channel, self.channel.recv),
                ChannelFile(self.channel, self.channel.recv_stderr))

    def close(self):
        pass


def _runner(client):
    runner = SSHRunner(HostConfig("hostb", "198.18.0.12"))
    runner._client = client
    return runner


def _pattern(seed: bytes, size: int) -> bytes:
    return (seed * (size // len(seed) + 1))[:size]


def test_run_returns_large_stderr_and_stdout_intact():
    # more stderr than the window holds, before any stdout, then more of both
    err1, out, err2 = (_pattern(b"E%d-" % i, size) for i, size in
                       ((1, 5 * WINDOW + 7), (2, 9 * WINDOW + 3), (3, 3 * WINDOW)))
    channel = ScriptedChannel([("err", err1), ("out", out), ("err", err2)], status=3)
    assert _runner(ScriptedClient(channel)).run(["dump", "it"]) == (3, out, err1 + err2)
    assert channel.closed


def test_run_delivers_stdin_whole_to_a_command_that_answers_as_it_reads():
    request = _pattern(b'{"auth_password": "pw-on-stdin"}', 11 * WINDOW + 5)
    channel = ScriptedChannel([("echo",), ("err", b"done")])
    client = ScriptedClient(channel)
    rc, out, err = _runner(client).run(["attachflow", "host-call", "a b"], request)
    assert (rc, out, err) == (0, request, b"done")
    assert channel.stdin_read == request and channel.stdin_ended
    assert client.commands == ["attachflow host-call 'a b'"]


def test_run_small_stdin_then_end_of_input():
    channel = ScriptedChannel([("read",), ("out", b"null")])
    assert _runner(ScriptedClient(channel)).run(["cat"], b"{}") == (0, b"null", b"")
    assert channel.stdin_read == b"{}" and channel.stdin_ended


def test_run_reports_a_command_that_exits_without_reading_its_stdin():
    channel = ScriptedChannel([("err", b"attachflow: command not found")], status=127)
    rc, out, err = _runner(ScriptedClient(channel)).run(["attachflow", "host-call"],
                                                         b"x" * (4 * WINDOW))
    assert (rc, out, err) == (127, b"", b"attachflow: command not found")


@pytest.mark.parametrize("script", [[("out", b"partial"), ("hang",)], [("flood",)]],
                         ids=["silent", "endless-output"])
def test_run_times_out_as_a_host_error(script):
    channel = ScriptedChannel(script)
    started = time.monotonic()
    with pytest.raises(errors.HostError) as caught:
        _runner(ScriptedClient(channel)).run(["sleep", "inf"], b"pw-on-stdin", timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 3
    assert str(caught.value) == "ssh root@198.18.0.12: sleep inf: timed out after 0.3 s"
    assert channel.closed


@pytest.mark.parametrize("exc", [
    paramiko.SSHException("SSH session not active"),
    paramiko.ChannelException(2, "Connect failed"),
    ConnectionResetError(104, "Connection reset by peer"),
    EOFError(),
], ids=["ssh", "channel", "socket", "eof"])
@pytest.mark.parametrize("where", ["exec_command", "recv"])
def test_run_translates_ssh_failures_into_host_errors(exc, where):
    channel = ScriptedChannel([("out", b"x")], fail_recv=exc if where == "recv" else None)
    client = ScriptedClient(channel, fail=exc if where == "exec_command" else None)
    with pytest.raises(errors.HostError) as caught:
        _runner(client).run(["attachflow", "host-call"], b'{"auth_password": "s3cr3t"}')
    message = str(caught.value)
    assert message.startswith("ssh root@198.18.0.12: attachflow host-call: ")
    assert "\n" not in message and "s3cr3t" not in message
    assert len(message) > len("ssh root@198.18.0.12: attachflow host-call: ")
    assert where == "exec_command" or channel.closed


class SlowToOpen(ScriptedClient):
    def exec_command(self, command, timeout=None):
        time.sleep(timeout)  # as paramiko's open_session does before giving up
        raise paramiko.SSHException("Timeout opening channel.")


def test_a_link_lost_mid_command_is_an_error_that_says_the_command_may_have_run():
    chan = ScriptedChannel([("read",), ("out", b"half an ans"), ("drop",)])
    with pytest.raises(errors.HostError, match=r"^ssh root@198\.18\.0\.12: attachflow "
                       r"host-call: the connection was lost before the command finished "
                       r"\(it may have run on the host\)$"):
        _runner(ScriptedClient(chan)).run(["attachflow", "host-call"], stdin=b"{}")


def test_run_channel_open_timeout_says_timed_out():
    with pytest.raises(errors.HostError, match=r"^ssh root@198\.18\.0\.12: true: timed out "
                       r"after 0\.05 s$"):
        _runner(SlowToOpen()).run(["true"], timeout=0.05)


# ---------------------------------------------------------------------------------------
# SSHRunner.run against a real paramiko transport, both ends in this process

class _ExecServer(paramiko.ServerInterface):
    def __init__(self, command):
        self.command = command

    def get_allowed_auths(self, username):
        return "none"

    def check_auth_none(self, username):
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel, command):
        threading.Thread(target=self.command, args=(channel,), daemon=True).start()
        return True


class _TransportClient:
    """SSHClient.exec_command over an already authenticated transport."""

    def __init__(self, transport):
        self.transport = transport

    def get_transport(self):
        return self.transport

    def exec_command(self, command, timeout=None):
        chan = self.transport.open_session(timeout=timeout)
        chan.settimeout(timeout)
        chan.exec_command(command)
        return chan.makefile_stdin("wb"), chan.makefile("r"), chan.makefile_stderr("r")

    def close(self):
        self.transport.close()


@pytest.fixture(scope="module")
def server_key():
    return paramiko.RSAKey.generate(1024)


@pytest.fixture
def over_paramiko(server_key):
    """An SSHRunner whose commands run ``command(channel)`` at the other end of a real
    paramiko transport over a socket pair."""
    transports = []

    def make(command):
        client_sock, server_sock = socket.socketpair()
        server = paramiko.Transport(server_sock)
        server.add_server_key(server_key)
        threading.Thread(target=server.start_server, kwargs={"server": _ExecServer(command)},
                         daemon=True).start()
        client = paramiko.Transport(client_sock)
        transports.extend((client, server))
        client.start_client(timeout=10)
        client.auth_none("root")
        return _runner(_TransportClient(client))

    yield make
    for transport in transports:
        transport.close()


def test_run_over_paramiko_stderr_first_and_stdin_echoed(over_paramiko):
    # more than paramiko's 2 MiB window on stderr before any stdout, and stdout only
    # once all of stdin has been read
    def command(chan):
        request = bytearray()
        while chunk := chan.recv(65536):
            request += chunk
        chan.sendall_stderr(b"E" * 3_000_000)
        chan.sendall(bytes(request) + b"O" * 3_000_000)
        chan.send_exit_status(3)
        chan.close()

    request = _pattern(b'{"auth_password": "pw-on-stdin"}', 5_000_000)
    rc, out, err = over_paramiko(command).run(["attachflow", "host-call"], request,
                                              timeout=10)
    assert (rc, out, err) == (3, request + b"O" * 3_000_000, b"E" * 3_000_000)


def test_run_over_paramiko_waits_for_output_sent_after_the_exit_status(over_paramiko):
    def command(chan):
        chan.send_exit_status(0)
        time.sleep(0.2)
        chan.sendall(b"late output")
        chan.close()

    assert over_paramiko(command).run(["true"], timeout=10) == (0, b"late output", b"")


def test_run_over_paramiko_times_out(over_paramiko):
    def command(chan):
        chan.sendall(b"partial")
        time.sleep(5)

    with pytest.raises(errors.HostError, match="timed out after 0.5 s"):
        over_paramiko(command).run(["sleep", "inf"], timeout=0.5)
