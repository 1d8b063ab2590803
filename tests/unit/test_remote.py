import socket
import threading

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
