"""The operations' step tables: every step declared with a rule, what it does and its
undo; the operations run only steps of their table, under the names users have always
seen; the journal finds a step by its key (and rows written before keys by label); and a
journal's direction follows the rules."""

from __future__ import annotations

import pytest

from attachflow import plans
from attachflow.plans import ATTACH, BOOT, DETACH, MIGRATE, PLANS, Rule, StepDef

from test_client import twin_client


@pytest.mark.parametrize("plan", PLANS.values(), ids=list(PLANS))
def test_every_step_declares_its_rule_and_undo_and_is_named_once(plan):
    assert plan.steps
    for step in plan:
        assert isinstance(step.rule, Rule), step
        assert step.does.strip() and step.label.strip()
        assert step.undo is None or step.undo.strip()
        assert step.note is None or callable(step.note)
    labels = [s.label for s in plan]
    assert len(set(labels)) == len(labels), labels
    # Once past a FORWARD step, the operation never goes back: no BACK step after one.
    rules = [s.rule for s in plan]
    if any(r is not Rule.BACK for r in rules):
        first_forward = next(i for i, r in enumerate(rules) if r is not Rule.BACK)
        assert all(r is not Rule.BACK for r in rules[first_forward:]), plan.operation


def test_a_step_without_a_rule_or_with_a_wrong_one_cannot_be_declared():
    with pytest.raises(TypeError, match="rule must be a plans.Rule"):
        StepDef("x", "x", "does x", None, "back")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rule must be a plans.Rule"):
        StepDef("x", "x", "does x", None, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="required"):
        StepDef("x", "x", "", None, Rule.BACK)
    with pytest.raises(TypeError, match="unknown field"):
        StepDef("x", "x ({host})", "does x", None, Rule.BACK)
    with pytest.raises(TypeError, match="per-volume"):
        StepDef("x", "x {volume_id}", "does x", None, Rule.BACK)
    with pytest.raises(TypeError, match="next step"):
        StepDef("x", "x", "does x", None, Rule.FORWARD, hint="run recover")
    with pytest.raises(ValueError, match="keys repeat"):
        plans.Plan("op", (StepDef("x", "x", "x", None, Rule.BACK),
                          StepDef("x", "y", "y", None, Rule.BACK)))


def test_the_names_users_see_are_the_ones_they_always_saw():
    assert ATTACH["storage-connect"].at(api="legacy").name == "storage connect (legacy)"
    assert ATTACH["host-connect"].at(transport="kernel").name == "host connect (kernel)"
    assert DETACH["guest-detach-live"].at().name == "guest detach (live)"
    step = MIGRATE["destination-connect"].at(transport="native", volume_id="v-1")
    assert (step.name, step.key, step.subject) == \
        ("destination connect (native) v-1", "destination-connect", "v-1")
    assert BOOT["start"].at().subject is None


def test_a_journal_row_without_a_key_is_found_by_its_label():
    spec = MIGRATE["destination-connection"]
    assert spec.matches_label("destination connection (legacy) v-1", "v-1")
    assert not spec.matches_label("destination connection (legacy) v-2", "v-1")
    assert not spec.matches_label("destination connect (native) v-1", "v-1")
    assert DETACH["storage-begin"].matches_label("storage begin detach (attachments)", None)


def _journaled(world, tmp_path, run) -> list:
    with twin_client(world, state_dir=str(tmp_path)) as c:
        run(c)
        return c.operations(include_finished=True)


@pytest.mark.parametrize("api", ("attachments", "legacy"))
@pytest.mark.parametrize("transport", ("kernel", "native"))
def test_every_step_an_operation_journals_is_a_step_of_its_table(world, tmp_path, api,
                                                                 transport):
    cinder, hosts = world
    root, data = cinder.create_volume(), cinder.create_volume()

    def life(c):
        c.boot("vm1", root, host="hosta", virt_type="qemu", transport=transport, api=api)
        c.attach(data, "vm1", host="hosta", transport=transport, api=api)
        c.migrate("vm1", source="hosta", destination="hostb")
        c.detach(data, "vm1", host="hostb")

    ops = _journaled(world, tmp_path, life)
    assert sorted(op.kind for op in ops) == ["attach", "boot", "detach", "migrate"]
    for op in ops:
        plan = PLANS[op.kind]
        keys = [s.key for s in plan]
        assert op.steps, op.kind
        for entry in op.steps:
            assert entry.key in keys, (op.kind, entry.name, entry.key)
            spec = plan[entry.key]
            if spec.per_volume:
                assert entry.subject in op.volumes, (entry.name, entry.subject)
            else:
                assert entry.subject is None, (entry.name, entry.subject)
            assert spec.matches_label(entry.name, entry.subject), (entry.name, spec.label)
        # The whole run went past every FORWARD step it has: the journal says forward.
        assert plan.direction(op) is Rule.FORWARD, op.kind
    del hosts


def test_direction_follows_the_first_forward_step(world, tmp_path, monkeypatch):
    """A detach is FORWARD from the moment the live unplug is asked, before it is done;
    an attach only once the guest attach is done."""
    from attachflow import journal as journal_mod

    class Stop(BaseException):
        pass

    real = journal_mod.OperationLog.step_started

    def stop_at_live(self, step):
        real(self, step)
        if step.key in ("guest-detach-live", "guest-attach"):
            raise Stop

    cinder, hosts = world
    root, data = cinder.create_volume(), cinder.create_volume()
    with twin_client(world, state_dir=str(tmp_path)) as c:
        c.boot("vm1", root, host="hosta", virt_type="qemu", transport="native")
        c.boot("vm2", cinder.create_volume(), host="hosta", virt_type="qemu",
               transport="native")
        c.attach(data, "vm1", host="hosta", transport="native")
        monkeypatch.setattr(journal_mod.OperationLog, "step_started", stop_at_live)
        with pytest.raises(Stop):
            c.detach(data, "vm1", host="hosta")
        other = cinder.create_volume()
        with pytest.raises(Stop):
            c.attach(other, "vm2", host="hosta", transport="native")
        ops = {op.kind: op for op in c.operations()}
    assert DETACH.direction(ops["detach"]) is Rule.FORWARD
    assert ATTACH.direction(ops["attach"]) is Rule.BACK
    del hosts
