"""Transactions undo what was done; ``Problems`` collects what could not be done, in
order, and renders it as one ``"what: error"`` line each."""

import pytest

from attachflow import errors
from attachflow.steps import Problems, Transaction


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


def test_rollback_collects_failed_undos_and_keeps_undoing():
    tx = Transaction("op")
    undone = []

    def broken(_):
        raise errors.HypervisorError("undo broke")

    tx.run("one", lambda: 1, undone.append)
    tx.run("two", lambda: 2, broken)
    tx.run("three", lambda: 3, undone.append)
    with pytest.raises(errors.OperationFailed) as info:
        tx.run("four", lambda: (_ for _ in ()).throw(errors.AttachflowError("boom")))
    assert undone == [3, 1]
    assert [(name, str(exc)) for name, exc in info.value.undo_failures] == \
        [("two", "undo broke")]
    assert str(info.value) == "op failed at step 'four': boom -- could NOT undo: two: " \
                              "undo broke"
