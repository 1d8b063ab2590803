"""The journal's contract (tests/contracts/journal.py) on a temporary directory; the lab
runs it on the lab's state directory."""

import pytest

from contracts.journal import JournalContract


class TestJournalInATemporaryDirectory(JournalContract):
    @pytest.fixture
    def directory(self, tmp_path):
        return tmp_path / "state"
