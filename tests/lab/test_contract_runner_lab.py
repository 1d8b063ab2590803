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
