"""The remote runner's contract (``attachflow.remote.Runner``): a host's shell as
attachflow uses it before anything else (is the host there, can it read a file), and
how an unreachable host fails.

Fixtures a subclass provides: ``runner`` (a Runner to a host that answers),
``readable`` (the path of a file that host can read), ``refusing`` (a Runner to a host
whose SSH server refuses connections)."""

from __future__ import annotations

import pytest

from attachflow import errors


class RunnerContract:
    def test_a_host_that_answers_pings_and_runs_true(self, runner):
        runner.ping()
        assert runner.run(["true"]) == (0, b"", b"")

    def test_test_r_says_which_files_the_host_can_read(self, runner, readable):
        assert runner.run(["test", "-r", readable])[0] == 0
        assert runner.run(["test", "-r", readable + ".not-there"])[0] == 1

    def test_an_unknown_command_exits_127_and_says_so(self, runner):
        code, out, err = runner.run(["attachflow-contract-no-such-command"])
        assert (code, out) == (127, b"") and b"not found" in err

    def test_a_refusing_host_fails_the_ping_and_the_command_naming_ssh(self, refusing):
        with pytest.raises(errors.HostError, match="ssh"):
            refusing.ping(timeout=3)
        with pytest.raises(errors.HostError, match="ssh"):
            refusing.run(["true"], timeout=5)
