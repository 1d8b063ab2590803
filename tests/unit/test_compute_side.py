import pytest

from attachflow.compute_side import ComputeHost
from attachflow.hosts import HostConfig
from attachflow.testing import FakeHypervisor, FakeRunner


class ClosingHypervisor(FakeHypervisor):
    closed = 0

    def close(self):
        self.closed += 1


class ClosingRunner(FakeRunner):
    closed = 0

    def close(self):
        self.closed += 1


def _host():
    return ComputeHost(HostConfig("hostb", "198.18.0.12"),
                       hypervisor=ClosingHypervisor("hostb"), runner=ClosingRunner("hostb"))


def test_a_host_in_a_with_block_is_closed_at_its_end():
    host = _host()
    with host as entered:
        assert entered is host
        assert (host.hypervisor.closed, host.runner.closed) == (0, 0)
    assert (host.hypervisor.closed, host.runner.closed) == (1, 1)


def test_a_host_is_closed_when_the_with_block_raises_and_the_error_goes_on():
    host = _host()
    with pytest.raises(ZeroDivisionError):
        with host:
            1 / 0
    assert (host.hypervisor.closed, host.runner.closed) == (1, 1)
