"""The hypervisor's contract (tests/contracts/hypervisor.py) on LibvirtHypervisor against
hosta's libvirtd over qemu+ssh, as attachflow reaches it; the unit suite runs the same
contract on the libvirt twin."""

from __future__ import annotations

import uuid

import pytest

from contracts.hypervisor import HypervisorContract

pytestmark = pytest.mark.lab


class TestRealLibvirt(HypervisorContract):
    @pytest.fixture(scope="class")
    def hypervisor(self, lab):
        from attachflow.compute_side import LibvirtHypervisor
        from attachflow.hosts import load_host
        hv = LibvirtHypervisor(load_host("hosta").libvirt_uri, "hosta")
        yield hv
        hv.close()

    @pytest.fixture
    def name(self, lab):
        name = f"contract-{uuid.uuid4().hex[:6]}"
        yield name
        lab.destroy_domain("hosta", name)
