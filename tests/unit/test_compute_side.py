import json

import pytest

from attachflow import errors
from attachflow.compute_side import (BrickRemote, HostConfig, Runner, host_call, load_host)
from attachflow.testing import FakeBrick


def test_bare_name_means_root_over_ssh(tmp_path):
    cfg = load_host("compute7", env={"ATTACHFLOW_HOSTS": str(tmp_path / "none.toml")})
    assert (cfg.address, cfg.ssh_user, cfg.libvirt_uri) == \
        ("compute7", "root", "qemu+ssh://root@compute7/system")


def test_local_is_this_machine(tmp_path):
    cfg = load_host("local", env={"ATTACHFLOW_HOSTS": str(tmp_path / "none.toml")})
    assert cfg.local and cfg.libvirt_uri == "qemu:///system"


def test_hosts_file(tmp_path):
    path = tmp_path / "hosts.toml"
    path.write_text('[hosts.hosta]\naddress = "198.18.0.11"\nssh_key = "/k"\n'
                    'known_hosts = "/kh"\n')
    cfg = load_host("hosta", env={"ATTACHFLOW_HOSTS": str(path)})
    assert cfg.address == "198.18.0.11" and cfg.ssh_key == "/k"
    assert cfg.libvirt_uri == "qemu+ssh://root@198.18.0.11/system"
    path.write_text('[hosts.hosta]\naddres = "typo"\n')
    with pytest.raises(errors.InputError, match="unknown keys"):
        load_host("hosta", env={"ATTACHFLOW_HOSTS": str(path)})
    path.write_text('[hosts.hosta\n')
    with pytest.raises(errors.InputError, match="hosts file"):
        load_host("hosta", env={"ATTACHFLOW_HOSTS": str(path)})


def test_bad_host_name(tmp_path):
    with pytest.raises(errors.UnknownHost):
        load_host("root@x", env={"ATTACHFLOW_HOSTS": str(tmp_path / "none.toml")})


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


def _one_shot_server(payload: bytes):
    import socket
    import threading
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
    from attachflow.compute_side import SSHRunner
    port = _one_shot_server(b"SSH-2.0-OpenSSH_9.2\r\n")
    SSHRunner(HostConfig("h", "127.0.0.1", ssh_port=port)).ping()
    port = _one_shot_server(b"HTTP/1.1 400 Bad Request\r\n")
    with pytest.raises(errors.HostError, match="does not speak SSH"):
        SSHRunner(HostConfig("h", "127.0.0.1", ssh_port=port)).ping()
    import socket
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(errors.HostError, match="refused"):
        SSHRunner(HostConfig("h", "127.0.0.1", ssh_port=port)).ping()
