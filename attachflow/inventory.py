"""What attachflow attached on a host, as the host and the storage API each see it.

For every guest (or one), every volume that attachflow recorded in the domain or whose
disk carries a volume id as its serial: the device, transport and attachment from the
record, the volume's state in the storage API, and any disagreement between the two
sides. Read-only: nothing here changes anything.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from attachflow import domxml, errors, record, validate
from attachflow.cinder_side import StorageAPI
from attachflow.compute_side import ComputeHost, DomainRef

# What the two sides can disagree on, as `list` names it.
OK = "ok"
NO_STORAGE_ATTACHMENT = "disk in the guest, but the storage API lists no attachment to it"
NO_DISK = "recorded and attached in the storage API, but no disk in the guest"
NO_DISK_NO_ATTACHMENT = "recorded, but neither a disk in the guest nor an attachment"
OTHER_ATTACHMENT = "the storage API lists another attachment than the recorded one"
NOT_RECORDED = "a volume's disk attachflow did not attach (no record)"
VOLUME_GONE = "the volume does not exist in the storage API"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One volume of one guest."""

    domain: str
    domain_state: str        # running | shut off
    volume_id: str
    device: str | None
    transport: str | None
    api: str | None
    attachment_id: str | None
    volume_status: str | None   # the volume's status in the storage API
    storage_attachment: str | None  # the attachment the storage API lists for the guest
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def inventory(storage: StorageAPI, host: ComputeHost, domain: str | None = None
              ) -> list[Entry]:
    """Every attachflow volume of every guest on ``host`` (or of ``domain``)."""
    hv = host.hypervisor
    refs = [hv.lookup(validate.check_domain(domain))] if domain else hv.list_domains()
    entries: list[Entry] = []
    for ref in refs:
        entries += _entries_of(storage, host, ref)
    return entries


def _entries_of(storage: StorageAPI, host: ComputeHost, ref: DomainRef) -> list[Entry]:
    definition = host.hypervisor.domain(ref.name, inactive=not ref.active)
    records = record.read(definition)
    disks = {d.serial: d for d in definition.disks if d.serial and _is_volume_id(d.serial)}
    state = "running" if ref.active else "shut off"
    out = []
    for volume_id in sorted(set(records) | set(disks)):
        rec, disk = records.get(volume_id), disks.get(volume_id)
        status, listed = _storage_view(storage, volume_id, ref.uuid)
        out.append(Entry(
            domain=ref.name, domain_state=state, volume_id=volume_id,
            device=disk.target_dev if disk else rec.device if rec else None,
            transport=rec.transport if rec else record.transport_of_disk(disk),
            api=rec.api if rec else None, attachment_id=rec.attachment_id if rec else None,
            volume_status=status, storage_attachment=listed,
            problem=_problem(rec, disk, status, listed)))
    return out


def _is_volume_id(serial: str) -> bool:
    try:
        validate.check_volume_id(serial)
    except errors.InputError:
        return False
    return True


def _storage_view(storage: StorageAPI, volume_id: str, instance_id: str
                  ) -> tuple[str | None, str | None]:
    try:
        volume = storage.get_volume(volume_id)
    except errors.VolumeNotFound:
        return None, None
    listed = volume.attachment_for(instance_id)
    return volume.status, listed.attachment_id if listed else None


def _problem(rec: record.VolumeRecord | None, disk: domxml.Disk | None,
             status: str | None, listed: str | None) -> str:
    if status is None:
        return VOLUME_GONE
    if rec is None:
        return NOT_RECORDED
    if disk is None:
        return NO_DISK if listed else NO_DISK_NO_ATTACHMENT
    if listed is None:
        return NO_STORAGE_ATTACHMENT
    if rec.attachment_id and rec.attachment_id != listed:
        return OTHER_ATTACHMENT
    return OK
