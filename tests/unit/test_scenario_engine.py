"""The scenario engine against an in-memory lab that keeps the real rules that matter to
it: a volume attaches once per host, a guest runs on one host, data lives on the
volume, a migration under an injected fault is refused and moves nothing."""

from __future__ import annotations

import contextlib
import textwrap

import pytest

from attachflow import errors
from attachflow.scenario import engine, spec


class MemoryLab:
    def __init__(self):
        self.volumes = {}      # id -> {"name", "status", "hosts": [..]}
        self.guests = {}       # name -> host
        self.disks = {}        # guest -> set of volume ids
        self.data = {}         # volume id -> byte
        self.faults = set()
        self.calls = []
        self.fail_delete = set()
        self.interrupt_on = None

    def _call(self, what):
        self.calls.append(what)
        if what == self.interrupt_on:
            raise KeyboardInterrupt

    def create_volume(self, name, vol):
        self._call("create_volume")
        volume_id = f"id-{name}"
        self.volumes[volume_id] = {"name": name, "status": "available", "hosts": []}
        return volume_id

    def delete_volume(self, volume_id):
        self._call("delete_volume")
        if volume_id in self.fail_delete:
            raise errors.StorageError("Invalid volume: volume status must be available")
        if self.volumes[volume_id]["hosts"]:
            raise errors.StorageError("volume is in use")
        del self.volumes[volume_id]

    def boot(self, name, host, root_volume_id, memory_mib, api, transport):
        self._call("boot")
        self.guests[name] = host
        self.disks[name] = {root_volume_id}
        self.volumes[root_volume_id].update(status="in-use", hosts=[host])

    def delete_guest(self, name, host):
        self._call("delete_guest")
        assert self.guests[name] == host
        for vol in self.disks.pop(name):
            self.volumes[vol].update(status="available", hosts=[])
        del self.guests[name]

    def attach(self, volume_id, guest, host, device, api, transport):
        self._call("attach")
        if self.volumes[volume_id]["hosts"]:
            raise errors.VolumeStateError(f"volume {volume_id} is in-use")
        self.disks[guest].add(volume_id)
        self.volumes[volume_id].update(status="in-use", hosts=[host])

    def detach(self, volume_id, guest, host, api, transport):
        self._call("detach")
        self.disks[guest].discard(volume_id)
        self.volumes[volume_id].update(status="available", hosts=[])

    def write(self, guest, host, volume_id, stamp):
        self._call("write")
        assert volume_id in self.disks[guest]
        self.data[volume_id] = stamp.byte

    def verify(self, guest, host, volume_id, stamp):
        self._call("verify")
        pattern = stamp.byte
        seen = self.data.get(volume_id)
        if seen != pattern:
            raise engine.Deviation(f"0x{pattern:02x} in the first MiB",
                                   f"0x{seen:02x}" if seen is not None else "no pattern")

    def migrate(self, guest, source, destination, api, transport):
        self._call("migrate")
        if "destination-libvirtd-stopped" in self.faults:
            raise errors.HypervisorError(f"{destination}: cannot connect to libvirtd")
        self.guests[guest] = destination
        for vol in self.disks[guest]:
            self.volumes[vol]["hosts"] = [destination]

    @contextlib.contextmanager
    def fault(self, name, source, destination):
        self.faults.add(name)
        try:
            yield
        finally:
            self.faults.discard(name)

    def observe(self, volume_id, guest, host, hosts=()):
        seen = {}
        if volume_id:
            vol = self.volumes[volume_id]
            seen.update(status=vol["status"], attachments=len(vol["hosts"]),
                        attached_to=list(vol["hosts"]))
            seen["sessions"] = {h: 1 for h in vol["hosts"]}
        if guest:
            seen["runs_on"] = self.guests.get(guest)
            if volume_id:
                seen["disk"] = "both" if volume_id in self.disks.get(guest, ()) else "absent"
        return seen

    def snapshot(self, hosts=()):
        return {"guests": dict(self.guests),
                "volumes": {k: (v["status"], tuple(v["hosts"]))
                            for k, v in self.volumes.items()}}


HEAD = """\
suite: s
scenarios:
  - name: one
    volumes: {root: {size: 1}, data: {size: 1}}
    guests: {vm: {host: hosta, root: root}}
    steps:
"""


def scenario(steps: str) -> spec.Scenario:
    text = HEAD + textwrap.indent(textwrap.dedent(steps), "      ")
    return spec.parse(text, "f.yaml").scenarios[0]


def run(lab, steps, **kwargs):
    return engine.Runner(lab, run_id="r1", **kwargs).run(scenario(steps))


SMOKE = """\
- boot: vm
- attach: {volume: data, guest: vm}
- expect: {volume: data, status: in-use, attachments: 1, attached_to: [hosta]}
- write: {guest: vm, volume: data, pattern: a5}
- migrate: {guest: vm, to: hostb}
- expect: {guest: vm, runs_on: hostb, volume: data, disk: both, sessions: {hosta: 0, hostb: 1}}
- verify: {guest: vm, volume: data, pattern: a5}
- detach: {volume: data, guest: vm}
- expect: {volume: data, status: available, attachments: 0}
"""


def test_a_scenario_that_holds_passes_and_leaves_nothing():
    lab = MemoryLab()
    heard = []
    result = run(lab, SMOKE, progress=lambda name, step: heard.append(step.label))
    assert result.outcome == "passed", result.to_dict()
    assert [s.label for s in result.steps][:3] == [
        "create volume root", "create volume data", "boot vm"]
    assert all(s.outcome == "passed" for s in result.steps)
    assert heard == [s.label for s in result.steps]  # the volumes too, as they are made
    assert (lab.volumes, lab.guests) == ({}, {})
    assert not result.left_behind


def test_names_carry_the_run_id():
    lab = MemoryLab()
    names = []
    original = lab.create_volume
    lab.create_volume = lambda name, vol: names.append(name) or original(name, vol)
    booted = []
    original_boot = lab.boot
    lab.boot = lambda name, *a: booted.append(name) or original_boot(name, *a)
    runner = engine.Runner(lab, run_id="r1")
    runner.run(scenario("- boot: vm\n"))
    assert names == ["s-r1-1-root", "s-r1-1-data"] and booted == ["vm-r1-1"]
    # the next scenario of the run: its guest is not the last one's, whose operations
    # the journal may still name
    runner.run(scenario("- boot: vm\n"))
    assert booted == ["vm-r1-1", "vm-r1-2"] and names[2:] == ["s-r1-2-root", "s-r1-2-data"]


def test_a_deviation_fails_its_step_stops_the_rest_and_still_cleans_up():
    lab = MemoryLab()
    result = run(lab, """\
        - boot: vm
        - attach: {volume: data, guest: vm}
        - expect: {volume: data, status: available, attachments: 0}
        - detach: {volume: data, guest: vm}
        """)
    assert result.outcome == "failed"
    failed = result.first_problem
    assert failed.label.startswith("expect volume=data") and failed.where == "f.yaml:9"
    assert (failed.expected, failed.seen) == ("status available, attachments 0",
                                              "status in-use, attachments 1")
    assert [s.outcome for s in result.steps][-1] == "not run"
    assert (lab.volumes, lab.guests) == ({}, {})


def test_data_that_did_not_survive_is_a_failure():
    lab = MemoryLab()
    result = run(lab, """\
        - boot: vm
        - attach: {volume: data, guest: vm}
        - write: {guest: vm, volume: data, pattern: a5}
        - verify: {guest: vm, volume: data, pattern: 5a}
        """)
    assert (result.first_problem.expected, result.first_problem.seen) == (
        "0x5a in the first MiB", "0xa5")


def test_a_step_that_cannot_be_done_is_an_error_with_its_message():
    lab = MemoryLab()
    result = run(lab, """\
        - boot: vm
        - attach: {volume: root, guest: vm}
        """)
    problem = result.first_problem
    assert problem.outcome == "error" and problem.seen == "VolumeStateError (exit 2)"
    assert problem.output_tail == ("volume id-s-r1-1-root is in-use",)


def test_a_refused_migration_under_a_fault_moves_nothing():
    lab = MemoryLab()
    result = run(lab, """\
        - boot: vm
        - attach: {volume: data, guest: vm}
        - fault:
            name: destination-libvirtd-stopped
            during:
              expect_failure:
                step: {migrate: {guest: vm, to: hostb}}
                exit: 1
                message: cannot connect
                unchanged: true
        - expect: {guest: vm, runs_on: hosta, volume: data, disk: both}
        - detach: {volume: data, guest: vm}
        """)
    assert result.outcome == "passed", result.to_dict()
    assert not lab.faults


def test_an_expected_failure_that_succeeds_is_a_failure():
    lab = MemoryLab()
    result = run(lab, """\
        - boot: vm
        - expect_failure: {step: {migrate: {guest: vm, to: hostb}}}
        """)
    assert (result.first_problem.expected, result.first_problem.seen) == (
        "'migrate vm to hostb' to fail", "it succeeded")
    # the guest moved: clean-up deletes it where it runs now
    assert (lab.volumes, lab.guests) == ({}, {})


def test_an_expected_failure_with_another_exit_code_is_a_failure():
    lab = MemoryLab()
    result = run(lab, """\
        - boot: vm
        - attach: {volume: data, guest: vm}
        - expect_failure: {step: {attach: {volume: data, guest: vm}}, exit: 1}
        """)
    assert result.first_problem.expected == "exit 1"
    assert result.first_problem.seen.startswith("exit 2: volume id-s-r1-1-data is in-use")


def test_repeat_runs_its_steps_that_many_times():
    lab = MemoryLab()
    result = run(lab, """\
        - boot: vm
        - repeat:
            times: 3
            steps:
              - attach: {volume: data, guest: vm}
              - detach: {volume: data, guest: vm}
        """)
    assert result.outcome == "passed"
    assert lab.calls.count("attach") == lab.calls.count("detach") == 3


def test_what_clean_up_cannot_remove_is_named_with_its_command():
    lab = MemoryLab()
    lab.fail_delete.add("id-s-r1-1-data")
    result = run(lab, "- boot: vm\n")
    assert result.outcome == "error"
    assert result.left_behind == (
        "volume s-r1-1-data (id-s-r1-1-data): Invalid volume: volume status must be "
        "available; remove it with: openstack volume delete id-s-r1-1-data",)
    assert list(lab.volumes) == ["id-s-r1-1-data"]


def test_an_interrupt_cleans_up_then_stops_the_run():
    lab = MemoryLab()
    lab.interrupt_on = "write"
    with pytest.raises(engine.Interrupted) as caught:
        run(lab, """\
            - boot: vm
            - attach: {volume: data, guest: vm}
            - write: {guest: vm, volume: data, pattern: a5}
            - detach: {volume: data, guest: vm}
            """)
    result = caught.value.result
    assert [(s.label, s.outcome) for s in result.steps[-2:]] == [
        ("write 0xa5 on data in vm", "error"), ("detach data from vm", "not run")]
    assert (lab.volumes, lab.guests) == ({}, {})


def test_sessions_are_compared_for_the_hosts_named():
    lab = MemoryLab()
    result = run(lab, """\
        - boot: vm
        - attach: {volume: data, guest: vm}
        - expect: {volume: data, sessions: {hosta: 0}}
        """)
    assert (result.first_problem.expected, result.first_problem.seen) == (
        "sessions {'hosta': 0}", "sessions {'hosta': 1}")


def test_a_guest_left_behind_after_a_migration_is_named_where_it_runs():
    lab = MemoryLab()

    def refuse(name, host):
        raise TimeoutError("libvirt did not answer")

    lab.delete_guest = refuse
    result = run(lab, """\
        - boot: vm
        - migrate: {guest: vm, to: hostb}
        """)
    guest_line, *volume_lines = result.left_behind
    assert guest_line == ("guest vm-r1-1: libvirt did not answer; remove it with: "
                          "attachflow delete vm-r1-1 --host hostb --force")
    # the volumes were still tried: the root, in use by the guest, is refused; data goes
    assert len(volume_lines) == 1 and "openstack volume delete id-s-r1-1-root" in volume_lines[0]
    assert list(lab.volumes) == ["id-s-r1-1-root"]


def test_an_unexpected_error_of_a_step_is_an_error_and_the_run_cleans_up():
    lab = MemoryLab()

    def broken(*args):
        raise OSError("No route to host")

    lab.write = broken
    result = run(lab, """\
        - boot: vm
        - attach: {volume: data, guest: vm}
        - write: {guest: vm, volume: data, pattern: a5}
        """)
    assert (result.first_problem.outcome, result.first_problem.seen,
            result.first_problem.output_tail) == ("error", "OSError", ("No route to host",))
    assert (lab.volumes, lab.guests) == ({}, {})


def test_an_interrupt_while_the_volumes_are_made_names_that_step():
    lab = MemoryLab()
    made = []
    original = lab.create_volume

    def second_interrupted(name, vol):
        if made:
            raise KeyboardInterrupt
        made.append(name)
        return original(name, vol)

    lab.create_volume = second_interrupted
    with pytest.raises(engine.Interrupted) as caught:
        run(lab, "- boot: vm\n")
    steps = [(s.label, s.outcome) for s in caught.value.result.steps]
    assert steps == [("create volume root", "passed"), ("create volume data", "error"),
                     ("boot vm", "not run")]
    assert lab.volumes == {}
