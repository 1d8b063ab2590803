"""CinderStorage, the real storage adapter, against Cinder's v3 API over HTTP.

python-cinderclient and keystoneauth1 run unchanged; only the server is a stand-in
(``cinder_http.FakeCinderAPI``). Each test states the request a user's Cinder would
receive -- method, path, microversion header, JSON body -- and what attachflow makes of
the answer, so a call that sends nothing, sends the wrong thing or misreads an error
fails here rather than in the lab.
"""

import json
import logging
import os

import pytest

from attachflow import cinder_side, errors
from attachflow.cinder_side import AttachmentsFlow, CinderStorage, LegacyFlow, select_flow
from attachflow.identity import SERVICE_SETTINGS
from attachflow.model import (ConnectionInfo, ConnectorProperties, NewAttachment, Volume,
                              VolumeAttachment)
from attachflow.record import VolumeRecord

from cinder_http import (CHAP_PASSWORD, PORTAL, Answer, FakeCinderAPI, fault,
                         iscsi_data)

VOL = "6c2b4a1e-3f0d-4e8b-9a57-0d1c2e3f4a5b"
INSTANCE = "1f0e9d8c-7b6a-4c5d-8e9f-0a1b2c3d4e5f"
ATT = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
CONNECTOR = {"platform": "x86_64", "os_type": "linux", "ip": "198.18.0.11",
             "host": "hosta", "multipath": False,
             "initiator": "iqn.2004-10.com.ubuntu:01:5c1f0d6a3b2e",
             "do_local_attach": False, "mountpoint": "/dev/vdb"}


@pytest.fixture
def api():
    with FakeCinderAPI() as fake:
        fake.add_volume(VOL)
        yield fake


def connect(api, **env):
    """CinderStorage.connect as the CLI calls it, with retries that do not sleep; the
    pauses asked for are kept in ``.sleeps``."""
    connected = CinderStorage.connect(env=api.env(**env))
    sleeps = []
    storage = CinderStorage(connected._client, connected.version, sleep=sleeps.append)
    storage.sleeps = sleeps
    api.clear()
    return storage


@pytest.fixture
def storage(api):
    return connect(api)


def sent(api, method, path, body=None, version="3.71"):
    """The one request the last call made, checked against what Cinder expects."""
    assert api.routes() == [(method, path)]
    req = api.calls()[0]
    assert req.header("OpenStack-API-Version") == f"volume {version}"
    assert req.header("X-Service-Roles") == "service"  # noauth: see make_session
    assert req.header("X-Project-Id") == "p" and req.header("X-User-Id") == "u"
    assert req.body == body
    if body is not None:
        assert req.header("Content-Type") == "application/json"
    return req


# ---------------------------------------------------------------------------------------
# connect: version discovery

def test_connect_discovers_the_microversion_at_the_root():
    with FakeCinderAPI() as api:
        api.add_volume(VOL)
        storage = CinderStorage.connect(env=api.env())
        assert storage.version == (3, 71)
        first = api.requests[0]
        assert (first.method, first.path) == ("GET", "/")
        assert first.header("OpenStack-API-Version") is None
        assert len(api.requests) == 1
        storage.reserve(VOL)  # later requests use the negotiated microversion
        assert api.calls()[0].header("OpenStack-API-Version") == "volume 3.71"


def test_an_older_cinder_gets_its_own_microversion_and_the_legacy_flow():
    with FakeCinderAPI(max_version="3.40") as api:
        api.add_volume(VOL)
        storage = connect(api)
        assert storage.version == (3, 40)
        assert isinstance(select_flow(storage, "auto"), LegacyFlow)
        storage.get_volume(VOL)
        sent(api, "GET", f"/volumes/{VOL}", version="3.40")


def test_a_newer_cinder_is_spoken_to_at_the_clients_highest_microversion():
    with FakeCinderAPI(max_version="3.99") as api:
        assert CinderStorage.connect(env=api.env()).version == (3, 71)


def test_a_cinder_without_microversions_is_refused():
    with FakeCinderAPI(max_version=None) as api:
        with pytest.raises(errors.StorageError, match="microversion negotiation"):
            CinderStorage.connect(env=api.env())


def test_an_unreachable_api_fails_discovery_as_unavailable_at_the_deadline():
    with FakeCinderAPI() as api:
        api.stop()
        with pytest.raises(errors.StorageUnavailable, match="microversion negotiation"):
            CinderStorage.connect(env=api.env(ATTACHFLOW_STORAGE_DEADLINE="1"))


def test_discovery_waits_out_a_storage_api_that_is_restarting():
    with FakeCinderAPI() as api:
        api.script("GET", "/", fault(503, "Service Unavailable"), fault(502, "Bad Gateway"))
        assert CinderStorage.connect(env=api.env()).version == (3, 71)
        assert [(r.method, r.path) for r in api.requests] == [("GET", "/")] * 3


# ---------------------------------------------------------------------------------------
# each StorageAPI method: the request, and what comes back

def test_get_volume(api, storage):
    api.add_volume(VOL, status="in-use", multiattach=True, attachments=[
        # Cinder's shape (cinder/api/v2/views/volumes.py, _get_attachments)
        {"id": VOL, "attachment_id": ATT, "volume_id": VOL, "server_id": INSTANCE,
         "host_name": "hosta", "device": "/dev/vdb",
         "attached_at": "2024-05-02T10:12:00.000000"}])
    vol = storage.get_volume(VOL)
    sent(api, "GET", f"/volumes/{VOL}")
    assert vol == Volume(id=VOL, name="data", status="in-use", size=1, multiattach=True,
                         attachments=(VolumeAttachment(ATT, INSTANCE, "hosta", "/dev/vdb"),))
    assert vol.attachment_for(INSTANCE).attachment_id == ATT


def test_attachment_create_with_a_connector(api, storage):
    new = storage.attachment_create(VOL, INSTANCE, CONNECTOR)
    sent(api, "POST", "/attachments", {"attachment": {
        "volume_uuid": VOL, "instance_uuid": INSTANCE, "connector": CONNECTOR}})
    assert isinstance(new, NewAttachment)
    assert set(api.attachments) == {new.attachment_id}
    conn = new.connection
    assert (conn.driver_volume_type, conn.volume_id) == ("iscsi", VOL)
    assert str(conn.portal) == PORTAL and conn.lun == 1
    assert conn.iqn == f"iqn.2010-10.org.openstack:volume-{VOL}"
    assert conn.auth_username == "kH3nZ9qbX2vQ" and conn.uses_chap
    assert conn.auth_password.reveal() == CHAP_PASSWORD
    assert conn.attachment_id == new.attachment_id and conn.access_mode == "rw"
    assert CHAP_PASSWORD not in repr(new)


def test_attachment_create_without_a_connector(api, storage):
    new = storage.attachment_create(VOL, INSTANCE, None)
    sent(api, "POST", "/attachments", {"attachment": {
        "volume_uuid": VOL, "instance_uuid": INSTANCE, "connector": None}})
    assert new.connection is None and new.attachment_id in api.attachments


def test_attachment_update(api, storage):
    new = storage.attachment_create(VOL, INSTANCE, None)
    api.clear()
    conn = storage.attachment_update(new.attachment_id, VOL, CONNECTOR)
    sent(api, "PUT", f"/attachments/{new.attachment_id}",
         {"attachment": {"connector": CONNECTOR}})
    assert conn == ConnectionInfo.from_cinder(
        dict(iscsi_data(VOL), driver_volume_type="iscsi",
             attachment_id=new.attachment_id), VOL)
    assert conn.auth_password.reveal() == CHAP_PASSWORD


def test_attachment_show(api, storage):
    new = storage.attachment_create(VOL, INSTANCE, CONNECTOR)
    api.clear()
    conn = storage.attachment_show(new.attachment_id, VOL)
    sent(api, "GET", f"/attachments/{new.attachment_id}")
    assert conn == new.connection and conn.auth_password.reveal() == CHAP_PASSWORD


def test_attachment_show_of_a_reserved_attachment_has_no_connection(api, storage):
    new = storage.attachment_create(VOL, INSTANCE, None)
    api.clear()
    assert storage.attachment_show(new.attachment_id, VOL) is None
    sent(api, "GET", f"/attachments/{new.attachment_id}")


def test_attachment_complete(api, storage):
    new = storage.attachment_create(VOL, INSTANCE, CONNECTOR)
    api.clear()
    assert storage.attachment_complete(new.attachment_id) is None
    sent(api, "POST", f"/attachments/{new.attachment_id}/action", {"os-complete": None})
    assert api.attachments[new.attachment_id]["status"] == "attached"


def test_attachment_delete(api, storage):
    new = storage.attachment_create(VOL, INSTANCE, CONNECTOR)
    api.clear()
    assert storage.attachment_delete(new.attachment_id) is None
    sent(api, "DELETE", f"/attachments/{new.attachment_id}")
    assert api.attachments == {}


def test_initialize_connection(api, storage):
    conn = storage.initialize_connection(VOL, CONNECTOR)
    sent(api, "POST", f"/volumes/{VOL}/action",
         {"os-initialize_connection": {"connector": CONNECTOR}})
    # the legacy answer is nested: {driver_volume_type, data}
    assert conn == ConnectionInfo.from_cinder(
        {"driver_volume_type": "iscsi", "data": iscsi_data(VOL)}, VOL)
    assert str(conn.portal) == PORTAL and conn.lun == 1 and conn.attachment_id is None
    assert conn.auth_password.reveal() == CHAP_PASSWORD


@pytest.mark.parametrize("call, body", [
    (lambda s: s.reserve(VOL), {"os-reserve": None}),
    (lambda s: s.unreserve(VOL), {"os-unreserve": None}),
    (lambda s: s.terminate_connection(VOL, CONNECTOR),
     {"os-terminate_connection": {"connector": CONNECTOR}}),
    (lambda s: s.attach(VOL, INSTANCE, "/dev/vdb", "hosta"),
     {"os-attach": {"instance_uuid": INSTANCE, "mountpoint": "/dev/vdb", "mode": "rw",
                    "host_name": "hosta"}}),
    (lambda s: s.attach(VOL, INSTANCE, "/dev/vdc", "hostb", mode="ro"),
     {"os-attach": {"instance_uuid": INSTANCE, "mountpoint": "/dev/vdc", "mode": "ro",
                    "host_name": "hostb"}}),
    (lambda s: s.begin_detaching(VOL), {"os-begin_detaching": None}),
    (lambda s: s.roll_detaching(VOL), {"os-roll_detaching": None}),
    (lambda s: s.detach(VOL, ATT), {"os-detach": {"attachment_id": ATT}}),
    (lambda s: s.detach(VOL, None), {"os-detach": {"attachment_id": None}}),
], ids=["reserve", "unreserve", "terminate_connection", "attach", "attach-ro",
        "begin_detaching", "roll_detaching", "detach", "detach-without-id"])
def test_volume_actions(api, storage, call, body):
    assert call(storage) is None
    sent(api, "POST", f"/volumes/{VOL}/action", body)


def test_the_legacy_flow_undo_in_requests(api, storage):
    """LegacyFlow.undo_connect in Cinder's terms: terminate, record the attach, then
    detach it again, which is what removes the export."""
    flow = LegacyFlow(storage)
    att = flow.connect(VOL, INSTANCE, ConnectorProperties.from_dict(CONNECTOR), "/dev/vdb")
    actions = [next(iter(r.body)) if r.body else r.method for r in api.calls()]
    assert actions == ["os-reserve", "os-initialize_connection"]
    api.add_volume(VOL, status="in-use", attachments=[
        {"id": VOL, "attachment_id": ATT, "volume_id": VOL, "server_id": INSTANCE,
         "host_name": "hosta", "device": "/dev/null"}])
    api.clear()
    flow.undo_connect(att)
    actions = [next(iter(r.body)) if r.body else r.method for r in api.calls()]
    assert actions == ["os-terminate_connection", "os-attach", "GET", "os-begin_detaching",
                       "os-detach"]
    assert api.calls()[-1].body == {"os-detach": {"attachment_id": ATT}}


# ---------------------------------------------------------------------------------------
# errors, as Cinder sends them

def test_a_missing_volume_is_bad_input(api, storage):
    with pytest.raises(errors.VolumeNotFound) as info:
        storage.get_volume("nosuch")
    assert info.value.exit_code == 2 and "nosuch" in str(info.value)
    assert api.routes() == [("GET", "/volumes/nosuch")]  # a 404 is not retried


@pytest.mark.parametrize("status, call, route", [
    (400, lambda s: s.reserve(VOL), ("POST", f"/volumes/{VOL}/action")),
    (400, lambda s: s.attachment_create(VOL, INSTANCE, CONNECTOR), ("POST", "/attachments")),
    (409, lambda s: s.begin_detaching(VOL), ("POST", f"/volumes/{VOL}/action")),
    (409, lambda s: s.attachment_update(ATT, VOL, CONNECTOR), ("PUT", f"/attachments/{ATT}")),
], ids=["400-reserve", "400-attachment_create", "409-begin_detaching",
        "409-attachment_update"])
def test_refusals_are_state_errors_with_the_servers_words(api, storage, status, call,
                                                          route):
    words = "Invalid volume: Volume status must be available to reserve, but the " \
            "status is in-use."
    api.script(*route, fault(status, words))
    with pytest.raises(errors.VolumeStateError) as info:
        call(storage)
    assert words in str(info.value) and info.value.exit_code == 2
    assert api.routes() == [route]


READS = {
    "get_volume": (lambda s: s.get_volume(VOL), ("GET", f"/volumes/{VOL}")),
    "attachment_show": (lambda s: s.attachment_show(ATT, VOL), ("GET", f"/attachments/{ATT}")),
}


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("read", sorted(READS))
def test_reads_retry_server_errors_then_give_up(api, storage, status, read):
    call, route = READS[read]
    api.script(*route, *[fault(status, "The server has either erred or is incapable "
                                       "of performing the requested operation.")]
               * cinder_side.ATTEMPTS)
    with pytest.raises(errors.StorageUnavailable) as info:
        call(storage)
    assert info.value.status == status and str(status) in str(info.value)
    assert info.value.exit_code == 1
    assert api.routes() == [route] * cinder_side.ATTEMPTS
    assert len(storage.sleeps) == cinder_side.ATTEMPTS - 1


def test_a_read_that_succeeds_on_retry_returns_the_answer(api, storage):
    api.script("GET", f"/volumes/{VOL}", fault(503, "busy"), fault(500, "boom"))
    assert storage.get_volume(VOL).id == VOL
    assert api.routes() == [("GET", f"/volumes/{VOL}")] * 3


WRITES = {
    "attachment_create": lambda s: s.attachment_create(VOL, INSTANCE, CONNECTOR),
    "attachment_update": lambda s: s.attachment_update(ATT, VOL, CONNECTOR),
    "attachment_complete": lambda s: s.attachment_complete(ATT),
    "reserve": lambda s: s.reserve(VOL),
    "unreserve": lambda s: s.unreserve(VOL),
    "initialize_connection": lambda s: s.initialize_connection(VOL, CONNECTOR),
    "terminate_connection": lambda s: s.terminate_connection(VOL, CONNECTOR),
    "attach": lambda s: s.attach(VOL, INSTANCE, "/dev/vdb", "hosta"),
    "begin_detaching": lambda s: s.begin_detaching(VOL),
    "roll_detaching": lambda s: s.roll_detaching(VOL),
    "detach": lambda s: s.detach(VOL, ATT),
}


@pytest.mark.parametrize("name", sorted(WRITES))
def test_state_changing_calls_are_sent_once_even_on_server_errors(api, storage, name):
    for route in [("POST", "/attachments"), ("PUT", f"/attachments/{ATT}"),
                  ("POST", f"/attachments/{ATT}/action"),
                  ("POST", f"/volumes/{VOL}/action")]:
        api.script(*route, fault(503, "busy"))
    with pytest.raises(errors.StorageUnavailable, match="503"):
        WRITES[name](storage)
    assert len(api.calls()) == 1 and storage.sleeps == []


def test_delete_retries_server_errors_and_takes_404_as_done(api, storage):
    route = ("DELETE", f"/attachments/{ATT}")
    api.script(*route, fault(502, "Bad Gateway"), fault(500, "boom"))
    storage.attachment_delete(ATT)  # the third answer: 404, the attachment is unknown
    assert api.routes() == [route] * 3 and len(storage.sleeps) == 2
    api.clear()
    api.script(*route, *[fault(503, "busy")] * cinder_side.ATTEMPTS)
    with pytest.raises(errors.StorageUnavailable, match="503"):
        storage.attachment_delete(ATT)
    assert api.routes() == [route] * cinder_side.ATTEMPTS


def test_a_proxys_html_error_page_is_read_as_a_server_error(api, storage):
    page = "<html><body><h1>502 Bad Gateway</h1>The server returned an invalid or " \
           "incomplete response.</body></html>"
    api.script("GET", f"/volumes/{VOL}", Answer(502, page))
    assert storage.get_volume(VOL).id == VOL  # retried like any 5xx
    api.script("POST", f"/volumes/{VOL}/action", Answer(502, page))
    with pytest.raises(errors.StorageUnavailable) as info:
        storage.reserve(VOL)
    assert info.value.status == 502 and "<html>" not in str(info.value)


def test_a_stopped_api_is_unavailable_with_a_short_message(api, storage):
    api.stop()
    with pytest.raises(errors.StorageUnavailable) as info:
        storage.get_volume(VOL)
    message = str(info.value)
    assert "cannot reach the storage API" in message and "volumes" in message
    assert "HTTPConnectionPool" not in message and "Max retries" not in message
    assert len(message) < 200
    assert len(storage.sleeps) == cinder_side.ATTEMPTS - 1  # a read is tried again
    storage.sleeps.clear()
    with pytest.raises(errors.StorageUnavailable, match="cannot reach"):
        storage.attachment_delete(ATT)
    assert storage.sleeps == []  # an unanswered delete is not known to be safe to repeat


def test_requests_time_out_after_the_configured_storage_timeout(api):
    storage = connect(api, ATTACHFLOW_STORAGE_TIMEOUT="1")
    api.script("GET", f"/volumes/{VOL}", Answer(200, {}, delay=5))
    assert storage.get_volume(VOL).id == VOL  # the read is retried after the timeout
    assert len(api.calls()) == 2
    api.clear()
    api.script("POST", f"/volumes/{VOL}/action", Answer(202, delay=5))
    with pytest.raises(errors.StorageUnavailable, match="cannot reach.*timed out"):
        storage.reserve(VOL)
    assert len(api.calls()) == 1


def test_retries_of_a_read_end_at_the_storage_deadline(api):
    storage = CinderStorage.connect(env=api.env(ATTACHFLOW_STORAGE_TIMEOUT="1",
                                                ATTACHFLOW_STORAGE_DEADLINE="1"))
    api.clear()
    api.script("GET", f"/volumes/{VOL}", *[Answer(200, {}, delay=5)] * 4)
    with pytest.raises(errors.StorageUnavailable, match="timed out"):
        storage.get_volume(VOL)
    assert len(api.calls()) == 1  # the deadline passed with the first request


@pytest.mark.parametrize("name", ["ATTACHFLOW_STORAGE_TIMEOUT", "ATTACHFLOW_STORAGE_DEADLINE"])
@pytest.mark.parametrize("value", ["nan", "0", "-1", "inf", "soon"])
def test_storage_timeouts_must_be_sensible_numbers(api, name, value):
    with pytest.raises(errors.InputError, match=f"{name} '{value}' is not a number of "
                                                "seconds from 1 to 86400"):
        CinderStorage.connect(env=api.env(**{name: value}))
    assert api.calls() == []


@pytest.mark.filterwarnings("ignore:Support for InfluxDB")  # openstacksdk's own
def test_a_cloud_from_clouds_yaml_has_its_endpoint_and_the_timeout(api, tmp_path,
                                                                   monkeypatch):
    (tmp_path / "clouds.yaml").write_text(json.dumps({"clouds": {"lab": {
        "auth": {"auth_url": f"http://127.0.0.1:{api.port}/identity/v3",
                 "username": "demo", "password": "secret", "project_name": "demo",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
        "block_storage_endpoint_override": f"{api.endpoint}/p"}}}))
    storage = CinderStorage.connect(cloud="lab", env={
        "ATTACHFLOW_STORAGE_TIMEOUT": "1", "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")})
    assert storage.version == (3, 71)
    api.clear()
    assert storage.get_volume(VOL).id == VOL
    assert api.routes() == [("GET", f"/volumes/{VOL}")]
    api.script("POST", f"/volumes/{VOL}/action", Answer(202, delay=5))
    with pytest.raises(errors.StorageUnavailable, match="timed out"):
        storage.reserve(VOL)


# ---------------------------------------------------------------------------------------
# secrets

def test_an_unusable_answer_is_taken_back_without_showing_its_password(api, storage):
    broken = {k: v for k, v in iscsi_data(VOL).items() if k != "target_portal"}
    api.script("POST", "/attachments", Answer(200, {"attachment": {
        "id": ATT, "status": "attaching", "instance": INSTANCE, "volume_id": VOL,
        "attached_at": "", "detached_at": "", "attach_mode": "rw",
        "connection_info": dict(broken, driver_volume_type="iscsi", attachment_id=ATT)}}))
    api.attachments[ATT] = {"id": ATT, "volume_id": VOL}  # so that the DELETE finds it
    with pytest.raises(errors.InputError, match="target_portal") as info:
        storage.attachment_create(VOL, INSTANCE, CONNECTOR)
    assert CHAP_PASSWORD not in str(info.value)
    assert api.routes() == [("POST", "/attachments"), ("DELETE", f"/attachments/{ATT}")]
    api.clear()
    api.script("POST", f"/volumes/{VOL}/action", Answer(200, {"connection_info": {
        "driver_volume_type": "iscsi", "data": broken}}))
    with pytest.raises(errors.InputError, match="target_portal") as info:
        storage.initialize_connection(VOL, CONNECTOR)
    assert CHAP_PASSWORD not in str(info.value)
    assert [r.body for r in api.calls()] == [
        {"os-initialize_connection": {"connector": CONNECTOR}},
        {"os-terminate_connection": {"connector": CONNECTOR}}]


@pytest.mark.parametrize("status", [400, 404, 409, 500, 503])
def test_errors_carry_no_password_from_the_request(api, storage, status):
    connector = dict(CONNECTOR, auth_password=CHAP_PASSWORD)
    api.script("PUT", f"/attachments/{ATT}", fault(status, "Unable to update attachment."))
    with pytest.raises(errors.AttachflowError) as info:
        storage.attachment_update(ATT, VOL, connector)
    assert api.calls()[0].body["attachment"]["connector"]["auth_password"] == CHAP_PASSWORD
    assert CHAP_PASSWORD not in str(info.value) and "Unable to update" in str(info.value)


def test_debug_logs_show_no_password(api, storage, caplog):
    caplog.set_level(logging.DEBUG, logger="attachflow")
    new = storage.attachment_create(VOL, INSTANCE, CONNECTOR)
    storage.attachment_update(new.attachment_id, VOL, CONNECTOR)
    storage.attachment_show(new.attachment_id, VOL)
    storage.initialize_connection(VOL, CONNECTOR)
    assert len(caplog.records) == 4 and "auth_username" in caplog.text
    assert CHAP_PASSWORD not in caplog.text


# ---------------------------------------------------------------------------------------
# errors name the call that failed

CALLS = {
    "get_volume": (lambda s: s.get_volume(VOL), ("GET", f"/volumes/{VOL}"),
                   f"GET volume {VOL}"),
    "attachment_create": (lambda s: s.attachment_create(VOL, INSTANCE, CONNECTOR),
                          ("POST", "/attachments"), f"POST attachment volume={VOL}"),
    "attachment_update": (lambda s: s.attachment_update(ATT, VOL, CONNECTOR),
                          ("PUT", f"/attachments/{ATT}"), f"PUT attachment {ATT}"),
    "attachment_show": (lambda s: s.attachment_show(ATT, VOL),
                        ("GET", f"/attachments/{ATT}"), f"GET attachment {ATT}"),
    "attachment_complete": (lambda s: s.attachment_complete(ATT),
                            ("POST", f"/attachments/{ATT}/action"),
                            f"POST attachment {ATT} os-complete"),
    "attachment_delete": (lambda s: s.attachment_delete(ATT),
                          ("DELETE", f"/attachments/{ATT}"), f"DELETE attachment {ATT}"),
    **{name: (call, ("POST", f"/volumes/{VOL}/action"), f"os-{name} {VOL}")
       for name, call in [
           ("reserve", lambda s: s.reserve(VOL)),
           ("unreserve", lambda s: s.unreserve(VOL)),
           ("initialize_connection", lambda s: s.initialize_connection(VOL, CONNECTOR)),
           ("terminate_connection", lambda s: s.terminate_connection(VOL, CONNECTOR)),
           ("attach", lambda s: s.attach(VOL, INSTANCE, "/dev/vdb", "hosta")),
           ("begin_detaching", lambda s: s.begin_detaching(VOL)),
           ("roll_detaching", lambda s: s.roll_detaching(VOL)),
           ("detach", lambda s: s.detach(VOL, ATT))]},
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_an_error_names_the_call_and_gives_the_servers_words(api, storage, name):
    call, route, what = CALLS[name]
    api.script(*route, *[fault(503, "busy")] * cinder_side.ATTEMPTS)
    with pytest.raises(errors.StorageUnavailable) as info:
        call(storage)
    assert str(info.value) == f"{what}: server error 503 (busy)"


def test_reads_retry_when_the_api_cannot_be_reached(api, storage):
    api.stop()
    with pytest.raises(errors.StorageUnavailable, match=f"GET attachment {ATT}: cannot"):
        storage.attachment_show(ATT, VOL)
    assert len(storage.sleeps) == cinder_side.ATTEMPTS - 1


def test_connection_info_without_a_volume_id_is_the_volumes(api, storage):
    data = {k: v for k, v in iscsi_data(VOL).items() if k != "volume_id"}
    flat = dict(data, driver_volume_type="iscsi", attachment_id=ATT)
    doc = {"id": ATT, "status": "attaching", "instance": INSTANCE, "volume_id": VOL,
           "attach_mode": "rw", "connection_info": flat}
    api.script("POST", "/attachments", Answer(200, {"attachment": doc}))
    assert storage.attachment_create(VOL, INSTANCE, CONNECTOR).connection.volume_id == VOL
    api.script("PUT", f"/attachments/{ATT}", Answer(200, {"attachment": doc}))
    assert storage.attachment_update(ATT, VOL, CONNECTOR).volume_id == VOL
    api.script("GET", f"/attachments/{ATT}", Answer(200, {"attachment": doc}))
    assert storage.attachment_show(ATT, VOL).volume_id == VOL
    api.script("POST", f"/volumes/{VOL}/action", Answer(200, {"connection_info": {
        "driver_volume_type": "iscsi", "data": data}}))
    assert storage.initialize_connection(VOL, CONNECTOR).volume_id == VOL


def test_an_unusable_answer_is_reported_even_when_taking_it_back_fails(api, storage):
    broken = {k: v for k, v in iscsi_data(VOL).items() if k != "target_portal"}
    api.script("POST", "/attachments", Answer(200, {"attachment": {
        "id": ATT, "status": "attaching", "instance": INSTANCE, "volume_id": VOL,
        "connection_info": dict(broken, driver_volume_type="iscsi")}}))
    api.script("DELETE", f"/attachments/{ATT}", *[fault(500, "boom")] * cinder_side.ATTEMPTS)
    with pytest.raises(errors.InputError, match="lacks 'target_portal'"):
        storage.attachment_create(VOL, INSTANCE, CONNECTOR)
    assert api.routes() == [("POST", "/attachments")] + \
        [("DELETE", f"/attachments/{ATT}")] * cinder_side.ATTEMPTS
    api.clear()
    api.script("POST", f"/volumes/{VOL}/action", Answer(200, {"connection_info": {
        "driver_volume_type": "iscsi", "data": broken}}), fault(503, "busy"))
    with pytest.raises(errors.InputError, match="lacks 'target_portal'"):
        storage.initialize_connection(VOL, CONNECTOR)
    assert api.routes() == [("POST", f"/volumes/{VOL}/action")] * 2
    assert api.calls()[1].body == {"os-terminate_connection": {"connector": CONNECTOR}}


# ---------------------------------------------------------------------------------------
# the flows, in Cinder's terms

PROPS = ConnectorProperties.from_dict({k: v for k, v in CONNECTOR.items()
                                       if k != "mountpoint"})
HOST_CONNECTOR = {k: v for k, v in CONNECTOR.items() if k != "mountpoint"}
DEST = ConnectorProperties.from_dict(dict(HOST_CONNECTOR, host="hostb", ip="198.18.0.12"))


def bodies(api):
    return [(r.method, r.path[len("/v3/p"):], r.body) for r in api.calls()]


def attached_volume(api, attachment_id=ATT):
    api.add_volume(VOL, status="in-use", attachments=[
        {"id": VOL, "attachment_id": attachment_id, "volume_id": VOL,
         "server_id": INSTANCE, "host_name": "hosta", "device": "/dev/vdb"}])


def record(api_name, attachment_id, connector=HOST_CONNECTOR):
    conn = ConnectionInfo.from_cinder({"driver_volume_type": "iscsi",
                                       "data": iscsi_data(VOL)}, VOL)
    return VolumeRecord(VOL, api_name, "kernel", attachment_id, "hosta", "vdb",
                        dict(connector), conn.without_secrets())


def test_attachments_flow_connect_sends_the_mountpoint(api, storage):
    att = AttachmentsFlow(storage).connect(VOL, INSTANCE, PROPS, "/dev/vdb")
    assert bodies(api) == [("POST", "/attachments", {"attachment": {
        "volume_uuid": VOL, "instance_uuid": INSTANCE, "connector": CONNECTOR}})]
    assert (att.volume_id, att.instance_id, att.api) == (VOL, INSTANCE, "attachments")
    assert att.attachment_id in api.attachments and att.connector == CONNECTOR
    assert att.connection.attachment_id == att.attachment_id


def test_attachments_flow_connect_updates_when_create_ignores_the_connector(api, storage):
    api.script("POST", "/attachments", Answer(200, {"attachment": {
        "id": ATT, "status": "reserved", "instance": INSTANCE, "volume_id": VOL,
        "connection_info": {}}}))
    api.attachments[ATT] = {"id": ATT, "volume_id": VOL, "status": "reserved"}
    flat = {k: v for k, v in api._connection(VOL, ATT).items() if k != "volume_id"}
    api.script("PUT", f"/attachments/{ATT}", Answer(200, {"attachment": {
        "id": ATT, "status": "attaching", "instance": INSTANCE, "volume_id": VOL,
        "connection_info": flat}}))
    att = AttachmentsFlow(storage).connect(VOL, INSTANCE, PROPS, "/dev/vdb")
    assert bodies(api)[1] == ("PUT", f"/attachments/{ATT}",
                              {"attachment": {"connector": CONNECTOR}})
    assert len(api.calls()) == 2
    assert (att.volume_id, att.instance_id, att.attachment_id) == (VOL, INSTANCE, ATT)
    assert att.connection.volume_id == VOL and str(att.connection.portal) == PORTAL
    assert att.connector == CONNECTOR


def test_attachments_flow_connect_deletes_what_it_cannot_update(api, storage):
    api.script("POST", "/attachments", Answer(200, {"attachment": {
        "id": ATT, "status": "reserved", "instance": INSTANCE, "volume_id": VOL,
        "connection_info": {}}}))
    api.script("PUT", f"/attachments/{ATT}", fault(500, "boom"))
    api.attachments[ATT] = {"id": ATT, "volume_id": VOL, "status": "reserved"}
    with pytest.raises(errors.StorageUnavailable, match="PUT attachment"):
        AttachmentsFlow(storage).connect(VOL, INSTANCE, PROPS, "/dev/vdb")
    assert api.routes()[1:] == [("PUT", f"/attachments/{ATT}"),
                                ("DELETE", f"/attachments/{ATT}")]
    assert api.attachments == {}


@pytest.mark.parametrize("flow", [AttachmentsFlow, LegacyFlow])
def test_a_refusal_with_the_volume_available_keeps_the_servers_words(api, storage, flow):
    route = ("POST", "/attachments") if flow is AttachmentsFlow else \
        ("POST", f"/volumes/{VOL}/action")
    api.script(*route, fault(400, "Invalid input received: connector lacks initiator"))
    with pytest.raises(errors.VolumeStateError) as info:
        flow(storage).connect(VOL, INSTANCE, PROPS, "/dev/vdb")
    assert "connector lacks initiator" in str(info.value)
    assert api.routes() == [route, ("GET", f"/volumes/{VOL}")]


def test_a_refusal_of_an_in_use_multiattach_volume_keeps_the_servers_words(api, storage):
    api.add_volume(VOL, status="in-use", multiattach=True)
    api.script("POST", "/attachments", fault(400, "Invalid input received: no more slots"))
    with pytest.raises(errors.VolumeStateError, match="no more slots"):
        AttachmentsFlow(storage).connect(VOL, INSTANCE, PROPS, "/dev/vdb")


@pytest.mark.parametrize("attachments, says", [
    ([], f"volume {VOL} is in-use; it must be available"),
    ([{"attachment_id": ATT, "server_id": "s1", "host_name": "hosta"},
      {"attachment_id": "a2", "server_id": "s2", "host_name": "hostb"}],
     f"volume {VOL} is in-use (attached to s1 on hosta, s2 on hostb); "
     "it must be available"),
])
def test_a_refusal_of_a_volume_in_use_says_where_it_is_attached(api, storage, attachments,
                                                                 says):
    api.add_volume(VOL, status="in-use", attachments=attachments)
    api.script("POST", "/attachments", fault(400, "Invalid volume"))
    with pytest.raises(errors.VolumeStateError) as info:
        AttachmentsFlow(storage).connect(VOL, INSTANCE, PROPS, "/dev/vdb")
    assert str(info.value) == says


def test_a_refusal_of_a_missing_volume_says_so(api, storage):
    with pytest.raises(errors.VolumeNotFound) as info:
        AttachmentsFlow(storage).connect("nosuch", INSTANCE, PROPS, "/dev/vdb")
    assert str(info.value) == "volume nosuch not found in Cinder"


@pytest.mark.parametrize("with_record", [True, False])
def test_attachments_flow_detach(api, storage, with_record):
    attached_volume(api)
    flat = {k: v for k, v in api._connection(VOL, ATT).items() if k != "volume_id"}
    api.attachments[ATT] = {"id": ATT, "volume_id": VOL, "status": "attached",
                            "connection_info": flat}
    rec = record("attachments", ATT) if with_record else None
    flow = AttachmentsFlow(storage)
    att = flow.begin_detach(VOL, INSTANCE, rec)
    assert api.routes() == ([] if with_record else [("GET", f"/volumes/{VOL}")])
    assert (att.volume_id, att.instance_id, att.api, att.attachment_id) == (
        VOL, INSTANCE, "attachments", ATT)
    assert att.connector == (HOST_CONNECTOR if with_record else {})
    assert att.connection == (rec.connection if with_record
                              else ConnectionInfo("unknown", VOL))
    api.clear()
    fresh = flow.fresh_connection(att)
    assert api.routes() == [("GET", f"/attachments/{ATT}")]
    assert fresh.volume_id == VOL and fresh.auth_password.reveal() == CHAP_PASSWORD
    api.clear()
    flow.release(att)
    assert api.routes() == [("DELETE", f"/attachments/{ATT}")]


def test_attachments_flow_detach_of_a_volume_not_attached_to_the_guest(api, storage):
    with pytest.raises(errors.NotAttached) as info:
        AttachmentsFlow(storage).begin_detach(VOL, INSTANCE, None)
    assert str(info.value) == f"Cinder has no attachment of volume {VOL} to {INSTANCE}"
    with pytest.raises(errors.NotAttached) as info:
        LegacyFlow(storage).begin_detach(VOL, INSTANCE, None)
    assert str(info.value) == f"Cinder has no attachment of volume {VOL} to {INSTANCE}"
    assert ("POST", f"/volumes/{VOL}/action") not in api.routes()


def test_a_fresh_connection_of_a_reserved_attachment_is_an_error(api, storage):
    api.attachments[ATT] = {"id": ATT, "volume_id": VOL, "status": "reserved",
                            "connection_info": {}}
    att = AttachmentsFlow(storage).begin_detach(VOL, INSTANCE, record("attachments", ATT))
    with pytest.raises(errors.StorageError) as info:
        AttachmentsFlow(storage).fresh_connection(att)
    assert str(info.value) == f"attachment {ATT} of volume {VOL} has no connection"


def test_attachments_flow_destination(api, storage):
    flow = AttachmentsFlow(storage)
    source = flow.begin_detach(VOL, INSTANCE, record("attachments", ATT))
    dest = flow.connect_destination(source, DEST)
    assert bodies(api) == [("POST", "/attachments", {"attachment": {
        "volume_uuid": VOL, "instance_uuid": INSTANCE, "connector": DEST.to_dict()}})]
    assert (dest.volume_id, dest.instance_id, dest.api) == (VOL, INSTANCE, "attachments")
    assert dest.attachment_id in api.attachments and dest.attachment_id != ATT
    assert dest.connector == DEST.to_dict() and dest.connection.volume_id == VOL


def test_attachments_flow_destination_without_connection_info_is_taken_back(api, storage):
    api.script("POST", "/attachments", Answer(200, {"attachment": {
        "id": "a2", "status": "reserved", "instance": INSTANCE, "volume_id": VOL,
        "connection_info": {}}}))
    api.attachments["a2"] = {"id": "a2", "volume_id": VOL}
    flow = AttachmentsFlow(storage)
    source = flow.begin_detach(VOL, INSTANCE, record("attachments", ATT))
    with pytest.raises(errors.StorageError) as info:
        flow.connect_destination(source, DEST)
    assert str(info.value) == ("the storage API returned no connection info for the "
                               "destination attachment")
    assert api.routes() == [("POST", "/attachments"), ("DELETE", "/attachments/a2")]


def legacy_connect(api, storage, access_mode="rw"):
    data = dict(iscsi_data(VOL), access_mode=access_mode)
    api.script("POST", f"/volumes/{VOL}/action", Answer(202), Answer(200, {
        "connection_info": {"driver_volume_type": "iscsi", "data": data}}))
    att = LegacyFlow(storage).connect(VOL, INSTANCE, PROPS, "/dev/vdb")
    api.clear()
    return att


def test_legacy_flow_attach(api, storage):
    att = legacy_connect(api, storage, access_mode="ro")
    assert (att.volume_id, att.instance_id, att.api, att.attachment_id) == (
        VOL, INSTANCE, "legacy", None)
    assert att.connector == HOST_CONNECTOR
    LegacyFlow(storage).finish_attach(att, "/dev/vdc", "hostz")
    assert bodies(api) == [("POST", f"/volumes/{VOL}/action", {"os-attach": {
        "instance_uuid": INSTANCE, "mountpoint": "/dev/vdc", "mode": "ro",
        "host_name": "hostz"}})]


def test_legacy_flow_undo_in_its_requests(api, storage):
    att = legacy_connect(api, storage, access_mode="ro")
    LegacyFlow(storage).undo_connect(att)  # Cinder shows no attachment: detach without id
    action = f"/volumes/{VOL}/action"
    assert bodies(api) == [
        ("POST", action, {"os-terminate_connection": {"connector": HOST_CONNECTOR}}),
        ("POST", action, {"os-attach": {"instance_uuid": INSTANCE, "mountpoint": "/dev/null",
                                        "mode": "ro", "host_name": "hosta"}}),
        ("GET", f"/volumes/{VOL}", None),
        ("POST", action, {"os-begin_detaching": None}),
        ("POST", action, {"os-detach": {"attachment_id": None}})]


def test_legacy_flow_undo_when_attach_fails_unreserves(api, storage):
    att = legacy_connect(api, storage)
    action = f"/volumes/{VOL}/action"
    api.script("POST", action, Answer(202), fault(400, "Invalid volume"))
    with pytest.raises(errors.VolumeStateError):
        LegacyFlow(storage).undo_connect(att)
    assert bodies(api)[-1] == ("POST", action, {"os-unreserve": None})
    assert len(api.calls()) == 3


def test_legacy_flow_undo_when_detach_fails_rolls_detaching_back(api, storage):
    att = legacy_connect(api, storage)
    attached_volume(api)
    action = f"/volumes/{VOL}/action"
    api.script("POST", action, Answer(202), Answer(202), Answer(202),
               fault(500, "boom"))
    with pytest.raises(errors.StorageUnavailable):
        LegacyFlow(storage).undo_connect(att)
    assert [b for _m, _p, b in bodies(api)][-2:] == [
        {"os-detach": {"attachment_id": ATT}}, {"os-roll_detaching": None}]
    assert api.routes()[-1] == ("POST", action)


@pytest.mark.parametrize("with_record", [True, False])
def test_legacy_flow_detach(api, storage, with_record):
    attached_volume(api)
    rec = record("legacy", None) if with_record else None
    flow = LegacyFlow(storage)
    att = flow.begin_detach(VOL, INSTANCE, rec)
    action = f"/volumes/{VOL}/action"
    assert bodies(api) == [("GET", f"/volumes/{VOL}", None),
                           ("POST", action, {"os-begin_detaching": None})]
    assert (att.volume_id, att.instance_id, att.api, att.attachment_id) == (
        VOL, INSTANCE, "legacy", ATT)
    assert att.connector == (HOST_CONNECTOR if with_record else {})
    api.clear()
    flow.release(att)
    assert bodies(api) == [
        ("POST", action, {"os-terminate_connection": {"connector": att.connector}}),
        ("POST", action, {"os-detach": {"attachment_id": ATT}})]


def test_legacy_flow_release_puts_the_export_back_when_detach_fails(api, storage):
    attached_volume(api)
    flow = LegacyFlow(storage)
    att = flow.begin_detach(VOL, INSTANCE, record("legacy", None))
    api.clear()
    action = f"/volumes/{VOL}/action"
    api.script("POST", action, Answer(202), fault(500, "boom"))
    with pytest.raises(errors.StorageUnavailable, match="os-detach"):
        flow.release(att)
    assert bodies(api)[-1] == ("POST", action, {"os-initialize_connection": {
        "connector": HOST_CONNECTOR}})


def test_legacy_flow_destination(api, storage):
    attached_volume(api)
    flow = LegacyFlow(storage)
    source = flow.begin_detach(VOL, INSTANCE, record("legacy", None))
    api.clear()
    dest = flow.connect_destination(source, DEST)
    action = f"/volumes/{VOL}/action"
    assert bodies(api) == [("POST", action, {"os-initialize_connection": {
        "connector": DEST.to_dict()}})]
    assert (dest.volume_id, dest.instance_id, dest.api, dest.attachment_id) == (
        VOL, INSTANCE, "legacy", ATT)
    assert dest.connector == DEST.to_dict()
    api.clear()
    flow.undo_connect_destination(dest)
    flow.finish_destination(dest)
    flow.release_source(source)
    assert bodies(api) == [
        ("POST", action, {"os-terminate_connection": {"connector": DEST.to_dict()}}),
        ("POST", action, {"os-terminate_connection": {"connector": HOST_CONNECTOR}})]


# ---------------------------------------------------------------------------------------
# sessions: Keystone, regions and interfaces, the process environment

def keystone_env(api, **extra):
    return {"OS_AUTH_URL": f"http://127.0.0.1:{api.port}/identity/v3",
            "OS_USERNAME": "demo", "OS_PASSWORD": "secret", "OS_PROJECT_NAME": "demo",
            "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
            **extra}


def test_password_authentication_through_keystone(api):
    storage = CinderStorage.connect(env=keystone_env(api))
    login, = [r for r in api.requests if r.method == "POST"]
    assert login.path == "/identity/v3/auth/tokens"
    assert login.body["auth"]["identity"]["password"]["user"] == {
        "name": "demo", "password": "secret", "domain": {"name": "Default"}}
    assert login.body["auth"]["scope"] == {"project": {"name": "demo",
                                                       "domain": {"name": "Default"}}}
    api.clear()
    storage.get_volume(VOL)
    req = api.calls()[0]
    assert req.header("X-Auth-Token") == "tok-1"
    assert req.header("Host") == f"127.0.0.1:{api.port}"  # RegionOne's public endpoint
    assert req.header("X-Service-Roles") is None  # only noauth claims the role


@pytest.mark.parametrize("region, interface, host", [
    ("RegionTwo", None, "localhost"),
    ("RegionTwo", "internal", "127.1"),
    (None, "internal", "127.1"),
])
def test_the_region_and_interface_pick_the_endpoint(api, region, interface, host):
    extra = {k: v for k, v in [("OS_REGION_NAME", region), ("OS_INTERFACE", interface)]
             if v is not None}
    storage = CinderStorage.connect(env=keystone_env(api, **extra))
    api.clear()
    storage.get_volume(VOL)
    assert api.calls()[0].header("Host") == f"{host}:{api.port}"


@pytest.mark.parametrize("change", [{"OS_PASSWORD": "Xq-7-not-it"}, {"OS_PROJECT_NAME": "nosuch"},
                                    {"OS_USERNAME": "gone"}])
def test_a_refused_login_names_keystone_the_user_and_the_project(api, change):
    api.disabled.add("gone")
    env = keystone_env(api, **change)
    with pytest.raises(errors.AuthError) as info:
        CinderStorage.connect(env=env)
    assert str(info.value) == (
        f"Keystone at {env['OS_AUTH_URL']} refused the login of user "
        f"'{env['OS_USERNAME']}' in project '{env['OS_PROJECT_NAME']}' (OS_* variables) "
        "(HTTP 401): a wrong password, an unknown or disabled user or project, or no role "
        "on that project")
    assert info.value.exit_code == 3
    assert "secret" not in str(info.value) and "Xq-7-not-it" not in str(info.value)
    assert api.calls() == []  # Cinder was never asked


def test_a_refused_service_login_names_the_service_user(api):
    env = keystone_env(api, **dict(SERVICE, OS_SERVICE_PASSWORD="stale"))
    with pytest.raises(errors.AuthError, match="refused the login of service user "
                                               "'attachflow' in project 'service' "
                                               r"\(OS_SERVICE_\*\)"):
        CinderStorage.connect(env=env)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/identity/v3", "http://127.0.0.1:9/v3",
                                 "http://127.0.0.1:9"])
def test_an_unreachable_keystone_is_named_with_the_reason(api, url):
    with pytest.raises(errors.KeystoneUnavailable) as info:
        CinderStorage.connect(env=keystone_env(api, OS_AUTH_URL=url))
    assert str(info.value) == f"cannot reach Keystone at {url} (Connection refused)"
    assert info.value.exit_code == 1


def test_a_revoked_token_is_replaced_by_one_new_login(api):
    storage = CinderStorage.connect(env=keystone_env(api))
    api.add_volume(VOL)
    api.revoke("tok-1")
    logins = api.logins
    assert storage.get_volume(VOL).id == VOL
    assert api.logins == logins + 1
    assert [r.header("X-Auth-Token") for r in api.calls("GET")][-2:] == ["tok-1", "tok-1+"]


def test_a_revoked_token_whose_new_login_is_refused_fails_cleanly(api):
    storage = CinderStorage.connect(env=keystone_env(api))
    api.revoke("tok-1")
    api.disabled.add("demo")
    with pytest.raises(errors.AuthError) as info:
        storage.reserve(VOL)
    assert str(info.value).startswith(
        f"os-reserve {VOL}: a new login to Keystone failed: Keystone at ")
    assert "refused the login" in str(info.value) and info.value.exit_code == 3
    assert api.volumes[VOL]["status"] == "available"


def test_a_revoked_token_while_keystone_fails_says_so(api):
    storage = CinderStorage.connect(env=keystone_env(api))
    api.keystone_unavailable = True
    api.revoke("tok-1")
    with pytest.raises(errors.StorageUnavailable) as info:
        storage.reserve(VOL)
    assert str(info.value) == (f"os-reserve {VOL}: a new login to Keystone failed: Keystone at "
                               f"http://127.0.0.1:{api.port}/identity/v3 failed "
                               "the login (HTTP 503)")


def test_a_token_refused_after_the_new_login_names_both_users(api):
    storage = CinderStorage.connect(env=keystone_env(api, **SERVICE))
    api.script("POST", f"/volumes/{VOL}/action",
               fault(401, "The request you have made requires authentication."),
               fault(401, "The request you have made requires authentication."))
    with pytest.raises(errors.AuthError) as info:
        storage.reserve(VOL)
    assert str(info.value) == (
        f"os-reserve {VOL}: Cinder refused the user's or the service user's (which needs "
        "the 'service' role) token even after a new login (HTTP 401: The request you have "
        "made requires authentication.)")
    assert info.value.exit_code == 3


def test_a_keystone_failure_during_a_guarded_call_is_not_blamed_on_nova(api):
    api.nova_in_catalog = False
    storage = CinderStorage.connect(env=keystone_env(api))
    attached(api)
    api.revoke("tok-1")
    api.keystone_unavailable = True
    with pytest.raises(errors.KeystoneUnavailable) as info:
        storage.attachment_delete(ATT)
    assert "Nova" not in str(info.value) and "failed the login (HTTP 503)" in str(info.value)


@pytest.mark.parametrize("call", ["terminate_connection", "detach"])
def test_legacy_release_calls_without_a_service_user_say_what_to_configure(api, call):
    """os-terminate_connection and os-detach go through the same check in Cinder."""
    storage = CinderStorage.connect(env=keystone_env(api))
    api.clear()
    api.script("POST", f"/volumes/{VOL}/action",
               fault(500, "The server has either erred or is incapable of performing the "
                          "requested operation."))
    args = {"terminate_connection": (VOL, HOST_CONNECTOR), "detach": (VOL, ATT)}[call]
    with pytest.raises(errors.StorageError, match="give attachflow a service user: "
                                                  "--os-service-cloud"):
        getattr(storage, call)(*args)
    assert len(api.calls("POST")) == 1  # sent once


def test_a_forbidden_call_is_an_auth_error_and_changes_nothing(api):
    storage = CinderStorage.connect(env=keystone_env(api, OS_PASSWORD="reader-secret"))
    with pytest.raises(errors.AuthError) as info:
        storage.reserve(VOL)
    assert str(info.value) == (f"os-reserve {VOL}: Cinder refused the user this call (HTTP "
                               "403: Policy doesn't allow volume:attachment_create to be "
                               "performed.)")
    assert info.value.exit_code == 3
    assert api.volumes[VOL]["status"] == "available"


def test_the_process_environment_is_read_when_none_is_given(api, monkeypatch):
    own_prefixes = ("OS_", "ATTACHFLOW_STORAGE_", "ATTACHFLOW_SERVICE_")
    for name in [n for n in os.environ if n.startswith(own_prefixes)]:
        monkeypatch.delenv(name)  # only what this test sets, whatever ran before it
    for name, value in keystone_env(api, OS_REGION_NAME="RegionTwo",
                                    OS_INTERFACE="internal",
                                    ATTACHFLOW_STORAGE_TIMEOUT="1").items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OS_CLOUD", raising=False)
    storage = CinderStorage.connect()
    api.clear()
    storage.get_volume(VOL)
    assert api.calls()[0].header("Host") == f"127.1:{api.port}"
    api.script("POST", f"/volumes/{VOL}/action", Answer(202, delay=5))
    with pytest.raises(errors.StorageUnavailable, match="timed out"):
        storage.reserve(VOL)


def test_a_given_environment_is_read_and_the_process_one_is_not(api, monkeypatch):
    monkeypatch.setenv("OS_REGION_NAME", "RegionNone")
    monkeypatch.setenv("OS_INTERFACE", "admin")
    monkeypatch.setenv("OS_CLOUD", "nosuch")
    storage = CinderStorage.connect(env=keystone_env(api))
    api.clear()
    storage.get_volume(VOL)
    assert api.calls()[0].header("Host") == f"127.0.0.1:{api.port}"


def test_an_endpoint_without_an_auth_url_means_noauth(api):
    env = {k: v for k, v in api.env().items() if k != "OS_AUTH_TYPE"}
    storage = CinderStorage.connect(env=env)
    api.clear()
    storage.get_volume(VOL)
    req = api.calls()[0]
    assert req.header("X-Project-Id") == "p" and req.header("X-Service-Roles") == "service"


def test_an_auth_url_means_keystone_even_with_an_endpoint(api):
    storage = CinderStorage.connect(env=keystone_env(api, OS_ENDPOINT=api.endpoint))
    assert [r.path for r in api.requests if r.method == "POST"] == [
        "/identity/v3/auth/tokens"]
    api.clear()
    storage.get_volume(VOL)
    assert api.calls()[0].header("X-Auth-Token") == "tok-1"


@pytest.mark.filterwarnings("ignore:Support for InfluxDB")  # openstacksdk's own
def test_the_cloud_can_come_from_os_cloud(api, tmp_path, monkeypatch):
    (tmp_path / "clouds.yaml").write_text(json.dumps({"clouds": {"lab": {
        "auth": {"auth_url": f"http://127.0.0.1:{api.port}/identity/v3",
                 "username": "demo", "password": "secret", "project_name": "demo",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
        "block_storage_endpoint_override": f"{api.endpoint}/p"}}}))
    files = {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}
    storage = CinderStorage.connect(env={"OS_CLOUD": "lab", **files})
    api.clear()
    assert storage.get_volume(VOL).id == VOL
    with pytest.raises(errors.InputError, match="cloud 'nosuch'"):
        CinderStorage.connect(env={"OS_CLOUD": "nosuch", **files})


def test_debug_logs_show_what_cinder_answered(api, storage, caplog):
    caplog.set_level(logging.DEBUG, logger="attachflow.cinder")
    new = storage.attachment_create(VOL, INSTANCE, CONNECTOR)
    storage.attachment_update(new.attachment_id, VOL, CONNECTOR)
    storage.attachment_show(new.attachment_id, VOL)
    storage.reserve(VOL)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4
    for line in lines[:3]:  # the answer as data, its password masked
        assert f"'target_iqn': 'iqn.2010-10.org.openstack:volume-{VOL}'" in line
        assert "'auth_password': '***'" in line
    assert lines[1].startswith(f"cinder: PUT attachment {new.attachment_id} -> {{")
    assert lines[3].startswith(f"cinder: os-reserve {VOL} -> 202 (")


def test_a_failed_negotiation_says_so_first():
    with FakeCinderAPI() as api:
        api.stop()
        with pytest.raises(errors.StorageUnavailable) as info:
            CinderStorage.connect(env=api.env())
    assert str(info.value).startswith("microversion negotiation: cannot reach the storage "
                                      "API (")


def test_debug_logs_say_the_microversion_how_long_calls_took_and_what_was_gone(api,
                                                                               caplog):
    caplog.set_level(logging.DEBUG, logger="attachflow.cinder")
    storage = connect(api)
    assert caplog.records[-1].getMessage() == "cinder: negotiated microversion 3.71"
    api.script("GET", f"/volumes/{VOL}", Answer(200, {"volume": api.volumes[VOL]},
                                                delay=0.1))
    storage.get_volume(VOL)
    took = caplog.records[-1].getMessage().rsplit("(", 1)[1]
    assert took.endswith(" ms)") and 100 <= int(took[:-4]) < 10000
    storage.attachment_delete(ATT)  # unknown to Cinder: already gone
    assert caplog.records[-1].getMessage() == (f"cinder: DELETE attachment {ATT} -> "
                                               "already gone (404)")


# ---------------------------------------------------------------------------------------
# service tokens: Cinder releases a guest's attachment only for a service

SERVICE = {"OS_SERVICE_USERNAME": "attachflow", "OS_SERVICE_PASSWORD": "svc-secret",
           "OS_SERVICE_PROJECT_NAME": "service"}


def attached(api, instance=INSTANCE):
    """An attachment of a guest, as Cinder holds it once the guest uses it."""
    api.attachments[ATT] = {"id": ATT, "status": "attached", "instance": instance,
                            "volume_id": VOL, "attach_mode": "rw",
                            "connection_info": {"driver_volume_type": "iscsi"}}


def test_requests_carry_the_service_users_token_besides_the_users(api):
    storage = CinderStorage.connect(env=keystone_env(api, **SERVICE))
    logins = [r.body["auth"]["identity"]["password"]["user"] for r in api.requests
              if r.path == "/identity/v3/auth/tokens"]
    assert sorted(u["name"] for u in logins) == ["attachflow", "demo"]
    api.clear()
    attached(api)
    storage.attachment_delete(ATT)
    delete, = api.calls("DELETE")
    assert delete.header("X-Auth-Token") == "tok-1"
    assert delete.header("X-Service-Token") == "tok-svc-attachflow"
    assert delete.header("X-Service-Roles") is None  # no hand-built claim
    assert ATT not in api.attachments


def test_without_service_credentials_the_refusal_says_what_to_configure(api):
    storage = CinderStorage.connect(env=keystone_env(api))
    api.clear()
    attached(api)
    with pytest.raises(errors.StorageError) as info:
        storage.attachment_delete(ATT)
    message = str(info.value)
    assert message.startswith(f"DELETE attachment {ATT}: Cinder releases a guest's "
                              "attachment only for a service user")
    assert "--os-service-cloud / ATTACHFLOW_SERVICE_CLOUD, or OS_SERVICE_USERNAME" in message
    assert len(api.calls("DELETE")) == 1 and ATT in api.attachments  # not retried
    assert api.calls()[0].header("X-Service-Token") is None


def test_without_service_credentials_and_without_nova_the_failure_says_what_to_configure(api):
    """A standalone Cinder (no Nova in the catalog) fails its question to Nova with 500."""
    api.nova_in_catalog = False
    storage = CinderStorage.connect(env=keystone_env(api))
    api.clear()
    attached(api)
    with pytest.raises(errors.StorageError) as info:
        storage.attachment_delete(ATT)
    assert str(info.value) == (
        f"DELETE attachment {ATT}: server error 500 (The server has either erred or is "
        "incapable of performing the requested operation.). Cinder (2023.2 on) releases a "
        "guest's attachment only for a service, and asks Nova otherwise; without Nova, give "
        f"attachflow a service user: {SERVICE_SETTINGS}")
    assert len(api.calls("DELETE")) == 1 and ATT in api.attachments  # sent once
    # with a service user the same call goes through, and a real 500 would be retried
    storage = CinderStorage.connect(env=keystone_env(api, **SERVICE))
    api.script("DELETE", f"/attachments/{ATT}", fault(500, "hiccup"))
    storage.attachment_delete(ATT)
    assert ATT not in api.attachments


@pytest.mark.filterwarnings("ignore:Support for InfluxDB")  # openstacksdk's own
def test_a_service_cloud_from_clouds_yaml_gives_the_service_token(api, tmp_path,
                                                                  monkeypatch):
    auth = {"auth_url": f"http://127.0.0.1:{api.port}/identity/v3",
            "user_domain_name": "Default", "project_domain_name": "Default"}
    clouds = {"clouds": {
        "member": {"auth": dict(auth, username="demo", password="secret",
                                project_name="demo")},
        "svc": {"auth": dict(auth, username="cinder-svc", password="svc-secret",
                             project_name="service")}}}
    (tmp_path / "clouds.yaml").write_text(json.dumps(clouds))
    files = {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}
    storage = CinderStorage.connect(cloud="member", service_cloud="svc", env=files)
    api.clear()
    attached(api)
    storage.attachment_delete(ATT)
    assert api.calls("DELETE")[0].header("X-Service-Token") == "tok-svc-cinder-svc"
    with pytest.raises(errors.InputError, match="service cloud 'nosuch'"):
        CinderStorage.connect(cloud="member", service_cloud="nosuch", env=files)


@pytest.mark.parametrize("drop,named", [("OS_SERVICE_PASSWORD", "OS_SERVICE_PASSWORD"),
                                        ("OS_SERVICE_PROJECT_NAME", "OS_SERVICE_PROJECT_NAME")])
def test_incomplete_service_credentials_are_named_before_any_request(api, drop, named):
    env = keystone_env(api, **{k: v for k, v in SERVICE.items() if k != drop})
    api.clear()
    with pytest.raises(errors.InputError, match=f"service credentials incomplete: set "
                                                f".*{named}"):
        CinderStorage.connect(env=env)
    assert api.requests == []


def test_noauth_claims_the_role_and_sends_no_service_token(api):
    storage = connect(api, **SERVICE)
    attached(api)
    storage.attachment_delete(ATT)
    delete, = api.calls("DELETE")
    assert delete.header("X-Service-Roles") == "service"
    assert delete.header("X-Service-Token") is None


def service_login(api):
    """The service user's authentication request, as Keystone received it."""
    bodies = [r.body["auth"] for r in api.requests if r.path == "/identity/v3/auth/tokens"]
    return [b for b in bodies if b["identity"]["password"]["user"].get("password")
            == "svc-secret"][0]


def test_the_service_user_may_be_named_by_id_and_takes_the_users_domains(api):
    env = keystone_env(api, OS_SERVICE_USER_ID="svc-id", OS_SERVICE_PASSWORD="svc-secret",
                       OS_SERVICE_PROJECT_ID="svc-project")
    CinderStorage.connect(env=env)
    auth = service_login(api)
    assert auth["identity"]["password"]["user"] == {"id": "svc-id", "password": "svc-secret"}
    assert auth["scope"] == {"project": {"id": "svc-project"}}
    api.clear()
    env = keystone_env(api, **SERVICE, OS_USER_DOMAIN_NAME="Users",
                       OS_PROJECT_DOMAIN_NAME="Projects")
    CinderStorage.connect(env=env)
    auth = service_login(api)
    assert auth["identity"]["password"]["user"]["domain"] == {"name": "Users"}
    assert auth["scope"]["project"]["domain"] == {"name": "Projects"}
    api.clear()
    env = keystone_env(api, **SERVICE, OS_SERVICE_USER_DOMAIN_NAME="Services")
    env.pop("OS_USER_DOMAIN_NAME")
    env.pop("OS_PROJECT_DOMAIN_NAME")
    CinderStorage.connect(env=dict(env, OS_USER_DOMAIN_ID="d1", OS_PROJECT_DOMAIN_ID="d2"))
    auth = service_login(api)
    assert auth["identity"]["password"]["user"]["domain"] == {"name": "Services"}
    assert auth["scope"]["project"]["domain"] == {"id": "d2"}


@pytest.mark.parametrize("drop,message", [
    ("OS_SERVICE_PROJECT_NAME", "service credentials incomplete: set "
                                "OS_SERVICE_PROJECT_NAME"),
    ("OS_SERVICE_PASSWORD", "service credentials incomplete: set OS_SERVICE_PASSWORD"),
])
def test_the_missing_service_setting_is_named_exactly(api, drop, message):
    env = keystone_env(api, **{k: v for k, v in SERVICE.items() if k != drop})
    with pytest.raises(errors.InputError) as info:
        CinderStorage.connect(env=env)
    assert str(info.value) == message


@pytest.mark.filterwarnings("ignore:Support for InfluxDB")  # openstacksdk's own
def test_a_service_user_needs_an_auth_url(api, tmp_path, monkeypatch):
    clouds = {"clouds": {"member": {"auth": {
        "auth_url": f"http://127.0.0.1:{api.port}/identity/v3", "username": "demo",
        "password": "secret", "project_name": "demo", "user_domain_name": "Default",
        "project_domain_name": "Default"}}}}
    (tmp_path / "clouds.yaml").write_text(json.dumps(clouds))
    with pytest.raises(errors.InputError) as info:
        CinderStorage.connect(cloud="member", env={
            **SERVICE, "OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")})
    assert str(info.value) == "service credentials incomplete: set OS_SERVICE_AUTH_URL"


@pytest.mark.filterwarnings("ignore:Support for InfluxDB")  # openstacksdk's own
def test_the_service_cloud_may_come_from_the_environment_or_go_with_os_variables(
        api, tmp_path, monkeypatch):
    auth = {"auth_url": f"http://127.0.0.1:{api.port}/identity/v3",
            "user_domain_name": "Default", "project_domain_name": "Default"}
    clouds = {"clouds": {"svc": {"auth": dict(auth, username="cinder-svc",
                                              password="svc-secret",
                                              project_name="service")}}}
    (tmp_path / "clouds.yaml").write_text(json.dumps(clouds))
    files = {"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")}
    for storage in (
            CinderStorage.connect(env=keystone_env(api, ATTACHFLOW_SERVICE_CLOUD="svc",
                                                   **files)),
            CinderStorage.connect(env=keystone_env(api, **files), service_cloud="svc")):
        api.clear()
        attached(api)
        storage.attachment_delete(ATT)
        assert api.calls("DELETE")[0].header("X-Service-Token") == "tok-svc-cinder-svc"


def test_the_refusal_keeps_cinders_status(api):
    storage = CinderStorage.connect(env=keystone_env(api))
    attached(api)
    with pytest.raises(errors.StorageError) as info:
        storage.attachment_delete(ATT)
    assert info.value.status == 409 and info.value.exit_code == 1


# ---------------------------------------------------------------------------------------
# the command line, on a Cinder behind a (stand-in) Keystone

def cli_on(api, monkeypatch, env):
    from click.testing import CliRunner
    from attachflow import cli
    from attachflow.client import Client
    from twins import FakeCinder, fake_host
    host = fake_host("hosta", target=FakeCinder())
    host.hypervisor.add_domain("vm1")

    def client(transport=None, api=None, os_cloud=None, progress=None, os_service_cloud=None,
               state_dir=None, lock_wait=None):
        return Client(transport=transport, api=api, progress=progress, env=env,
                      hosts={"local": host, "hosta": host})

    monkeypatch.setattr(cli, "_client", client)
    return host, lambda *args: CliRunner().invoke(cli.cli, list(args),
                                                   catch_exceptions=False)


@pytest.mark.parametrize("password, words", [
    ("Xq-7-not-it", "refused the login of user 'demo' in project 'demo'"),
    ("reader-secret", "Cinder refused the user this call (HTTP 403"),
])
def test_the_cli_says_a_refusal_in_one_line_with_exit_3_and_changes_nothing(
        api, monkeypatch, password, words):
    host, run = cli_on(api, monkeypatch, keystone_env(api, OS_PASSWORD=password, **SERVICE))
    result = run("attach", VOL, "vm1", "--transport", "native")
    assert result.exit_code == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert password not in result.stderr and "svc-secret" not in result.stderr
    assert api.volumes[VOL]["status"] == "available" and not api.attachments
    assert not host.hypervisor.secrets


def test_the_cli_names_an_unreachable_keystone_in_one_line(api, monkeypatch):
    env = keystone_env(api, OS_AUTH_URL="http://127.0.0.1:9/identity/v3")
    _host, run = cli_on(api, monkeypatch, env)
    result = run("attach", VOL, "vm1", "--transport", "native")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # keystoneauth's own warnings stay quiet
    assert lines[0].startswith("attachflow: error: cannot reach Keystone at "
                               "http://127.0.0.1:9/identity/v3 (")


@pytest.mark.filterwarnings("ignore:Support for InfluxDB")  # openstacksdk's own
def test_the_settings_clouds_yaml_wins_over_the_processs(api, tmp_path, monkeypatch):
    """A library caller's settings name the clouds.yaml; the process's own
    OS_CLIENT_CONFIG_FILE (openstacksdk reads it from os.environ) must not come first."""
    def clouds(name: str, password: str) -> str:
        (tmp_path / name).write_text(json.dumps({"clouds": {"lab": {"auth": {
            "auth_url": f"http://127.0.0.1:{api.port}/identity/v3", "username": "demo",
            "password": password, "project_name": "demo", "user_domain_name": "Default",
            "project_domain_name": "Default"},
            "block_storage_endpoint_override": f"{api.endpoint}/p"}}}))
        return str(tmp_path / name)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", clouds("process.yaml", "not-this-one"))
    api.clear()
    CinderStorage.connect(cloud="lab", env={
        "OS_CLIENT_CONFIG_FILE": clouds("given.yaml", "secret"),
        "ATTACHFLOW_TOKEN_CACHE": "off"})
    login = [r for r in api.requests if r.path.endswith("/auth/tokens")][0]
    assert login.body["auth"]["identity"]["password"]["user"]["password"] == "secret"
