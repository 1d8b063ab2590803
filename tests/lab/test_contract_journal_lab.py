"""The journal's contract (tests/contracts/journal.py) on the lab's state directory,
beside the journals the lab tests' commands write; the unit suite runs it on a
temporary directory."""

from __future__ import annotations

import uuid

import pytest

from contracts.journal import JournalContract

pytestmark = pytest.mark.lab


class TestJournalInTheLabsStateDirectory(JournalContract):
    @pytest.fixture
    def directory(self, lab):
        return lab.state / "attachflow-tests" / f"contract-{uuid.uuid4().hex[:8]}"
