"""attachflow killed with SIGKILL mid-operation, then `attachflow recover`, on the lab.

A sweep runs the command killed at step boundary N (``crashes.run_killed``: the process
kills itself the moment its journal commits boundary N, so the crash point is exact), for
every N of attach, detach, boot and migrate, in both APIs (or one N in K, rotating with
the commit: ``ATTACHFLOW_CRASH_SAMPLE``), plus kills after random delays. After each
kill, `attachflow recover --all` runs as an operator would run it, and what a user would
check must tell one story (``story.assert_one_story``): the volume's status and
attachments in Cinder, the disk in the guest's live and persistent definitions on every
host, the target's export, CHAP account and logged-in initiators in tgtd, the libvirt
secrets on both hosts; and the pattern written on the volume before the operation reads
back through the guest and in the volume's file. Each sweep fails unless it killed at
every boundary it aimed at and a whole run passed every step of the operation's table.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid

import pytest

from crashes import Crashed, Sweep, aimed, boundaries_of, run_killed, unfinished
from story import HOSTS, assert_one_story, where

APIS = ["attachments", "legacy"]
MiB = 1 << 20
# The pattern each volume carries from before the operations on it.
PATTERN = 0x6d

# What the sweeps reached, printed at the end of the session (conftest).
SWEEPS: list[Sweep] = []
RANDOM_KILLS: list[int] = []


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def recover(lab, twice: bool = False) -> list[dict]:
    """`attachflow recover --all`: everything settled, nothing left unfinished (and with
    ``twice``, a second run finds nothing to do)."""
    proc = lab.af("recover", "--all", "-f", "json", expect=None)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    results = json.loads(proc.stdout)
    assert results and all(r["problem"] is None for r in results), results
    assert unfinished() == []
    if twice:
        assert json.loads(lab.af("recover", "--all", "-f", "json").stdout) == []
    return results


def write_pattern(lab, volume_id: str) -> None:
    """The volume's first MiB, written on the storage side before any operation."""
    with open(lab.volume_file(volume_id), "r+b") as f:
        f.write(bytes([PATTERN]) * MiB)
        f.flush()
        os.fsync(f.fileno())


def assert_data(lab, volume_id: str, host: str | None, dom: str) -> None:
    """The pattern is in the volume's file, and the guest reads it when it has the
    disk."""
    with open(lab.volume_file(volume_id), "rb") as f:
        assert f.read(MiB) == bytes([PATTERN]) * MiB, volume_id
    if host is None or lab.disk(host, dom, volume_id) is None:
        return
    before = lab.qemu_log(host, dom)
    lab.qemu_io(host, dom, volume_id, f"read -P 0x{PATTERN:x} 0 1M")
    log = lab.log_after(host, dom, before, "read 1048576/1048576")
    assert "read 1048576/1048576" in log and "Pattern verification failed" not in log, log


@pytest.fixture(autouse=True)
def own_journal(lab, monkeypatch):
    """Each test with its own journal and locks (a state dir of its own in the lab's), so
    that what it counts and recovers is its own: an operation another test left
    unsettled is that test's failure, not this one's."""
    path = lab.state / "attachflow-tests" / name("journal")
    monkeypatch.setenv("ATTACHFLOW_STATE_DIR", str(path))
    return path


@pytest.fixture
def guest(lab, cleanup):
    def boot(api: str, host: str = "hosta") -> tuple[str, str]:
        root = lab.create_volume(name="crash-root")
        cleanup["volumes"].append(root)
        dom = name("crash")
        cleanup["domains"].extend((h, dom) for h in HOSTS)
        lab.af_json("boot", dom, "--volume", root, "--host", host, "--api", api)
        lab.wait_guest_ready(host, dom)
        return dom, root
    return boot


def data_volume(lab, cleanup) -> str:
    vol = lab.create_volume(name="crash-data")
    cleanup["volumes"].append(vol)
    write_pattern(lab, vol)
    return vol


def swept(kind: str, api: str) -> Sweep:
    sweep = Sweep(kind, f"{kind} ({api})")
    SWEEPS.append(sweep)
    return sweep


def run_sweeps(attempt, *sweeps: Sweep) -> None:
    """``attempt(n)`` for each aimed n until every sweep has seen a whole run; then each
    sweep must have killed at every boundary it aimed at."""
    for n in aimed(sweeps[0].k, sweeps[0].offset):
        if all(s.done for s in sweeps):
            break
        assert n < 200, [s.summary() for s in sweeps]
        attempt(n)
    for s in sweeps:
        s.check()


@pytest.mark.crash_long
@pytest.mark.parametrize("api", APIS)
def test_attach_and_detach_killed_at_every_boundary(lab, cleanup, guest, api):
    dom, root = guest(api)
    vol = data_volume(lab, cleanup)
    args = [vol, dom, "--host", "hosta", "--api", api]
    attach, detach = swept("attach", api), swept("detach", api)

    def attempt(n: int) -> None:
        # attach, killed at n (once attach has run whole, plainly), then recover
        if attach.done:
            lab.af("attach", *args)
        elif isinstance(attach.add(n, run_killed(["attach", *args], boundary=n)), Crashed):
            recover(lab)
            assert_one_story(lab, [vol, root], dom)
            assert_data(lab, vol, "hosta", dom)
            lab.af("attach", *args)  # what the operator does next: attach (again)
        assert_one_story(lab, [vol, root], dom)
        assert lab.disk("hosta", dom, vol) is not None
        # the same for detach
        if detach.done:
            lab.af("detach", *args)
        elif isinstance(detach.add(n, run_killed(["detach", *args], boundary=n)), Crashed):
            recover(lab)
            assert_one_story(lab, [vol, root], dom)
            assert_data(lab, vol, "hosta", dom)
            lab.af("detach", *args)
        assert_one_story(lab, [vol, root], dom)
        assert lab.disk("hosta", dom, vol) is None

    run_sweeps(attempt, attach, detach)
    assert_data(lab, vol, None, dom)


@pytest.mark.crash_long
@pytest.mark.parametrize("api", APIS)
def test_boot_killed_at_every_boundary(lab, cleanup, api):
    root = lab.create_volume(name="crash-root")
    cleanup["volumes"].append(root)
    write_pattern(lab, root)
    boot = swept("boot", api)

    def attempt(n: int) -> None:
        dom = name("crashboot")
        cleanup["domains"].extend((h, dom) for h in HOSTS)
        args = ["boot", dom, "--volume", root, "--host", "hosta", "--api", api]
        if isinstance(boot.add(n, run_killed(args, boundary=n)), Crashed):
            recover(lab)
        home = assert_one_story(lab, [root], dom)
        assert_data(lab, root, home, dom)
        lab.af("delete", dom, "--host", "hosta", "--force", "--shutdown-timeout", "1")
        assert_one_story(lab, [root], dom)
        assert dom not in lab.domains("hosta")

    run_sweeps(attempt, boot)


@pytest.mark.crash_long
@pytest.mark.parametrize("api", APIS)
def test_migration_killed_at_every_boundary(lab, cleanup, guest, api):
    dom, root = guest(api)
    vol = data_volume(lab, cleanup)
    lab.af("attach", vol, dom, "--host", "hosta", "--api", api)
    state = {"on": "hosta"}
    migrate = swept("migrate", api)

    def attempt(n: int) -> None:
        src = state["on"]
        dst = "hostb" if src == "hosta" else "hosta"
        args = ["migrate", dom, "--host", src, "--to", dst, "--progress", "none"]
        if isinstance(migrate.add(n, run_killed(args, boundary=n)), Crashed):
            recover(lab)
        home = assert_one_story(lab, [root, vol], dom)
        assert home in HOSTS and where(lab, dom)[home], (home, where(lab, dom))
        assert_data(lab, vol, home, dom)
        state["on"] = home

    run_sweeps(attempt, migrate)
    lab.af("detach", vol, dom, "--host", state["on"])


def test_kills_at_random_moments(lab, cleanup, guest):
    """Kills not aimed at a boundary: after a random delay within each command's run.
    The delays are drawn between the command's start-up and how long it last took whole
    (a kill after it ended lands nowhere), for rounds until 4 kills landed mid-way."""
    rng = random.Random(os.environ.get("ATTACHFLOW_CRASH_SEED", "attachflow"))
    dom, root = guest("attachments")
    vol = data_volume(lab, cleanup)
    on = "hosta"
    landed = 0
    took = {"attach": 5.0, "detach": 5.0, "migrate": 8.0}   # until a whole run says
    for _round in range(12):
        for command in ("attach", "detach", "migrate"):
            if command == "migrate":
                dst = "hostb" if on == "hosta" else "hosta"
                args = ["migrate", dom, "--host", on, "--to", dst, "--progress", "none"]
            else:
                args = [command, vol, dom, "--host", on]
            # past the command's start-up (about a second), within its run
            started = time.monotonic()
            result = run_killed(args, delay=rng.uniform(1.0, max(1.2, took[command])))
            if isinstance(result, Crashed):
                landed += 1
                RANDOM_KILLS.append(result.boundary)
                recover(lab, twice=True)
            elif result.returncode == 0:
                took[command] = time.monotonic() - started
            on = assert_one_story(lab, [root, vol], dom)
            assert_data(lab, vol, on, dom)
            # leave the volume as the command meant it, for the next round
            if command == "attach":
                lab.af("attach", vol, dom, "--host", on)
            elif command == "detach":
                lab.af("detach", vol, dom, "--host", on)
        if landed >= 4 and _round >= 2:
            break
    # A kill before the command's operation began (its start-up) or after it ended
    # does not count.
    assert landed >= 4, (landed, took)


def test_two_recovers_at_once_settle_each_operation_once(lab, cleanup, guest):
    # two guests: an interrupted operation holds its guest until recovered
    guests = [guest("attachments") for _ in range(2)]
    vols = [data_volume(lab, cleanup) for _ in range(2)]
    for vol, (dom, _root) in zip(vols, guests):
        assert isinstance(run_killed(["attach", vol, dom, "--host", "hosta"], boundary=6),
                          Crashed)
    procs = [subprocess.Popen(["attachflow", "recover", "--all", "-f", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    settled = [r for out, _err in outs for r in json.loads(out)
               if r["decision"] != "skipped"]
    assert sorted(r["op_id"] for r in settled) == sorted(
        {r["op_id"] for out, _err in outs for r in json.loads(out)})
    assert len(settled) == 2, settled
    assert unfinished() == []
    for vol, (dom, root) in zip(vols, guests):
        assert_one_story(lab, [root, vol], dom)
        lab.af("detach", vol, dom, "--host", "hosta")


def test_an_interrupted_operation_blocks_the_volume_until_recovered(lab, cleanup, guest):
    dom, root = guest("attachments")
    vol = data_volume(lab, cleanup)
    assert isinstance(run_killed(["attach", vol, dom, "--host", "hosta"], boundary=4),
                      Crashed)
    listed = json.loads(lab.af("operations", "-f", "json", expect=5).stdout)
    assert [(o["kind"], o["state"], o["volumes"], o["domain"]) for o in listed] == \
        [("attach", "interrupted", [vol], dom)]
    proc = lab.af("detach", vol, dom, "--host", "hosta", expect=5)
    assert "attachflow recover " + listed[0]["id"][:8] in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    dry = lab.af("recover", listed[0]["id"][:8], "--dry-run")
    assert "roll back" in dry.stdout or "roll forward" in dry.stdout, dry.stdout
    assert json.loads(lab.af("operations", "-f", "json", expect=5).stdout) == listed
    recover(lab)
    assert_one_story(lab, [root, vol], dom)


def test_concurrent_operations_on_one_volume_or_guest_do_not_interleave(lab, cleanup,
                                                                         guest):
    dom, root = guest("attachments")
    vol = data_volume(lab, cleanup)
    # two attaches of one volume: one attaches, the other finds it attached
    procs = [subprocess.Popen(["attachflow", "attach", vol, dom, "--host", "hosta", "-f",
                               "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(out) for out, _err in outs]
    assert sorted(r["already"] for r in results) == [False, True], results
    assert_one_story(lab, [root, vol], dom)
    # an attach racing a migration of its guest: the attach waits for the move, then
    # finds the guest elsewhere, or runs first and the migration takes the new volume
    other = data_volume(lab, cleanup)
    mig = subprocess.Popen(["attachflow", "migrate", dom, "--host", "hosta", "--to", "hostb",
                            "--progress", "none", "-f", "json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    att = lab.af("attach", other, dom, "--host", "hosta", "--lock-wait", "120", expect=None)
    out, err = mig.communicate(timeout=300)
    assert mig.returncode == 0, err
    if att.returncode == 0:
        # it ran before the migration took the locks: the volume moved with the guest
        assert other in json.loads(out)["volumes"]
    else:
        assert "not found" in att.stderr or "no domain" in att.stderr.lower(), att.stderr
    assert_one_story(lab, [root, vol, other], dom)
    # two migrations of one guest: the second waits, then finds it gone from its source
    procs = [subprocess.Popen(["attachflow", "migrate", dom, "--host", "hostb", "--to",
                               "hosta", "--progress", "none"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], outs
    assert_one_story(lab, [root, vol, other], dom)
    assert where(lab, dom) == {"hosta": True}
    for volume_id in (vol, other):
        lab.af("detach", volume_id, dom, "--host", "hosta", expect=None)


def test_a_busy_volume_fails_after_the_wait_naming_the_holder(lab, cleanup, guest):
    dom, root = guest("attachments")
    mig = subprocess.Popen(["attachflow", "migrate", dom, "--host", "hosta", "--to", "hostb",
                            "--progress", "none"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while boundaries_of(mig.pid)[1] < 2:
        assert time.monotonic() < deadline and mig.poll() is None
        time.sleep(0.01)
    vol = data_volume(lab, cleanup)
    proc = lab.af("attach", vol, dom, "--host", "hosta", "--lock-wait", "0", expect=4)
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"domain {dom} is busy: held by migrate" in line and "running" in line, line
    assert mig.wait(timeout=300) == 0
    assert lab.volume(vol).status == "available"
