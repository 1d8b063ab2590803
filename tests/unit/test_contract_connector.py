"""The host connector's contract (tests/contracts/connector.py) on the os-brick twin;
the kernel tier runs the same contract on os-brick on a compute-node VM, through the
host-call attachflow uses."""

import types

import pytest

from contracts.connector import HostConnectorContract
from twins import FakeBrick, FakeCinder


class TestTheBrickTwin(HostConnectorContract):
    @pytest.fixture
    def cinder(self):
        return FakeCinder()

    @pytest.fixture
    def brick(self, cinder):
        return FakeBrick("hosta", target=cinder)

    @pytest.fixture
    def host_ip(self):
        return "198.18.0.11"

    @pytest.fixture
    def export(self, cinder):
        def exported(props):
            volume_id = cinder.create_volume()
            return cinder.attachment_create(volume_id, "guest", props).connection
        return exported

    @pytest.fixture
    def host_view(self, brick):
        return types.SimpleNamespace(
            has_device=brick.has_device,
            sessions=lambda iqn: sum(1 for _portal, q in brick.sessions if q == iqn))
