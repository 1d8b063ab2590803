"""What attachflow keeps in a domain's own metadata about each volume it attached.

Keeping the records in the domain means the state travels with the guest (live migration
copies metadata) and detach needs no local database: which API and attachment, which
transport, the connector the connection was made for, and the non-secret part of the
connection info. This module owns the record's JSON form and its defaults, and is the
only code that reads or writes attachflow's part of a domain's metadata (through
``domxml`` for the XML).
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Mapping

from attachflow import domxml, errors
from attachflow.model import ConnectionInfo

if TYPE_CHECKING:  # the two sides' own types; they import this module at run time
    from attachflow.cinder_side import StorageAttachment
    from attachflow.compute_side import DomainRef, Hypervisor

# What a disk's type says about how it was connected, for records that do not say.
_TRANSPORT_OF_DISK = {"network": "native", "block": "kernel"}


def transport_of_disk(disk: domxml.Disk | None) -> str | None:
    return _TRANSPORT_OF_DISK.get(disk.disk_type) if disk is not None else None


@dataclasses.dataclass(frozen=True)
class VolumeRecord:
    volume_id: str
    api: str | None                 # "attachments" or "legacy"; None: not recorded
    transport: str                  # "kernel" or "native"
    attachment_id: str | None       # the legacy API has none until os-attach
    host: str                       # the connector's host name the connection is for
    device: str                     # the guest's target device, vdX
    connector: Mapping[str, Any]    # as sent to the storage side (legacy detach sends it again)
    connection: ConnectionInfo      # without secrets

    @property
    def multipath(self) -> bool:
        """Whether the host connected it through multipath (kernel transport only)."""
        return self.transport == "kernel" and bool(self.connector.get("multipath"))

    @classmethod
    def for_attachment(cls, att: "StorageAttachment", transport: str, host: str,
                       device: str) -> "VolumeRecord":
        """The record of a new attachment of ``att`` on ``host`` as ``device``."""
        return cls(att.volume_id, att.api, transport, att.attachment_id, host, device,
                   dict(att.connector), att.connection.without_secrets())

    def moved_to(self, att: "StorageAttachment", host: str) -> "VolumeRecord":
        """The same volume, now connected through ``att`` on another host."""
        return dataclasses.replace(self, attachment_id=att.attachment_id, host=host,
                                   connector=dict(att.connector),
                                   connection=att.connection.without_secrets())

    def to_json(self) -> dict[str, Any]:
        return {"api": self.api, "attachment_id": self.attachment_id,
                "transport": self.transport, "host": self.host, "device": self.device,
                "connector": dict(self.connector), "connection": self.connection.to_record()}

    @classmethod
    def from_json(cls, volume_id: str, data: Mapping[str, Any],
                  disk: domxml.Disk | None = None) -> "VolumeRecord":
        """Read a stored record. For records written without a field: an unrecorded api
        is left to negotiation, as for a volume attached by another tool; the transport is
        what the disk's type says."""
        transport = data.get("transport") or transport_of_disk(disk)
        if transport is None:
            raise errors.InputError(f"the record of volume {volume_id} names no transport "
                                    "and the domain has no disk to tell it")
        attachment_id = data.get("attachment_id")
        return cls(
            volume_id=volume_id,
            api=data.get("api") if data.get("api") in ("attachments", "legacy") else None,
            transport=transport, attachment_id=attachment_id,
            host=data.get("host") or "", device=data.get("device") or
            (disk.target_dev if disk is not None else ""),
            connector=dict(data.get("connector") or {}),
            connection=ConnectionInfo.from_record(data.get("connection") or {}, volume_id))


def read(domain: domxml.Domain) -> dict[str, VolumeRecord]:
    """The records in a domain's metadata, by volume id."""
    out = {}
    for volume_id, text in domain.volume_entries().items():
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise errors.InputError(f"domain '{domain.name}': the record of volume "
                                    f"{volume_id} is not JSON") from exc
        out[volume_id] = VolumeRecord.from_json(volume_id, data, domain.disk(volume_id))
    return out


def entries(records: Mapping[str, VolumeRecord]) -> dict[str, str]:
    """The records as domxml keeps them: volume id -> JSON text."""
    return {vid: json.dumps(rec.to_json(), sort_keys=True) for vid, rec in records.items()}


def metadata_xml(records: Mapping[str, VolumeRecord]) -> str | None:
    """The metadata element for libvirt's setMetadata; None removes it."""
    return domxml.volume_metadata_xml(entries(records))


def save(hypervisor: "Hypervisor", ref: "DomainRef",
         records: Mapping[str, VolumeRecord]) -> None:
    """Write the records into the domain's live and persistent metadata, as it has them."""
    hypervisor.set_metadata(ref.name, metadata_xml(records), live=ref.active,
                            config=ref.persistent)
