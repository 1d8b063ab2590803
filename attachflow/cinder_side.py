"""The storage side: everything attachflow asks of Cinder.

``StorageAPI`` is the seam: one method per Cinder call, named after it. ``CinderStorage``
implements it with python-cinderclient over a keystoneauth1 session and translates
cinderclient's exceptions into attachflow's at this boundary; the tests' in-memory twin
is ``FakeCinder`` in ``tests/unit/twins.py``. On top of the seam, ``AttachmentsFlow`` and
``LegacyFlow`` are the two ways of attaching a volume Cinder offers (attachments API from
microversion 3.27/3.44, and the reserve/initialize_connection/attach actions);
``select_flow`` picks one.

Retries (tenacity) only where repeating cannot change the outcome: reads on connection
errors and 5xx, deletes on 5xx (a 404 on delete means it is already gone). Calls that change
state are never retried blindly.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping

from attachflow import errors, steps, timings
from attachflow.identity import SERVICE_SETTINGS, StorageSession, login_error, open_session
from attachflow.token_cache import TokenCache
from attachflow.settings import DEFAULT_DEADLINE, env_value, seconds_setting
from attachflow.model import (AttachmentSummary, ConnectionInfo, ConnectorProperties,
                              NewAttachment, Volume, VolumeAttachment, masked)

if TYPE_CHECKING:
    from attachflow.record import VolumeRecord

LOG = logging.getLogger("attachflow.cinder")

ATTACHMENTS_MIN = (3, 44)  # create/update from 3.27, complete from 3.44
WANTED_VERSION = "3.71"


class StorageAPI(abc.ABC):
    """One method per Cinder call attachflow makes. What comes back is parsed here, at the
    boundary: connection info as ``ConnectionInfo``, volumes as ``Volume``."""

    #: the microversion in use, as (major, minor)
    version: tuple[int, int] = (3, 0)

    def close(self) -> None:
        """Done with the storage API: what the session learned (a new login) is kept for
        the next command."""

    @abc.abstractmethod
    def get_volume(self, volume_id: str) -> Volume: ...

    # attachments API
    @abc.abstractmethod
    def attachment_create(self, volume_id: str, instance_id: str,
                          connector: dict[str, Any] | None) -> NewAttachment:
        """The new attachment; its connection is None when made without a connector."""

    @abc.abstractmethod
    def attachment_update(self, attachment_id: str, volume_id: str,
                          connector: dict[str, Any]) -> ConnectionInfo: ...

    @abc.abstractmethod
    def attachment_show(self, attachment_id: str, volume_id: str) -> ConnectionInfo | None:
        """The attachment's connection info (with its secrets); None without a
        connector."""

    @abc.abstractmethod
    def attachment_complete(self, attachment_id: str) -> None: ...

    @abc.abstractmethod
    def attachments_of(self, volume_id: str) -> list[AttachmentSummary]:
        """Every attachment of the volume, whatever its state (a volume's own list shows
        only completed ones)."""

    @abc.abstractmethod
    def attachment_delete(self, attachment_id: str) -> None: ...

    # legacy actions
    @abc.abstractmethod
    def reserve(self, volume_id: str) -> None: ...

    @abc.abstractmethod
    def unreserve(self, volume_id: str) -> None: ...

    @abc.abstractmethod
    def initialize_connection(self, volume_id: str,
                              connector: dict[str, Any]) -> ConnectionInfo: ...

    @abc.abstractmethod
    def terminate_connection(self, volume_id: str, connector: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    def attach(self, volume_id: str, instance_id: str, mountpoint: str,
               host_name: str | None, mode: str = "rw") -> None: ...

    @abc.abstractmethod
    def begin_detaching(self, volume_id: str) -> None: ...

    @abc.abstractmethod
    def roll_detaching(self, volume_id: str) -> None: ...

    @abc.abstractmethod
    def detach(self, volume_id: str, attachment_id: str | None) -> None: ...


# ---------------------------------------------------------------------------------------
# The real adapter

def _translate(exc: BaseException, what: str,
               service_token: bool = False) -> errors.AttachflowError:
    """cinderclient/keystoneauth exceptions -> attachflow's. Messages carry the server's
    text, never the request body (which may hold connector or CHAP data)."""
    from cinderclient import exceptions as cexc
    from keystoneauth1 import exceptions as kexc
    if isinstance(exc, errors.AttachflowError):
        return exc
    if _is_login(exc):
        # keystoneauth logs in again mid-call when a token is about to expire or the
        # storage API refused it (revoked): that login failed.
        err = login_error(exc)
        return type(err)(f"{what}: a new login to Keystone failed: {err}",
                         status=err.status)
    if isinstance(exc, cexc.ClientException):
        code = getattr(exc, "code", None)
        text = getattr(exc, "message", None) or str(exc)
        if code == 401:
            # keystonemiddleware refuses the whole request when either token is bad,
            # including a service token whose user lacks the service role.
            whose = ("the user's or the service user's (which needs the 'service' role)"
                     if service_token else "the user's")
            return errors.AuthError(f"{what}: Cinder refused {whose} token even after a new "
                                    f"login (HTTP 401: {text})", status=code)
        if code == 403:
            return errors.AuthError(f"{what}: Cinder refused the user this call (HTTP 403: "
                                    f"{text})", status=code)
        if code == 404:
            return errors.StorageNotFound(f"{what}: not found ({text})", status=404)
        if code == 409 and "using the Compute API" in text:
            # Cinder (2023.2 on) releases an attachment of a guest only for a service
            # (CVE-2023-2088): without a service token it asks Nova, and refuses
            return errors.StorageError(
                f"{what}: Cinder releases a guest's attachment only for a service user "
                f"({text}); give attachflow one: {SERVICE_SETTINGS}", status=code)
        if code in (400, 409):
            return errors.VolumeStateError(f"{what}: {text}")
        if code and code >= 500:
            return errors.StorageUnavailable(f"{what}: server error {code} ({text})",
                                             status=code)
        return errors.StorageError(f"{what}: HTTP {code} ({text})", status=code)
    if isinstance(exc, (kexc.ConnectFailure, kexc.ConnectTimeout, kexc.UnknownConnectionError,
                        kexc.RetriableConnectionFailure, cexc.ConnectionError)):
        # keystoneauth appends urllib3's whole retry story; the first clause says it all
        reason = str(exc).split(": HTTPConnectionPool", 1)[0].split(": HTTPSConnectionPool",
                                                                    1)[0]
        return errors.StorageUnavailable(f"{what}: cannot reach the storage API ({reason})",
                                         sent=not _never_sent(exc))
    if isinstance(exc, kexc.http.HttpError):
        code = exc.http_status
        if code == 404:
            return errors.StorageNotFound(f"{what}: not found", status=404)
        if code and code >= 500:
            return errors.StorageUnavailable(f"{what}: server error {code}", status=code)
        return errors.StorageError(f"{what}: HTTP {code} ({exc.message})", status=code)
    if isinstance(exc, kexc.ClientException):
        return errors.StorageError(f"{what}: {exc}")
    if isinstance(exc, cexc.UnsupportedVersion):
        return errors.StorageError(f"{what}: {exc}")
    return errors.StorageError(f"{what}: {type(exc).__name__}: {exc}")


def _never_sent(exc: BaseException) -> bool:
    """Whether a connection failure happened before the request was sent: no TCP
    connection was made (refused, unreachable, connect timeout). A connection that
    broke later may have carried the request, so that is not this."""
    from keystoneauth1 import exceptions as kexc
    if isinstance(exc, kexc.ConnectTimeout):
        return True
    import urllib3.exceptions
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:  # keystoneauth wraps requests' error, which wraps urllib3's
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (urllib3.exceptions.NewConnectionError,
                                urllib3.exceptions.ConnectTimeoutError)):
            return True
        reason = getattr(current, "reason", None)
        linked = [current.__cause__, current.__context__, reason,
                  *(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))]
        pending.extend(e for e in linked if isinstance(e, BaseException))
    return False


def _is_login(exc: BaseException) -> bool:
    """Whether a keystoneauth error came from a request to Keystone's token API."""
    from keystoneauth1 import exceptions as kexc
    if isinstance(exc, kexc.http.HttpError):
        return "/auth/tokens" in (getattr(exc, "url", None) or "")
    return isinstance(exc, kexc.ConnectionError) and "/auth/tokens" in str(exc)


# How often a call that is safe to repeat is tried: waits of 0.2, 0.4, 0.8, 1.6, 3.2 s,
# then 5 s, about 35 s in all, so that a Cinder API restarting or answering 503 for
# half a minute is ridden out (within ATTACHFLOW_STORAGE_DEADLINE, 60 s by default).
ATTEMPTS = 12


def _retrying(kind: str, sleep: Callable[[float], None] = time.sleep,
              deadline: float = DEFAULT_DEADLINE):
    import tenacity

    def retry_on(exc: BaseException) -> bool:
        if not isinstance(exc, errors.StorageUnavailable):
            return False
        if kind == "read":
            return True
        # deletes: only server errors, where the request was answered, not lost
        return exc.status is not None and exc.status >= 500

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retry_on),
        stop=tenacity.stop_after_attempt(ATTEMPTS) | tenacity.stop_after_delay(deadline),
        wait=tenacity.wait_exponential(multiplier=0.2, max=5),
        sleep=sleep, reraise=True)


class CinderStorage(StorageAPI):
    """StorageAPI over python-cinderclient. Construct with ``CinderStorage.connect``."""

    def __init__(self, client, version: tuple[int, int], sleep=time.sleep,
                 deadline: float = DEFAULT_DEADLINE, service_token: bool = True,
                 opened: "StorageSession | None" = None):
        self._client = client
        self._opened = opened
        self.version = version
        self._sleep = sleep
        self._deadline = deadline
        # Whether requests vouch for a service (a service token, or noauth's claim).
        # Without one, Cinder asks Nova before releasing a guest's attachment, and a
        # refusal is its rule, not a hiccup worth retrying.
        self.service_token = service_token

    @classmethod
    def connect(cls, cloud: str | None = None, env: Mapping[str, str] | None = None,
                max_version: str = WANTED_VERSION, service_cloud: str | None = None
                ) -> "CinderStorage":
        from cinderclient import api_versions, client as cclient
        env = os.environ if env is None else env
        with timings.phase("configuration", "storage credentials (clouds.yaml, OS_*)"):
            opened = open_session(cloud, env, service_cloud, TokenCache.from_env(env))
        opened.log_in()
        kwargs: dict[str, Any] = {"session": opened.session}
        if opened.endpoint:
            kwargs["endpoint_override"] = opened.endpoint
        if env_value(env, "OS_REGION_NAME"):
            kwargs["region_name"] = env["OS_REGION_NAME"]
        if env_value(env, "OS_INTERFACE"):
            kwargs["interface"] = env["OS_INTERFACE"]
        deadline = seconds_setting(env, "ATTACHFLOW_STORAGE_DEADLINE", DEFAULT_DEADLINE)

        def negotiate():
            try:
                probe = cclient.Client("3.0", **kwargs)
                return api_versions.discover_version(probe,
                                                     api_versions.APIVersion(max_version))
            except errors.AttachflowError:
                raise
            except Exception as exc:
                raise _translate(exc, "microversion negotiation") from exc

        # A read like any other: a storage API restarting when the command starts is
        # waited for as it would be mid-command.
        with timings.phase("negotiation", "microversion"):
            negotiated = _retrying("read", deadline=deadline)(negotiate)
        try:
            client = cclient.Client(negotiated.get_string(), **kwargs)
        except errors.AttachflowError:
            raise
        except Exception as exc:
            raise _translate(exc, "microversion negotiation") from exc
        version = (negotiated.ver_major, negotiated.ver_minor)
        LOG.debug("cinder: negotiated microversion %d.%d", *version)
        return cls(client, version, deadline=deadline, service_token=opened.service_token,
                   opened=opened)

    def close(self) -> None:
        if self._opened is not None:
            self._opened.keep_tokens()

    def _call(self, what: str, fn: Callable[[], Any], kind: str = "write",
              guarded: bool = False) -> Any:
        """One request. ``kind``: read (retried), delete (retried on 5xx; 404 means
        done) or write (sent once). ``guarded``: Cinder allows it only for a service,
        else asks Nova (attachment_deletion_allowed); without a service token such a
        call is sent once, and its failure says what to configure."""
        start = time.monotonic()

        def once():
            sent = True  # whether the request may have reached the server
            try:
                with timings.phase("storage", what):
                    return fn()
            except errors.AttachflowError as exc:
                sent = getattr(exc, "sent", True)
                raise  # already attachflow's (raising it "from" itself would lose its cause)
            except Exception as exc:
                error = _translate(exc, what, self.service_token)
                sent = getattr(error, "sent", True)
                raise error from exc
            finally:
                if kind != "read" and sent:
                    steps.change_sent()

        try:
            if kind == "write" or guarded and not self.service_token:
                result = once()
            else:
                result = _retrying(kind, self._sleep, self._deadline)(once)
        except errors.StorageNotFound:
            if kind == "delete":
                LOG.debug("cinder: %s -> already gone (404)", what)
                return None
            raise
        except errors.StorageUnavailable as exc:
            if guarded and not self.service_token and (exc.status or 0) >= 500 \
                    and not isinstance(exc, errors.KeystoneUnavailable):
                raise errors.StorageError(
                    f"{exc}. Cinder (2023.2 on) releases a guest's attachment only for a "
                    "service, and asks Nova otherwise; without Nova, give attachflow a "
                    f"service user: {SERVICE_SETTINGS}", status=exc.status) from exc
            raise
        LOG.debug("cinder: %s -> %s (%.0f ms)", what, masked(_plain(result)),
                  (time.monotonic() - start) * 1000)
        return result

    def get_volume(self, volume_id: str) -> Volume:
        try:
            vol = self._call(f"GET volume {volume_id}",
                             lambda: self._client.volumes.get(volume_id), "read")
        except errors.StorageNotFound as exc:
            raise errors.VolumeNotFound(f"volume {volume_id} not found in Cinder") from exc
        return Volume(
            id=vol.id, name=getattr(vol, "name", None), status=vol.status,
            size=int(getattr(vol, "size", 0) or 0),
            multiattach=bool(getattr(vol, "multiattach", False)),
            attach_status=getattr(vol, "attach_status", None),
            migration_status=getattr(vol, "migration_status", None),
            attachments=tuple(VolumeAttachment(
                attachment_id=a.get("attachment_id") or a.get("id"),
                server_id=a.get("server_id"), host_name=a.get("host_name"),
                device=a.get("device")) for a in (vol.attachments or [])))

    def attachment_create(self, volume_id, instance_id, connector):
        att = self._call(f"POST attachment volume={volume_id}",
                         lambda: self._client.attachments.create(volume_id, connector,
                                                                 instance_id))
        raw = att.get("connection_info") or None
        try:
            conn = ConnectionInfo.from_cinder(raw, volume_id) if raw else None
        except errors.AttachflowError:
            # Cinder made the attachment: an answer attachflow cannot use must not leave
            # it behind (nothing upstream knows its id yet).
            with contextlib.suppress(errors.AttachflowError):
                self.attachment_delete(att["id"])
            raise
        return NewAttachment(att["id"], conn)

    def attachment_update(self, attachment_id, volume_id, connector):
        att = self._call(f"PUT attachment {attachment_id}",
                         lambda: self._client.attachments.update(attachment_id, connector))
        return ConnectionInfo.from_cinder(att.connection_info, volume_id)

    def attachment_show(self, attachment_id, volume_id):
        att = self._call(f"GET attachment {attachment_id}",
                         lambda: self._client.attachments.show(attachment_id), "read")
        raw = getattr(att, "connection_info", None)
        return ConnectionInfo.from_cinder(raw, volume_id) if raw else None

    def attachments_of(self, volume_id):
        if self.version < (3, 27):  # no attachment list: the volume's own, attached ones
            return [AttachmentSummary(a.attachment_id, a.server_id, "attached")
                    for a in self.get_volume(volume_id).attachments]
        found = self._call(f"GET attachments volume={volume_id}",
                           lambda: self._client.attachments.list(
                               search_opts={"volume_id": volume_id}), "read")
        return [AttachmentSummary(a.id, getattr(a, "instance", None),
                                  str(getattr(a, "status", "") or getattr(
                                      a, "attach_status", "")))
                for a in found if getattr(a, "volume_id", volume_id) == volume_id]

    def attachment_complete(self, attachment_id):
        self._call(f"POST attachment {attachment_id} os-complete",
                   lambda: self._client.attachments.complete(attachment_id))

    def attachment_delete(self, attachment_id):
        self._call(f"DELETE attachment {attachment_id}",
                   lambda: self._client.attachments.delete(attachment_id), "delete",
                   guarded=True)

    def reserve(self, volume_id):
        self._call(f"os-reserve {volume_id}", lambda: self._client.volumes.reserve(volume_id))

    def unreserve(self, volume_id):
        self._call(f"os-unreserve {volume_id}",
                   lambda: self._client.volumes.unreserve(volume_id))

    def initialize_connection(self, volume_id, connector):
        raw = dict(self._call(
            f"os-initialize_connection {volume_id}",
            lambda: self._client.volumes.initialize_connection(volume_id, connector)))
        try:
            return ConnectionInfo.from_cinder(raw, volume_id)
        except errors.AttachflowError:
            # The volume is exported for this connector now: take that back too.
            with contextlib.suppress(errors.AttachflowError):
                self.terminate_connection(volume_id, connector)
            raise

    def terminate_connection(self, volume_id, connector):
        self._call(f"os-terminate_connection {volume_id}",
                   lambda: self._client.volumes.terminate_connection(volume_id, connector),
                   guarded=True)

    def attach(self, volume_id, instance_id, mountpoint, host_name, mode="rw"):
        self._call(f"os-attach {volume_id}", lambda: self._client.volumes.attach(
            volume_id, instance_id, mountpoint, mode=mode, host_name=host_name))

    def begin_detaching(self, volume_id):
        self._call(f"os-begin_detaching {volume_id}",
                   lambda: self._client.volumes.begin_detaching(volume_id))

    def roll_detaching(self, volume_id):
        self._call(f"os-roll_detaching {volume_id}",
                   lambda: self._client.volumes.roll_detaching(volume_id))

    def detach(self, volume_id, attachment_id):
        self._call(f"os-detach {volume_id}",
                   lambda: self._client.volumes.detach(volume_id, attachment_id),
                   guarded=True)


    # -- volumes themselves: what a scenario run makes and removes -------------------------
    def create_volume(self, name: str, size_gib: int, volume_type: str | None = None) -> str:
        """A new volume's id; it is being created (``get_volume`` says when it is
        available)."""
        vol = self._call(f"POST volume {name}", lambda: self._client.volumes.create(
            size_gib, name=name, volume_type=volume_type))
        return vol.id

    def delete_volume(self, volume_id: str) -> None:
        """Ask Cinder to delete the volume; a volume already gone is a success."""
        self._call(f"DELETE volume {volume_id}",
                   lambda: self._client.volumes.delete(volume_id), "delete")


def _plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        try:
            return value.to_dict()
        except Exception:
            return type(value).__name__
    if isinstance(value, tuple) and value and hasattr(value[0], "status_code"):
        return value[0].status_code
    return value


# ---------------------------------------------------------------------------------------
# The two attach flows, as Cinder sees them

@dataclasses.dataclass
class StorageAttachment:
    """The storage half of one attachment, as the flows hand it around."""

    volume_id: str
    instance_id: str
    api: str
    attachment_id: str | None
    connection: ConnectionInfo
    connector: dict[str, Any]

    @classmethod
    def from_record(cls, rec: "VolumeRecord | None", volume_id: str,
                    instance_id: str) -> "StorageAttachment":
        """The attachment a domain's record describes (its connection without secrets);
        without a record, one the flows must look up."""
        if rec is None:
            return cls(volume_id, instance_id, "attachments", None,
                       ConnectionInfo("unknown", volume_id), {})
        return cls(volume_id, instance_id, rec.api or "attachments", rec.attachment_id,
                   rec.connection, dict(rec.connector))


def _check_attachable(volume: Volume) -> None:
    if volume.status == "available" or (volume.multiattach and volume.status == "in-use"):
        return
    where = ", ".join(f"{a.server_id} on {a.host_name}" for a in volume.attachments)
    raise errors.VolumeStateError(
        f"volume {volume.id} is {volume.status}" + (f" (attached to {where})" if where else "")
        + "; it must be available")


def explain_refusal(storage: StorageAPI, volume_id: str, exc: errors.AttachflowError):
    """When Cinder refuses to start an attach, say why in the user's terms. Costs a GET
    only on the failure path."""
    if isinstance(exc, errors.StorageNotFound):
        return errors.VolumeNotFound(f"volume {volume_id} not found in Cinder")
    if isinstance(exc, errors.VolumeStateError):
        try:
            _check_attachable(storage.get_volume(volume_id))
        except errors.InputError as better:
            return better
    return exc


class Flow(abc.ABC):
    """The storage steps of attach and detach; each returns what its undo needs."""

    api: str

    def __init__(self, storage: StorageAPI):
        self.storage = storage

    @abc.abstractmethod
    def connect(self, volume_id: str, instance_id: str, connector: ConnectorProperties,
                mountpoint: str) -> StorageAttachment: ...

    @abc.abstractmethod
    def undo_connect(self, att: StorageAttachment) -> None: ...

    @abc.abstractmethod
    def finish_attach(self, att: StorageAttachment, mountpoint: str,
                      host_name: str) -> None: ...

    @abc.abstractmethod
    def fresh_connection(self, att: StorageAttachment) -> ConnectionInfo:
        """Connection info with its secrets, asked anew (for re-connecting on undo)."""

    @abc.abstractmethod
    def begin_detach(self, volume_id: str, instance_id: str,
                     rec: "VolumeRecord | None") -> StorageAttachment: ...

    @abc.abstractmethod
    def undo_begin_detach(self, att: StorageAttachment) -> None: ...

    @abc.abstractmethod
    def release(self, att: StorageAttachment) -> None: ...

    # live migration: a second connection for the destination host
    @abc.abstractmethod
    def connect_destination(self, source: StorageAttachment,
                            connector: ConnectorProperties) -> StorageAttachment: ...

    @abc.abstractmethod
    def undo_connect_destination(self, att: StorageAttachment) -> None: ...

    @abc.abstractmethod
    def finish_destination(self, att: StorageAttachment) -> None: ...

    @abc.abstractmethod
    def release_source(self, source: StorageAttachment) -> None: ...

    # Recovery (``recover``): each looks at the storage side first and does only what is
    # left, so running it again, or after the operation itself got further, changes
    # nothing.
    @abc.abstractmethod
    def release_unused(self, volume_id: str, instance_id: str,
                       connector: Mapping[str, Any] | None) -> None:
        """Take back a connection made for ``instance_id`` that never reached a guest."""

    @abc.abstractmethod
    def ensure_attached(self, volume_id: str, instance_id: str, mountpoint: str,
                        host_name: str, attachment_id: str | None) -> None:
        """Finish an attach whose guest has the disk (``attachment_id``: the one the
        operation made, when known)."""

    @abc.abstractmethod
    def end_detach(self, volume_id: str) -> None:
        """Take back the start of a detach whose guest kept the disk."""

    @abc.abstractmethod
    def ensure_released(self, volume_id: str, instance_id: str, attachment_id: str | None,
                        connector: Mapping[str, Any]) -> None:
        """Finish a detach whose guest let the disk go."""

    @abc.abstractmethod
    def release_destination(self, volume_id: str, instance_id: str, source_attachment: str |
                            None, connector: Mapping[str, Any] | None) -> None:
        """Take back a migration's destination connection (the guest stayed)."""

    def release_source_if_present(self, source: StorageAttachment) -> None:
        """Finish a migration's source side (the guest moved)."""
        self.release_source(source)


class AttachmentsFlow(Flow):
    """attachments.create(volume, instance, connector) -> [host work] -> complete;
    detach: [host work] -> attachments.delete. Two storage calls per attach, one per detach."""

    api = "attachments"

    def _create(self, volume_id: str, instance_id: str, conn_dict: dict[str, Any],
                explain: bool = True) -> NewAttachment:
        """attachments.create with a connector. Cinder reserves first and connects
        after; when the connection fails (HTTP 500) the reservation stays and the answer
        does not name it, so the guest's reservations are released here, and the error
        says so."""
        try:
            return self.storage.attachment_create(volume_id, instance_id, conn_dict)
        except (errors.StorageNotFound, errors.VolumeStateError) as exc:
            if not explain:
                raise
            raise explain_refusal(self.storage, volume_id, exc) from exc
        except errors.StorageUnavailable as exc:
            if exc.status is None:   # not answered: nothing is known to have been made
                raise
            released = self._release_reservations(volume_id, instance_id)
            raise type(exc)(f"{exc}; {released}", status=exc.status) from exc

    def _release_reservations(self, volume_id: str, instance_id: str) -> str:
        try:
            left = [a.attachment_id for a in self.storage.attachments_of(volume_id)
                    if a.instance_id == instance_id and a.status == "reserved"]
            for attachment_id in left:
                self.storage.attachment_delete(attachment_id)
        except errors.AttachflowError as exc:
            return (f"could NOT release the reservation Cinder may have left for the "
                    f"guest ({exc}); 'openstack volume attachment list --volume-id "
                    f"{volume_id}' shows it")
        if not left:
            return "Cinder left no reservation"
        return f"released the reservation Cinder left ({', '.join(left)})"

    def connect(self, volume_id, instance_id, connector, mountpoint):
        conn_dict = connector.to_dict(mountpoint=mountpoint)
        new = self._create(volume_id, instance_id, conn_dict)
        conn = new.connection
        if conn is None:  # a server that ignores the connector on create
            try:
                conn = self.storage.attachment_update(new.attachment_id, volume_id,
                                                      conn_dict)
            except Exception:
                self.storage.attachment_delete(new.attachment_id)
                raise
        return StorageAttachment(volume_id, instance_id, self.api, new.attachment_id, conn,
                                 conn_dict)

    def undo_connect(self, att):
        self.storage.attachment_delete(att.attachment_id)

    def finish_attach(self, att, mountpoint, host_name):
        self.storage.attachment_complete(att.attachment_id)

    def begin_detach(self, volume_id, instance_id, rec):
        attachment_id = rec.attachment_id if rec is not None else None
        if not attachment_id:
            vol = self.storage.get_volume(volume_id)
            found = vol.attachment_for(instance_id)
            if found is None:
                raise errors.NotAttached(
                    f"Cinder has no attachment of volume {volume_id} to {instance_id}")
            attachment_id = found.attachment_id
        att = StorageAttachment.from_record(rec, volume_id, instance_id)
        att.api, att.attachment_id = self.api, attachment_id
        return att

    def undo_begin_detach(self, att):
        return None  # nothing changed in Cinder yet

    def fresh_connection(self, att):
        conn = self.storage.attachment_show(att.attachment_id, att.volume_id)
        if conn is None:
            raise errors.StorageError(f"attachment {att.attachment_id} of volume "
                                      f"{att.volume_id} has no connection")
        return conn

    def release(self, att):
        self.storage.attachment_delete(att.attachment_id)

    def connect_destination(self, source, connector):
        # Cinder accepts a second attachment for the same instance only when it is
        # created with the connector (create-then-update is refused as a duplicate).
        conn_dict = connector.to_dict()
        new = self._create(source.volume_id, source.instance_id, conn_dict, explain=False)
        if new.connection is None:
            self.storage.attachment_delete(new.attachment_id)
            raise errors.StorageError("the storage API returned no connection info for "
                                      "the destination attachment")
        return StorageAttachment(source.volume_id, source.instance_id, self.api,
                                 new.attachment_id, new.connection, conn_dict)

    def undo_connect_destination(self, att):
        self.storage.attachment_delete(att.attachment_id)

    def finish_destination(self, att):
        self.storage.attachment_complete(att.attachment_id)

    def release_source(self, source):
        self.storage.attachment_delete(source.attachment_id)

    def _attachments(self, volume_id: str, instance_id: str) -> list[AttachmentSummary]:
        return [a for a in self.storage.attachments_of(volume_id)
                if a.instance_id == instance_id]

    def release_unused(self, volume_id, instance_id, connector):
        for att in self._attachments(volume_id, instance_id):
            self.storage.attachment_delete(att.attachment_id)

    def ensure_attached(self, volume_id, instance_id, mountpoint, host_name,
                        attachment_id):
        for att in self._attachments(volume_id, instance_id):
            if att.status != "attached" and attachment_id in (None, att.attachment_id):
                self.storage.attachment_complete(att.attachment_id)

    def end_detach(self, volume_id):
        return None  # a detach changes nothing in Cinder before its release

    def ensure_released(self, volume_id, instance_id, attachment_id, connector):
        for att in self._attachments(volume_id, instance_id):
            if attachment_id in (None, att.attachment_id):
                self.storage.attachment_delete(att.attachment_id)

    def release_destination(self, volume_id, instance_id, source_attachment, connector):
        for att in self._attachments(volume_id, instance_id):
            if att.attachment_id != source_attachment:
                self.storage.attachment_delete(att.attachment_id)

    def release_source_if_present(self, source):
        if any(a.attachment_id == source.attachment_id
               for a in self._attachments(source.volume_id, source.instance_id)):
            self.storage.attachment_delete(source.attachment_id)


class LegacyFlow(Flow):
    """os-reserve -> os-initialize_connection -> [host work] -> os-attach;
    detach: os-begin_detaching -> [host work] -> os-terminate_connection -> os-detach."""

    api = "legacy"

    def connect(self, volume_id, instance_id, connector, mountpoint):
        try:
            self.storage.reserve(volume_id)
        except (errors.StorageNotFound, errors.VolumeStateError) as exc:
            raise explain_refusal(self.storage, volume_id, exc) from exc
        conn_dict = connector.to_dict()
        try:
            conn = self.storage.initialize_connection(volume_id, conn_dict)
        except BaseException:
            self.storage.unreserve(volume_id)
            raise
        return StorageAttachment(volume_id, instance_id, self.api, None, conn, conn_dict)

    def undo_connect(self, att):
        # Cinder's legacy API removes a volume's export only on os-detach; terminate and
        # unreserve would leave the target exported. So the undo records the attach and
        # detaches it again, which removes the export and returns the volume to
        # 'available'. Only if that fails does it fall back to unreserve.
        self.storage.terminate_connection(att.volume_id, att.connector)
        try:
            self.storage.attach(att.volume_id, att.instance_id, "/dev/null",
                                att.connector.get("host"), mode=att.connection.access_mode)
        except errors.AttachflowError:
            self.storage.unreserve(att.volume_id)
            raise
        found = self.storage.get_volume(att.volume_id).attachment_for(att.instance_id)
        self.storage.begin_detaching(att.volume_id)
        try:
            self.storage.detach(att.volume_id, found.attachment_id if found else None)
        except errors.AttachflowError:
            self.storage.roll_detaching(att.volume_id)
            raise

    def finish_attach(self, att, mountpoint, host_name):
        self.storage.attach(att.volume_id, att.instance_id, mountpoint, host_name,
                            mode=att.connection.access_mode)

    def begin_detach(self, volume_id, instance_id, rec):
        vol = self.storage.get_volume(volume_id)
        found = vol.attachment_for(instance_id)
        if found is None:
            raise errors.NotAttached(
                f"Cinder has no attachment of volume {volume_id} to {instance_id}")
        self.storage.begin_detaching(volume_id)
        att = StorageAttachment.from_record(rec, volume_id, instance_id)
        att.api, att.attachment_id = self.api, found.attachment_id
        return att

    def undo_begin_detach(self, att):
        self.storage.roll_detaching(att.volume_id)

    def fresh_connection(self, att):
        return self.storage.initialize_connection(att.volume_id, att.connector)

    def release(self, att):
        self.storage.terminate_connection(att.volume_id, att.connector)
        try:
            self.storage.detach(att.volume_id, att.attachment_id)
        except errors.AttachflowError:
            # put the export back so that the undo of the earlier steps finds the volume
            # as it was; if that fails too, the undo reports it
            self.storage.initialize_connection(att.volume_id, att.connector)
            raise


    def connect_destination(self, source, connector):
        conn_dict = connector.to_dict()
        conn = self.storage.initialize_connection(source.volume_id, conn_dict)
        return StorageAttachment(source.volume_id, source.instance_id, self.api,
                                 source.attachment_id, conn, conn_dict)

    def undo_connect_destination(self, att):
        self.storage.terminate_connection(att.volume_id, att.connector)

    def finish_destination(self, att):
        return None  # the legacy volume record stays in-use throughout

    def release_source(self, source):
        self.storage.terminate_connection(source.volume_id, source.connector)

    def release_unused(self, volume_id, instance_id, connector):
        if self.storage.get_volume(volume_id).status not in ("attaching", "reserved"):
            return
        if connector:
            # As the flow's own undo: attach and detach again, which is what removes the
            # export; unreserve alone would leave it.
            self.undo_connect(StorageAttachment(volume_id, instance_id, self.api, None,
                                                ConnectionInfo("iscsi", volume_id),
                                                dict(connector)))
        else:
            self.storage.unreserve(volume_id)

    def ensure_attached(self, volume_id, instance_id, mountpoint, host_name,
                        attachment_id):
        if self.storage.get_volume(volume_id).attachment_for(instance_id) is None:
            self.storage.attach(volume_id, instance_id, mountpoint, host_name)

    def end_detach(self, volume_id):
        if self.storage.get_volume(volume_id).status == "detaching":
            self.storage.roll_detaching(volume_id)

    def ensure_released(self, volume_id, instance_id, attachment_id, connector):
        found = self.storage.get_volume(volume_id).attachment_for(instance_id)
        if found is not None:
            self.storage.terminate_connection(volume_id, dict(connector))
            self.storage.detach(volume_id, found.attachment_id)

    def release_destination(self, volume_id, instance_id, source_attachment, connector):
        if connector:
            self.storage.terminate_connection(volume_id, dict(connector))


def select_flow(storage: StorageAPI, api: str = "auto") -> Flow:
    if api == "legacy":
        return LegacyFlow(storage)
    if api == "attachments":
        if storage.version < ATTACHMENTS_MIN:
            raise errors.InputError(
                "the storage API speaks microversion %d.%d; the attachments API needs 3.44 "
                "(use --api legacy)" % storage.version)
        return AttachmentsFlow(storage)
    if api == "auto":
        return AttachmentsFlow(storage) if storage.version >= ATTACHMENTS_MIN \
            else LegacyFlow(storage)
    raise errors.InputError(f"unknown API '{api}' (auto, attachments or legacy)")


def flow_for_record(storage: StorageAPI, rec: "VolumeRecord | None", api: str) -> Flow:
    """Detach through the API the volume was attached with, unless told otherwise."""
    if api == "auto" and rec is not None and rec.api is not None:
        return select_flow(storage, rec.api)
    return select_flow(storage, api)
