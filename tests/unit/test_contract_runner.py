"""The remote runner's contract (tests/contracts/runner.py) on the shell twin; the lab
runs the same contract on SSHRunner against a lab host's sshd."""

import pytest

from contracts.runner import RunnerContract
from twins import FakeRunner


class TestTheShellTwin(RunnerContract):
    @pytest.fixture
    def runner(self):
        return FakeRunner("hosta")

    @pytest.fixture
    def readable(self, runner):
        runner.files.add("/etc/hostname")
        return "/etc/hostname"

    @pytest.fixture
    def refusing(self):
        runner = FakeRunner("hostc")
        runner.refuse = True
        return runner
