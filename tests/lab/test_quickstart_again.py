"""`scripts/quickstart` run again after a run that was interrupted: it settles what that run
left (an interrupted attach through `attachflow recover`, its guest and volumes), says
so, and runs to the end; a guest of its name that it did not make stops it, untouched."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from crashes import Crashed, run_killed

pytestmark = pytest.mark.lab

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "quickstart"
GUESTS = (("hosta", "quickstart"), ("hostb", "quickstart"), ("hostb", "quickstart-b"))
VOLUMES = ("quickstart-root", "quickstart-data", "quickstart-root-b")


def quickstart(timeout: float = 1800) -> subprocess.CompletedProcess:
    # PYTHONPATH names this checkout (as the lab tests run it): the script finds its
    # attachflow installed and does not reinstall it.
    return subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


def quickstart_volumes(lab) -> dict[str, str]:
    return {v.id: v.name for v in lab.cinder.volumes.list() if v.name in VOLUMES}


@pytest.fixture
def nothing_of_quickstart(lab):
    """No quickstart guest or volume before the test, and none left after it."""
    def remove():
        for host, dom in GUESTS:
            if dom in lab.domains(host):
                lab.af("delete", dom, "--host", host, "--force", expect=None)
                lab.destroy_domain(host, dom)
        for volume_id in quickstart_volumes(lab):
            for att in lab.attachments(volume_id):
                lab.cinder.attachments.delete(att["attachment_id"])
            lab.delete_volume(volume_id)
    remove()
    yield
    remove()


def test_a_run_again_after_an_interrupted_one_settles_it_and_runs_to_the_end(
        lab, nothing_of_quickstart):
    # what a run interrupted during its first attach leaves
    left = {name: lab.create_volume(name=name) for name in VOLUMES}
    lab.af("boot", "quickstart", "--volume", left["quickstart-root"], "--host", "hosta")
    killed = run_killed(["attach", left["quickstart-data"], "quickstart", "--host",
                         "hosta"], boundary=3)
    assert isinstance(killed, Crashed), killed
    assert lab.af("operations", expect=5).returncode == 5  # interrupted, to be recovered
    cp = quickstart()
    assert cp.returncode == 0, (cp.stdout[-3000:], cp.stderr[-3000:])
    out = cp.stdout
    assert "$ attachflow recover --all" in out
    assert "removing guest quickstart on hosta, left by an earlier run (root volume " \
           "quickstart-root)" in out
    for name, volume_id in left.items():
        assert f"removing volume {name} ({volume_id}), left by an earlier run" in out
    assert "verified: pattern 0x5a" in out and "== done" in out
    # the earlier run's volumes are gone, the new run's are there, nothing unsettled
    assert not set(left.values()) & set(quickstart_volumes(lab))
    assert sorted(quickstart_volumes(lab).values()) == sorted(VOLUMES)
    assert lab.af("operations").returncode == 0
    # and a run after a complete one removes what that one made, and runs again
    cp = quickstart()
    assert cp.returncode == 0, (cp.stdout[-3000:], cp.stderr[-3000:])
    assert "removing guest quickstart on hosta" in cp.stdout


def test_a_guest_of_its_name_that_it_did_not_make_stops_it_untouched(
        lab, nothing_of_quickstart):
    other = lab.create_volume(name="someone-elses-root")
    try:
        lab.af("boot", "quickstart", "--volume", other, "--host", "hosta")
        cp = quickstart(timeout=900)
        assert cp.returncode == 1
        assert cp.stdout.strip().splitlines()[-1] == (
            "a guest 'quickstart' on hosta that this script did not make (root volume "
            "'someone-elses-root') is in the way: remove it, then run again")
        assert "quickstart" in lab.domains("hosta")
        assert lab.volume(other).status == "in-use"
        assert quickstart_volumes(lab) == {}
    finally:
        lab.af("delete", "quickstart", "--host", "hosta", expect=None)
        lab.delete_volume(other)
