"""The storage API's contract (tests/contracts/storage.py) on the real adapter
(``CinderStorage``) against the lab's Cinder behind Keystone, with the service user
`lab env` configures; the unit suite runs the same contract on the Cinder twin."""

from __future__ import annotations

import pytest

from contracts.storage import StorageContract

pytestmark = pytest.mark.lab


class TestRealCinder(StorageContract):
    @pytest.fixture(scope="class")
    def storage(self, lab):
        from attachflow.cinder_side import CinderStorage
        return CinderStorage.connect()

    @pytest.fixture
    def new_volume(self, lab, cleanup):
        def make() -> str:
            volume_id = lab.create_volume(name="contract")
            cleanup["volumes"].append(volume_id)
            return volume_id
        return make
