"""CinderStorage, the real storage adapter, against Cinder's v3 API over HTTP.

python-cinderclient and keystoneauth1 run unchanged; only the server is a stand-in
(``cinder_http.FakeCinderAPI``). Each test states the request a user's Cinder would
receive -- method, path, microversion header, JSON body -- and what attachflow makes of
the answer, so a call that sends nothing, sends the wrong thing or misreads an error
fails here rather than in the lab.
"""

import logging

import pytest

from attachflow import errors
from attachflow.cinder_side import CinderStorage, LegacyFlow, select_flow
from attachflow.model import (ConnectionInfo, ConnectorProperties, NewAttachment, Volume,
                              VolumeAttachment)

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


def test_an_unreachable_api_fails_discovery_as_unavailable():
    with FakeCinderAPI() as api:
        api.stop()
        with pytest.raises(errors.StorageUnavailable, match="microversion negotiation"):
            CinderStorage.connect(env=api.env())


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
                                       "of performing the requested operation.")] * 4)
    with pytest.raises(errors.StorageUnavailable) as info:
        call(storage)
    assert info.value.status == status and str(status) in str(info.value)
    assert info.value.exit_code == 1
    assert api.routes() == [route] * 4 and len(storage.sleeps) == 3


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
    api.script(*route, *[fault(503, "busy")] * 4)
    with pytest.raises(errors.StorageUnavailable, match="503"):
        storage.attachment_delete(ATT)
    assert api.routes() == [route] * 4


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
    assert len(storage.sleeps) == 3  # a read is tried four times
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
    (tmp_path / "clouds.yaml").write_text(
        f"clouds:\n  lab:\n    auth_type: none\n"
        f"    block_storage_endpoint_override: {api.endpoint}/p\n")
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(tmp_path / "clouds.yaml"))
    storage = CinderStorage.connect(cloud="lab", env={"ATTACHFLOW_STORAGE_TIMEOUT": "1"})
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
