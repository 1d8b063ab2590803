"""Each operation's steps, declared as data: what the operation runs, the journal
records and ``attachflow recover`` reads.

A ``StepDef`` is one row of an operation's table: its identity (``key``, what the
journal stores and recovery looks a step up by, never shown and never renamed), the
name users see (``label``), what it does, how it is undone when a later step fails,
what the journal keeps of its result for recovery (``note``), and its recovery rule:

- ``Rule.BACK``: an operation that stopped at this step, or before any FORWARD step,
  is rolled back: what it had done is undone, newest first.
- ``Rule.FORWARD``: once this step is done the operation has passed its point of no
  return (the guest has the disk, runs, or runs on the destination): recovery finishes
  what was left.
- ``Rule.FORWARD_ONCE_ASKED``: as FORWARD, from the moment the step started: its effect
  completes outside attachflow (a guest unplugging a disk may do so at any moment after
  being asked), so there is no going back once it was asked.

``Transaction.run`` only runs a step of a table, and refuses one whose undo does not
match its declaration; the unit tests walk every table, so a step without a rule cannot
land. Recovery still checks the real state before it acts (see ``recover``): the rule
says which way to go, the real state says what is left to do.

This module has no side effects.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import string
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

if TYPE_CHECKING:
    from attachflow.journal import OperationEntry


class Rule(enum.Enum):
    BACK = "back"
    FORWARD = "forward"
    FORWARD_ONCE_ASKED = "forward once asked"


# The fields a label may name; a step's label is rendered once per run, and a run's
# step names are what users see in progress lines, errors and `attachflow list`.
_FIELDS = ("api", "transport", "volume_id")


@dataclasses.dataclass(frozen=True)
class StepDef:
    key: str
    label: str
    does: str
    undo: str | None                # None: the step changes nothing to take back
    rule: Rule
    note: Callable[[Any], Mapping[str, Any]] | None = None
    per_volume: bool = False        # one step per volume (a migration's), named by it
    # After a failure that may have taken effect: what the operator does next.
    hint: str = ""

    def __post_init__(self) -> None:
        # A table is code: a step without a rule, or with a rule spelled as a string,
        # fails at import, before any operation can run it.
        if not isinstance(self.rule, Rule):
            raise TypeError(f"step '{self.key}': rule must be a plans.Rule, not "
                            f"{self.rule!r}")
        if not (self.key and self.label and self.does):
            raise TypeError(f"step {self.key!r}: key, label and what it does are required")
        if self.hint and self.rule is not Rule.FORWARD_ONCE_ASKED:
            raise TypeError(f"step '{self.key}': only a step that cannot be gone back on "
                            "once started leaves the operator a next step")
        for _literal, field, _spec, _conv in string.Formatter().parse(self.label):
            if field is not None and field not in _FIELDS:
                raise TypeError(f"step '{self.key}': label names unknown field {field!r}")
        if self.per_volume != ("{volume_id}" in self.label):
            raise TypeError(f"step '{self.key}': a per-volume step, and only one, names "
                            "its volume in its label")

    def at(self, **fields: str) -> Step:
        """This step as one run names it (``api``, ``transport``, ``volume_id``)."""
        subject = fields.get("volume_id") if self.per_volume else None
        return Step(self, self.label.format(**fields), subject)

    def matches_label(self, name: str, subject: str | None) -> bool:
        """Whether ``name`` is this step's label as some run rendered it (journal rows
        written before steps carried their key)."""
        pattern = ""
        for literal, field, _spec, _conv in string.Formatter().parse(self.label):
            pattern += re.escape(literal)
            if field == "volume_id":
                pattern += re.escape(subject or "")
            elif field:
                pattern += r"[\w-]+"
        return re.fullmatch(pattern, name) is not None


@dataclasses.dataclass(frozen=True)
class Step:
    """A step of one run: its declaration, its rendered name, the volume it is for."""

    spec: StepDef
    name: str
    subject: str | None = None

    @property
    def key(self) -> str:
        return self.spec.key

    def __str__(self) -> str:
        return self.name


@dataclasses.dataclass(frozen=True)
class Plan:
    """One operation's table of steps, in the order they run."""

    operation: str
    steps: tuple[StepDef, ...]

    def __post_init__(self) -> None:
        keys = [s.key for s in self.steps]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.operation}: step keys repeat: {keys}")

    def __getitem__(self, key: str) -> StepDef:
        for step in self.steps:
            if step.key == key:
                return step
        raise KeyError(f"{self.operation} has no step '{key}'")

    def __iter__(self) -> Iterator[StepDef]:
        return iter(self.steps)

    def direction(self, op: OperationEntry) -> Rule:
        """Which way the journal says ``op`` goes: FORWARD once a FORWARD step is done
        (or a FORWARD_ONCE_ASKED step started), else BACK."""
        for spec in self.steps:
            for subject in _subjects(spec, op):
                state = op.step_state(spec, subject)
                if spec.rule is Rule.FORWARD_ONCE_ASKED and state is not None:
                    return Rule.FORWARD
                if spec.rule is Rule.FORWARD and state == "done":
                    return Rule.FORWARD
        return Rule.BACK


def _subjects(spec: StepDef, op: OperationEntry) -> tuple[str | None, ...]:
    return tuple(op.volumes) if spec.per_volume else (None,)


def connector_note(props: Any) -> dict[str, Any]:
    return props.to_dict()


def attachment_note(att: Any) -> dict[str, Any]:
    """What the journal keeps of a storage connection: ids, connector, the connection
    without secrets."""
    return {"attachment_id": att.attachment_id, "api": att.api,
            "connector": dict(att.connector),
            "connection": att.connection.without_secrets().to_record()}


def connection_note(conn: Any) -> dict[str, Any]:
    return {"connection": conn.without_secrets().to_record()}


def _connect_steps() -> tuple[StepDef, ...]:
    """The first half of every attach and boot."""
    return (
        StepDef("connector", "connector properties",
                "read the host's connector (initiator name, address, multipath)", None,
                Rule.BACK, note=connector_note),
        StepDef("storage-connect", "storage connect ({api})",
                "ask the storage side for a connection of the volume to this host",
                "release that connection (the attachment, or the reservation and export)",
                Rule.BACK, note=attachment_note),
        StepDef("check-transport", "check transport",
                "check that the transport can use the connection's type", None, Rule.BACK),
        StepDef("host-connect", "host connect ({transport})",
                "connect the host (log in to the target, or a libvirt secret for QEMU)",
                "disconnect the host", Rule.BACK),
    )


ATTACH = Plan("attach", _connect_steps() + (
    StepDef("guest-attach", "guest attach", "hot-plug the disk into the domain",
            "unplug it again", Rule.FORWARD),
    StepDef("find-disk", "find disk by serial",
            "find the disk libvirt made, by the volume's serial", None, Rule.FORWARD),
    StepDef("record", "record in domain metadata",
            "record the attachment in the domain's metadata", "restore the old records",
            Rule.FORWARD),
    StepDef("storage-complete", "storage complete ({api})",
            "tell the storage side the volume is attached", None, Rule.FORWARD),
))

BOOT = Plan("boot", _connect_steps() + (
    StepDef("define", "define domain", "define the domain with the volume as vda",
            "undefine it", Rule.BACK),
    StepDef("start", "start domain", "start the domain", "destroy it", Rule.FORWARD),
    StepDef("storage-complete", "storage complete ({api})",
            "tell the storage side the volume is attached", None, Rule.FORWARD),
))

DETACH = Plan("detach", (
    StepDef("storage-begin", "storage begin detach ({api})",
            "find the attachment (legacy: mark the volume detaching)",
            "end the detach in Cinder (legacy: back to in-use)", Rule.BACK,
            note=attachment_note),
    StepDef("connector", "connector properties",
            "read the host's connector (a disk another tool attached)", None, Rule.BACK,
            note=connector_note),
    StepDef("connection-info", "storage connection info",
            "ask the storage side where the volume lives (a disk another tool attached)",
            None, Rule.BACK, note=connection_note),
    StepDef("guest-detach-persistent", "guest detach (persistent)",
            "remove the disk from the domain's persistent definition",
            "give it back to the persistent definition", Rule.BACK),
    StepDef("guest-detach-live", "guest detach (live)",
            "ask the running guest to release the disk, and wait",
            "hot-plug the disk again", Rule.FORWARD_ONCE_ASKED,
            hint="the guest may still release the disk: once it has, or once the guest "
                 "is stopped, 'attachflow recover {op_id}' finishes the detach"),
    StepDef("host-disconnect", "host disconnect ({transport})",
            "disconnect the host (log out, flush, remove the secret)",
            "connect the host again", Rule.FORWARD),
    StepDef("unrecord", "remove record from domain metadata",
            "remove the attachment's record from the domain's metadata",
            "restore the old records", Rule.FORWARD),
    StepDef("storage-release", "storage release ({api})",
            "release the attachment on the storage side", None, Rule.FORWARD),
))

# A delete is not journaled as one operation: it stops the guest, then runs one
# journaled detach per volume (each settled by recover as a detach), then undefines the
# guest. Stopped part-way, running it again finishes it.
DELETE = Plan("delete", (
    StepDef("stop", "stop guest", "shut the guest down (off after the timeout)", None,
            Rule.FORWARD),
    StepDef("detach", "detach {volume_id}", "detach the volume (a detach operation)",
            None, Rule.FORWARD, per_volume=True),
    StepDef("undefine", "undefine guest", "undefine the domain", None, Rule.FORWARD),
))

MIGRATE = Plan("migrate", (
    StepDef("destination-connection", "destination connection ({api}) {volume_id}",
            "a second connection of the volume, for the destination host",
            "release it", Rule.BACK, note=attachment_note, per_volume=True),
    StepDef("check-transport", "check transport {volume_id}",
            "check that the transport can use the connection's type", None, Rule.BACK,
            per_volume=True),
    StepDef("destination-connect", "destination connect ({transport}) {volume_id}",
            "connect the destination host", "disconnect it", Rule.BACK, per_volume=True),
    StepDef("destination-xml", "destination XML",
            "the guest's live and persistent definitions for the destination", None,
            Rule.BACK),
    StepDef("live-migration", "live migration",
            "run the live migration job, watched", None, Rule.FORWARD,
            note=lambda runs_on: {"runs_on": runs_on}),
    StepDef("finish", "finish {volume_id}",
            "complete the destination attachment, disconnect the source, release the "
            "source connection", None, Rule.FORWARD, per_volume=True),
))

PLANS: dict[str, Plan] = {p.operation: p for p in (ATTACH, BOOT, DETACH, DELETE, MIGRATE)}
