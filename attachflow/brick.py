"""The host connector: os-brick's connect and disconnect of a volume on a compute host.

The side effect owned here is os-brick itself, behind the ``HostConnector`` seam:
``BrickLocal`` calls it in this process, ``BrickRemote`` runs ``attachflow host-call`` on
the host through a ``Runner`` with the secret-bearing JSON request on stdin, never in argv,
and ``host_call`` is what that command (``attachflow.host_call``) runs on the host. The
tests' in-memory twin is ``FakeBrick`` in ``tests/unit/twins.py``.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import shlex
import threading
from typing import Any

from attachflow import errors, timings
from attachflow.hosts import HostConfig, local_address
from attachflow.model import masked
from attachflow.remote import Runner, Stream

LOG = logging.getLogger("attachflow.brick")


class HostConnector(abc.ABC):
    """os-brick's three calls, wherever they run."""

    @abc.abstractmethod
    def properties(self, my_ip: str, multipath: bool) -> dict[str, Any]: ...

    @abc.abstractmethod
    def connect(self, protocol: str, props: dict[str, Any],
                multipath: bool) -> dict[str, Any]: ...

    @abc.abstractmethod
    def disconnect(self, protocol: str, props: dict[str, Any], device_info: dict[str, Any],
                   multipath: bool) -> None: ...

    def close(self) -> None:
        """Let go of what the connector keeps open between calls."""


_BRICK_READY = threading.Lock()
_brick_set_up = False
# Where os-brick's connect and disconnect take their host-wide locks (oslo.concurrency
# file locks), so that two attachflow processes on one host never rescan or log in and
# out at the same time. OSLO_LOCK_PATH, oslo.concurrency's own setting, overrides it.
LOCK_PATH = "/run/attachflow/os-brick-locks"


def _brick():
    """Import os-brick lazily (it costs about half a second), give its host-wide locks a
    directory, and let its privileged calls run in this process when we are root, since
    there is no sudo to spawn a helper."""
    global _brick_set_up
    from os_brick.initiator import connector as brick_connector
    with _BRICK_READY:
        if not _brick_set_up:
            from oslo_concurrency import lockutils
            import os_brick.privileged
            lock_path = os.environ.get("OSLO_LOCK_PATH") or LOCK_PATH
            os.makedirs(lock_path, mode=0o700, exist_ok=True)
            lockutils.set_defaults(lock_path)
            if os.geteuid() == 0:
                os_brick.privileged.default.set_client_mode(False)
            _brick_set_up = True
    return brick_connector


class BrickLocal(HostConnector):
    def properties(self, my_ip, multipath):
        LOG.debug("os-brick: connector properties (ip %s, multipath %s)", my_ip, multipath)
        try:
            return _brick().get_connector_properties(None, my_ip, multipath, False)
        except Exception as exc:
            raise errors.HostError(f"connector properties: {_text(exc)}") from exc

    def _connector(self, protocol, multipath):
        return _brick().InitiatorConnector.factory(protocol, None, use_multipath=multipath,
                                                   device_scan_attempts=3)

    def connect(self, protocol, props, multipath):
        LOG.debug("os-brick: connect_volume %s %s", protocol, masked(props))
        try:
            return dict(self._connector(protocol, multipath).connect_volume(props))
        except Exception as exc:
            raise errors.HostError(f"os-brick connect_volume ({protocol}): "
                                   f"{_scrub(_text(exc), props)}") from _scrubbed(exc, props)

    def disconnect(self, protocol, props, device_info, multipath):
        LOG.debug("os-brick: disconnect_volume %s %s %s", protocol, masked(props), device_info)
        try:
            self._connector(protocol, multipath).disconnect_volume(props, device_info,
                                                                   force=False)
        except Exception as exc:
            raise errors.HostError(f"os-brick disconnect_volume ({protocol}): "
                                   f"{_scrub(_text(exc), props)}") from _scrubbed(exc, props)


def _text(exc: BaseException) -> str:
    """An exception's message; some of oslo's fail to format themselves."""
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return type(exc).__name__


class BrickFailure(Exception):
    """os-brick's exception as a cause: its type, its message with the CHAP passwords
    removed, and its traceback (os-brick quotes the iscsiadm command lines it ran, and
    those carry the password as a bare argument no log mask recognises)."""


def _scrubbed(exc: BaseException, props: dict[str, Any]) -> BrickFailure:
    cause = BrickFailure(f"{type(exc).__name__}: {_scrub(_text(exc), props)}")
    return cause.with_traceback(exc.__traceback__)


def _scrub(text: str, props: dict[str, Any]) -> str:
    for key, value in props.items():
        if isinstance(value, str) and value and "password" in key:
            text = text.replace(value, "***")
    return text


class BrickRemote(HostConnector):
    """Runs ``attachflow host-call`` on the host; requests (with CHAP data) go on stdin,
    answers come back as JSON on stdout. One ``host-call --serve`` is kept running per
    host for the caller's whole command, so the host starts Python and imports os-brick
    once, not once per call; a host whose attachflow has no ``--serve`` (an older
    version) gets one ``host-call`` per request, as before."""

    def __init__(self, runner: Runner, cfg: HostConfig):
        self.runner = runner
        self.cfg = cfg
        self._stream: Stream | None = None
        self._one_shot = False      # the host answers one request per command only
        # One request at a time on the stream (a migration finishes volumes in threads).
        self._lock = threading.Lock()

    def _argv(self, *extra: str) -> list[str]:
        return shlex.split(self.cfg.remote_command) + ["host-call", *extra]

    def _call(self, request: dict[str, Any]) -> Any:
        LOG.debug("os-brick on %s: %s", self.cfg.name, masked(request))
        with timings.phase("host-call", f"{request['op']} on {self.cfg.name}"), self._lock:
            stream = self._served()
            if stream is None:
                return self._call_once(request)
            try:
                line = stream.exchange(json.dumps(request).encode())
            except errors.HostError as exc:
                self._drop_stream()
                raise errors.HostError(f"{self.cfg.name}: host-call {request['op']}: "
                                       f"{exc}") from exc
        try:
            reply = json.loads(line)
            if "answer" in reply:
                return reply["answer"]
            error = str(reply["error"])
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.HostError(f"{self.cfg.name}: host-call {request['op']}: "
                                   "unreadable answer") from exc
        raise errors.HostError(f"{self.cfg.name}: host-call {request['op']}: {error}")

    def _served(self) -> Stream | None:
        """The running ``host-call --serve``, started on first use; None when the host
        answers one-shot calls only."""
        if self._stream is not None or self._one_shot:
            return self._stream
        stream = self.runner.open_stream(self._argv("--serve"))
        if stream is None:
            self._one_shot = True
            return None
        try:
            hello = stream.readline()
        except TimeoutError:
            hello = None
        try:
            served = hello is not None and json.loads(hello) == {"serving": 1}
        except ValueError:
            served = False
        if not served:
            LOG.debug("os-brick on %s: no host-call --serve there; one call per request",
                      self.cfg.name)
            stream.close()
            self._one_shot = True
            return None
        self._stream = stream
        return stream

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _call_once(self, request: dict[str, Any]) -> Any:
        rc, out, err = self.runner.run(self._argv(), json.dumps(request).encode())
        if rc != 0:
            line = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise errors.HostError(f"{self.cfg.name}: host-call {request['op']}: {line}")
        try:
            return json.loads(out or b"null")
        except ValueError as exc:
            raise errors.HostError(f"{self.cfg.name}: host-call {request['op']}: "
                                   "unreadable answer") from exc

    def close(self) -> None:
        with self._lock:
            self._drop_stream()

    def properties(self, my_ip, multipath):
        return self._call({"op": "properties", "my_ip": my_ip, "multipath": multipath})

    def connect(self, protocol, props, multipath):
        return self._call({"op": "connect", "protocol": protocol, "props": props,
                           "multipath": multipath})

    def disconnect(self, protocol, props, device_info, multipath):
        self._call({"op": "disconnect", "protocol": protocol, "props": props,
                    "device_info": device_info, "multipath": multipath})


def host_call(request: dict[str, Any], brick: HostConnector | None = None) -> Any:
    """The host end of BrickRemote: one request in, one JSON-able answer out."""
    brick = brick or BrickLocal()
    op = request.get("op")
    if op == "properties":
        return brick.properties(request.get("my_ip") or local_address(),
                                bool(request.get("multipath")))
    if op == "connect":
        return brick.connect(request["protocol"], request["props"],
                             bool(request.get("multipath")))
    if op == "disconnect":
        brick.disconnect(request["protocol"], request["props"],
                         request.get("device_info") or {}, bool(request.get("multipath")))
        return None
    raise errors.InputError(f"unknown host-call op '{op}'")
