"""Settling an operation that was interrupted, or that failed leaving something behind.

Recovery does not replay the journal: it reads what is real now -- the volume and its
attachments in Cinder, the domain's live and persistent XML on each host involved and
where the guest runs, a migration job still running -- and uses the journal only for
what the real state cannot say (which attachment the operation made, the connector it
sent, the connection it made on a host, how far it got). The steps it looks up are the
rows of the operation's table in ``plans``, never names typed again here, and what is
done on the storage side is asked of the operation's storage flow (``cinder_side``).
Then, per operation, it decides:

- **forward**, when the operation had passed its point of no return: the guest has the
  disk (attach), the guest was asked to let the disk go or has (detach: the table's
  rule for the live unplug), the guest runs (boot), the guest runs on the destination
  (migrate). What the operation had left to do is done; a guest that still holds a disk
  it was asked to release after ``unplug_wait`` needs a human (stop it, recover again).
- **back**, otherwise: what it had done is undone, newest first.
- **human**, when the real state fits neither (the guest runs nowhere, or a domain of
  that name is another guest now): nothing is touched and the message says what to
  look at.

Every action checks before it acts, so recovering twice, or recovering an operation
another recover has settled, changes nothing. An action that fails stops that
operation's recovery (later actions depend on earlier ones: an attachment is never
released while a host may still be logged in to it); the operation is then left
"needs-human" with the failure named, and running recover again retries.

The side effects are the operations' own: Cinder calls, libvirt calls, host
disconnects, all through ``cinder_side``, ``compute_side`` and the transports.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping

from attachflow import domxml, errors, record
from attachflow.cinder_side import Flow, StorageAPI, StorageAttachment, select_flow
from attachflow.compute_side import ComputeHost, DomainRef
from attachflow.connectors import get_transport
from attachflow.connectors.base import Transport
from attachflow.journal import NEEDS_HUMAN, RECOVERED, Journal, OperationEntry, settle
from attachflow.model import ConnectionInfo
from attachflow.plans import ATTACH, BOOT, DETACH, MIGRATE, Plan, Rule
from attachflow.record import VolumeRecord
from attachflow.tracking import Tracker

FORWARD, BACK, NOTHING, HUMAN, SKIPPED = "forward", "back", "nothing", "human", "skipped"

# How long recover waits for a live migration job that is still running on the source
# (the process that started it was killed, libvirtd carries on) before aborting it.
DEFAULT_JOB_WAIT = 600.0
# How long recover waits for a guest to finish unplugging a disk it was asked to release.
DEFAULT_UNPLUG_WAIT = 60.0


@dataclasses.dataclass
class Action:
    what: str
    do: Callable[[], Any]


@dataclasses.dataclass
class Recovery:
    """What recover decided and did for one operation."""

    op_id: str
    kind: str
    domain: str
    decision: str                   # forward, back, nothing, human, skipped
    reason: str
    done: list[str] = dataclasses.field(default_factory=list)
    planned: list[str] = dataclasses.field(default_factory=list)
    problem: str | None = None      # what a human must look at
    dry_run: bool = False

    @property
    def needs_human(self) -> bool:
        return self.problem is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        head = f"{self.kind} {self.op_id[:8]} ({self.domain}): "
        if self.decision == SKIPPED:
            return head + self.reason
        if self.problem:
            did = f" after: {'; '.join(self.done)}" if self.done else ""
            return head + f"NEEDS A HUMAN: {self.problem}{did}"
        verb = {FORWARD: "roll forward", BACK: "roll back", NOTHING: "nothing to do"}[
            self.decision] if self.dry_run else {
            FORWARD: "rolled forward", BACK: "rolled back", NOTHING: "nothing to do"}[
            self.decision]
        steps = self.done or self.planned
        return head + f"{verb} ({self.reason})" + (f": {'; '.join(steps)}" if steps else "")


class Recoverer:
    """Recovers operations from one journal with one storage API and the hosts by name."""

    def __init__(self, tracker: Tracker, storage: Callable[[], StorageAPI],
                 host: Callable[[str], ComputeHost], job_wait: float = DEFAULT_JOB_WAIT,
                 echo: Callable[[str], None] | None = None,
                 unplug_wait: float = DEFAULT_UNPLUG_WAIT):
        self.tracker = tracker
        self._storage = storage
        self.host = host
        self.job_wait = job_wait
        self.unplug_wait = unplug_wait
        self.echo = echo or (lambda _line: None)

    @property
    def journal(self) -> Journal:
        return self.tracker.journal

    @property
    def storage(self) -> StorageAPI:
        return self._storage()

    def pending(self) -> list[OperationEntry]:
        """The operations recover --all takes: unfinished, and not running now."""
        return [op for op in self.journal.operations()
                if not self.tracker.locks.held(op.id)]

    def recover(self, op: OperationEntry, dry_run: bool = False) -> Recovery:
        with self.tracker.settling(op) as now:
            if now is None:
                latest = self.journal.get(op.id)
                why = "still running (pid %d on %s)" % (op.pid, op.machine) \
                    if latest is not None and latest.unfinished else \
                    f"settled already ({latest.state if latest else 'gone'})"
                return Recovery(op.id, op.kind, op.domain, SKIPPED, why)
            result = self._settle(now, dry_run)
            if not dry_run:
                if result.problem:
                    settle(self.journal, op.id, NEEDS_HUMAN, result.problem)
                else:
                    settle(self.journal, op.id, RECOVERED, result.describe())
            return result

    def _settle(self, op: OperationEntry, dry_run: bool) -> Recovery:
        plan = {"attach": self._attach, "boot": self._boot, "detach": self._detach,
                "migrate": self._migrate}[op.kind]
        try:
            decision, reason, actions = plan(op)
        except errors.AttachflowError as exc:
            return Recovery(op.id, op.kind, op.domain, HUMAN, "", problem=
                            f"could not read the real state: {exc}")
        result = Recovery(op.id, op.kind, op.domain, decision, reason,
                          planned=[a.what for a in actions], dry_run=dry_run)
        if decision == HUMAN:
            result.problem = reason
            return result
        if dry_run:
            return result
        for action in actions:
            self.echo(f"{op.kind} {op.id[:8]}: {action.what}")
            try:
                action.do()
            except errors.AttachflowError as exc:
                result.problem = f"{action.what}: {exc}"
                return result
            result.done.append(action.what)
        return result

    # -- what is real ------------------------------------------------------------------------
    @staticmethod
    def _ours(host: ComputeHost, name: str, instance_id: str | None) -> DomainRef | None:
        """The domain ``name`` on ``host`` if it is the operation's guest (same UUID)."""
        try:
            ref = host.hypervisor.lookup(name)
        except errors.DomainNotFound:
            return None
        return ref if instance_id is None or ref.uuid == instance_id else None

    @staticmethod
    def _definitions(host: ComputeHost, ref: DomainRef
                     ) -> tuple[domxml.Domain | None, domxml.Domain | None]:
        hv = host.hypervisor
        return (hv.domain(ref.name) if ref.active else None,
                hv.domain(ref.name, inactive=True) if ref.persistent else None)

    @staticmethod
    def _connection(data: Mapping[str, Any] | None, volume_id: str) -> ConnectionInfo | None:
        return ConnectionInfo.from_record(dict(data), volume_id) if data else None

    def _flow(self, api: str) -> Flow:
        return select_flow(self.storage, api)

    # -- attach and boot ---------------------------------------------------------------------
    @staticmethod
    def _connection_steps(op: OperationEntry, plan: Plan) -> tuple[str, dict, dict | None]:
        """(api, connector, note of the storage connect step) of an attach or boot."""
        connector = dict(op.step_data(plan["connector"]) or {})
        note = op.step_data(plan["storage-connect"])
        return op.context["api"], connector, dict(note) if note else None

    def _undo_connect(self, op: OperationEntry, plan: Plan, host: ComputeHost) -> list[Action]:
        """Host disconnect, then the storage side, for a connection that never reached a
        running guest."""
        ctx = op.context
        volume_id, instance_id = ctx["volume_id"], ctx["instance_id"]
        api, connector, note = self._connection_steps(op, plan)
        transport = get_transport(ctx["transport"], multipath=bool(ctx.get("multipath")))
        actions = []
        conn = self._connection((note or {}).get("connection"), volume_id)
        if conn is not None and op.step_state(plan["host-connect"]):
            actions.append(Action(
                f"disconnect {volume_id} on {host.name} ({transport.name})",
                lambda: transport.disconnect(host, conn, None, instance_id)))
        if op.step_state(plan["storage-connect"]):
            actions.append(Action(
                f"release the new connection of {volume_id} in Cinder ({api})",
                lambda: self._flow(api).release_unused(
                    volume_id, instance_id, (note or {}).get("connector") or connector)))
        return actions

    def _complete(self, op: OperationEntry, plan: Plan, host: ComputeHost,
                  device: str) -> Action:
        """Tell the storage side the volume is attached, unless it knows already."""
        volume_id, instance_id = op.context["volume_id"], op.context["instance_id"]
        api, _connector, note = self._connection_steps(op, plan)
        return Action(f"complete the attachment of {volume_id} in Cinder ({api})",
                      lambda: self._flow(api).ensure_attached(
                          volume_id, instance_id, f"/dev/{device}", host.cfg.connector_host,
                          (note or {}).get("attachment_id")))

    def _attach(self, op: OperationEntry):
        ctx = op.context
        volume_id, instance_id = ctx["volume_id"], ctx.get("instance_id")
        if instance_id is None or not op.steps:
            return NOTHING, "it stopped before its first step", []
        host = self.host(op.host)
        ref = self._ours(host, op.domain, instance_id)
        live, config = self._definitions(host, ref) if ref else (None, None)
        disk = next((d.disk(volume_id) for d in (live, config)
                     if d is not None and d.disk(volume_id) is not None), None)
        if disk is None:
            return BACK, "the guest does not have the disk", self._undo_connect(
                op, ATTACH, host)
        api, connector, note = self._connection_steps(op, ATTACH)
        actions = []
        records = record.read(live or config)
        if volume_id not in records and note:
            att = StorageAttachment(volume_id, instance_id, api, note.get("attachment_id"),
                                    self._connection(note.get("connection"), volume_id)
                                    or ConnectionInfo("unknown", volume_id),
                                    dict(note.get("connector") or connector))
            rec = VolumeRecord.for_attachment(att, ctx["transport"],
                                              host.cfg.connector_host, disk.target_dev)
            new = {**records, volume_id: rec}
            actions.append(Action(f"record {volume_id} in {op.domain}'s metadata",
                                  lambda: record.save(host.hypervisor, ref, new)))
        actions.append(self._complete(op, ATTACH, host, disk.target_dev))
        return FORWARD, f"the guest has the disk as {disk.target_dev}", actions

    def _boot(self, op: OperationEntry):
        if not op.steps:
            return NOTHING, "it stopped before its first step", []
        host = self.host(op.host)
        ref = self._ours(host, op.domain, op.context["instance_id"])
        if ref is not None and ref.active:
            return FORWARD, "the guest runs", [self._complete(op, BOOT, host, "vda")]
        actions = []
        if ref is not None:
            actions.append(Action(f"undefine the guest {op.domain} on {host.name}",
                                  lambda: host.hypervisor.undefine(op.domain)))
        return BACK, "the guest never ran", actions + self._undo_connect(op, BOOT, host)

    # -- detach ----------------------------------------------------------------------------
    def _detach(self, op: OperationEntry):
        # Killed before its first step, the operation may not have recorded all of its
        # context yet (the guest's uuid is learnt on the way): nothing to read it for.
        if not op.steps:
            return NOTHING, "it stopped before its first step", []
        ctx = op.context
        volume_id, instance_id = ctx["volume_id"], ctx["instance_id"]
        host = self.host(op.host)
        ref = self._ours(host, op.domain, instance_id)
        live, config = self._definitions(host, ref) if ref else (None, None)
        live_disk = live.disk(volume_id) if live is not None else None
        config_disk = config.disk(volume_id) if config is not None else None
        guest_has_it = live_disk is not None if live is not None else config_disk is not None
        # Once the guest was asked to let the disk go, it may still do so at any moment
        # (the unplug completes in the guest): the detach goes on, never back.
        asked = DETACH.direction(op) is Rule.FORWARD
        if guest_has_it and not asked:
            return BACK, "the guest still has the disk", self._keep_disk(
                op, host, live_disk, config is not None and config_disk is None)
        actions = self._release_disk(op, host, ref, live_disk, config_disk)
        if live_disk is not None:
            reason = "the guest was asked to release the disk"
        elif config_disk is not None:
            reason = "the guest was asked to release the disk, and is stopped"
        else:
            reason = "the guest no longer has the disk"
        return FORWARD, reason, actions + self._release_storage(op, host, ref, live, config)

    def _keep_disk(self, op: OperationEntry, host: ComputeHost,
                   live_disk: domxml.Disk | None, persistent_lost: bool) -> list[Action]:
        """A detach that goes back: the disk in the persistent definition again, and the
        storage side as before the detach began."""
        volume_id, api = op.context["volume_id"], op.context["api"]
        actions = []
        if live_disk is not None and persistent_lost:
            actions.append(Action(
                f"give {volume_id} back to {op.domain}'s persistent definition",
                lambda: host.hypervisor.attach_device(op.domain, live_disk.without_alias(),
                                                      live=False, config=True)))
        actions.append(Action(f"end the detach of {volume_id} in Cinder ({api})",
                              lambda: self._flow(api).end_detach(volume_id)))
        return actions

    def _release_disk(self, op: OperationEntry, host: ComputeHost, ref: DomainRef | None,
                      live_disk: domxml.Disk | None, config_disk: domxml.Disk | None
                      ) -> list[Action]:
        """A detach that goes on: the guest finishes the unplug it was asked for (or
        recover says it will not), and the persistent definition loses the disk (an
        earlier rollback may have given it back)."""
        volume_id, hv = op.context["volume_id"], host.hypervisor
        actions = []
        if live_disk is not None:
            actions.append(Action(f"finish unplugging {volume_id} from {op.domain}",
                                  lambda: self._finish_unplug(op, host, live_disk)))
        if config_disk is not None and ref is not None and ref.persistent:
            actions.append(Action(
                f"remove {volume_id} from {op.domain}'s persistent definition",
                lambda: hv.detach_device(op.domain, config_disk, live=False, config=True,
                                         timeout=self.unplug_wait)))
        return actions

    def _finish_unplug(self, op: OperationEntry, host: ComputeHost,
                       live_disk: domxml.Disk) -> None:
        try:
            host.hypervisor.detach_device(op.domain, live_disk, live=True, config=False,
                                          timeout=self.unplug_wait)
        except errors.DeviceRemovalTimeout as exc:
            raise errors.DeviceRemovalTimeout(
                f"the guest still has not released it after {self.unplug_wait:g} s: stop "
                f"the guest (or wait until it lets the disk go), then run 'attachflow "
                f"recover {op.id[:8]}' again") from exc

    def _release_storage(self, op: OperationEntry, host: ComputeHost,
                         ref: DomainRef | None, live: domxml.Domain | None,
                         config: domxml.Domain | None) -> list[Action]:
        """The rest of a detach once the guest lets the disk go: host disconnect, the
        domain's record, the storage side's release."""
        ctx = op.context
        volume_id, instance_id, api = ctx["volume_id"], ctx["instance_id"], ctx["api"]
        rec = VolumeRecord.from_json(volume_id, ctx["record"]) if ctx.get("record") else None
        transport = get_transport(ctx["transport"], multipath=bool(ctx.get("multipath")))
        conn = rec.connection if rec is not None else None
        fresh = op.step_data(DETACH["connection-info"])
        if fresh:
            conn = self._connection(fresh.get("connection"), volume_id)
        begin = op.step_data(DETACH["storage-begin"]) or {}
        attachment_id = begin.get("attachment_id") or (rec.attachment_id if rec else None)
        connector = dict(begin.get("connector") or (rec.connector if rec else {}))
        actions = []
        if conn is not None and conn.driver_volume_type != "unknown":
            actions.append(Action(
                f"disconnect {volume_id} on {host.name} ({transport.name})",
                lambda: transport.disconnect(host, conn, None, instance_id)))
        current = record.read(live or config) if ref is not None else {}
        if volume_id in current:
            remaining = {k: v for k, v in current.items() if k != volume_id}
            actions.append(Action(f"remove {volume_id} from {op.domain}'s metadata",
                                  lambda: record.save(host.hypervisor, ref, remaining)))
        actions.append(Action(f"release {volume_id} in Cinder ({api})",
                              lambda: self._flow(api).ensure_released(
                                  volume_id, instance_id, attachment_id, connector)))
        return actions

    # -- migrate ---------------------------------------------------------------------------
    def _wait_for_job(self, host: ComputeHost, name: str) -> None:
        """A migration job libvirtd still runs (its caller died): wait for it to end,
        then abort it if it has not."""
        deadline = time.monotonic() + self.job_wait
        while True:
            try:
                stats = host.hypervisor.job_stats(name)
            except errors.AttachflowError:
                return  # no such domain there any more: the job is over
            if stats.get("type", 0) not in (1, 2):  # bounded or unbounded: running
                return
            if time.monotonic() >= deadline:
                self.echo(f"{name}: the migration job still runs after "
                          f"{self.job_wait:g} s; aborting it")
                host.hypervisor.abort_job(name)
                return
            time.sleep(1.0)

    @staticmethod
    def _runs_on(host: ComputeHost, name: str, instance_id: str) -> bool:
        try:
            ref = host.hypervisor.lookup(name)
        except errors.DomainNotFound:
            return False
        return ref.active and ref.uuid == instance_id

    def _migrate(self, op: OperationEntry):
        if not op.steps:  # as for a detach: its context may be partial
            return NOTHING, "it stopped before its first step", []
        instance_id = op.context["instance_id"]
        src, dst = self.host(op.host), self.host(op.destination or "")
        self._wait_for_job(src, op.domain)
        on_src = self._runs_on(src, op.domain, instance_id)
        on_dst = self._runs_on(dst, op.domain, instance_id)
        if on_src == on_dst:
            where = "on both" if on_src else "on neither"
            return HUMAN, (f"the guest runs {where} of {src.name} and {dst.name}: start it "
                           f"(or stop one copy) by hand, then run recover again"), []
        if on_dst:
            actions = [a for vol in op.context["volumes"]
                       for a in self._finish_source(op, src, vol)]
            return FORWARD, f"the guest runs on {dst.name}", actions
        actions = [a for vol in op.context["volumes"]
                   for a in self._undo_destination(op, dst, vol)]
        leftover = self._ours(dst, op.domain, instance_id)
        if leftover is not None:
            actions.insert(0, Action(f"undefine the inactive copy of {op.domain} on "
                                     f"{dst.name}", lambda: dst.hypervisor.undefine(op.domain)))
        return BACK, f"the guest runs on {src.name}", actions

    @staticmethod
    def _volume(vol: Mapping[str, Any]) -> tuple[str, VolumeRecord, Transport]:
        """(volume id, source record, transport) of one volume of a migration's context."""
        rec = VolumeRecord.from_json(vol["volume_id"], vol["record"])
        return vol["volume_id"], rec, get_transport(vol["transport"],
                                                     multipath=rec.multipath)

    def _finish_source(self, op: OperationEntry, src: ComputeHost,
                       vol: Mapping[str, Any]) -> list[Action]:
        """The guest moved: the destination's attachment complete, the source's
        connection gone on the host and on the storage side."""
        instance_id, api = op.context["instance_id"], vol["api"]
        volume_id, rec, transport = self._volume(vol)
        source = StorageAttachment.from_record(rec, volume_id, instance_id)
        return [
            Action(f"complete the destination attachment of {volume_id} ({api})",
                   lambda: self._flow(api).ensure_attached(
                       volume_id, instance_id, f"/dev/{rec.device}", "", None)),
            Action(f"disconnect {volume_id} on {src.name} ({transport.name})",
                   lambda: transport.disconnect(src, rec.connection, None, instance_id)),
            Action(f"release the source connection of {volume_id} ({api})",
                   lambda: self._flow(api).release_source_if_present(source))]

    def _undo_destination(self, op: OperationEntry, dst: ComputeHost,
                          vol: Mapping[str, Any]) -> list[Action]:
        """The guest stayed: the destination's connection gone on the host and on the
        storage side, as far as the migration had made it."""
        instance_id, api = op.context["instance_id"], vol["api"]
        volume_id, rec, transport = self._volume(vol)
        note = op.step_data(MIGRATE["destination-connection"], volume_id) or {}
        dst_conn = self._connection(note.get("connection"), volume_id) or rec.connection
        dst_connector = note.get("connector") or op.context["connectors"].get(rec.transport)
        actions = []
        if op.step_state(MIGRATE["destination-connect"], volume_id):
            actions.append(Action(
                f"disconnect {volume_id} on {dst.name} ({transport.name})",
                lambda: transport.disconnect(dst, dst_conn, None, instance_id)))
        if op.step_state(MIGRATE["destination-connection"], volume_id):
            actions.append(Action(
                f"release the destination connection of {volume_id} ({api})",
                lambda: self._flow(api).release_destination(
                    volume_id, instance_id, rec.attachment_id, dst_connector)))
        return actions
