"""Transactions undo what was done; ``Problems`` collects what could not be done, in
order, and renders it as one ``"what: error"`` line each."""

import logging

import pytest

from attachflow import errors
from attachflow.events import Emitter, StepDone, StepStarted, UndoFailed
from attachflow import steps
from attachflow.plans import Rule, StepDef
from attachflow.steps import Problems


class Transaction(steps.Transaction):
    """Steps declared on the spot, as each test needs them (the product's own are the
    tables in ``plans``)."""

    def run(self, name, do, undo=None, rule=Rule.BACK, hint=""):
        spec = StepDef(name, name, name, "undo it" if undo is not None else None, rule,
                       hint=hint)
        return super().run(spec.at(), do, undo)


def test_problems_keep_order_and_render_one_line_each():
    problems = Problems()
    assert not problems and len(problems) == 0 and problems.lines() == []
    first = errors.HypervisorError("libvirtd gone")
    problems.add("disconnect vol-1 on hosta", first)
    other = Problems()
    other.add("release source connection of vol-2", errors.StorageUnavailable("cinder away"))
    problems.extend(other)
    assert problems and len(problems) == 2
    assert problems.lines() == ["disconnect vol-1 on hosta: libvirtd gone",
                                "release source connection of vol-2: cinder away"]
    assert list(problems)[0] == ("disconnect vol-1 on hosta", first)
    assert problems.pairs() == list(problems)
    problems.pairs().clear()  # a copy: the collection is not changed through it
    assert len(problems) == 2


def test_a_failed_undo_leaves_the_steps_before_it_in_place_and_names_them():
    tx = Transaction("op")
    undone = []

    def broken(_):
        raise errors.HypervisorError("undo broke")

    tx.run("one", lambda: 1, undone.append)
    tx.run("two", lambda: 2, broken)
    tx.run("three", lambda: 3, undone.append)
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("four", lambda: (_ for _ in ()).throw(errors.AttachflowError("boom")))
    assert undone == [3]  # "one" stays: "two", which stands on it, could not be undone
    assert [(name, str(exc)) for name, exc in info.value.undo_failures] == \
        [("two", "undo broke"), ("one", "left in place because undoing 'two' failed")]
    assert str(info.value) == "op failed at step 'four': boom -- could NOT undo: two: " \
                              "undo broke; one: left in place because undoing 'two' failed"


def test_steps_run_in_order_and_undo_gets_what_its_step_returned():
    tx = Transaction("attach vol-1 to vm")
    undone = []
    assert tx.completed == []
    assert tx.run("reserve", lambda: "att-1", undone.append) == "att-1"
    assert tx.run("check", lambda: None) is None  # no undo: nothing to take back
    assert tx.run("connect", lambda: {"path": "/dev/sdb"}, undone.append) == \
        {"path": "/dev/sdb"}
    assert tx.completed == ["reserve", "check", "connect"]
    cause = errors.HypervisorError("attach device refused")
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("attach device", lambda: (_ for _ in ()).throw(cause))
    assert undone == [{"path": "/dev/sdb"}, "att-1"]
    failed = info.value
    assert (failed.operation, failed.step, failed.cause, failed.undo_failures) == \
        ("attach vol-1 to vm", "attach device", cause, [])
    assert failed.__cause__ is cause
    assert str(failed) == "attach vol-1 to vm failed at step 'attach device': attach " \
                          "device refused (all earlier steps undone)"
    assert failed.exit_code == 1
    assert tx.completed == ["reserve", "check", "connect"]


def test_a_first_step_that_fails_with_a_known_error_is_reported_as_it_is():
    tx = Transaction("attach vol-1 to vm")
    cause = errors.VolumeStateError("volume vol-1 is in-use")
    with pytest.raises(errors.VolumeStateError) as info:
        tx.run("reserve", lambda: (_ for _ in ()).throw(cause))
    assert info.value is cause and info.value.exit_code == 2
    # steps without undo changed nothing that could be taken back either
    tx = Transaction("attach vol-1 to vm")
    tx.run("check", lambda: None)
    with pytest.raises(errors.VolumeStateError) as info:
        tx.run("reserve", lambda: (_ for _ in ()).throw(cause))
    assert info.value is cause


def test_an_unexpected_error_or_an_interrupt_is_wrapped_even_with_nothing_to_undo():
    tx = Transaction("detach vol-1 from vm")
    bug = ValueError("bad value")
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("look up", lambda: (_ for _ in ()).throw(bug))
    assert info.value.cause is bug and info.value.step == "look up"
    assert info.value.__cause__ is bug
    assert str(info.value) == "detach vol-1 from vm failed at step 'look up': bad value " \
                              "(all earlier steps undone)"

    tx = Transaction("attach vol-2 to vm")
    undone = []
    tx.run("reserve", lambda: "att-2", undone.append)
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("connect", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert undone == ["att-2"]
    assert isinstance(info.value.cause, KeyboardInterrupt) and info.value.exit_code == 1


def test_an_undo_failing_with_any_error_is_named_with_what_it_left():
    tx = Transaction("op")
    undone = []

    def broken(_):
        raise RuntimeError("undo bug")

    tx.run("one", lambda: 1, undone.append)
    tx.run("two", lambda: 2, broken)
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("three", lambda: (_ for _ in ()).throw(errors.InputError("refused")))
    assert undone == []
    assert [(name, str(exc)) for name, exc in info.value.undo_failures] == \
        [("two", "undo bug"), ("one", "left in place because undoing 'two' failed")]
    # something is left to clean up by hand: not reported as mere bad input
    assert info.value.exit_code == 1


def test_undos_run_once_and_a_later_failure_has_nothing_left_to_undo():
    tx = Transaction("op")
    undone = []
    tx.run("one", lambda: 1, undone.append)
    with pytest.raises(errors.OperationFailed):
        tx.run("two", lambda: (_ for _ in ()).throw(errors.HostError("gone")))
    second = errors.HostError("gone again")
    with pytest.raises(errors.HostError) as info:
        tx.run("three", lambda: (_ for _ in ()).throw(second))
    assert info.value is second
    assert undone == [1]


def test_the_log_names_every_step_and_undo(caplog):
    caplog.set_level(logging.DEBUG, logger="attachflow")
    tx = Transaction("op")

    def broken(_):
        raise errors.HypervisorError("undo broke")

    tx.run("one", lambda: 1, lambda _: None)
    tx.run("two", lambda: 2, broken)
    with pytest.raises(errors.OperationFailed):
        tx.run("three", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "op: one ..."), ("DEBUG", "op: one done"),
        ("DEBUG", "op: two ..."), ("DEBUG", "op: two done"), ("DEBUG", "op: three ..."),
        ("WARNING", "op interrupted at three; undoing"),
        ("WARNING", "op: could NOT undo two: undo broke")]  # and "one" is left for it


def _fail(exc):
    def do():
        raise exc
    return do


def test_each_step_reports_started_done_undone_and_failed_undo_in_order():
    seen = []
    tx = Transaction("attach v to vm1", Emitter(seen.append))

    def broken(_):
        raise errors.HypervisorError("undo broke")

    assert tx.run("one", lambda: 1, lambda _: None) == 1
    assert tx.run("two", lambda: 2, broken) == 2
    assert tx.run("three", lambda: 3) == 3  # nothing to undo: no undo event for it
    with pytest.raises(errors.OperationFailed):
        tx.run("four", _fail(errors.AttachflowError("boom")))
    assert seen == [
        StepStarted("attach v to vm1", "one"), StepDone("attach v to vm1", "one"),
        StepStarted("attach v to vm1", "two"), StepDone("attach v to vm1", "two"),
        StepStarted("attach v to vm1", "three"), StepDone("attach v to vm1", "three"),
        StepStarted("attach v to vm1", "four"),
        UndoFailed("attach v to vm1", "two", "undo broke"),
    ]  # "one" is left in place: "two" stands on it
    assert tx.completed == ["one", "two", "three"]


def test_events_also_go_to_the_log_without_a_listener(caplog):
    tx = Transaction("detach v from vm1")
    with caplog.at_level(logging.DEBUG, logger="attachflow.events"):
        tx.run("one", lambda: 1, lambda _: None)
        with pytest.raises(errors.OperationFailed,
                           match=r"all earlier steps undone"):
            tx.run("two", _fail(RuntimeError("gone")))
    assert [r.getMessage() for r in caplog.records if r.name == "attachflow.events"] == [
        "detach v from vm1: one ...", "detach v from vm1: one done",
        "detach v from vm1: two ...", "detach v from vm1: undid one"]
    assert "could NOT undo" not in caplog.text


def test_a_failed_first_step_raises_its_own_error_when_nothing_changed():
    tx = Transaction("op")
    cause = errors.StorageUnavailable("cinder away")
    with pytest.raises(errors.StorageUnavailable) as info:
        tx.run("first", _fail(cause))
    assert info.value is cause and tx.completed == []
    # a step with no undo changed nothing either
    tx = Transaction("op")
    tx.run("look", lambda: None)
    with pytest.raises(errors.StorageUnavailable) as info:
        tx.run("second", _fail(cause))
    assert info.value is cause


def test_an_unexpected_error_is_wrapped_even_when_nothing_changed():
    tx = Transaction("op")
    cause = RuntimeError("bug")
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("first", _fail(cause))
    assert (info.value.operation, info.value.step, info.value.cause) == ("op", "first", cause)
    assert info.value.undo_failures == [] and info.value.__cause__ is cause
    assert str(info.value) == "op failed at step 'first': bug (all earlier steps undone)"


def test_an_interrupt_undoes_what_was_done_and_says_so(caplog):
    tx = Transaction("attach v to vm1")
    undone = []
    tx.run("connect", lambda: "conn", undone.append)
    with caplog.at_level(logging.WARNING, logger="attachflow.steps"):
        with pytest.raises(errors.OperationFailed) as info:
            tx.run("guest attach", _fail(KeyboardInterrupt()))
    assert undone == ["conn"] and info.value.step == "guest attach"
    assert [r.getMessage() for r in caplog.records if r.name == "attachflow.steps"] == [
        "attach v to vm1 interrupted at guest attach; undoing"]


def test_no_interrupt_warning_for_an_ordinary_failure(caplog):
    tx = Transaction("op")
    tx.run("connect", lambda: 1, lambda _: None)
    with caplog.at_level(logging.WARNING, logger="attachflow.steps"):
        with pytest.raises(errors.OperationFailed):
            tx.run("next", _fail(errors.HypervisorError("no")))
    assert not [r for r in caplog.records if r.name == "attachflow.steps"]


def test_steps_undone_once_are_not_undone_again():
    tx = Transaction("op")
    undone = []
    tx.run("one", lambda: 1, undone.append)
    with pytest.raises(errors.OperationFailed):
        tx.run("two", _fail(errors.HypervisorError("first failure")))
    tx.run("three", lambda: 3, undone.append)
    with pytest.raises(errors.OperationFailed):
        tx.run("four", _fail(RuntimeError("second failure")))
    assert undone == [1, 3]


def test_a_step_run_against_its_declaration_is_refused_before_it_runs():
    tx = steps.Transaction("op")
    ran = []
    with_undo = StepDef("connect", "connect", "connect", "disconnect", Rule.BACK)
    without = StepDef("check", "check", "check", None, Rule.BACK)
    with pytest.raises(TypeError, match="'connect' is declared with an undo"):
        tx.run(with_undo.at(), lambda: ran.append(1))
    with pytest.raises(TypeError, match="'check' is declared without an undo"):
        tx.run(without.at(), lambda: ran.append(1), lambda _: None)
    assert ran == [] and tx.completed == []


def test_a_step_that_cannot_be_gone_back_on_keeps_what_came_before_and_says_what_next():
    tx = Transaction("detach v from vm")
    undone = []
    tx.run("persistent", lambda: 1, undone.append)
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("live", lambda: (_ for _ in ()).throw(errors.DeviceRemovalTimeout("slow")),
               lambda _: None, rule=Rule.FORWARD_ONCE_ASKED,
               hint="'attachflow recover {op_id}' finishes it")
    assert undone == []
    assert info.value.uncertain and not info.value.undo_failures
    assert str(info.value) == ("detach v from vm failed at step 'live': slow (earlier "
                               "steps kept); 'attachflow recover <operation id>' "
                               "finishes it")
    info.value.operation_id = "0123456789abcdef"
    assert str(info.value).endswith("'attachflow recover 01234567' finishes it")


def test_a_refused_step_that_cannot_be_gone_back_on_is_undone_as_any_other():
    tx = Transaction("detach v from vm")
    undone = []
    tx.run("persistent", lambda: 1, undone.append)
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("live", lambda: (_ for _ in ()).throw(errors.InputError("no such disk")),
               lambda _: None, rule=Rule.FORWARD_ONCE_ASKED, hint="recover")
    assert undone == [1] and not info.value.uncertain
    assert "(all earlier steps undone)" in str(info.value)


def never_sent(what="POST attachment"):
    return errors.StorageUnavailable(f"{what}: cannot reach the storage API", sent=False)


def test_a_request_that_never_left_is_the_steps_own_error_and_nothing_is_undone():
    """Cinder's API down at the first write of an operation: nothing changed, so the
    operation fails with that error, its own undo (which would need Cinder) not run and
    nothing left for recover."""
    tx = Transaction("migrate vm")
    undone = []
    with pytest.raises(errors.StorageUnavailable) as info:
        tx.run("destination connection", lambda: (_ for _ in ()).throw(never_sent()),
               undone.append)
    assert undone == [] and not info.value.sent


def test_a_request_that_never_left_after_one_that_did_is_uncertain():
    tx = Transaction("attach v to vm")
    undone = []

    def reserve_then_export():
        steps.change_sent()  # os-reserve went out
        raise never_sent("os-initialize_connection")

    with pytest.raises(errors.OperationFailed) as info:
        tx.run("storage connect", reserve_then_export, undone.append)
    assert info.value.uncertain


def test_a_connection_broken_after_sending_is_uncertain():
    tx = Transaction("migrate vm")
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("destination connection", lambda: (_ for _ in ()).throw(
            errors.StorageUnavailable("POST attachment: connection aborted")),
            lambda _: None)
    assert info.value.uncertain
