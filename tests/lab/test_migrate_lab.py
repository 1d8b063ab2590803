"""Live migration on the lab (real Cinder, tgtd, libvirtd, sshd), both APIs.

A volume-backed guest with two data volumes and a pattern on each moves hosta -> hostb and
back: after each move the patterns read back through the guest's block backend, the guest
runs only on the destination, each volume has exactly one attachment (the destination's),
and tgtd shows no session from the source's initiator. Then failures injected on the real
parts, each leaving the guest running on the source with its data, one attachment per
volume and nothing on the destination.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import pytest

from attachflow.connectors.iscsi_native import INITIATOR_PREFIX

APIS = ["attachments", "legacy"]
MiB = 1024 * 1024


def make_guest(lab, cleanup, api, volumes=2):
    root = lab.create_volume()
    data = [lab.create_volume() for _ in range(volumes)]
    cleanup["volumes"] += [root] + data
    dom = f"mig-{uuid.uuid4().hex[:6]}"
    cleanup["domains"] += [("hosta", dom), ("hostb", dom)]
    lab.af_json("boot", dom, "--volume", root, "--host", "hosta", "--api", api)
    lab.wait_guest_ready("hosta", dom)
    patterns = {}
    for i, vol in enumerate(data):
        lab.af_json("attach", vol, dom, "--host", "hosta", "--api", api)
        patterns[vol] = f"0x{0x30 + i * 0x11 + uuid.uuid4().int % 8:02x}"
        lab.qemu_io("hosta", dom, vol, f"write -P {patterns[vol]} 0 1M")
        lab.qemu_io("hosta", dom, vol, "flush")
    return dom, [root] + data, patterns


def check_runs_on(lab, dom, vols, patterns, host, other):
    assert dom in lab.domains(host) and lab.conn(host).lookupByName(dom).isActive()
    assert dom not in lab.domains(other), f"{dom} still defined on {other}"
    server = lab.conn(host).lookupByName(dom).UUIDString()
    for vol in vols:
        atts = lab.attachments(vol)
        assert len(atts) == 1 and atts[0]["server_id"] == server, (vol, atts)
        assert lab.volume(vol).status == "in-use"
        assert lab.disk(host, dom, vol) is not None
        assert lab.disk(host, dom, vol, inactive=True) is not None
        initiators = lab.initiators_of(vol)
        assert initiators == [f"{INITIATOR_PREFIX}:{host}"], (vol, initiators)
        assert not any(vol in usage for usage in lab.secrets(other))
    log_before = lab.qemu_log(host, dom)
    for vol, pattern in patterns.items():
        lab.qemu_io(host, dom, vol, f"read -P {pattern} 0 1M")
    log = lab.log_after(host, dom, log_before, "read 1048576/1048576 bytes", len(patterns))
    assert log.count("read 1048576/1048576 bytes") == len(patterns), log
    assert "Pattern verification failed" not in log


@pytest.mark.parametrize("api", APIS)
def test_migrate_there_and_back_with_data(lab, cleanup, api):
    dom, vols, patterns = make_guest(lab, cleanup, api)
    for src, dst in (("hosta", "hostb"), ("hostb", "hosta")):
        proc = lab.af("migrate", dom, "--host", src, "--to", dst, "--api", api, "-f", "json",
                      "--progress", "json")
        result = json.loads(proc.stdout)  # one document
        progress = [json.loads(line) for line in proc.stderr.splitlines()]
        assert progress, proc.stderr
        # progress lines, twice a second while the job runs (a short job may end
        # between two polls, before its counters fill in), and last the completed job's
        assert all(p["event"] == "progress" and p["operation"] == f"migrate {dom} from "
                   f"{src} to {dst}" and min(p["processed"], p["remaining"],
                                             p["total"]) >= 0 for p in progress), progress
        assert [p["elapsed"] for p in progress] == sorted(p["elapsed"] for p in progress)
        assert progress[-1]["remaining"] == 0 and progress[-1]["total"] > 0, progress
        assert result["runs_on"] == dst and result["schema_version"] == 1
        assert not result["left_behind"] and not result["rolled_forward"]
        assert result["downtime_ms"] is not None
        check_runs_on(lab, dom, vols, patterns, dst, src)


def state(lab, dom, vols):
    return {
        "where": {h: dom in lab.domains(h) for h in ("hosta", "hostb")},
        "attachments": {v: sorted(a["attachment_id"] for a in lab.attachments(v))
                        for v in vols},
        "status": {v: lab.volume(v).status for v in vols},
        "initiators": {v: lab.initiators_of(v) for v in vols},
        "secrets_b": sorted(lab.secrets("hostb")) if lab.host_up("hostb") else None,
    }


def assert_rolled_back(lab, dom, vols, patterns, before, proc):
    assert proc.returncode in (1, 2), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    lab.manager.up(echo=lambda _l: None)  # bring back whatever the test broke
    assert state(lab, dom, vols) == before
    check_runs_on(lab, dom, vols, patterns, "hosta", "hostb")


@pytest.mark.parametrize("api", APIS)
def test_destination_ssh_refused(lab, cleanup, api):
    dom, vols, patterns = make_guest(lab, cleanup, api, volumes=1)
    before = state(lab, dom, vols)
    with lab.stopped("hostb", "sshd"):
        proc = lab.af("migrate", dom, "--host", "hosta", "--to", "hostb", "--api", api,
                      expect=2)
    assert_rolled_back(lab, dom, vols, patterns, before, proc)


@pytest.mark.parametrize("api", APIS)
def test_wrong_chap_secret_on_destination(lab, cleanup, api):
    dom, vols, patterns = make_guest(lab, cleanup, api, volumes=1)
    before = state(lab, dom, vols)
    # the destination's QEMU logs in with the secret attachflow defines there; make the
    # target refuse hostb's initiator by giving the volume's account another password
    # only after the source is connected (sessions already open stay up)
    account = lab.target_of(vols[1])["accounts"][0]
    logged = lab.qemu_log("hostb", dom)
    with lab.account_password("hostb-refused", account):
        proc = lab.af("migrate", dom, "--host", "hosta", "--to", "hostb", "--api", api,
                      expect=1)
    assert "live migration" in proc.stderr
    # the cause, as the destination's QEMU reported it (in the error, or in its log on
    # hostb when libvirt reports only the migration stream's end): the login refused
    log = lab.qemu_log("hostb", dom)[len(logged):]
    assert "Authentication failure" in proc.stderr + log, (proc.stderr, log)
    assert_rolled_back(lab, dom, vols, patterns, before, proc)


def _slow_migration(lab, dom, api, action):
    """Start a bandwidth-capped migration and run ``action`` once it is under way."""
    result = {}

    def run():
        result["proc"] = lab.af("migrate", dom, "--host", "hosta", "--to", "hostb",
                                "--api", api, "--bandwidth", "1", expect=None)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if lab.conn("hosta").lookupByName(dom).jobStats().get("type", 0):
                break
        except Exception:
            pass
        time.sleep(0.2)
    time.sleep(1)
    action()
    worker.join(300)
    return result["proc"]


@pytest.mark.parametrize("api", APIS)
def test_job_aborted_in_flight(lab, cleanup, api):
    dom, vols, patterns = make_guest(lab, cleanup, api, volumes=1)
    before = state(lab, dom, vols)
    proc = _slow_migration(lab, dom, api, lambda: subprocess.run(
        ["virsh", "-c", lab.uri("hosta"), "domjobabort", dom], check=True,
        capture_output=True))
    assert proc.returncode == 1 and "live migration" in proc.stderr
    assert_rolled_back(lab, dom, vols, patterns, before, proc)


@pytest.mark.parametrize("api", APIS)
def test_destination_qemu_killed_mid_way(lab, cleanup, api):
    dom, vols, patterns = make_guest(lab, cleanup, api, volumes=1)
    before = state(lab, dom, vols)
    proc = _slow_migration(lab, dom, api, lambda: lab.kill_qemu("hostb", dom))
    assert proc.returncode == 1
    assert_rolled_back(lab, dom, vols, patterns, before, proc)
