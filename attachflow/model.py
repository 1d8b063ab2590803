"""Typed data crossing the two sides: connector properties, connection info, volumes.

``connection_info`` is parsed once, where it comes in from the storage API, into
``ConnectionInfo``; CHAP passwords live in ``Secret``, whose ``str``/``repr`` never show
the value. Only the code that must hand the password on (libvirt secret, os-brick) calls
``Secret.reveal()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from attachflow.errors import InputError

MASK = "***"
SECRET_KEYS = ("password", "secret", "auth_key", "token")


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def is_secret_key(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in SECRET_KEYS)


def masked(value: Any) -> Any:
    """A copy of nested dicts/lists with every secret-looking value replaced by MASK."""
    if isinstance(value, dict):
        return {k: (MASK if is_secret_key(str(k)) and v not in (None, "") else masked(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [masked(v) for v in value]
    if isinstance(value, Secret):
        return MASK
    return value


@dataclasses.dataclass(frozen=True)
class ConnectorProperties:
    """What a compute host tells the storage side about itself (os-brick's dict)."""

    host: str
    ip: str
    initiator: str | None = None
    multipath: bool = False
    platform: str = "x86_64"
    os_type: str = "linux"
    extra: tuple[tuple[str, Any], ...] = ()

    def to_dict(self, mountpoint: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.update(host=self.host, ip=self.ip, multipath=self.multipath,
                   platform=self.platform, os_type=self.os_type)
        if self.initiator:
            out["initiator"] = self.initiator
        if mountpoint:
            out["mountpoint"] = mountpoint
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConnectorProperties":
        known = {"host", "ip", "initiator", "multipath", "platform", "os_type", "mountpoint"}
        try:
            return cls(host=str(data["host"]), ip=str(data["ip"]),
                       initiator=data.get("initiator"),
                       multipath=bool(data.get("multipath", False)),
                       platform=str(data.get("platform", "x86_64")),
                       os_type=str(data.get("os_type", "linux")),
                       extra=tuple(sorted((k, v) for k, v in data.items() if k not in known)))
        except KeyError as exc:
            raise InputError(f"connector properties lack '{exc.args[0]}'") from None


@dataclasses.dataclass(frozen=True)
class Portal:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Portal":
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            return cls(text.strip("[]"), 3260)
        try:
            return cls(host.strip("[]"), int(port))
        except ValueError:
            raise InputError(f"bad iSCSI portal '{text}'") from None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


# Fields of connection_info that ConnectionInfo models; the rest travels in ``data``.
_MODELLED = frozenset({
    "driver_volume_type", "volume_id", "access_mode", "discard", "encrypted",
    "attachment_id", "target_portal", "target_iqn", "target_lun", "target_portals",
    "target_iqns", "target_luns", "auth_method", "auth_username", "auth_password",
    "discovery_auth_method", "discovery_auth_username", "discovery_auth_password"})


@dataclasses.dataclass(frozen=True)
class ConnectionInfo:
    """Cinder's connection_info for one volume on one host, parsed and typed.

    Only the iSCSI shape is modelled in detail; other driver_volume_types keep their data
    in ``data`` so that the connector factory can refuse them with a clear message.
    """

    driver_volume_type: str
    volume_id: str
    portal: Portal | None = None
    iqn: str | None = None
    lun: int | None = None
    portals: tuple[tuple[Portal, str, int], ...] = ()
    auth_method: str | None = None
    auth_username: str | None = None
    auth_password: Secret | None = None
    discovery_auth_method: str | None = None
    discovery_auth_username: str | None = None
    discovery_auth_password: Secret | None = None
    access_mode: str = "rw"
    discard: bool = False
    encrypted: bool = False
    attachment_id: str | None = None
    data: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_cinder(cls, raw: dict[str, Any], volume_id: str) -> "ConnectionInfo":
        """Parse either shape Cinder returns: nested (legacy: ``{driver_volume_type,
        data}``) or flat (attachments API: fields beside ``driver_volume_type``)."""
        if not isinstance(raw, dict) or "driver_volume_type" not in raw:
            raise InputError("storage returned connection info without driver_volume_type")
        data = raw.get("data") if isinstance(raw.get("data"), dict) else {
            k: v for k, v in raw.items() if k != "driver_volume_type"}
        return cls._parse(str(raw["driver_volume_type"]), data, volume_id,
                          raw.get("attachment_id") or data.get("attachment_id"))

    @classmethod
    def from_record(cls, data: dict[str, Any], volume_id: str) -> "ConnectionInfo":
        """Parse the secret-free flat form ``to_record`` wrote; a record without one (an
        attachment made by another tool) has an ``unknown`` connection."""
        if not data:
            return cls("unknown", volume_id)
        fields = {k: v for k, v in data.items() if k != "driver_volume_type"}
        return cls._parse(str(data.get("driver_volume_type") or "unknown"), fields,
                          volume_id, fields.get("attachment_id"))

    @classmethod
    def _parse(cls, dvt: str, data: dict[str, Any], volume_id: str,
               attachment_id: str | None) -> "ConnectionInfo":
        common = dict(driver_volume_type=dvt,
                      volume_id=str(data.get("volume_id") or volume_id),
                      access_mode=str(data.get("access_mode") or "rw"),
                      discard=bool(data.get("discard", False)),
                      encrypted=bool(data.get("encrypted", False)),
                      attachment_id=attachment_id,
                      # iSCSI's own fields are modelled; other types keep all of theirs.
                      data=tuple(sorted((k, MASK if is_secret_key(k) else v)
                                        for k, v in data.items()
                                        if dvt != "iscsi" or k not in _MODELLED)))
        if dvt != "iscsi":
            return cls(**common)
        try:
            portal = Portal.parse(str(data["target_portal"]))
            iqn = str(data["target_iqn"])
            lun = int(data.get("target_lun", 0))
        except KeyError as exc:
            raise InputError(f"iSCSI connection info lacks '{exc.args[0]}'") from None
        portals: tuple[tuple[Portal, str, int], ...] = ()
        if data.get("target_portals"):
            portals = tuple((Portal.parse(p), str(q), int(n)) for p, q, n in zip(
                data["target_portals"], data.get("target_iqns") or [iqn] * 99,
                data.get("target_luns") or [lun] * 99))

        def secret(key: str) -> Secret | None:
            value = data.get(key)
            return Secret(str(value)) if value and value != MASK else None

        return cls(portal=portal, iqn=iqn, lun=lun, portals=portals,
                   auth_method=data.get("auth_method"),
                   auth_username=data.get("auth_username"),
                   auth_password=secret("auth_password"),
                   discovery_auth_method=data.get("discovery_auth_method"),
                   discovery_auth_username=data.get("discovery_auth_username"),
                   discovery_auth_password=secret("discovery_auth_password"),
                   **common)

    def without_secrets(self) -> "ConnectionInfo":
        return dataclasses.replace(self, auth_password=None, discovery_auth_password=None)

    def to_record(self) -> dict[str, Any]:
        """The flat, secret-free form kept in the domain's metadata; parses back with
        ``from_record``."""
        out = {k: v for k, v in self.to_brick().items() if not is_secret_key(k)}
        out["driver_volume_type"] = self.driver_volume_type
        return out

    @property
    def uses_chap(self) -> bool:
        return (self.auth_method or "").upper() == "CHAP"

    def to_brick(self) -> dict[str, Any]:
        """os-brick's connection_properties, secrets revealed: hand it to os-brick only."""
        out: dict[str, Any] = {k: v for k, v in self.data if v != MASK}
        out.update(volume_id=self.volume_id, access_mode=self.access_mode,
                   encrypted=self.encrypted, discard=self.discard)
        if self.attachment_id:
            out["attachment_id"] = self.attachment_id
        if self.driver_volume_type == "iscsi":
            out.update(target_portal=str(self.portal), target_iqn=self.iqn,
                       target_lun=self.lun)
            if self.portals:
                out.update(target_portals=[str(p) for p, _, _ in self.portals],
                           target_iqns=[q for _, q, _ in self.portals],
                           target_luns=[n for _, _, n in self.portals])
            for key in ("auth_method", "auth_username", "discovery_auth_method",
                        "discovery_auth_username"):
                if getattr(self, key):
                    out[key] = getattr(self, key)
            if self.auth_password:
                out["auth_password"] = self.auth_password.reveal()
            if self.discovery_auth_password:
                out["discovery_auth_password"] = self.discovery_auth_password.reveal()
        return out


@dataclasses.dataclass(frozen=True)
class NewAttachment:
    """An attachment the storage side just created: its id, and its connection when it
    was created with a connector."""

    attachment_id: str
    connection: ConnectionInfo | None


@dataclasses.dataclass(frozen=True)
class VolumeAttachment:
    attachment_id: str
    server_id: str | None
    host_name: str | None
    device: str | None = None


@dataclasses.dataclass(frozen=True)
class AttachmentSummary:
    """One attachment as the storage side's attachment list shows it, whatever its state
    (reserved, attaching, attached, detaching, ...)."""

    attachment_id: str
    instance_id: str | None
    status: str


@dataclasses.dataclass(frozen=True)
class Volume:
    id: str
    name: str | None
    status: str
    size: int
    multiattach: bool = False
    attachments: tuple[VolumeAttachment, ...] = ()
    attach_status: str | None = None
    migration_status: str | None = None

    def attachment_for(self, server_id: str) -> VolumeAttachment | None:
        for att in self.attachments:
            if att.server_id == server_id:
                return att
        return None
