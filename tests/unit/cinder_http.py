"""A small stand-in for Cinder's v3 REST API on 127.0.0.1, for testing ``CinderStorage``
at the HTTP level: python-cinderclient and keystoneauth1 talk to it as to a real Cinder.

It answers what attachflow sends -- version discovery, GET volume, the attachments API
and the volume actions -- in the JSON shapes Cinder uses (connection info flat in
attachments, nested ``{driver_volume_type, data}`` from os-initialize_connection; errors
as ``{"badRequest": {"code": 400, "message": ...}}``). Every request is recorded with its
method, path, headers and JSON body. ``script`` replaces the next answers to one method
and path, to play errors and slow answers.

It keeps only the state the answers need (volumes, attachments); it does not check
Cinder's state machine: ``twins.FakeCinder`` does that.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import re
import threading
import uuid
from typing import Any

PROJECT = "p"
PORTAL = "198.18.0.1:3260"
CHAP_PASSWORD = "chap-Pa55-w0rd-9137"

# Cinder's names for error bodies (cinder/api/openstack/wsgi.py, Fault._fault_names)
_FAULT_NAMES = {400: "badRequest", 401: "unauthorized", 403: "forbidden",
                404: "itemNotFound", 405: "badMethod", 409: "conflictingRequest",
                413: "overLimit", 415: "badMediaType", 501: "notImplemented",
                503: "serviceUnavailable"}


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # parsed JSON, or None without a body

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclasses.dataclass
class Answer:
    status: int
    body: Any = None  # sent as JSON; a str is sent as it is, as text/html
    delay: float = 0.0  # seconds to wait before answering
    headers: dict[str, str] = dataclasses.field(default_factory=dict)  # sent besides


def fault(status: int, message: str) -> Answer:
    """An error answer in Cinder's shape."""
    name = _FAULT_NAMES.get(status, "computeFault")
    return Answer(status, {name: {"code": status, "message": message}})


def volume_doc(volume_id: str, status: str = "available", attachments=(),
               multiattach: bool = False, name: str = "data") -> dict[str, Any]:
    """A volume as GET /v3/{project}/volumes/{id} shows it at 3.71 (cinder/api/v2/views/
    volumes.py plus the v3 additions)."""
    return {
        "id": volume_id, "name": name, "status": status, "size": 1,
        "availability_zone": "nova", "created_at": "2024-05-02T10:11:12.000000",
        "updated_at": "2024-05-02T10:11:13.000000", "description": None,
        "volume_type": "lvmdriver-1", "volume_type_id": "5f8f4b2c-0d3c-4bc8-9f8e-1d1fe1c0c1a1",
        "snapshot_id": None, "source_volid": None, "metadata": {},
        "links": [{"href": f"http://127.0.0.1/v3/{PROJECT}/volumes/{volume_id}",
                   "rel": "self"}],
        "user_id": "u", "bootable": "false", "encrypted": False,
        "replication_status": None, "consistencygroup_id": None, "group_id": None,
        "multiattach": multiattach, "shared_targets": True,
        "service_uuid": "0b6b3f0e-9d0c-4b43-a0d5-5c6d3b0fb1f3", "consumes_quota": True,
        "attachments": [dict(a) for a in attachments],
    }


def iscsi_data(volume_id: str, lun: int = 1) -> dict[str, Any]:
    """What Cinder's LVM/tgt driver returns from initialize_connection, under 'data'."""
    return {"target_discovered": False,
            "target_iqn": f"iqn.2010-10.org.openstack:volume-{volume_id}",
            "target_portal": PORTAL, "target_lun": lun, "volume_id": volume_id,
            "auth_method": "CHAP", "auth_username": "kH3nZ9qbX2vQ",
            "auth_password": CHAP_PASSWORD, "encrypted": False, "qos_specs": None,
            "access_mode": "rw", "cacheable": False}


class FakeCinderAPI:
    """Cinder's v3 API in a thread. ``with FakeCinderAPI() as api:`` serves on
    ``api.endpoint``; leaving the block stops it (the port then refuses).
    ``max_version`` is the highest microversion it offers; None plays a Cinder without
    microversions."""

    def __init__(self, max_version: str | None = "3.71"):
        self.max_version = max_version
        self.requests: list[Request] = []
        self.volumes: dict[str, dict[str, Any]] = {}
        self.attachments: dict[str, dict[str, Any]] = {}
        self.service_tokens: set[str] = set()  # tokens of users with the service role
        # Keystone's side: every token issued (token -> role), those revoked since, users
        # disabled, and the projects that exist.
        self.tokens: dict[str, str] = {}
        self.revoked: set[str] = set()
        self.disabled: set[str] = set()
        self.projects = {"demo", "service"}
        self.logins = 0
        # Whether Cinder finds Nova in the catalog when it asks about an attachment's
        # guest: with Nova it refuses with 409; without (a standalone Cinder, as in the
        # lab) the lookup fails and Cinder answers 500.
        self.nova_in_catalog = True
        self.keystone_unavailable = False  # Keystone's logins answer 503
        self._script: dict[tuple[str, str], list[Answer]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up --------------------------------------------------------------------------

    def add_volume(self, volume_id: str, **kwargs) -> dict[str, Any]:
        self.volumes[volume_id] = volume_doc(volume_id, **kwargs)
        return self.volumes[volume_id]

    def script(self, method: str, path: str, *answers: Answer) -> None:
        """The next answers to ``method path`` (path under /v3/{project}, or "/" for the
        version document), in order; once they are used up, the API answers as usual."""
        self._script.setdefault((method, path), []).extend(answers)

    # -- what was asked ------------------------------------------------------------------

    def calls(self, method: str | None = None, path: str | None = None) -> list[Request]:
        """The recorded requests to the project's API (discovery left out), optionally
        only those with this method and path (under /v3/{project})."""
        prefix = f"/v3/{PROJECT}"
        return [r for r in self.requests if r.path.startswith(prefix + "/")
                and (method is None or r.method == method)
                and (path is None or r.path == prefix + path)]

    def routes(self) -> list[tuple[str, str]]:
        """(method, path under /v3/{project}) of every recorded request but discovery."""
        n = len(f"/v3/{PROJECT}")
        return [(r.method, r.path[n:]) for r in self.calls()]

    def clear(self) -> None:
        self.requests.clear()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment attachflow reads to reach this API with noauth."""
        return {"OS_AUTH_TYPE": "noauth", "OS_USER_ID": "u", "OS_PROJECT_ID": PROJECT,
                "OS_ENDPOINT": self.endpoint, **extra}

    def start(self) -> "FakeCinderAPI":
        api = self

        class Handler(_Handler):
            fake = api

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes answers that are being delayed
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()

    def __enter__(self) -> "FakeCinderAPI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answers -------------------------------------------------------------------------

    def answer(self, req: Request) -> Answer:
        with self._lock:
            self.requests.append(req)
            if req.method == "GET" and req.path == "/":
                queued = self._script.get(("GET", "/"))  # the root: version discovery
                return queued.pop(0) if queued else self._versions()
            if req.method == "GET" and req.path.rstrip("/") == "/identity/v3":
                return Answer(200, {"version": {
                    "id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                    "links": [{"rel": "self",
                               "href": f"http://127.0.0.1:{self.port}/identity/v3/"}],
                    "media-types": [{"base": "application/json",
                                     "type": "application/vnd.openstack.identity-v3+json"}]}})
            if req.method == "POST" and req.path == "/identity/v3/auth/tokens":
                if self.keystone_unavailable:
                    return fault(503, "Service Unavailable")
                return self._token(req.body)
            prefix = f"/v3/{PROJECT}"
            if not req.path.startswith(prefix + "/"):
                return fault(404, f"no route for {req.path}")
            path = req.path[len(prefix):]
            token = req.header("X-Auth-Token") or ""
            # keystonemiddleware: a token Keystone issued must still be valid (noauth's
            # "user:project" tokens are not Keystone's)
            if ":" not in token and (token not in self.tokens or token in self.revoked):
                return fault(401, "The request you have made requires authentication.")
            if self.tokens.get(token) == "reader" and req.method != "GET":
                return fault(403, "Policy doesn't allow volume:attachment_create to be "
                                  "performed.")
            queued = self._script.get((req.method, path))
            if queued:
                return queued.pop(0)
            return self._route(req.method, path, req.body, self._from_a_service(req))

    def revoke(self, token: str) -> None:
        self.revoked.add(token)

    def _token(self, body: Any) -> Answer:
        """Keystone's answer to a password authentication: a token whose catalog has
        Cinder public in RegionOne (as 127.0.0.1), public in RegionTwo (as localhost) and
        internal in RegionTwo (as 127.1), so a request's Host header tells which
        endpoint was chosen. Keystone does not say why it refuses a login: a wrong
        password, a disabled user and a project that does not exist all get the same
        401."""
        user = body["auth"]["identity"]["password"]["user"]
        # a user's password says its role: "secret" member, "svc-secret" service (and its
        # own token), "reader-secret" reader
        role = {"secret": "member", "svc-secret": "service",
                "reader-secret": "reader"}.get(user.get("password"))
        project = body["auth"].get("scope", {}).get("project", {})
        if role is None or user.get("name", user.get("id")) in self.disabled \
                or project.get("name", project.get("id")) not in self.projects | {"svc-project"}:
            return Answer(401, {"error": {"code": 401, "title": "Unauthorized",
                                          "message": "The request you have made requires "
                                                     "authentication."}})
        self.logins += 1
        issued = {"member": "tok-1", "reader": "tok-reader"}.get(
            role, f"tok-svc-{user.get('name')}")
        # a login after a revocation gets a new token
        while issued in self.revoked:
            issued += "+"
        self.tokens[issued] = role
        endpoints = [
            {"id": "e1", "interface": "public", "region": "RegionOne",
             "region_id": "RegionOne", "url": f"http://127.0.0.1:{self.port}/v3/{PROJECT}"},
            {"id": "e2", "interface": "public", "region": "RegionTwo",
             "region_id": "RegionTwo", "url": f"http://localhost:{self.port}/v3/{PROJECT}"},
            {"id": "e3", "interface": "internal", "region": "RegionTwo",
             "region_id": "RegionTwo", "url": f"http://127.1:{self.port}/v3/{PROJECT}"}]
        token = {"methods": ["password"], "expires_at": "2999-01-01T00:00:00.000000Z",
                 "issued_at": "2024-05-02T10:00:00.000000Z",
                 "user": {"id": "u", "name": user.get("name"),
                          "domain": {"id": "default", "name": "Default"}},
                 "project": {"id": PROJECT, "name": "demo",
                             "domain": {"id": "default", "name": "Default"}},
                 "roles": [{"id": "r1", "name": role}],
                 "catalog": [{"id": "s1", "type": "volumev3", "name": "cinderv3",
                              "endpoints": endpoints}]}
        if role == "service":
            self.service_tokens.add(issued)
        return Answer(201, {"token": token}, headers={"X-Subject-Token": issued})

    def _versions(self) -> Answer:
        # GET / on Cinder answers 300 Multiple Choices with the versions document
        v3 = {"id": "v3.0", "status": "CURRENT", "version": self.max_version,
              "min_version": "3.0", "updated": "2023-08-31T00:00:00Z",
              "links": [{"href": "https://docs.openstack.org/", "rel": "describedby",
                         "type": "text/html"},
                        {"href": f"http://127.0.0.1:{self.port}/v3/", "rel": "self"}],
              "media-types": [{"base": "application/json",
                               "type": "application/vnd.openstack.volume+json;version=3"}]}
        if self.max_version is None:  # a Cinder without microversions (before Mitaka)
            v3 = dict(v3, id="v2.0", version="", min_version="")
        return Answer(300, {"versions": [v3]})

    def _from_a_service(self, req: Request) -> bool:
        """Cinder's test for a call from a service (2023.2 on): noauth's claimed role,
        or a valid service token of a user with the service role."""
        roles = req.header("X-Service-Roles") or ""
        service = req.header("X-Service-Token")
        return "service" in roles.split(",") or \
            service in self.service_tokens and service not in self.revoked

    def _route(self, method: str, path: str, body: Any, from_a_service: bool) -> Answer:
        m = re.fullmatch(r"/volumes/([^/]+)", path)
        if m and method == "GET":
            vol = self.volumes.get(m[1])
            if vol is None:
                return fault(404, f"Volume {m[1]} could not be found.")
            return Answer(200, {"volume": vol})
        m = re.fullmatch(r"/volumes/([^/]+)/action", path)
        if m and method == "POST":
            return self._volume_action(m[1], body)
        if path == "/attachments" and method == "POST":
            return self._attachment_create(body["attachment"])
        m = re.fullmatch(r"/attachments/([^/]+)(/action)?", path)
        if m:
            att = self.attachments.get(m[1])
            if att is None:
                return fault(404, f"VolumeAttachment {m[1]} could not be found.")
            if m[2] and method == "POST" and body == {"os-complete": None}:
                att["status"] = "attached"
                return Answer(204)
            if not m[2] and method == "GET":
                return Answer(200, {"attachment": att})
            if not m[2] and method == "PUT":
                att.update(status="attaching", connection_info=self._connection(
                    att["volume_id"], att["id"]))
                return Answer(200, {"attachment": att})
            if not m[2] and method == "DELETE":
                if att.get("instance") and att.get("connection_info") and not from_a_service:
                    if not self.nova_in_catalog:
                        return fault(500, "The server has either erred or is incapable of "
                                          "performing the requested operation.")
                    return fault(409, f"Detach volume from instance {att.get('instance')} "
                                      "using the Compute API")
                del self.attachments[m[1]]
                left = [{k: a[k] for k in ("id", "status", "instance", "volume_id")}
                        for a in self.attachments.values()
                        if a["volume_id"] == att["volume_id"]]
                return Answer(200, {"attachments": left})
        return fault(404, f"no route for {method} {path}")

    def _volume_action(self, volume_id: str, body: Any) -> Answer:
        if volume_id not in self.volumes:
            return fault(404, f"Volume {volume_id} could not be found.")
        (action, _args), = body.items()
        if action == "os-initialize_connection":
            return Answer(200, {"connection_info": {"driver_volume_type": "iscsi",
                                                    "data": iscsi_data(volume_id)}})
        if action in ("os-reserve", "os-unreserve", "os-terminate_connection", "os-attach",
                      "os-begin_detaching", "os-roll_detaching", "os-detach"):
            return Answer(202)
        return fault(400, f"There is no such action: {action}")

    def _attachment_create(self, spec: dict[str, Any]) -> Answer:
        volume_id = spec["volume_uuid"]
        if volume_id not in self.volumes:
            return fault(404, f"Volume {volume_id} could not be found.")
        att_id = str(uuid.uuid4())
        att = {"id": att_id, "status": "reserved", "instance": spec.get("instance_uuid"),
               "volume_id": volume_id, "attached_at": "", "detached_at": "",
               "attach_mode": "null", "connection_info": {}}
        if spec.get("connector"):
            att.update(status="attaching", attach_mode="rw",
                       connection_info=self._connection(volume_id, att_id))
        self.attachments[att_id] = att
        return Answer(200, {"attachment": att})

    @staticmethod
    def _connection(volume_id: str, attachment_id: str) -> dict[str, Any]:
        # the attachments API flattens the driver's answer and adds the attachment's id
        # (cinder/volume/manager.py, _connection_create and attachment_update)
        return {"driver_volume_type": "iscsi", **iscsi_data(volume_id),
                "attachment_id": attachment_id}


class _Handler(http.server.BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so that a stopped API refuses at once instead
    # of answering on a connection kept alive from before
    fake: FakeCinderAPI

    def log_message(self, *args) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        req = Request(self.command, self.path.split("?", 1)[0],
                      {k.lower(): v for k, v in self.headers.items()},
                      json.loads(raw) if raw else None)
        ans = self.fake.answer(req)
        if ans.delay and self.fake._stopping.wait(ans.delay):
            return
        if isinstance(ans.body, str):  # e.g. a proxy's HTML error page
            payload, ctype = ans.body.encode(), "text/html"
        else:
            payload = json.dumps(ans.body).encode() if ans.body is not None else b""
            ctype = "application/json"
        try:
            self.send_response(ans.status)
            if payload:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            if req.header("OpenStack-API-Version"):
                self.send_header("OpenStack-API-Version", req.header("OpenStack-API-Version"))
            self.send_header("x-openstack-request-id", "req-" + str(uuid.uuid4()))
            for name, value in ans.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting

    do_GET = do_POST = do_PUT = do_DELETE = _handle
