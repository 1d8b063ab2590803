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
