"""What happens on attach, detach and boot: each one readable function composing the
storage side (``cinder_side``), a transport (``connectors``) and the compute host
(``compute_side``). Every step that changes something registers its undo; see ``steps``.
"""

from __future__ import annotations

import dataclasses
import time
import uuid as uuidlib
from typing import Any

from attachflow import bootfiles, domxml, errors, record, validate
from attachflow.cinder_side import (Flow, StorageAPI, StorageAttachment, flow_for_record,
                                    select_flow)
from attachflow.compute_side import ComputeHost, DomainRef
from attachflow.connectors import check_fits, get_transport
from attachflow.connectors.base import Transport
from attachflow import events
from attachflow.events import Emitter, Listener
from attachflow.record import VolumeRecord
from attachflow.plans import ATTACH, BOOT, DELETE, DETACH, Plan
from attachflow.steps import Transaction
from attachflow.tracking import Scope, Tracker, tracked

DEFAULT_DETACH_TIMEOUT = 60.0


#: The version of ``Result.to_dict()``'s form (and of ``-f json``); it changes only when
#: a key is removed or changes meaning. New keys may appear within a version.
RESULT_SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Result:
    """What an attach, detach or boot did. ``already`` is True when nothing needed doing:
    the volume was attached as asked already (attach), or was not attached (detach)."""

    operation: str
    volume_id: str
    domain: str
    host: str
    device: str | None
    api: str | None
    transport: str | None
    attachment_id: str | None
    seconds: float
    steps: list[str]
    already: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": RESULT_SCHEMA_VERSION, **dataclasses.asdict(self)}


def _connect_steps(tx: Transaction, plan: Plan, flow: Flow, transport: Transport,
                   host: ComputeHost, volume_id: str, instance_id: str, device: str):
    """The first half of every attach: storage connect, transport check, host connect."""
    names = {"api": flow.api, "transport": transport.name}
    connector = tx.run(plan["connector"].at(**names),
                       lambda: transport.connector_properties(host))
    att = tx.run(plan["storage-connect"].at(**names),
                 lambda: flow.connect(volume_id, instance_id, connector, f"/dev/{device}"),
                 flow.undo_connect)
    tx.run(plan["check-transport"].at(**names),
           lambda: check_fits(transport, att.connection.driver_volume_type, volume_id))
    source = tx.run(plan["host-connect"].at(**names),
                    lambda: transport.connect(host, att.connection, instance_id),
                    lambda src: transport.disconnect(host, att.connection, src, instance_id))
    spec = domxml.DiskSpec(source=source, target_dev=device, serial=volume_id,
                           readonly=att.connection.access_mode == "ro",
                           discard=att.connection.discard)
    return att, spec


def _definitions(host: ComputeHost, ref: DomainRef
                 ) -> tuple[domxml.Domain | None, domxml.Domain | None]:
    """The live and the persistent definition, each fetched and parsed once."""
    live = host.hypervisor.domain(ref.name) if ref.active else None
    config = host.hypervisor.domain(ref.name, inactive=True) if ref.persistent else None
    return live, config


def attach(storage: StorageAPI, host: ComputeHost, transport: Transport, volume_id: str,
           domain: str, api: str = "auto", device: str | None = None,
           detach_timeout: float = DEFAULT_DETACH_TIMEOUT,
           progress: Listener | None = None, tracker: Tracker | None = None) -> Result:
    """Attach ``volume_id`` to ``domain`` on ``host``; when it is attached there already,
    as asked, return that attachment (``already``) without changing anything. With a
    ``tracker``, under the locks of the volume and the domain, journaled step by step."""
    volume_id, domain = validate.check_volume_id(volume_id), validate.check_domain(domain)
    if device is not None:
        validate.check_device(device)
    validate.check_number("the detach timeout", detach_timeout, "timeout")
    flow = select_flow(storage, api)
    context = {"volume_id": volume_id, "api": flow.api, "transport": transport.name,
               "multipath": bool(getattr(transport, "multipath", False)), "device": device}
    with tracked(tracker, Scope("attach", host.name, domain, (volume_id,)), context) as log:
        return _attach(storage, host, transport, flow, volume_id, domain, device,
                       detach_timeout, progress, log)


def _attach(storage: StorageAPI, host: ComputeHost, transport: Transport, flow: Flow,
            volume_id: str, domain: str, device: str | None, detach_timeout: float,
            progress: Listener | None, log) -> Result:
    start = time.monotonic()
    hv = host.hypervisor
    ref = hv.lookup(domain)
    live, config = _definitions(host, ref)
    definitions = [d for d in (live, config) if d is not None]
    present = next((d.disk(volume_id) for d in definitions if d.disk(volume_id)), None)
    if present is not None:
        return _attached_already(storage, host, transport, ref, volume_id, device, present,
                                 record.read(live or config).get(volume_id), start)
    if device is not None:
        if any(device in d.device_names() for d in definitions):
            raise errors.DeviceInUse(f"device {device} is already in use in {domain}")
    else:
        device = domxml.next_free_device(definitions)
    records = record.read(live or config)

    tx = Transaction(f"attach {volume_id} to {domain}", Emitter(progress), log)
    tx.remember(instance_id=ref.uuid)
    att, spec = _connect_steps(tx, ATTACH, flow, transport, host, volume_id, ref.uuid,
                               device)
    disk = domxml.Disk.build(spec)
    tx.run(ATTACH["guest-attach"].at(), lambda: hv.attach_device(
        domain, disk, live=ref.active, config=ref.persistent),
           lambda _: hv.detach_device(domain, disk, live=ref.active,
                                      config=ref.persistent, timeout=detach_timeout))
    found = tx.run(ATTACH["find-disk"].at(), lambda: _find_by_serial(host, ref, volume_id))
    new_records = dict(records)
    new_records[volume_id] = VolumeRecord.for_attachment(
        att, transport.name, host.cfg.connector_host, found.target_dev)
    tx.run(ATTACH["record"].at(), lambda: record.save(hv, ref, new_records),
           lambda _: record.save(hv, ref, records))
    tx.run(ATTACH["storage-complete"].at(api=flow.api),
           lambda: flow.finish_attach(att, f"/dev/{found.target_dev}",
                                      host.cfg.connector_host))
    return Result("attach", volume_id, domain, host.name, found.target_dev, flow.api,
                  transport.name, att.attachment_id, time.monotonic() - start, tx.completed)


def _attached_already(storage: StorageAPI, host: ComputeHost, transport: Transport,
                      ref: DomainRef, volume_id: str, device: str | None,
                      present: domxml.Disk, rec: VolumeRecord | None, start: float) -> Result:
    """The answer to an attach that finds the volume's disk in the domain: the current
    attachment when it is what was asked and Cinder agrees, else a refusal that says
    what differs."""
    where = f"{ref.name} as {present.target_dev}"
    if device is not None and device != present.target_dev:
        raise errors.DeviceInUse(f"volume {volume_id} is already attached to {where}, "
                                 f"not {device}")
    if rec is None:
        raise errors.VolumeStateError(
            f"volume {volume_id} is already attached to {where}, but not by attachflow "
            "(no record in the domain): detach it with the tool that attached it")
    if rec.transport != transport.name:
        raise errors.TransportMismatch(
            f"volume {volume_id} is already attached to {where} with transport "
            f"'{rec.transport}', not '{transport.name}'")
    volume = storage.get_volume(volume_id)
    known = volume.attachment_for(ref.uuid)
    if known is None or (rec.attachment_id and known.attachment_id != rec.attachment_id):
        raise errors.VolumeStateError(
            f"volume {volume_id} is in {where}, but Cinder does not list that attachment "
            f"(volume status '{volume.status}'): detach it, then attach it again")
    return Result("attach", volume_id, ref.name, host.name, present.target_dev, rec.api,
                  rec.transport, known.attachment_id, time.monotonic() - start, [],
                  already=True)


def _find_by_serial(host: ComputeHost, ref: DomainRef, volume_id: str) -> domxml.Disk:
    # libvirt may choose another name than the one asked for: trust the serial.
    disk = host.hypervisor.domain(ref.name, inactive=not ref.active).disk(volume_id)
    if disk is None:
        raise errors.HypervisorError(
            f"disk with serial {volume_id} not found in {ref.name} after attach")
    return disk


def detach(storage: StorageAPI, host: ComputeHost, volume_id: str, domain: str,
           api: str = "auto", transport_name: str | None = None,
           timeout: float = DEFAULT_DETACH_TIMEOUT, strict: bool = False,
           progress: Listener | None = None, tracker: Tracker | None = None) -> Result:
    """Detach ``volume_id`` from ``domain`` on ``host``. A volume that is not attached to
    the domain (and that Cinder does not list as attached to it) is a success with
    ``already`` set, or ``NotAttached`` when ``strict``. With a ``tracker``, under the
    locks of the volume and the domain, journaled step by step."""
    volume_id, domain = validate.check_volume_id(volume_id), validate.check_domain(domain)
    validate.check_number("the detach timeout", timeout, "timeout")
    with tracked(tracker, Scope("detach", host.name, domain, (volume_id,)),
                 {"volume_id": volume_id}) as log:
        return _detach(storage, host, volume_id, domain, api, transport_name, timeout,
                       strict, progress, log)


def _detach(storage: StorageAPI, host: ComputeHost, volume_id: str, domain: str,
            api: str, transport_name: str | None, timeout: float, strict: bool,
            progress: Listener | None, log) -> Result:
    start = time.monotonic()
    hv = host.hypervisor
    ref = hv.lookup(domain)
    live, config = _definitions(host, ref)
    live_disk = live.disk(volume_id) if live is not None else None
    config_disk = config.disk(volume_id) if config is not None else None
    records = record.read(live or config)
    rec = records.get(volume_id)
    disk = live_disk or config_disk
    if disk is None and rec is None:
        return _detached_already(storage, host, ref, volume_id, strict, start)
    transport = _detach_transport(volume_id, rec, disk, transport_name)
    flow = flow_for_record(storage, rec, api)

    tx = Transaction(f"detach {volume_id} from {domain}", Emitter(progress), log)
    tx.remember(instance_id=ref.uuid, api=flow.api, transport=transport.name,
                multipath=transport.name == "kernel" and bool(getattr(transport, "multipath",
                                                                      False)),
                record=rec.to_json() if rec is not None else None)
    names = {"api": flow.api, "transport": transport.name}
    att = _begin_detach(tx, flow, transport, host, volume_id, ref, rec, names)
    # Persistent first, then live (the guest may refuse): two steps, so that a guest
    # that refuses the disk outright gets its persistent definition back too.
    if config_disk is not None:
        tx.run(DETACH["guest-detach-persistent"].at(),
               lambda: hv.detach_device(domain, config_disk, live=False, config=True,
                                        timeout=timeout),
               lambda _: hv.attach_device(domain, config_disk.without_alias(),
                                          live=False, config=True))
    if live_disk is not None:
        tx.run(DETACH["guest-detach-live"].at(),
               lambda: hv.detach_device(domain, live_disk, live=True, config=False,
                                        timeout=timeout),
               lambda _: hv.attach_device(domain, live_disk.without_alias(), live=True,
                                          config=False))
    source = disk.source if disk is not None else None
    tx.run(DETACH["host-disconnect"].at(**names),
           lambda: transport.disconnect(host, att.connection, source, ref.uuid),
           lambda _: transport.connect(host, flow.fresh_connection(att), ref.uuid))
    if volume_id in records:
        remaining = {k: v for k, v in records.items() if k != volume_id}
        tx.run(DETACH["unrecord"].at(), lambda: record.save(hv, ref, remaining),
               lambda _: record.save(hv, ref, records))
    tx.run(DETACH["storage-release"].at(**names), lambda: flow.release(att))
    return Result("detach", volume_id, domain, host.name, disk.target_dev if disk else None,
                  flow.api, transport.name, att.attachment_id, time.monotonic() - start,
                  tx.completed)


def _detach_transport(volume_id: str, rec: VolumeRecord | None, disk: domxml.Disk | None,
                      transport_name: str | None) -> Transport:
    """The transport that connected the volume: the record's, else what the disk says."""
    if transport_name and rec is not None and transport_name != rec.transport:
        raise errors.TransportMismatch(
            f"volume {volume_id} was attached with transport '{rec.transport}', "
            f"not '{transport_name}'")
    # A disk attachflow did not record (attached by another tool): its type says how.
    name = rec.transport if rec is not None else \
        record.transport_of_disk(disk) or transport_name or "native"
    # A multipath connection is disconnected as one: every path and the map.
    return get_transport(name, multipath=rec.multipath if rec is not None else False)


def _begin_detach(tx: Transaction, flow: Flow, transport: Transport, host: ComputeHost,
                  volume_id: str, ref: DomainRef, rec: VolumeRecord | None,
                  names: dict[str, str]) -> StorageAttachment:
    """The storage side's start of a detach; for a disk another tool attached, also the
    connector and the connection that its disconnect needs."""
    att = tx.run(DETACH["storage-begin"].at(**names),
                 lambda: flow.begin_detach(volume_id, ref.uuid, rec),
                 flow.undo_begin_detach)
    if not att.connector:
        # attached by another tool: the connection is this host's, and Cinder needs its
        # connector to hand out the connection info and to end the connection
        att.connector = tx.run(DETACH["connector"].at(**names),
                               lambda: transport.connector_properties(host)).to_dict()
    if att.connection.driver_volume_type == "unknown" and transport.name == "kernel":
        # attached by another tool: ask the storage side where the volume lives
        att.connection = tx.run(DETACH["connection-info"].at(**names),
                                lambda: flow.fresh_connection(att))
    return att


def _detached_already(storage: StorageAPI, host: ComputeHost, ref: DomainRef,
                      volume_id: str, strict: bool, start: float) -> Result:
    if strict:
        raise errors.NotAttached(f"volume {volume_id} is not attached to {ref.name}")
    known = storage.get_volume(volume_id).attachment_for(ref.uuid)
    if known is not None:
        # Cinder still holds an attachment for a guest without the disk: releasing it
        # blind could cut a connection attachflow does not know of; say so instead.
        raise errors.VolumeStateError(
            f"volume {volume_id} is not in {ref.name}, but Cinder still lists attachment "
            f"{known.attachment_id} to it: release it in Cinder once no host is connected")
    return Result("detach", volume_id, ref.name, host.name, None, None, None, None,
                  time.monotonic() - start, [], already=True)


def _booted_already(storage: StorageAPI, host: ComputeHost, transport: Transport,
                    ref: DomainRef, volume_id: str, start: float) -> Result:
    """A boot that finds its domain: done already when the domain runs from this volume
    as attachflow booted it; anything else is a refusal."""
    live, config = _definitions(host, ref)
    root = (live or config).disk(volume_id) if (live or config) is not None else None
    if root is None or root.target_dev != "vda":
        raise errors.InputError(f"a domain named '{ref.name}' already exists on {host.name} "
                                f"and does not boot from volume {volume_id}")
    if not ref.active:
        raise errors.VolumeStateError(
            f"domain '{ref.name}' exists on {host.name} with volume {volume_id} as vda but "
            "is shut off: start it (virsh start) or remove it first")
    result = _attached_already(storage, host, transport, ref, volume_id, "vda", root,
                               record.read(live).get(volume_id), start)
    return dataclasses.replace(result, operation="boot")


def boot(storage: StorageAPI, host: ComputeHost, transport: Transport, name: str,
         volume_id: str, api: str = "auto", memory_mib: int = 128, vcpus: int = 1,
         virt_type: str = "kvm", emulator: str | None = None,
         direct_boot: domxml.DirectBoot | None = None,
         progress: Listener | None = None, tracker: Tracker | None = None) -> Result:
    """Define and start ``name`` with ``volume_id`` as its root disk (vda). With a
    ``tracker``, under the locks of the volume and the domain, journaled step by step."""
    name, volume_id = validate.check_new_domain(name), validate.check_volume_id(volume_id)
    validate.check_number("memory (MiB)", memory_mib, "memory")
    validate.check_number("vcpus", vcpus, "vcpus")
    if virt_type not in ("kvm", "qemu"):
        raise errors.InputError(f"virt type '{virt_type}' is not kvm or qemu")
    bootfiles.check_direct_boot(host, direct_boot)
    flow = select_flow(storage, api)
    instance_id = str(uuidlib.uuid4())
    context = {"volume_id": volume_id, "api": flow.api, "transport": transport.name,
               "multipath": bool(getattr(transport, "multipath", False)),
               "instance_id": instance_id}
    with tracked(tracker, Scope("boot", host.name, name, (volume_id,)), context) as log:
        return _boot(storage, host, transport, flow, name, volume_id, instance_id,
                     memory_mib, vcpus, virt_type, emulator, direct_boot, progress, log)


def _boot(storage: StorageAPI, host: ComputeHost, transport: Transport, flow: Flow,
          name: str, volume_id: str, instance_id: str, memory_mib: int, vcpus: int,
          virt_type: str, emulator: str | None, direct_boot: domxml.DirectBoot | None,
          progress: Listener | None, log) -> Result:
    start = time.monotonic()
    hv = host.hypervisor
    try:
        existing = hv.lookup(name)
    except errors.DomainNotFound:
        pass
    else:
        return _booted_already(storage, host, transport, existing, volume_id, start)

    tx = Transaction(f"boot {name} from {volume_id}", Emitter(progress), log)
    att, spec = _connect_steps(tx, BOOT, flow, transport, host, volume_id, instance_id,
                               "vda")
    rec = VolumeRecord.for_attachment(att, transport.name, host.cfg.connector_host, "vda")
    definition = domxml.build_domain(name, instance_id, memory_mib, vcpus, virt_type,
                                     domxml.Disk.build(spec),
                                     record.entries({volume_id: rec}), emulator=emulator,
                                     direct_boot=direct_boot)
    tx.run(BOOT["define"].at(), lambda: hv.define_domain(definition),
           lambda _: hv.undefine(name))
    tx.run(BOOT["start"].at(), lambda: hv.start(name), lambda _: hv.destroy(name))
    tx.run(BOOT["storage-complete"].at(api=flow.api),
           lambda: flow.finish_attach(att, "/dev/vda", host.cfg.connector_host))
    return Result("boot", volume_id, name, host.name, "vda", flow.api, transport.name,
                  att.attachment_id, time.monotonic() - start, tx.completed)


def start_guest(host: ComputeHost, name: str) -> bool:
    """Start the defined guest ``name``; False when it was running already."""
    if host.hypervisor.lookup(name).active:
        return False
    host.hypervisor.start(name)
    return True


def shutdown_guest(host: ComputeHost, name: str, timeout: float = 120.0,
                   poll: float = 0.5) -> bool:
    """Ask the guest OS to power off and wait until it has; False when it was not
    running. A guest still running after ``timeout`` seconds is a HypervisorError (it
    is left running: forcing it off could lose its data)."""
    hv = host.hypervisor
    if not hv.lookup(name).active:
        return False
    hv.shutdown(name)
    deadline = time.monotonic() + timeout
    while hv.lookup(name).active:
        if time.monotonic() >= deadline:
            raise errors.HypervisorError(
                f"guest {name} on {host.name} did not shut down within {timeout:g} s")
        time.sleep(poll)
    return True


@dataclasses.dataclass(frozen=True)
class DeleteResult:
    """What ``delete_guest`` did: the volumes it detached, in order."""

    domain: str
    host: str
    detached: list[str]
    seconds: float
    already: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": RESULT_SCHEMA_VERSION, "operation": "delete",
                **dataclasses.asdict(self)}


def delete_guest(storage: StorageAPI, host: ComputeHost, name: str, force: bool = False,
                 shutdown_timeout: float = 60.0, strict: bool = False,
                 progress: Listener | None = None, tracker: Tracker | None = None
                 ) -> DeleteResult:
    """Stop the guest ``name`` (ACPI, then off after ``shutdown_timeout``), detach and
    release each of its volumes, then undefine it. Only a guest attachflow booted (its
    vda is a recorded volume) unless ``force``. A volume that cannot be detached stops
    the delete before the guest is undefined, so running it again finishes the job."""
    start = time.monotonic()
    name = validate.check_domain(name)
    validate.check_number("the shutdown timeout", shutdown_timeout, "timeout")
    hv = host.hypervisor
    try:
        ref = hv.lookup(name)
    except errors.DomainNotFound:
        if strict:
            raise
        return DeleteResult(name, host.name, [], time.monotonic() - start, already=True)
    if not ref.persistent:
        raise errors.InputError(f"domain '{name}' on {host.name} is transient: detach its "
                                "volumes, then destroy it")
    live, config = _definitions(host, ref)
    records = record.read(live or config)
    if tracker is not None:  # before the guest is stopped, not at its first detach
        tracker.refuse_if_pending(Scope("delete", host.name, name, tuple(records)))
    if not force and not any(rec.device == "vda" for rec in records.values()):
        raise errors.InputError(f"domain '{name}' on {host.name} was not booted by attachflow "
                                "(its vda is not a volume attachflow attached); --force "
                                "deletes it anyway, detaching the volumes attachflow attached")
    emit = Emitter(progress)
    operation = f"delete {name}"
    if ref.active:
        try:
            shutdown_guest(host, name, shutdown_timeout)
        except errors.HypervisorError:
            hv.destroy(name)  # it did not stop in time: the user asked for it to go
        emit(events.StepDone(operation, DELETE["stop"].label))
    detached = []
    # The root volume last: until it goes, the guest is still recognisably attachflow's,
    # so a delete stopped by a failure can be run again without --force.
    for volume_id in sorted(records, key=lambda v: (records[v].device == "vda", v)):
        detach(storage, host, volume_id, name, progress=progress, tracker=tracker)
        detached.append(volume_id)
    hv.undefine(name)
    emit(events.StepDone(operation, DELETE["undefine"].label))
    return DeleteResult(name, host.name, detached, time.monotonic() - start)
