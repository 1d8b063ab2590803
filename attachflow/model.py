"""Typed data crossing the two sides: connector properties, connection info, volumes.

``connection_info`` is parsed once, where it comes in from the storage API, into
``ConnectionInfo``; CHAP passwords live in ``Secret``, whose ``str``/``repr`` never show
the value. Only the code that must hand the password on (libvirt secret, os-brick) calls
``Secret.reveal()``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from attachflow.errors import InputError

MASK = "***"

# What libvirt's schema takes as a network disk's host (a DNS name or an IP address)
# and what an iSCSI name may hold (RFC 3720: letters, digits, '-', '.', ':'; 223 bytes).
# The one definition: domxml checks the values it writes into XML against these too.
PORTAL_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45}")
ISCSI_NAME = re.compile(r"[A-Za-z0-9.:_-]{1,223}")
# A user name or method: printable, one line, bounded.
_TEXT = re.compile(r"[^\x00-\x1f\x7f]{1,255}")
LUN_MAX = 16383
PORT_MAX = 65535


def is_lun(value: Any) -> bool:
    """A LUN as libvirt and the storage side take it: an integer from 0 to LUN_MAX."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= LUN_MAX


def is_port(value: Any) -> bool:
    """A TCP port: an integer from 1 to PORT_MAX."""
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= PORT_MAX


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as an error message can show it: quoted, printable, at most ``limit``
    characters."""
    text = repr(value) if not isinstance(value, str) else value
    text = "".join(c if c.isprintable() else "?" for c in text)
    return f"'{text[:limit - 3]}...'" if len(text) > limit else f"'{text}'"
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
            raise InputError(f"connector properties lack '{exc.args[0]}'") from exc


@dataclasses.dataclass(frozen=True)
class Portal:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Portal":
        """``HOST:PORT`` (3260 when no port), IPv6 hosts in brackets; a host that is not
        a DNS name or an IP address, or a port outside 1-65535, is refused."""
        if not isinstance(text, str):
            raise InputError(f"iSCSI portal {shown(text)} is not text")
        host, sep, port = text.rpartition(":")
        if not sep or not host or (host.count(":") and not host.startswith("[")):
            host, port = text, "3260"
        host = host.strip("[]")
        if not PORTAL_HOST.fullmatch(host) or not port.isdigit() or not is_port(int(port)):
            raise InputError(f"bad iSCSI portal {shown(text)} (HOST:PORT, HOST a name or "
                             "an IP address)")
        return cls(host, int(port))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _iqn(value: Any) -> str:
    if not isinstance(value, str) or not ISCSI_NAME.fullmatch(value):
        raise InputError(f"iSCSI connection info: target {shown(value)} is not an iSCSI "
                         "name")
    return value


def _lun(value: Any) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 5:
        value = int(value)  # some drivers send the LUN as text
    if not is_lun(value):
        raise InputError(f"iSCSI connection info: LUN {shown(value)} is not a number from "
                         f"0 to {LUN_MAX}")
    return value


# Fields every connection info has, modelled whatever its type.
_COMMON = frozenset({"driver_volume_type", "volume_id", "access_mode", "discard",
                     "encrypted", "attachment_id"})
# Fields of connection_info that ConnectionInfo models; the rest travels in ``data``.
_MODELLED = frozenset({
    "driver_volume_type", "volume_id", "access_mode", "discard", "encrypted",
    "attachment_id", "target_portal", "target_iqn", "target_lun", "target_portals",
    "target_iqns", "target_luns", "auth_method", "auth_username", "auth_password",
    "discovery_auth_method", "discovery_auth_username", "discovery_auth_password"})


def _common_fields(dvt: str, data: dict[str, Any], volume_id: str,
                   attachment_id: Any) -> dict[str, Any]:
    """The fields every connection info has, whatever its type, checked; and ``data``,
    what travels unmodelled."""
    if not _TEXT.fullmatch(dvt) or len(dvt) > 64:
        raise InputError(f"connection info: driver_volume_type {shown(dvt)} is not a "
                         "name")
    said_volume = data.get("volume_id")
    if said_volume not in (None, "", volume_id):
        raise InputError(f"connection info is for volume {shown(said_volume)}, not "
                         f"{volume_id}")
    access_mode = data.get("access_mode") or "rw"
    if access_mode not in ("rw", "ro"):
        raise InputError(f"connection info: access_mode {shown(access_mode)} is not "
                         "rw or ro")
    flags = {}
    for key in ("discard", "encrypted"):
        value = data.get(key)
        if value not in (None, True, False):
            raise InputError(f"connection info: {key} {shown(value)} is not true or "
                             "false")
        flags[key] = bool(value)
    if attachment_id is not None and not (isinstance(attachment_id, str) and
                                          ISCSI_NAME.fullmatch(attachment_id)):
        raise InputError(f"connection info: attachment_id {shown(attachment_id)} is "
                         "not an id")
    return dict(driver_volume_type=dvt, volume_id=volume_id, access_mode=access_mode,
                attachment_id=attachment_id or None, **flags,
                # iSCSI's own fields are modelled; other types keep the rest,
                # but no secret (attachflow connects only iSCSI).
                data=tuple(sorted((str(k), v) for k, v in data.items()
                                  if k not in (_MODELLED if dvt == "iscsi"
                                               else _COMMON)
                                  and not is_secret_key(str(k)))))


def _portals(data: dict[str, Any], iqn: str,
             lun: int) -> tuple[tuple[Portal, str, int], ...]:
    """A multipath target's paths (``target_portals`` and their IQNs and LUNs, the
    primary ones when not given), or none."""
    if not data.get("target_portals"):
        return ()
    many = data["target_portals"]
    iqns = data.get("target_iqns") or [iqn] * len(many) if isinstance(
        many, list) else None
    luns = data.get("target_luns") or [lun] * len(many) if isinstance(
        many, list) else None
    if not all(isinstance(x, list) for x in (many, iqns, luns)) or \
            not len(many) == len(iqns) == len(luns) or len(many) > 64:
        raise InputError("iSCSI connection info: target_portals, target_iqns and "
                         "target_luns are not lists of one length")
    return tuple((Portal.parse(p), _iqn(q), _lun(n))
                 for p, q, n in zip(many, iqns, luns))


def _auth_names(data: dict[str, Any]) -> dict[str, str | None]:
    """The CHAP methods and user names (None when not given)."""
    texts = {}
    for key in ("auth_method", "auth_username", "discovery_auth_method",
                "discovery_auth_username"):
        value = data.get(key)
        if value in (None, ""):
            texts[key] = None
        elif isinstance(value, str) and _TEXT.fullmatch(value):
            texts[key] = value
        else:
            raise InputError(f"iSCSI connection info: {key} {shown(value)} is not a "
                             "name")
    return texts


def _secret(data: dict[str, Any], key: str) -> Secret | None:
    """A CHAP password; an empty or masked one (a record's) is none."""
    value = data.get(key)
    if value in (None, "", MASK):
        return None
    if not isinstance(value, str) or not _TEXT.fullmatch(value):
        raise InputError(f"iSCSI connection info: {key} is not text")
    return Secret(value)


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
        if not isinstance(raw, dict) or not isinstance(raw.get("driver_volume_type"), str):
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
               attachment_id: Any) -> "ConnectionInfo":
        """The typed form of what the storage side said; anything of the wrong type or
        form in a field attachflow uses is refused (``InputError``, one line)."""
        common = _common_fields(dvt, data, volume_id, attachment_id)
        if dvt != "iscsi":
            return cls(**common)
        for key in ("target_portal", "target_iqn"):
            if data.get(key) is None:
                raise InputError(f"iSCSI connection info lacks '{key}'")
        portal = Portal.parse(data["target_portal"])
        iqn = _iqn(data["target_iqn"])
        lun = _lun(data.get("target_lun", 0))
        portals = _portals(data, iqn, lun)
        names = _auth_names(data)
        return cls(portal=portal, iqn=iqn, lun=lun, portals=portals,
                   auth_password=_secret(data, "auth_password"),
                   discovery_auth_password=_secret(data, "discovery_auth_password"),
                   **names, **common)

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
