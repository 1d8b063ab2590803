"""Live migration of a volume-backed guest to another compute host.

    preflight      nothing changes: the guest runs on the source, every disk is a volume
                   attachflow attached (or local disks are to be copied), the destination
                   answers over SSH and libvirt and has no such domain, its connector is known
    prepare        per volume: a destination attachment (attachments API: created with the
                   destination's connector; legacy: initialize_connection), the destination
                   host connected (libvirt secret or os-brick), the domain XML rewritten by
                   serial with the records of the new attachments in its metadata
    migrate        migrateToURI3 LIVE|PEER2PEER|PERSIST_DEST|UNDEFINE_SOURCE, no disk copy for
                   volumes, the job watched every half second (progress, completion timeout);
                   the completed job's counters, read on the destination, end the progress
    finish         destination attachments completed, the source disconnected and its
                   attachments deleted (legacy: terminate_connection with the source
                   connector)

Before the guest runs on the destination, any failure rolls back: the destination is
disconnected and its attachments deleted, the source untouched, one attachment per volume
(the source's). Once the guest runs on the destination, a failure rolls forward: the
finishing steps are all attempted and what could not be done is reported.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import logging
import threading
import time
from typing import Any, Callable

from attachflow import domxml, errors, record, validate
from attachflow.cinder_side import StorageAPI, StorageAttachment, flow_for_record, Flow
from attachflow.compute_side import ComputeHost, MigrationRequest
from attachflow.connectors import check_fits, get_transport
from attachflow.connectors.base import Transport
from attachflow.events import Emitter, Listener, MigrationProgress
from attachflow.migration_monitor import Monitor, completion_timeout, progress_event
from attachflow.model import ConnectorProperties
from attachflow.record import VolumeRecord
from attachflow.journal import FAILED, INCOMPLETE, OperationLog
from attachflow.plans import MIGRATE
from attachflow.steps import Problems, Transaction
from attachflow.tracking import Scope, Tracker, tracked

LOG = logging.getLogger("attachflow.migrate")


@dataclasses.dataclass
class MigrationOptions:
    auto_converge: bool = False
    postcopy: bool = False
    max_downtime_ms: int | None = None
    bandwidth_mib: int | None = None
    completion_timeout: float | None = None  # None: 800 s per GiB of memory
    on_timeout: str = "abort"  # or "postcopy"
    copy_local_disks: bool = False


@dataclasses.dataclass
class VolumePlan:
    volume_id: str
    target_dev: str
    record: VolumeRecord
    flow: Flow
    transport: Transport
    source: StorageAttachment
    source_disk: domxml.Disk


@dataclasses.dataclass
class Plan:
    domain: str
    uuid: str
    source: ComputeHost
    destination: ComputeHost
    volumes: list[VolumePlan]
    local_disks: list[str]
    connectors: dict[str, ConnectorProperties]
    live: domxml.Domain
    persistent: domxml.Domain
    records: dict[str, VolumeRecord]
    options: MigrationOptions

    @property
    def memory_kib(self) -> int:
        return self.live.memory_kib

    def steps(self) -> list[str]:
        out = []
        for vol in self.volumes:
            out.append(f"{vol.flow.api}: connection for {self.destination.name} "
                       f"(volume {vol.volume_id}, {vol.target_dev})")
            out.append(f"{vol.transport.name}: connect {vol.volume_id} on "
                       f"{self.destination.name}")
        copy = f", copying {', '.join(self.local_disks)}" if self.local_disks else ""
        out.append(f"live migration {self.source.name} -> {self.destination.name}{copy}")
        for vol in self.volumes:
            out.append(f"{vol.flow.api}: complete {vol.volume_id} on {self.destination.name}, "
                       f"disconnect {self.source.name}, release the source connection")
        return out


@dataclasses.dataclass
class MigrationResult:
    domain: str
    source: str
    destination: str
    runs_on: str
    volumes: list[str]
    seconds: float
    migration_seconds: float | None
    downtime_ms: float | None
    rolled_forward: bool
    left_behind: list[str]

    def to_dict(self) -> dict[str, Any]:
        from attachflow.operations import RESULT_SCHEMA_VERSION
        return {"schema_version": RESULT_SCHEMA_VERSION, "operation": "migrate",
                **dataclasses.asdict(self)}


def preflight(storage: StorageAPI, source: ComputeHost, destination: ComputeHost,
              domain: str, api: str = "auto",
              options: MigrationOptions | None = None) -> Plan:
    """Everything checked before anything changes; a failed check is a PreflightError."""
    options = options or MigrationOptions()
    domain = validate.check_domain(domain)
    _check_options(options)
    if source.cfg.libvirt_uri == destination.cfg.libvirt_uri:
        raise errors.PreflightError(f"source and destination are the same host ({source.name})")
    ref = source.hypervisor.lookup(domain)
    if not ref.active:
        raise errors.PreflightError(f"domain '{domain}' is not running on {source.name}")
    live = source.hypervisor.domain(domain, migratable=True)
    persistent = source.hypervisor.domain(domain, inactive=True, migratable=True) \
        if ref.persistent else live
    try:
        records = record.read(live)
    except errors.InputError as exc:
        raise errors.PreflightError(str(exc)) from exc

    volumes, local = _plan_disks(storage, domain, ref.uuid, live, records, api, options)
    _check_destination(destination, domain)
    connectors = _destination_connectors(destination, volumes)
    return Plan(domain, ref.uuid, source, destination, volumes, local, connectors, live,
                persistent, records, options)


def _check_options(options: MigrationOptions) -> None:
    """The migration's tunables, checked before the hosts are asked anything."""
    for what, value, kind in (("--max-downtime (ms)", options.max_downtime_ms, "max_downtime"),
                              ("--bandwidth (MiB/s)", options.bandwidth_mib, "bandwidth"),
                              ("--timeout (s)", options.completion_timeout, "timeout")):
        if value is not None:
            validate.check_number(what, value, kind)
    if options.on_timeout not in ("abort", "postcopy"):
        raise errors.PreflightError(f"--on-timeout must be abort or postcopy, not "
                             f"'{options.on_timeout}'")


def _plan_disks(storage: StorageAPI, domain: str, uuid: str, live: domxml.Domain,
                records: dict[str, VolumeRecord], api: str,
                options: MigrationOptions) -> tuple[list[VolumePlan], list[str]]:
    """(volumes to move, local disks to copy): every disk of the guest is one or the
    other, or an empty drive; any other disk fails the preflight."""
    volumes: list[VolumePlan] = []
    local: list[str] = []
    for disk in live.disks:
        empty = _is_empty(disk)
        if empty and disk.disk_type in ("file", "block", ""):
            continue  # an empty drive, nothing to move
        if disk.serial and disk.serial in records:
            rec = records[disk.serial]
            try:
                transport = get_transport(rec.transport, multipath=rec.multipath)
                flow = flow_for_record(storage, rec, api)
            except errors.InputError as exc:
                raise errors.PreflightError(f"volume {disk.serial}: {exc}") from exc
            volumes.append(VolumePlan(
                disk.serial, disk.target_dev, rec, flow, transport,
                StorageAttachment.from_record(rec, disk.serial, uuid), disk))
        elif disk.device in ("cdrom", "floppy") and empty:
            continue
        elif options.copy_local_disks:
            local.append(disk.target_dev)
        else:
            raise errors.PreflightError(
                f"disk {disk.target_dev} of '{domain}' is not a Cinder volume attached by "
                "attachflow; copy it with --copy-local-disks or detach it first")
    return volumes, local


def _check_destination(destination: ComputeHost, domain: str) -> None:
    """The destination has no domain of that name, and (when remote) answers over SSH."""
    try:
        destination.hypervisor.lookup(domain)
    except errors.DomainNotFound:
        pass
    except errors.AttachflowError as exc:
        raise errors.PreflightError(f"destination {destination.name}: {exc}") from exc
    else:
        raise errors.PreflightError(f"a domain named '{domain}' already exists on "
                             f"{destination.name}")
    if not destination.cfg.local:
        _check_ssh(destination)


def _destination_connectors(destination: ComputeHost,
                            volumes: list[VolumePlan]) -> dict[str, ConnectorProperties]:
    """The destination's connector for each transport the volumes use, asked once each."""
    connectors: dict[str, ConnectorProperties] = {}
    for vol in volumes:
        if vol.transport.name not in connectors:
            try:
                connectors[vol.transport.name] = vol.transport.connector_properties(
                    destination)
            except errors.AttachflowError as exc:
                raise errors.PreflightError(f"destination {destination.name} connector: {exc}") \
                    from exc
    return connectors


def _is_empty(disk: domxml.Disk) -> bool:
    """No medium: no ``<source>`` naming a file, device, directory, storage pool volume
    or network disk (attachflow parses only its own sources; any other is still there)."""
    src = disk.element().find("source")
    return src is None or not any(src.get(k) for k in ("file", "dev", "dir", "volume",
                                                       "protocol"))


def _check_ssh(host: ComputeHost) -> None:
    # The libvirt lookup may have gone through a shared SSH connection that outlives
    # sshd; the source's libvirtd will need a new one for the migration.
    try:
        host.runner.ping()
    except errors.AttachflowError as exc:
        raise errors.PreflightError(f"destination {host.name} does not answer over SSH: {exc}") \
            from exc


def destination_definitions(plan: Plan, sources: dict[str, domxml.DiskSource],
                            atts: dict[str, StorageAttachment]
                            ) -> tuple[domxml.Domain, domxml.Domain]:
    """The live and persistent definitions for the destination: each volume's disk on
    its destination source, and records of the destination attachments."""
    records = dict(plan.records)
    host = plan.destination.cfg.connector_host
    for vol in plan.volumes:
        records[vol.volume_id] = vol.record.moved_to(atts[vol.volume_id], host)
    entries = record.entries(records)
    return (plan.live.with_changes(sources, entries),
            plan.persistent.with_changes(sources, entries))


def dry_run(plan: Plan) -> dict[str, Any]:
    """The plan and the XML change, from what the source knows; nothing is touched. The
    destination connection is assumed to equal the source's (same target, same CHAP
    user), which is what Cinder's iSCSI target helpers return."""
    sources, atts = {}, {}
    for vol in plan.volumes:
        connector = plan.connectors[vol.transport.name]
        att = dataclasses.replace(vol.source, connector=connector.to_dict())
        atts[vol.volume_id] = att
        sources[vol.volume_id] = vol.transport.predicted_source(vol.source_disk.source,
                                                                plan.destination)
    live, _persistent = destination_definitions(plan, sources, atts)
    before = domxml.pretty(plan.live.to_xml()).splitlines(keepends=True)
    after = domxml.pretty(live.to_xml()).splitlines(keepends=True)
    diff = "".join(difflib.unified_diff(before, after, f"{plan.source.name}/{plan.domain}.xml",
                                        f"{plan.destination.name}/{plan.domain}.xml"))
    return {"domain": plan.domain, "source": plan.source.name,
            "destination": plan.destination.name, "steps": plan.steps(),
            "volumes": [v.volume_id for v in plan.volumes], "copy_disks": plan.local_disks,
            "xml_diff": diff}


def run(storage: StorageAPI, source: ComputeHost, destination: ComputeHost, domain: str,
        api: str = "auto", options: MigrationOptions | None = None,
        progress: Listener | None = None, tracker: Tracker | None = None
        ) -> MigrationResult:
    """Preflight and migrate, as one operation: with a ``tracker``, under the locks of the
    domain and its volumes (none of them changes between the check and the move), and
    journaled step by step."""
    domain = validate.check_domain(domain)
    for _attempt in range(3):
        # The volumes to lock are read before the locks are taken: an attach that
        # finishes while the migration waits adds one, and the locks are taken again.
        volumes = _recorded_volumes(source, domain)
        scope = Scope("migrate", source.name, domain, volumes, destination.name)
        with tracked(tracker, scope, {}) as log:
            if tracker is not None and set(_recorded_volumes(source, domain)) - set(volumes):
                log.finish(FAILED, "its volumes changed while it waited; taken again")
                continue
            plan = preflight(storage, source, destination, domain, api=api,
                             options=options)
            return migrate(storage, plan, progress=progress, log=log)
    raise errors.Busy(f"the volumes of '{domain}' kept changing while the migration "
                      "waited for them; run it again")


def _recorded_volumes(host: ComputeHost, domain: str) -> tuple[str, ...]:
    """The volumes attachflow attached to ``domain``, as its records name them now."""
    try:
        return tuple(sorted(record.read(host.hypervisor.domain(domain))))
    except errors.InputError:
        return ()  # no such domain, or unreadable records: preflight says which


def journal_context(plan: Plan) -> dict[str, Any]:
    """What recovery needs of a migration: the guest's UUID, each volume's source record
    and the destination's connectors (nothing secret)."""
    return {"instance_id": plan.uuid,
            "volumes": [{"volume_id": v.volume_id, "api": v.flow.api,
                         "transport": v.transport.name, "record": v.record.to_json()}
                        for v in plan.volumes],
            "connectors": {name: props.to_dict() for name, props in plan.connectors.items()}}


def migrate(storage: StorageAPI, plan: Plan, progress: Listener | None = None,
            log: OperationLog | None = None) -> MigrationResult:
    """Move the guest: connect the destination, run the watched job, settle (roll back
    while the guest still runs on the source, forward once it runs on the destination),
    and finish every volume. ``log``: the operation's journal."""
    start = time.monotonic()
    emit = Emitter(progress)
    tx = Transaction(f"migrate {plan.domain} from {plan.source.name} to "
                     f"{plan.destination.name}", emit, log)
    tx.remember(**journal_context(plan))
    atts, request = _connect_destination(tx, plan)
    # Not a transaction step: its failure is settled by where the guest runs (_settle).
    live_migration = MIGRATE["live-migration"].at()
    if log is not None:
        log.step_started(live_migration)
    job = _run_watched_job(plan, request, lambda counters: emit(MigrationProgress(
        tx.operation, counters["elapsed"], counters["processed"], counters["remaining"],
        counters["total"])))
    left = Problems()
    if job.failure is not None:
        _settle(tx, plan, job)
        left.add(live_migration.name, errors.HypervisorError(
            f"reported '{job.failure}', but the guest runs on {plan.destination.name}: "
            "finished the move instead of rolling back"))
    if log is not None:
        log.step_done(live_migration, live_migration.spec.note(plan.destination.name))
    left.extend(_finish_volumes(plan, atts, log))
    if log is not None and left:
        log.finish(INCOMPLETE, "; ".join(left.lines()))
    return _result(plan, job, start, left)


@dataclasses.dataclass(frozen=True)
class JobOutcome:
    """How the migration job ended, as the source saw it."""
    failure: BaseException | None
    timed_out: bool
    seconds: float
    completed_stats: dict[str, Any]  # the destination's after a job that succeeded


def _connect_destination(tx: Transaction, plan: Plan
                         ) -> tuple[dict[str, StorageAttachment], MigrationRequest]:
    """Phase 1: per volume a destination connection on the storage side and the
    destination host connected; then the request with the destination's definitions."""
    dst, opts = plan.destination, plan.options
    atts: dict[str, StorageAttachment] = {}
    sources: dict[str, domxml.DiskSource] = {}
    for vol in plan.volumes:
        connector = plan.connectors[vol.transport.name]
        names = {"api": vol.flow.api, "transport": vol.transport.name,
                 "volume_id": vol.volume_id}
        att = tx.run(MIGRATE["destination-connection"].at(**names),
                     lambda vol=vol, connector=connector: vol.flow.connect_destination(
                         vol.source, connector),
                     lambda att, vol=vol: vol.flow.undo_connect_destination(att))
        atts[vol.volume_id] = att
        tx.run(MIGRATE["check-transport"].at(**names),
               lambda vol=vol, att=att: check_fits(vol.transport,
                                                   att.connection.driver_volume_type,
                                                   vol.volume_id))
        sources[vol.volume_id] = tx.run(
            MIGRATE["destination-connect"].at(**names),
            lambda vol=vol, att=att: vol.transport.connect(dst, att.connection, plan.uuid),
            lambda source, vol=vol, att=att: vol.transport.disconnect(
                dst, att.connection, source, plan.uuid))
    live, persistent = tx.run(MIGRATE["destination-xml"].at(),
                              lambda: destination_definitions(plan, sources, atts))
    return atts, MigrationRequest(
        dest_uri=dst.cfg.inbound_migration_uri, dest=live, persist=persistent,
        auto_converge=opts.auto_converge,
        postcopy=opts.postcopy or opts.on_timeout == "postcopy",
        bandwidth_mib=opts.bandwidth_mib, copy_disks=tuple(plan.local_disks))


def _run_watched_job(plan: Plan, request: MigrationRequest,
                     progress: Callable[[dict[str, Any]], None] | None) -> JobOutcome:
    """Phase 2: migrateToURI3 in a worker thread, the monitor polling it meanwhile."""
    failure: list[BaseException] = []

    def run():
        try:
            plan.source.hypervisor.migrate(plan.domain, request)
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)

    opts = plan.options
    worker = threading.Thread(target=run, name="migration", daemon=True)
    started = time.monotonic()
    worker.start()
    monitor = Monitor(plan.source.hypervisor, plan.domain,
                      completion_timeout(plan.memory_kib, opts.completion_timeout),
                      on_timeout=opts.on_timeout, max_downtime_ms=opts.max_downtime_ms,
                      progress=progress)
    monitor.run(worker)
    seconds = time.monotonic() - started
    # After a failed job the guest is usually still on the source: no statistics there.
    completed = {} if failure else _completed_job_stats(plan)
    # A short job can end before the monitor's first poll; the completed job's counters
    # are its last progress line, so that a watcher always sees where the job ended.
    final = progress_event(seconds, completed)
    if final is not None and progress is not None:
        progress(final.to_dict())
    return JobOutcome(failure[0] if failure else None, monitor.timed_out, seconds,
                      completed)


def _completed_job_stats(plan: Plan) -> dict[str, Any]:
    """The finished job's statistics, which only the destination keeps: the source
    undefined the guest when it left."""
    try:
        return plan.destination.hypervisor.job_stats(plan.domain, completed=True)
    except errors.AttachflowError as exc:
        LOG.debug("%s: no completed job statistics on %s: %s", plan.domain,
                  plan.destination.name, exc)
        return {}


def _settle(tx: Transaction, plan: Plan, job: JobOutcome) -> None:
    """Phase 3, after a failed job: where the guest runs decides. Still on the source (or
    on neither): roll back, which raises. On the destination: go on and finish."""
    cause = job.failure
    if job.timed_out:
        cause = errors.HypervisorError(
            f"live migration did not complete within the completion timeout and was "
            f"aborted ({cause})")
    if not _runs_on(plan.destination, plan.domain) or _runs_on(plan.source, plan.domain):
        tx.rollback(MIGRATE["live-migration"].at(), cause)


def _finish_volumes(plan: Plan, atts: dict[str, StorageAttachment],
                    log: OperationLog | None = None) -> Problems:
    """Phase 4, roll forward: per volume, complete the destination attachment, disconnect
    the source and release its connection. Every step is tried; failures are collected."""
    src = plan.source

    def finish(vol: VolumePlan) -> Problems:
        att = atts[vol.volume_id]
        problems = Problems()
        finished = MIGRATE["finish"].at(volume_id=vol.volume_id)
        if log is not None:
            log.step_started(finished)
        for what, step in (
                (f"complete destination attachment of {vol.volume_id}",
                 lambda: vol.flow.finish_destination(att)),
                (f"disconnect {vol.volume_id} on {src.name}",
                 lambda: vol.transport.disconnect(src, vol.source.connection,
                                                  vol.source_disk.source, plan.uuid)),
                (f"release source connection of {vol.volume_id}",
                 lambda: vol.flow.release_source(vol.source))):
            try:
                step()
            except errors.AttachflowError as exc:
                problems.add(what, exc)
        if log is not None and not problems:
            log.step_done(finished, undoable=False)
        return problems

    out = Problems()
    # The volumes are independent of each other once the guest has moved.
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(plan.volumes)))) as pool:
        for problems in pool.map(finish, plan.volumes):
            out.extend(problems)
    return out


def _result(plan: Plan, job: JobOutcome, start: float, left: Problems) -> MigrationResult:
    # a job that failed but whose guest runs on the destination: its statistics now
    stats = job.completed_stats or _completed_job_stats(plan)
    elapsed = stats.get("time_elapsed")
    return MigrationResult(
        domain=plan.domain, source=plan.source.name, destination=plan.destination.name,
        runs_on=plan.destination.name, volumes=[v.volume_id for v in plan.volumes],
        seconds=time.monotonic() - start,
        migration_seconds=(elapsed / 1000.0) if elapsed else job.seconds,
        downtime_ms=stats.get("downtime"), rolled_forward=job.failure is not None,
        left_behind=left.lines())


def _runs_on(host: ComputeHost, name: str) -> bool:
    """Whether ``name`` runs on ``host``. A host that cannot be asked is not an answer:
    rolling back under a guest that runs there would pull its disks away, so that is
    an error (the operation stays incomplete, for recover)."""
    try:
        return host.hypervisor.lookup(name).active
    except errors.DomainNotFound:
        return False
    except errors.AttachflowError as exc:
        raise errors.HypervisorError(f"cannot tell whether {name} runs on {host.name}: "
                                     f"{exc}") from exc

