"""Commands on a compute host: the remote shell.

The side effect owned here is running a command on a host over SSH (``SSHRunner`` with
paramiko, host keys always checked) behind the ``Runner`` seam; its in-memory twin is
``attachflow.testing.FakeRunner``.
"""

from __future__ import annotations

import abc
import os
import shlex
import socket

from attachflow import errors
from attachflow.hosts import HostConfig


class Runner(abc.ABC):
    @abc.abstractmethod
    def run(self, argv: list[str], stdin: bytes | None = None,
            timeout: float = 300) -> tuple[int, bytes, bytes]: ...

    @abc.abstractmethod
    def ping(self, timeout: float = 5) -> None:
        """Raise HostError unless the host's SSH server answers right now."""

    def close(self) -> None:
        pass


class SSHRunner(Runner):
    """paramiko, known-hosts checking on: an unknown or changed host key is an error."""

    def __init__(self, cfg: HostConfig, connect_timeout: float = 10):
        self.cfg = cfg
        self._timeout = connect_timeout
        self._client = None

    def _connect(self):
        if self._client is not None:
            return self._client
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
            raise errors.HostError(f"{self.cfg.name}: known hosts: {exc}") from None

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
            tenacity.Retrying(
                retry=tenacity.retry_if_exception_type((ConnectionRefusedError,
                                                        socket.timeout)),
                stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.5),
                reraise=True)(connect)
        except paramiko.SSHException as exc:
            raise errors.HostError(f"ssh {self.cfg.ssh_user}@{self.cfg.address}: {exc}") \
                from None
        except OSError as exc:
            raise errors.HostError(f"ssh {self.cfg.ssh_user}@{self.cfg.address}: "
                                   f"{exc.strerror or exc}") from None
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
                                   f"{exc.strerror or exc}") from None
        if not banner.startswith(b"SSH-"):
            raise errors.HostError(f"{self.cfg.address}:{self.cfg.ssh_port} does not speak "
                                   "SSH")

    def run(self, argv, stdin=None, timeout=300):
        client = self._connect()
        command = " ".join(shlex.quote(a) for a in argv)
        chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
        if stdin is not None:
            chan_in.write(stdin)
        chan_in.channel.shutdown_write()
        out = chan_out.read()
        err = chan_err.read()
        return chan_out.channel.recv_exit_status(), out, err

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None
