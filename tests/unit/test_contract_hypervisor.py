"""The hypervisor's contract (tests/contracts/hypervisor.py) on the libvirt twin; the
lab runs the same contract on LibvirtHypervisor against libvirtd over qemu+ssh."""

import pytest

from contracts.hypervisor import HypervisorContract
from twins import fake_host


class TestTheLibvirtTwin(HypervisorContract):
    @pytest.fixture
    def hypervisor(self):
        return fake_host("hosta").hypervisor

    @pytest.fixture
    def name(self):
        return "contract-vm"
