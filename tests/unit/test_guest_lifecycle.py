"""start, shutdown and delete of a guest as a user sees them: what the guest's state is
afterwards, what the call answers, how long a shutdown waits, and the refusals."""

import pytest

from attachflow import errors, operations
from attachflow.connectors import get_transport
from attachflow.events import StepDone, StepStarted
from test_flows import snapshot


class FakeTime:
    """``operations.time``: a clock that moves only when the code sleeps."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(operations, "time", fake)
    return fake


def booted(cinder, host, name="vm1"):
    root = cinder.create_volume()
    operations.boot(cinder, host, get_transport("native"), name, root, virt_type="qemu")
    return root


def test_start_starts_a_shut_off_guest_and_says_whether_it_did(cinder, host):
    booted(cinder, host)
    assert operations.start_guest(host, "vm1") is False      # running already
    assert host.hypervisor.calls.count("start") == 1          # only boot started it
    host.hypervisor.destroy("vm1")
    assert operations.start_guest(host, "vm1") is True
    assert host.hypervisor.lookup("vm1").active
    assert host.hypervisor.calls.count("start") == 2


def test_shutdown_waits_for_the_guest_to_power_off(cinder, host, clock):
    booted(cinder, host)
    assert operations.shutdown_guest(host, "vm1") is True
    assert not host.hypervisor.lookup("vm1").active
    assert clock.sleeps == []                                 # it went at once
    assert operations.shutdown_guest(host, "vm1") is False    # not running
    assert host.hypervisor.calls.count("shutdown") == 1


def test_shutdown_polls_until_the_guest_is_off(cinder, host, clock):
    booted(cinder, host)
    hv = host.hypervisor
    hv.ignore_shutdown.add("vm1")
    real_sleep = clock.sleep

    def sleep(seconds):
        real_sleep(seconds)
        if len(clock.sleeps) == 3:
            hv.ignore_shutdown.discard("vm1")
            hv.shutdown("vm1")                                # the guest OS got there
    clock.sleep = sleep
    assert operations.shutdown_guest(host, "vm1", timeout=10, poll=0.25) is True
    assert clock.sleeps == [0.25, 0.25, 0.25] and not hv.lookup("vm1").active


def test_a_guest_that_ignores_shutdown_is_an_error_after_the_timeout(cinder, host, clock):
    booted(cinder, host)
    host.hypervisor.ignore_shutdown.add("vm1")
    with pytest.raises(errors.HypervisorError) as info:
        operations.shutdown_guest(host, "vm1")
    assert str(info.value) == "guest vm1 on hosta did not shut down within 120 s"
    assert clock.sleeps == [0.5] * 240                        # polled every 0.5 s, 120 s
    assert host.hypervisor.lookup("vm1").active               # left running, not forced
    clock.sleeps.clear()
    with pytest.raises(errors.HypervisorError, match="within 2.5 s"):
        operations.shutdown_guest(host, "vm1", timeout=2.5, poll=1)
    assert clock.sleeps == [1, 1, 1]


def test_delete_stops_the_guest_and_reports_each_step(cinder, host, clock):
    root = booted(cinder, host)
    data = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), data, "vm1")
    seen = []
    result = operations.delete_guest(cinder, host, "vm1", progress=seen.append)
    assert (result.domain, result.host, result.detached, result.already) == (
        "vm1", "hosta", [data, root], False)
    assert result.to_dict() == {
        "schema_version": 1, "operation": "delete", "domain": "vm1", "host": "hosta",
        "detached": [data, root], "seconds": 0.0, "already": False}
    assert seen[0] == StepDone("delete vm1", "stop guest")
    assert seen[-1] == StepDone("delete vm1", "undefine guest")
    detaches = [e.operation for e in seen if isinstance(e, StepStarted)]
    assert detaches[0] == f"detach {data} from vm1" and detaches[-1] == \
        f"detach {root} from vm1"
    assert "destroy" not in host.hypervisor.calls             # it shut down by itself
    assert "vm1" not in host.hypervisor.domains
    assert {cinder.volumes[v].status for v in (root, data)} == {"available"}


def test_delete_waits_for_the_shutdown_timeout_then_forces_the_guest_off(cinder, host,
                                                                          clock):
    root = booted(cinder, host)
    host.hypervisor.ignore_shutdown.add("vm1")
    result = operations.delete_guest(cinder, host, "vm1")
    assert clock.sleeps == [0.5] * 120                        # 60 s by default
    assert result.detached == [root] and "vm1" not in host.hypervisor.domains
    root2 = booted(cinder, host, "vm2")
    host.hypervisor.ignore_shutdown.add("vm2")
    clock.sleeps.clear()
    result = operations.delete_guest(cinder, host, "vm2", shutdown_timeout=3)
    assert clock.sleeps == [0.5] * 6 and result.detached == [root2]
    assert host.hypervisor.calls.count("destroy") == 2


def test_delete_of_a_shut_off_guest_does_not_stop_it(cinder, host, clock):
    root = booted(cinder, host)
    host.hypervisor.destroy("vm1")
    host.hypervisor.calls.clear()
    seen = []
    result = operations.delete_guest(cinder, host, "vm1", progress=seen.append)
    assert result.detached == [root] and "vm1" not in host.hypervisor.domains
    assert "shutdown" not in host.hypervisor.calls and "destroy" not in host.hypervisor.calls
    assert StepDone("delete vm1", "stop guest") not in seen
    assert cinder.volumes[root].status == "available"


def test_delete_of_a_missing_guest(cinder, host, clock):
    result = operations.delete_guest(cinder, host, "gone")
    assert (result.domain, result.host, result.detached, result.already) == (
        "gone", "hosta", [], True)
    assert result.to_dict()["already"] is True
    with pytest.raises(errors.DomainNotFound, match="domain 'gone' not found") as info:
        operations.delete_guest(cinder, host, "gone", strict=True)
    assert info.value.exit_code == 2


def test_delete_refuses_a_transient_guest(cinder, host):
    host.hypervisor.add_domain("tmp", persistent=False)
    before = snapshot(cinder, host)
    with pytest.raises(errors.InputError) as info:
        operations.delete_guest(cinder, host, "tmp", force=True)
    assert str(info.value) == ("domain 'tmp' on hosta is transient: detach its volumes, "
                               "then destroy it")
    assert snapshot(cinder, host) == before


def test_delete_refuses_a_guest_whose_vda_is_not_attachflows(cinder, host):
    host.hypervisor.add_domain("theirs")
    data = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), data, "theirs")
    before = snapshot(cinder, host)
    calls = len(host.hypervisor.calls)
    with pytest.raises(errors.InputError, match="'theirs' on hosta was not booted") as info:
        operations.delete_guest(cinder, host, "theirs")
    assert info.value.exit_code == 2 and snapshot(cinder, host) == before
    assert "shutdown" not in host.hypervisor.calls[calls:]
    # a shut-off guest booted by attachflow is recognised from its persistent definition
    root = booted(cinder, host, "mine")
    host.hypervisor.destroy("mine")
    assert operations.delete_guest(cinder, host, "mine").detached == [root]


@pytest.mark.parametrize("bad", [0, 0.5, 86401, float("nan"), "60", True])
def test_delete_checks_the_shutdown_timeout_before_anything(cinder, host, bad):
    booted(cinder, host)
    before = snapshot(cinder, host)
    host.hypervisor.calls.clear()
    with pytest.raises(errors.InputError) as info:
        operations.delete_guest(cinder, host, "vm1", shutdown_timeout=bad)
    assert str(info.value).startswith("the shutdown timeout must be a number from 1 to "
                                      "86400, not ")
    assert host.hypervisor.calls == [] and snapshot(cinder, host) == before


@pytest.mark.parametrize("bad", ["a/b", "", "x\ny"])
def test_delete_checks_the_domain_name_before_anything(cinder, host, bad):
    with pytest.raises(errors.InputError, match="is not valid for libvirt"):
        operations.delete_guest(cinder, host, bad)
    assert host.hypervisor.calls == []


def test_delete_detaches_the_root_volume_last_and_the_others_in_order(cinder, host, clock):
    """Until the root volume goes, the guest is recognisably attachflow's: a delete
    stopped half-way can be run again without --force."""
    vols = sorted(cinder.create_volume() for _ in range(4))
    root, data = vols[0], vols[:0:-1]                  # root sorts first; data reversed
    operations.boot(cinder, host, get_transport("native"), "vm1", root, virt_type="qemu")
    for vol in data:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    result = operations.delete_guest(cinder, host, "vm1")
    assert result.detached == vols[1:] + [root]
    assert result.seconds == 0.0                        # the fake clock did not move


def test_a_delete_with_nothing_to_do_reports_the_time_it_took(cinder, host, clock):
    assert operations.delete_guest(cinder, host, "gone").seconds == 0.0


def test_boot_reports_each_step_to_the_listener(cinder, host):
    root = cinder.create_volume()
    seen = []
    operations.boot(cinder, host, get_transport("native"), "vm1", root, virt_type="qemu",
                    api="attachments", progress=seen.append)
    operation = f"boot vm1 from {root}"
    started = [e.step for e in seen if isinstance(e, StepStarted)]
    assert started == ["connector properties", "storage connect (attachments)",
                       "check transport", "host connect (native)", "define domain",
                       "start domain", "storage complete (attachments)"]
    assert {e.operation for e in seen} == {operation}
    assert seen[-1] == StepDone(operation, "storage complete (attachments)")
