"""attachflow killed with SIGKILL mid-operation, then `attachflow recover`, on the lab.

The killer watches the operations journal as any observer could: it starts the command,
reads the journal until the command's operation (found by its pid) has recorded N step
boundaries, and kills it there. Every N of attach, detach, boot and migrate is tried, in
both APIs, plus kills after random delays. After each kill, `attachflow recover --all`
runs as an operator would run it, and what a user would check must tell one story: the
volume's status and attachments in Cinder (all of them, reserved ones too), the disk in
the domain's XML on the host where the guest really is, the initiators logged in to the
volume's target in tgtd, the libvirt secrets on both hosts, and the pattern written on
the volume before the operation, read back through the guest and in the volume's file.

The killer stops the command (SIGSTOP) the moment it sees boundary N and kills it; the
crash point reported is the one the journal shows after the kill (N, or a little after
when the command ran on between two reads).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from attachflow.connectors.iscsi_native import INITIATOR_PREFIX

HOSTS = ("hosta", "hostb")
APIS = ["attachments", "legacy"]
MiB = 1 << 20
# The pattern each volume carries from before the operations on it.
PATTERN = 0x6d

# What the tests reached, printed at the end of the session (pytest -s shows it).
REACHED: dict[str, set[int]] = {}


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def journal_path() -> Path:
    return Path(os.environ["ATTACHFLOW_STATE_DIR"]) / "journal.sqlite"


def boundaries_of(pid: int) -> tuple[str | None, int, str | None, str | None]:
    """(operation id, step boundaries recorded, last step, state) of the operation run
    by ``pid``; the journal read as an observer reads it, without locking anything."""
    path = journal_path()
    if not path.exists():
        return None, 0, None, None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                            timeout=5)) as db:
        try:
            row = db.execute("SELECT id, step, state FROM operations WHERE pid = ? "
                             "ORDER BY started DESC LIMIT 1", (pid,)).fetchone()
        except sqlite3.OperationalError as exc:
            # A journal the command is creating this moment has no tables yet.
            if "no such table" not in str(exc):
                raise
            return None, 0, None, None
        if row is None:
            return None, 0, None, None
        count = db.execute("SELECT COUNT(*) FROM steps WHERE op_id = ?",
                           (row[0],)).fetchone()[0]
    return row[0], count, row[1], row[2]


ENDED = "ended"  # the command ended before the kill was due: nothing to recover


def run_killed(args: list[str], boundary: int | None = None,
               delay: float | None = None) -> int | str:
    """Run ``attachflow ARGS`` and SIGKILL it once its operation has recorded
    ``boundary`` step boundaries (or after ``delay`` seconds). The process is stopped
    (SIGSTOP) the moment that is seen, so the crash point is read exactly, then killed.
    Returns the boundaries the journal shows at the kill, or ENDED when the command
    ended (or its operation finished) before."""
    proc = subprocess.Popen(["attachflow", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                return ENDED
            _op, count, _step, _state = boundaries_of(proc.pid)
            if (boundary is not None and count >= boundary) or \
                    (delay is not None and time.monotonic() - started >= delay):
                os.kill(proc.pid, signal.SIGSTOP)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                # Read after the kill: a commit the process was making when it stopped
                # is in the journal's log already, and counts (SQLite replays it).
                _op, count, _step, state = boundaries_of(proc.pid)
                if state != "running":
                    return ENDED  # not begun, or finished before it stopped
                return count
            assert time.monotonic() - started < 300, f"{args} still runs"
            time.sleep(0.002)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def unfinished() -> list[tuple[str, str]]:
    """(kind, state) of the operations the journal holds unfinished."""
    with contextlib.closing(sqlite3.connect(f"file:{journal_path()}?mode=ro", uri=True,
                                            timeout=5)) as db:
        return db.execute("SELECT kind, state FROM operations WHERE state IN "
                          "('running', 'incomplete', 'needs-human')").fetchall()


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


def volume_file(lab, volume_id: str) -> Path:
    """The file the lab's Cinder backend keeps the volume in (tgtd exports it)."""
    path = lab.state / "cinder" / "files" / f"volume-{volume_id}"
    assert path.is_file(), path
    return path


def write_pattern(lab, volume_id: str) -> None:
    """The volume's first MiB, written on the storage side before any operation."""
    with open(volume_file(lab, volume_id), "r+b") as f:
        f.write(bytes([PATTERN]) * MiB)
        f.flush()
        os.fsync(f.fileno())


def assert_data(lab, volume_id: str, host: str | None, dom: str) -> None:
    """The pattern is in the volume's file, and the guest reads it when it has the
    disk."""
    with open(volume_file(lab, volume_id), "rb") as f:
        assert f.read(MiB) == bytes([PATTERN]) * MiB, volume_id
    if host is None or lab.disk(host, dom, volume_id) is None:
        return
    before = lab.qemu_log(host, dom)
    lab.qemu_io(host, dom, volume_id, f"read -P 0x{PATTERN:x} 0 1M")
    log = lab.log_after(host, dom, before, "read 1048576/1048576")
    assert "read 1048576/1048576" in log and "Pattern verification failed" not in log, log


def where(lab, dom: str) -> dict[str, bool]:
    """Host -> whether ``dom`` runs there, for the hosts that have it."""
    out = {}
    for host in HOSTS:
        with contextlib.suppress(Exception):
            out[host] = bool(lab.conn(host).lookupByName(dom).isActive())
    return out


def assert_one_story(lab, volumes: list[str], dom: str) -> str | None:
    """Cinder, the domain, tgtd and libvirt's secrets agree on every volume; returns
    the host where the guest runs (or is defined), or None."""
    hosts = where(lab, dom)
    assert sum(hosts.values()) <= 1, f"{dom} runs on {hosts}"
    home = next((h for h, active in hosts.items() if active), None) or \
        next(iter(hosts), None)
    assert len(hosts) <= 1 or any(hosts.values()), hosts
    for volume_id in volumes:
        atts = list(lab.cinder.attachments.list(search_opts={"volume_id": volume_id}))
        vol = lab.volume(volume_id)
        disk = None
        if home is not None:
            disk = lab.disk(home, dom, volume_id, inactive=not hosts[home])
        if disk is None:
            assert atts == [], (volume_id, [(a.id, a.status) for a in atts])
            assert vol.status == "available", (volume_id, vol.status)
            assert lab.initiators_of(volume_id) == [], volume_id
        else:
            dom_uuid = lab.conn(home).lookupByName(dom).UUIDString()
            assert [(a.instance, a.status) for a in atts] == [(dom_uuid, "attached")], \
                (volume_id, [(a.id, a.instance, a.status) for a in atts])
            assert vol.status == "in-use", (volume_id, vol.status)
            assert set(lab.initiators_of(volume_id)) <= {f"{INITIATOR_PREFIX}:{home}"}
            if hosts[home]:
                assert lab.disk(home, dom, volume_id, inactive=True) is not None
        for host in HOSTS:
            usages = [u for u in lab.secrets(host) if volume_id in u]
            wanted = disk is not None and host == home
            assert len(usages) == (1 if wanted else 0), (volume_id, host, usages)
    return home


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


def sweep(kind: str, api: str, attempt) -> int:
    """Call ``attempt(n)`` for n = 1, 2, ... until the command ends before boundary n;
    returns how many kills landed."""
    kills = 0
    for n in range(1, 200):
        reached = attempt(n)
        if reached is None:
            assert n > 4, f"{kind} ended before boundary {n}"
            return kills
        kills += 1
        REACHED.setdefault(f"{kind} ({api})", set()).add(reached)
    raise AssertionError(f"{kind} never ended")


@pytest.mark.crash_long
@pytest.mark.parametrize("api", APIS)
def test_attach_and_detach_killed_at_every_boundary(lab, cleanup, guest, api):
    dom, root = guest(api)
    vol = data_volume(lab, cleanup)
    args = [vol, dom, "--host", "hosta", "--api", api]

    def attach_then_detach(n: int) -> int | None:
        reached = run_killed(["attach", *args], boundary=n)
        if reached == ENDED:  # attach ran to its end before boundary n
            assert_one_story(lab, [vol, root], dom)
            lab.af("detach", *args)
            return None
        recover(lab)
        assert_one_story(lab, [vol, root], dom)
        assert_data(lab, vol, "hosta", dom)
        lab.af("attach", *args)  # what the operator does next: attach (again)
        assert lab.disk("hosta", dom, vol) is not None
        killed = run_killed(["detach", *args], boundary=n)
        if killed != ENDED:
            recover(lab)
            assert_one_story(lab, [vol, root], dom)
            assert_data(lab, vol, "hosta", dom)
            REACHED.setdefault(f"detach ({api})", set()).add(killed)
        lab.af("detach", *args)
        assert_one_story(lab, [vol, root], dom)
        assert lab.disk("hosta", dom, vol) is None
        return reached

    kills = sweep("attach", api, attach_then_detach)
    assert kills >= 8
    assert_data(lab, vol, None, dom)


@pytest.mark.crash_long
@pytest.mark.parametrize("api", APIS)
def test_boot_killed_at_every_boundary(lab, cleanup, api):
    root = lab.create_volume(name="crash-root")
    cleanup["volumes"].append(root)
    write_pattern(lab, root)

    def attempt(n: int) -> int | None:
        dom = name("crashboot")
        cleanup["domains"].extend((h, dom) for h in HOSTS)
        args = ["boot", dom, "--volume", root, "--host", "hosta", "--api", api]
        reached = run_killed(args, boundary=n)
        if reached != ENDED:
            recover(lab)
        home = assert_one_story(lab, [root], dom)
        assert_data(lab, root, home, dom)
        lab.af("delete", dom, "--host", "hosta", "--force", "--shutdown-timeout", "1")
        assert_one_story(lab, [root], dom)
        assert dom not in lab.domains("hosta")
        return None if reached == ENDED else reached

    assert sweep("boot", api, attempt) >= 8


@pytest.mark.crash_long
@pytest.mark.parametrize("api", APIS)
def test_migration_killed_at_every_boundary(lab, cleanup, guest, api):
    dom, root = guest(api)
    vol = data_volume(lab, cleanup)
    lab.af("attach", vol, dom, "--host", "hosta", "--api", api)
    state = {"on": "hosta"}

    def attempt(n: int) -> int | None:
        src = state["on"]
        dst = "hostb" if src == "hosta" else "hosta"
        reached = run_killed(["migrate", dom, "--host", src, "--to", dst,
                              "--progress", "none"], boundary=n)
        if reached != ENDED:
            recover(lab)
        home = assert_one_story(lab, [root, vol], dom)
        assert home in HOSTS and where(lab, dom)[home], (home, where(lab, dom))
        assert_data(lab, vol, home, dom)
        state["on"] = home
        return None if reached == ENDED else reached

    assert sweep("migrate", api, attempt) >= 10
    lab.af("detach", vol, dom, "--host", state["on"])


def test_kills_at_random_moments(lab, cleanup, guest):
    """Kills not aimed at a boundary: after a random delay within each command's run."""
    rng = random.Random(os.environ.get("ATTACHFLOW_CRASH_SEED", "attachflow"))
    dom, root = guest("attachments")
    vol = data_volume(lab, cleanup)
    on = "hosta"
    landed = 0
    for _round in range(6):
        for command in ("attach", "detach", "migrate"):
            if command == "migrate":
                dst = "hostb" if on == "hosta" else "hosta"
                args = ["migrate", dom, "--host", on, "--to", dst, "--progress", "none"]
            else:
                args = [command, vol, dom, "--host", on]
            # past the command's start-up (about a second), within its run
            reached = run_killed(args, delay=rng.uniform(1.0, 5.0))
            if reached != ENDED:
                landed += 1
                REACHED.setdefault("random", set()).add(reached)
                recover(lab, twice=True)
            on = assert_one_story(lab, [root, vol], dom)
            assert_data(lab, vol, on, dom)
            # leave the volume as the command meant it, for the next round
            if command == "attach":
                lab.af("attach", vol, dom, "--host", on)
            elif command == "detach":
                lab.af("detach", vol, dom, "--host", on)
    # A kill before the command's operation began (its start-up) or after it ended
    # does not count.
    assert landed >= 4, landed


def test_two_recovers_at_once_settle_each_operation_once(lab, cleanup, guest):
    # two guests: an interrupted operation holds its guest until recovered
    guests = [guest("attachments") for _ in range(2)]
    vols = [data_volume(lab, cleanup) for _ in range(2)]
    for vol, (dom, _root) in zip(vols, guests):
        assert run_killed(["attach", vol, dom, "--host", "hosta"], boundary=6) != ENDED
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
    assert run_killed(["attach", vol, dom, "--host", "hosta"], boundary=4) != ENDED
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
