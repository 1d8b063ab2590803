import json

import pytest

from attachflow import errors
from attachflow.brick import BrickRemote, host_call
from attachflow.hosts import HostConfig
from attachflow.remote import Runner

from twins import FakeBrick


class LoopbackRunner(Runner):
    """Runs host_call in-process, as ``attachflow host-call`` would on the host, and
    records what crossed the wire."""

    def __init__(self):
        self.brick = FakeBrick("hostb")
        self.seen = []

    def ping(self, timeout=5):
        return None

    def run(self, argv, stdin=None, timeout=300):
        self.seen.append((argv, stdin))
        try:
            return 0, json.dumps(host_call(json.loads(stdin), self.brick)).encode(), b""
        except errors.AttachflowError as exc:
            return 1, b"", f"attachflow: error: {exc}".encode()


def test_remote_brick_sends_secrets_on_stdin_never_argv():
    runner = LoopbackRunner()
    remote = BrickRemote(runner, HostConfig("hostb", "198.18.0.12"))
    props = {"target_portal": "198.18.0.1:3260", "target_iqn": "iqn.x", "target_lun": 1,
             "auth_password": "pw-on-stdin"}
    info = remote.connect("ISCSI", props, False)
    assert info["path"].startswith("/dev/disk/by-path/") and runner.brick.sessions
    remote.disconnect("ISCSI", props, info, False)
    assert not runner.brick.sessions
    assert remote.properties("198.18.0.12", False)["initiator"]
    for argv, stdin in runner.seen:
        assert argv == ["attachflow", "host-call"]
        assert "pw-on-stdin" not in " ".join(argv)
    assert b"pw-on-stdin" in runner.seen[0][1]


def test_remote_failure_is_a_host_error_with_the_remote_line():
    runner = LoopbackRunner()
    runner.brick.fail("connect", errors.HostError("login failed"))
    with pytest.raises(errors.HostError, match="hostb: host-call connect: .*login failed"):
        BrickRemote(runner, HostConfig("hostb", "h")).connect(
            "ISCSI", {"target_portal": "p:1", "target_iqn": "i", "target_lun": 1}, False)


def test_os_brick_failure_keeps_its_cause_without_the_chap_password(monkeypatch):
    from attachflow import brick

    class Connector:
        def connect_volume(self, props):
            raise RuntimeError("Unexpected error while running command: iscsiadm -m node "
                               "--op update -n node.session.auth.password -v s3cr3t-chap")

    class Brick:
        class InitiatorConnector:
            @staticmethod
            def factory(*args, **kwargs):
                return Connector()

    monkeypatch.setattr(brick, "_brick", lambda: Brick)
    props = {"target_portal": "p:1", "target_iqn": "i", "target_lun": 1,
             "auth_password": "s3cr3t-chap"}
    with pytest.raises(errors.HostError) as caught:
        brick.BrickLocal().connect("ISCSI", props, False)
    cause = caught.value.__cause__
    assert isinstance(cause, brick.BrickFailure)
    assert str(cause).startswith("RuntimeError: Unexpected error") and "iscsiadm" in str(cause)
    assert "s3cr3t-chap" not in str(cause) + str(caught.value)
    # where it came from survives: the traceback reaches the connector's frame
    frames = []
    tb = cause.__traceback__
    while tb:
        frames.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    assert "connect_volume" in frames


class LoopbackStream:
    """``attachflow host-call --serve`` in-process: each line answered as the command's
    serve loop answers it."""

    def __init__(self, brick, hello=b'{"serving": 1}'):
        from attachflow import host_call as command
        self.command, self.brick = command, brick
        self.lines = [hello] if hello is not None else []
        self.requests = []
        self.lose_next = False
        self.closed = False

    def readline(self, timeout=None):
        return self.lines.pop(0) if self.lines else None

    def exchange(self, line, timeout=None):
        self.requests.append(line)
        if self.lose_next:
            raise errors.HostError("ssh root@hostb: attachflow host-call --serve: the "
                                   "connection was lost before the request finished (it "
                                   "may have run on the host)")
        reply = self.command._answer(lambda request: host_call(request, self.brick),
                                     line.decode())
        return json.dumps(reply).encode()

    def close(self):
        self.closed = True


class ServingRunner(LoopbackRunner):
    def __init__(self, hello=b'{"serving": 1}'):
        super().__init__()
        self.hello = hello
        self.streams = []

    def open_stream(self, argv, timeout=None):
        assert argv == ["attachflow", "host-call", "--serve"]
        self.streams.append(LoopbackStream(self.brick, self.hello))
        return self.streams[-1]


PROPS = {"target_portal": "198.18.0.1:3260", "target_iqn": "iqn.x", "target_lun": 1,
         "auth_password": "pw-on-stdin"}


def test_one_served_host_call_answers_every_request_of_a_command():
    runner = ServingRunner()
    remote = BrickRemote(runner, HostConfig("hostb", "198.18.0.12"))
    assert remote.properties("198.18.0.12", False)["initiator"]
    info = remote.connect("ISCSI", PROPS, False)
    remote.disconnect("ISCSI", PROPS, info, False)
    assert len(runner.streams) == 1 and runner.seen == []   # no one-shot call
    assert [json.loads(r)["op"] for r in runner.streams[0].requests] == \
        ["properties", "connect", "disconnect"]
    assert not runner.brick.sessions
    remote.close()
    assert runner.streams[0].closed


def test_a_served_failure_reads_as_the_one_shot_call_reads():
    runner = ServingRunner()
    runner.brick.fail("connect", errors.HostError("login failed"))
    with pytest.raises(errors.HostError,
                       match="^hostb: host-call connect: attachflow: error: login failed$"):
        BrickRemote(runner, HostConfig("hostb", "h")).connect("ISCSI", PROPS, False)


def test_a_host_without_serve_gets_one_call_per_request():
    runner = ServingRunner(hello=None)        # an older attachflow: usage error, exit 2
    remote = BrickRemote(runner, HostConfig("hostb", "198.18.0.12"))
    remote.connect("ISCSI", PROPS, False)
    remote.properties("198.18.0.12", False)
    assert len(runner.streams) == 1 and runner.streams[0].closed
    assert [argv for argv, _stdin in runner.seen] == [["attachflow", "host-call"]] * 2


def test_a_request_the_channel_lost_fails_and_the_next_starts_a_new_host_call():
    runner = ServingRunner()
    remote = BrickRemote(runner, HostConfig("hostb", "198.18.0.12"))
    remote.properties("198.18.0.12", False)
    runner.streams[0].lose_next = True
    with pytest.raises(errors.HostError, match="host-call connect: .*may have run"):
        remote.connect("ISCSI", PROPS, False)
    assert runner.streams[0].closed
    assert remote.connect("ISCSI", PROPS, False)["path"]
    assert len(runner.streams) == 2


def test_the_serve_loop_answers_each_line_and_ends_with_stdin(monkeypatch):
    from click.testing import CliRunner
    from attachflow import brick, host_call as command
    brick_twin = FakeBrick("hostb")
    monkeypatch.setattr(brick, "host_call", lambda request: host_call(request, brick_twin))
    lines = [json.dumps({"op": "properties", "my_ip": "198.18.0.12"}), "not json",
             json.dumps({"op": "nothing"})]
    result = CliRunner().invoke(command.host_call, ["--serve"], input="\n".join(lines))
    assert result.exit_code == 0, result.output
    replies = [json.loads(line) for line in result.output.splitlines()]
    assert replies[0] == {"serving": 1}
    assert replies[1]["answer"]["host"] == "hostb"
    assert replies[2] == {"error": "attachflow: error: host-call: a request is not a JSON "
                                  "object", "exit_code": 2}
    assert replies[3]["error"] == "attachflow: error: unknown host-call op 'nothing'"


def test_the_real_command_serves_requests_until_stdin_ends():
    """`attachflow host-call --serve` as a host runs it: a process of its own, os-brick
    for real (connector properties need no target)."""
    import subprocess
    import sys
    lines = [json.dumps({"op": "properties", "my_ip": "198.18.0.99"}),
             json.dumps({"op": "bogus"})]
    cp = subprocess.run([sys.executable, "-m", "attachflow", "host-call", "--serve"],
                        input="\n".join(lines) + "\n", capture_output=True, text=True,
                        timeout=120)
    assert cp.returncode == 0, cp.stderr
    hello, props, bogus = [json.loads(line) for line in cp.stdout.splitlines()]
    assert hello == {"serving": 1}
    assert props["answer"]["ip"] == "198.18.0.99" and props["answer"]["multipath"] is False
    assert bogus == {"error": "attachflow: error: unknown host-call op 'bogus'",
                     "exit_code": 2}
