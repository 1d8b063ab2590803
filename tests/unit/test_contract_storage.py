"""The storage API's contract (tests/contracts/storage.py) on the Cinder twin; the lab
runs the same contract on the real adapter against real Cinder behind Keystone."""

import pytest

from contracts.storage import StorageContract
from twins import FakeCinder


class TestTheCinderTwin(StorageContract):
    @pytest.fixture
    def storage(self):
        return FakeCinder()

    @pytest.fixture
    def new_volume(self, storage):
        return storage.create_volume
