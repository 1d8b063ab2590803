"""The remote runner's contract (tests/contracts/runner.py) on SSHRunner against hosta's
sshd, with the hosts file's user, key and known hosts; the unit suite runs the same
contract on the shell twin."""

from __future__ import annotations

import dataclasses

import pytest

from contracts.runner import RunnerContract

pytestmark = pytest.mark.lab


class TestRealSSH(RunnerContract):
    @pytest.fixture(scope="class")
    def runner(self, lab):
        from attachflow.hosts import load_host
        from attachflow.remote import SSHRunner
        runner = SSHRunner(load_host("hosta"))
        yield runner
        runner.close()

    @pytest.fixture
    def readable(self):
        return "/etc/hostname"

    @pytest.fixture
    def refusing(self, lab):
        from attachflow.hosts import load_host
        from attachflow.remote import SSHRunner
        # hosta's address, on a port where nothing listens
        runner = SSHRunner(dataclasses.replace(load_host("hosta"), ssh_port=1,
                                               connect_timeout=3))
        yield runner
        runner.close()

    # Only the real runner keeps a command open (the twin runs one command at a time, and
    # BrickRemote then calls host-call once per request): its stream, on the real sshd.
    def test_a_command_kept_open_answers_line_by_line_until_closed(self, runner):
        stream = runner.open_stream(
            ["sh", "-c", 'echo ready; while read l; do echo "got $l"; done'])
        try:
            assert stream.readline(timeout=30) == b"ready"
            assert stream.exchange(b"one", timeout=30) == b"got one"
            assert stream.exchange(b"two", timeout=30) == b"got two"
        finally:
            stream.close()

    def test_a_command_that_ends_mid_request_fails_it_saying_it_may_have_run(self, runner):
        from attachflow import errors
        stream = runner.open_stream(["sh", "-c", "read l; echo gone >&2; exit 3"])
        try:
            with pytest.raises(errors.HostError, match="may have run on the host.*gone"):
                stream.exchange(b"request", timeout=30)
        finally:
            stream.close()
