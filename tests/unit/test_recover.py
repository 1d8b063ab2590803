"""Interrupted operations on the twins: the process "dies" right after the journal records
step boundary N (nothing is undone, no final state is written, its locks go), for every
N of attach, detach, boot and migrate, with both APIs and both transports; then
``recover`` runs in a new client, and what a user would check must agree: the volume's
status and attachments in Cinder, the disk in the domain on the host where the guest
runs, the host's iSCSI sessions and libvirt secrets. A second recover changes nothing,
and the operation can be run again."""

from __future__ import annotations

import contextlib
import threading

import pytest

from attachflow import errors, journal as journal_mod, operations
from attachflow.connectors import get_transport
from attachflow.journal import STEP_DONE, OperationLog

from sweep_coverage import assert_covered
from twins import FakeCinder


class Killed(BaseException):
    """The orchestrator died here."""


# a client on the two-host world of twins (conftest's `world`), as the client's tests
from test_client import twin_client as client


# How a sweep's process dies at boundary n:
# - "after": once the journal has recorded n step rows (the row was written);
# - "done-lost": at the n-th step that finished, its effect done and its done row never
#   written (recovery sees the step only as started).
MODES = ("after", "done-lost")


def counts(mode: str, state: str) -> bool:
    return mode == "after" or state == STEP_DONE


@contextlib.contextmanager
def dies_at(monkeypatch, n: int, mode: str):
    """The process dies at boundary ``n`` as ``mode`` says: nothing after it runs,
    nothing is undone, the operation keeps its "running" entry."""
    seen = [0]
    dying = [False]
    counting = threading.Lock()  # a migration finishes its volumes in threads
    real_step, real_finish = OperationLog._step, OperationLog.finish

    def step(self, step, state, data=None):
        if dying[0]:  # another thread of the process got there: nothing runs on
            raise Killed(f"already dead at {step} {state}")
        with counting:
            if counts(mode, state):
                seen[0] += 1
            this = seen[0] if counts(mode, state) else None
        if mode == "done-lost" and this == n:
            dying[0] = True
            raise Killed(f"before the done row of {step} (boundary {n})")
        real_step(self, step, state, data)
        if mode == "after" and this == n:
            dying[0] = True
            raise Killed(f"after boundary {n}: {step} {state}")

    def finish(self, state, outcome=None):
        if not dying[0]:
            real_finish(self, state, outcome)

    monkeypatch.setattr(OperationLog, "_step", step)
    monkeypatch.setattr(OperationLog, "finish", finish)
    try:
        yield seen
    finally:
        monkeypatch.setattr(OperationLog, "_step", real_step)
        monkeypatch.setattr(OperationLog, "finish", real_finish)


def boundaries(run, kind: str, mode: str) -> int:
    """How many boundaries of ``mode`` a whole run of ``run`` records; the run must
    reach every boundary of ``kind``'s step table (``sweep_coverage``)."""
    rows: list[tuple[str, str]] = []
    real_step = OperationLog._step

    def step(self, step, state, data=None):
        real_step(self, step, state, data)
        rows.append((step.key, state))

    OperationLog._step = step
    try:
        run()
    finally:
        OperationLog._step = real_step
    assert_covered(kind, rows)
    return sum(counts(mode, state) for _key, state in rows)


def assert_consistent(cinder: FakeCinder, hosts, volume_ids, domain: str) -> None:
    """Cinder, the domain where the guest runs (or is defined), the hosts' sessions and
    secrets tell one story for every volume."""
    for volume_id in volume_ids:
        vol = cinder.volumes[volume_id]
        holders = []
        for name, host in hosts.items():
            dom = host.hypervisor.domains.get(domain)
            if dom is None:
                continue
            disks = dom.live if dom.active else dom.config
            if any(d.serial == volume_id for d in disks):
                holders.append((name, dom))
        atts = list(vol.attachments.values())
        if not holders:
            assert atts == [], (volume_id, atts)
            assert vol.status == "available", (volume_id, vol.status)
        else:
            assert len(holders) == 1, holders
            _name, dom = holders[0]
            assert [a.instance_id for a in atts] == [dom.uuid], (volume_id, atts)
            assert atts[0].status == "attached" and vol.status == "in-use", (volume_id, atts)
    # nothing connected on a host that no disk there explains
    for name, host in hosts.items():
        paths = set()
        for dom in host.hypervisor.domains.values():
            for disk in (dom.live if dom.active else dom.config):
                if getattr(disk.source, "path", None):
                    paths.add(disk.source.path)
        used = set()
        for path in paths:
            used.update(host.brick.maps.get(path, (path,)))
        assert set(host.brick.devices) <= used, (name, host.brick.devices, paths)
        secrets_needed = {
            (disk.source.secret_usage) for dom in host.hypervisor.domains.values()
            for disk in (dom.live if dom.active else dom.config)
            if getattr(disk.source, "secret_usage", None)}
        assert set(host.hypervisor.secrets) <= secrets_needed, (name, host.hypervisor.secrets)


def consistent(cinder, hosts, volume_ids, domain) -> bool:
    try:
        assert_consistent(cinder, hosts, volume_ids, domain)
    except AssertionError:
        return False
    return True


def recover_all(world, kind):
    with client(world) as fresh:
        results = fresh.recover()
        assert [r.kind for r in results] == [kind], [r.describe() for r in results]
        for res in results:
            assert not res.needs_human, res.describe()
        again = fresh.recover()
        assert all(r.decision in ("nothing",) for r in again) or again == [], \
            [r.describe() for r in again]
        assert fresh.operations() == [], [o.to_dict() for o in fresh.operations()]
    return results


SWEEPS = [(api, transport, mode) for api in ("attachments", "legacy")
         for transport in ("kernel", "native") for mode in MODES]
CASES = [(api, transport) for api in ("attachments", "legacy")
         for transport in ("kernel", "native")]


@pytest.mark.parametrize("api,transport,mode", SWEEPS)
def test_attach_killed_at_every_boundary_recovers(world, monkeypatch, api, transport,
                                               mode):
    cinder, hosts = world
    root = cinder.create_volume()
    operations.boot(cinder, hosts["hosta"], get_transport(transport), "vm1", root,
                    virt_type="qemu")
    probe = cinder.create_volume()

    def whole():
        with client(world, transport=transport, api=api) as c:
            c.attach(probe, "vm1", host="hosta")
    total = boundaries(whole, "attach", mode)
    assert total >= (12 if mode == "after" else 6)
    broken = 0
    for n in range(1, total + 1):
        vol = cinder.create_volume()
        with dies_at(monkeypatch, n, mode):
            with client(world, transport=transport, api=api) as c:
                with pytest.raises(Killed):
                    c.attach(vol, "vm1", host="hosta")
        broken += not consistent(cinder, hosts, [vol, root], "vm1")
        with client(world, transport=transport, api=api) as c:
            with pytest.raises(errors.RecoveryNeeded, match="attachflow recover"):
                c.attach(vol, "vm1", host="hosta")
        recover_all(world, "attach")
        assert_consistent(cinder, hosts, [vol, root], "vm1")
        with client(world, transport=transport, api=api) as c:  # usable again
            c.attach(vol, "vm1", host="hosta")
            c.detach(vol, "vm1", host="hosta")
        assert_consistent(cinder, hosts, [vol], "vm1")
    assert broken >= total // 2  # the kills did leave half-done state behind


@pytest.mark.parametrize("api,transport,mode", SWEEPS)
def test_detach_killed_at_every_boundary_recovers(world, monkeypatch, api, transport,
                                               mode):
    cinder, hosts = world
    root = cinder.create_volume()
    operations.boot(cinder, hosts["hosta"], get_transport(transport), "vm1", root,
                    virt_type="qemu")
    probe = cinder.create_volume()
    with client(world, transport=transport, api=api) as c:
        c.attach(probe, "vm1", host="hosta")

    def whole():
        with client(world, transport=transport, api=api) as c:
            c.detach(probe, "vm1", host="hosta")
    total = boundaries(whole, "detach", mode)
    assert total >= (12 if mode == "after" else 6)
    broken = 0
    for n in range(1, total + 1):
        vol = cinder.create_volume()
        with client(world, transport=transport, api=api) as c:
            c.attach(vol, "vm1", host="hosta")
        with dies_at(monkeypatch, n, mode):
            with client(world, transport=transport, api=api) as c:
                with pytest.raises(Killed):
                    c.detach(vol, "vm1", host="hosta")
        broken += not consistent(cinder, hosts, [vol, root], "vm1")
        recover_all(world, "detach")
        assert_consistent(cinder, hosts, [vol, root], "vm1")
        with client(world, transport=transport, api=api) as c:
            c.detach(vol, "vm1", host="hosta")
        assert_consistent(cinder, hosts, [vol], "vm1")
    assert broken >= total // 2


@pytest.mark.parametrize("api,transport,mode", SWEEPS)
def test_boot_killed_at_every_boundary_recovers(world, monkeypatch, api, transport,
                                             mode):
    cinder, hosts = world
    probe = cinder.create_volume()

    def whole():
        with client(world, transport=transport, api=api) as c:
            c.boot("probe", probe, host="hosta", virt_type="qemu")
    total = boundaries(whole, "boot", mode)
    assert total >= (12 if mode == "after" else 6)
    broken = 0
    for n in range(1, total + 1):
        vol = cinder.create_volume()
        name = f"vm{n}"
        with dies_at(monkeypatch, n, mode):
            with client(world, transport=transport, api=api) as c:
                with pytest.raises(Killed):
                    c.boot(name, vol, host="hosta", virt_type="qemu")
        broken += not consistent(cinder, hosts, [vol], name)
        recover_all(world, "boot")
        assert_consistent(cinder, hosts, [vol], name)
        with client(world, transport=transport, api=api) as c:
            c.boot(name, vol, host="hosta", virt_type="qemu")  # or it ran already
        assert_consistent(cinder, hosts, [vol], name)
    assert broken >= total // 2


@pytest.mark.parametrize("api,transport,mode", SWEEPS)
def test_migrate_killed_at_every_boundary_recovers(world, monkeypatch, api, transport,
                                                mode):
    cinder, hosts = world

    def guest(name):
        root, data = cinder.create_volume(), cinder.create_volume()
        with client(world, transport=transport, api=api) as c:
            c.boot(name, root, host="hosta", virt_type="qemu")
            c.attach(data, name, host="hosta")
        return [root, data]

    probe = guest("probe")

    def whole():
        with client(world, api=api) as c:
            c.migrate("probe", source="hosta", destination="hostb")
    total = boundaries(whole, "migrate", mode)
    assert total >= (14 if mode == "after" else 7)
    assert_consistent(cinder, hosts, probe, "probe")
    broken = 0
    for n in range(1, total + 1):
        name = f"vm{n}"
        vols = guest(name)
        with dies_at(monkeypatch, n, mode):
            with client(world, api=api) as c:
                with pytest.raises(Killed):
                    c.migrate(name, source="hosta", destination="hostb")
        broken += not consistent(cinder, hosts, vols, name)
        results = recover_all(world, "migrate")
        assert [r.decision for r in results] in (["back"], ["forward"]), results
        assert_consistent(cinder, hosts, vols, name)
        runs_on = "hostb" if results[0].decision == "forward" else "hosta"
        other = "hosta" if runs_on == "hostb" else "hostb"
        with client(world, api=api) as c:  # and it moves again
            c.migrate(name, source=runs_on, destination=other)
        assert_consistent(cinder, hosts, vols, name)
    assert broken >= total // 2


def test_a_second_operation_waits_then_names_the_one_holding_the_lock(world, tmp_path):
    cinder, hosts = world
    root, vol = cinder.create_volume(), cinder.create_volume()
    operations.boot(cinder, hosts["hosta"], get_transport("native"), "vm1", root,
                    virt_type="qemu")
    first = client(world, transport="native")
    from attachflow.tracking import Scope
    scope = Scope("attach", "hosta", "vm1", (vol,))
    with first.tracker.operation(scope, {"volume_id": vol}):
        with client(world, transport="native", lock_wait=0.3) as second:
            with pytest.raises(errors.Busy) as busy:
                second.attach(vol, "vm1", host="hosta")
    msg = str(busy.value)
    assert "domain vm1 is busy" in msg and "held by attach" in msg and "running" in msg
    assert busy.value.exit_code == 4
    first.close()
    assert cinder.volumes[vol].status == "available"


def test_the_journal_keeps_no_secret_and_is_root_only(world, tmp_path):
    import os
    import stat
    cinder, hosts = world
    root, vol = cinder.create_volume(), cinder.create_volume()
    with client(world, transport="native") as c:
        c.boot("vm1", root, host="hosta", virt_type="qemu")
        c.attach(vol, "vm1", host="hosta")
        c.detach(vol, "vm1", host="hosta")
        directory = c.tracker.journal.directory
        ops = c.operations(include_finished=True)
    assert [o.kind for o in ops] == ["boot", "attach", "detach"]
    assert all(o.state == "done" for o in ops)
    data = b"".join(p.read_bytes() for p in directory.iterdir() if p.is_file())
    for secret in {v.chap_password for v in cinder.volumes.values()}:
        assert secret and secret.encode() not in data
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(directory / journal_mod.FILE_NAME).st_mode) == 0o600


def test_delete_refuses_before_stopping_a_guest_left_mid_operation(world, monkeypatch):
    cinder, hosts = world
    root, vol = cinder.create_volume(), cinder.create_volume()
    with client(world, transport="native") as c:
        c.boot("vm1", root, host="hosta", virt_type="qemu")
    with dies_at(monkeypatch, 4, "after"):
        with client(world, transport="native") as c:
            with pytest.raises(Killed):
                c.attach(vol, "vm1", host="hosta")
    with client(world, transport="native") as c:
        [op] = c.operations()
        assert (op.kind, c.shown_state(op)) == ("attach", "interrupted")
        with pytest.raises(errors.RecoveryNeeded, match=f"attachflow recover {op.id[:8]}"):
            c.delete_guest("vm1", host="hosta")
    assert hosts["hosta"].hypervisor.domains["vm1"].active
    recover_all(world, "attach")
    assert_consistent(cinder, hosts, [root, vol], "vm1")


@pytest.mark.parametrize("method,state", [
    ("attachment_create", "recovered"),  # the orphan attachment recover finds
    ("attachment_complete", "failed"),   # the undo deletes the completed attachment
])
def test_an_answer_lost_after_cinder_acted_is_recovered_at_once(world, monkeypatch, method,
                                                                 state):
    """Cinder acts, then its answer is lost (a timeout, a dropped link): the step may have
    taken effect, so the failed operation is recovered from the real state right away."""
    cinder, hosts = world
    root, vol = cinder.create_volume(), cinder.create_volume()
    with client(world, transport="native") as c:
        c.boot("vm1", root, host="hosta", virt_type="qemu")
    real = getattr(cinder, method)

    def acts_then_times_out(*args, **kwargs):
        real(*args, **kwargs)
        raise errors.StorageUnavailable(f"{method}: timed out")

    monkeypatch.setattr(cinder, method, acts_then_times_out)
    with client(world, transport="native") as c:
        with pytest.raises(errors.OperationFailed) as failed:
            c.attach(vol, "vm1", host="hosta")
        assert ("; recovered: rolled back" in str(failed.value)) == (state == "recovered")
        assert c.operations() == []
        [op] = [o for o in c.operations(include_finished=True) if o.kind == "attach"]
        assert op.state == state
    assert_consistent(cinder, hosts, [root, vol], "vm1")
    assert cinder.volumes[vol].status == "available" and not cinder.volumes[vol].attachments


@pytest.mark.parametrize("kind", ["attach", "detach", "boot", "migrate"])
def test_killed_between_begin_and_the_first_step_recovers_to_nothing(world, monkeypatch,
                                                                     kind):
    """Killed after its journal entry is written but before its first step (with its
    context still partial: a detach learns the guest's uuid on the way), an operation
    is settled as having done nothing."""
    cinder, hosts = world
    root, vol = cinder.create_volume(), cinder.create_volume()
    with client(world) as c:
        c.boot("vm1", root, host="hosta", virt_type="qemu")
        if kind in ("detach", "migrate"):
            c.attach(vol, "vm1", host="hosta")
    real_begin = journal_mod.Journal.begin

    def begin(self, *args, **kwargs):
        real_begin(self, *args, **kwargs)
        raise Killed("after begin")
    monkeypatch.setattr(journal_mod.Journal, "begin", begin)
    start = {"attach": lambda c: c.attach(vol, "vm1", host="hosta"),
             "detach": lambda c: c.detach(vol, "vm1", host="hosta"),
             "boot": lambda c: c.boot("vm2", vol, host="hosta", virt_type="qemu"),
             "migrate": lambda c: c.migrate("vm1", source="hosta", destination="hostb")}
    with client(world) as c:
        with pytest.raises(Killed):
            start[kind](c)
    monkeypatch.setattr(journal_mod.Journal, "begin", real_begin)
    results = recover_all(world, kind)
    assert [r.decision for r in results] == ["nothing"], [r.describe() for r in results]
    assert_consistent(cinder, hosts, [root, vol], "vm1")
    assert ("vm2" in hosts["hosta"].hypervisor.domains) is False


@pytest.mark.parametrize("api,transport", CASES)
def test_a_guest_that_never_answers_the_unplug_is_finished_once_stopped(world, api,
                                                                         transport):
    cinder, hosts = world
    hv = hosts["hosta"].hypervisor
    root = cinder.create_volume()
    operations.boot(cinder, hosts["hosta"], get_transport(transport), "vm1", root,
                    virt_type="qemu")
    vol = cinder.create_volume()
    with client(world, transport=transport, api=api) as c:
        c.attach(vol, "vm1", host="hosta")
    hv.refuse_detach.add("vdb")
    with client(world) as c:
        with pytest.raises(errors.OperationFailed) as failed:
            c.detach(vol, "vm1", host="hosta", timeout=1)
        [op] = c.operations()
        # The first error says what to do next, naming the operation; the journal keeps
        # it for recover (not settled behind the user's back, not a human's yet).
        assert f"'attachflow recover {op.id[:8]}' finishes the detach" in str(failed.value)
        assert c.shown_state(op) == journal_mod.INCOMPLETE
        assert op.outcome == str(failed.value)
        assert hv.domain("vm1").disk(vol) is not None
        assert hv.domain("vm1", inactive=True).disk(vol) is None
        assert cinder.volumes[vol].status in ("in-use", "detaching")
        # While the guest holds on, recover says what a human must do, and changes
        # nothing.
        [still] = c.recover(op.id)
        assert still.needs_human and "stop the guest" in still.problem
        assert c.shown_state(c.operations()[0]) == journal_mod.NEEDS_HUMAN
        assert hv.domain("vm1").disk(vol) is not None
        with pytest.raises(errors.RecoveryNeeded, match="attachflow recover"):
            c.detach(vol, "vm1", host="hosta")
    hv.destroy("vm1")  # the operator stops the guest
    [settled] = recover_all(world, "detach")
    assert settled.decision == "forward", settled.describe()
    assert hv.domain("vm1", inactive=True).disk(vol) is None
    assert cinder.volumes[vol].status == "available" and not cinder.volumes[vol].attachments
    assert_consistent(cinder, hosts, [vol, root], "vm1")


def test_a_sweep_that_misses_a_boundary_fails_naming_it():
    from sweep_coverage import EXEMPT, required
    from attachflow.plans import PLANS
    every = {(s.key, st) for s in PLANS["attach"] for st in ("started", "done")}
    assert required("attach") == every
    assert_covered("attach", every)
    with pytest.raises(AssertionError, match=r"guest-attach \(done\)"):
        assert_covered("attach", every - {("guest-attach", "done")})
    # what is exempt is exempt by name, with its reason
    assert all(reason for reason in EXEMPT.values())
    assert all(key in {s.key for s in PLANS[op]} for op, key in EXEMPT)
