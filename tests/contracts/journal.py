"""The journal's contract (``attachflow.journal.Journal``): what an operation's records
say, to the process that writes them and to any other that reads them, and what they
never hold. The journal has no twin: the unit suite runs this on a temporary directory,
the lab on the lab's state directory, where the commands' own journals live.

Fixture a subclass provides: ``directory`` (a state directory that does not exist yet)."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from attachflow import errors
from attachflow.journal import Journal
from attachflow.plans import ATTACH

VOLUME = "6f1e2d3c-4b5a-4968-8776-5a4b3c2d1e0f"
OP = "5d0c9b8a-7f6e-4d5c-8b4a-3f2e1d0c9b8a"


def read_elsewhere(directory, op_id: str) -> dict:
    """The operation as another process reads it."""
    code = ("import json, sys\nfrom attachflow.journal import Journal\n"
            "e = Journal(sys.argv[1]).get(sys.argv[2])\n"
            "print(json.dumps(e and {'state': e.state, 'steps': "
            "[[s.key, s.state] for s in e.steps]}))")
    cp = subprocess.run([sys.executable, "-c", code, str(directory), op_id],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    return json.loads(cp.stdout)


class JournalContract:
    @pytest.fixture
    def journal(self, directory):
        journal = Journal(directory)
        yield journal
        journal.close()

    def test_an_operation_is_on_disk_for_another_process_before_it_does_anything(
            self, journal, directory):
        journal.begin(OP, "attach", "hosta", "vm1", [VOLUME], {"volume_id": VOLUME})
        assert read_elsewhere(directory, OP) == {"state": "running", "steps": []}
        entry = journal.find(OP[:8])
        assert (entry.kind, entry.state, entry.host, entry.domain, entry.volumes) == \
            ("attach", "running", "hosta", "vm1", (VOLUME,))
        assert [e.id for e in journal.operations()] == [OP]

    def test_steps_are_kept_in_order_by_their_key_and_read_back(self, journal, directory):
        log = journal.begin(OP, "attach", "hosta", "vm1", [VOLUME], {})
        connect = ATTACH["storage-connect"].at(api="attachments")
        log.step_started(connect)
        log.step_done(connect, {"attachment_id": "a1"})
        guest = ATTACH["guest-attach"].at()
        log.step_started(guest)
        assert read_elsewhere(directory, OP)["steps"] == [
            ["storage-connect", "started"], ["storage-connect", "done"],
            ["guest-attach", "started"]]
        entry = journal.get(OP)
        assert entry.step_state(ATTACH["storage-connect"]) == "done"
        assert entry.step_data(ATTACH["storage-connect"]) == {"attachment_id": "a1"}
        assert entry.step_state(ATTACH["guest-attach"]) == "started"
        assert entry.step == "guest attach (started)"

    def test_a_finished_operation_is_no_longer_unfinished(self, journal, directory):
        log = journal.begin(OP, "attach", "hosta", "vm1", [VOLUME], {})
        log.finish("done", "attached")
        assert journal.operations() == []
        assert [(e.id, e.state, e.outcome) for e in journal.operations(False)] == \
            [(OP, "done", "attached")]
        assert read_elsewhere(directory, OP)["state"] == "done"
        with pytest.raises(ValueError):
            log.finish("running")

    def test_ids_are_found_by_prefix_and_refused_when_unknown_or_ambiguous(self, journal):
        journal.begin(OP, "attach", "hosta", "vm1", [VOLUME], {})
        journal.begin(OP[:8] + "-0000-4000-8000-000000000000", "detach", "hosta", "vm1",
                      [VOLUME], {})
        with pytest.raises(errors.InputError, match="ambiguous"):
            journal.find(OP[:8])
        with pytest.raises(errors.InputError, match="no operation"):
            journal.find("ffffffff")
        assert journal.find(OP).id == OP

    def test_no_secret_is_written_and_the_files_are_root_only(self, journal, directory):
        log = journal.begin(OP, "attach", "hosta", "vm1", [VOLUME],
                            {"auth_password": "context-secret-1234"})
        step = ATTACH["storage-connect"].at(api="attachments")
        log.step_done(step, {"connection": {"auth_password": "step-secret-5678"}})
        journal.close()
        data = b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())
        assert b"context-secret-1234" not in data and b"step-secret-5678" not in data
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for path in directory.iterdir():
            if path.is_file():
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
