"""The real storage adapter's boundary: exception translation, which calls are retried,
and session construction. cinderclient's own exception classes are raised by a stand-in
client, so the translation is tested against the real types."""

import logging
import types

import pytest
from cinderclient import exceptions as cexc
from keystoneauth1 import exceptions as kexc

from attachflow import cinder_side, errors
from attachflow.cinder_side import (AttachmentsFlow, CinderStorage, LegacyFlow,
                                    StorageAttachment, flow_for_record,
                                    select_flow)
from attachflow.identity import make_session


class Scripted:
    """A cinderclient manager method that raises/returns from a script, counting calls."""

    def __init__(self, *script):
        self.script = list(script)
        self.count = 0

    def __call__(self, *args, **kwargs):
        self.count += 1
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(item, BaseException):
            raise item
        return item


def storage(**methods):
    volumes = types.SimpleNamespace(**{k[4:]: v for k, v in methods.items()
                                       if k.startswith("vol_")})
    attachments = types.SimpleNamespace(**{k[4:]: v for k, v in methods.items()
                                           if k.startswith("att_")})
    client = types.SimpleNamespace(volumes=volumes, attachments=attachments)
    return CinderStorage(client, (3, 71), sleep=lambda _s: None)


VOLUME = types.SimpleNamespace(id="v1", name="data", status="available", size=1,
                               multiattach=False, attachments=[])


def test_reads_retry_on_5xx_and_connection_errors():
    get = Scripted(cexc.ClientException(503, "busy"), kexc.ConnectFailure("refused"), VOLUME)
    vol = storage(vol_get=get).get_volume("v1")
    assert vol.status == "available" and get.count == 3


def test_reads_give_up_after_every_try():
    get = Scripted(cexc.ClientException(500, "boom"))
    with pytest.raises(errors.StorageUnavailable, match="500"):
        storage(vol_get=get).get_volume("v1")
    assert get.count == cinder_side.ATTEMPTS


def test_missing_volume_is_bad_input():
    with pytest.raises(errors.VolumeNotFound) as info:
        storage(vol_get=Scripted(cexc.NotFound(404, "no"))).get_volume("v1")
    assert info.value.exit_code == 2


def test_state_changing_calls_are_never_retried():
    create = Scripted(cexc.ClientException(503, "busy"))
    with pytest.raises(errors.StorageUnavailable):
        storage(att_create=create).attachment_create("v1", "i1", {"host": "h"})
    assert create.count == 1
    reserve = Scripted(kexc.ConnectFailure("refused"))
    with pytest.raises(errors.StorageUnavailable):
        storage(vol_reserve=reserve).reserve("v1")
    assert reserve.count == 1


def test_delete_retries_5xx_and_404_counts_as_done():
    delete = Scripted(cexc.ClientException(502, "bad gw"), cexc.NotFound(404, "gone"))
    storage(att_delete=delete).attachment_delete("a1")
    assert delete.count == 2
    refused = Scripted(kexc.ConnectFailure("refused"))
    with pytest.raises(errors.StorageUnavailable):
        storage(att_delete=refused).attachment_delete("a1")
    assert refused.count == 1  # no answer at all: not known to be safe to repeat


def test_invalid_state_is_a_state_error_with_the_servers_words():
    reserve = Scripted(cexc.BadRequest(400, "Invalid volume: status must be available"))
    with pytest.raises(errors.VolumeStateError, match="status must be available"):
        storage(vol_reserve=reserve).reserve("v1")


def test_errors_do_not_carry_the_request_body():
    secret = "chap-secret-value"
    create = Scripted(cexc.ClientException(500, "failure"))
    with pytest.raises(errors.StorageError) as info:
        storage(att_create=create).attachment_create("v1", "i1", {"auth_password": secret})
    assert secret not in str(info.value)


def test_noauth_session_from_env():
    sess, endpoint = make_session(env={"OS_AUTH_TYPE": "noauth", "OS_USER_ID": "u",
                                       "OS_PROJECT_ID": "p",
                                       "OS_ENDPOINT": "http://127.0.0.1:8776/v3"})
    assert endpoint is None
    assert sess.get_endpoint() == "http://127.0.0.1:8776/v3/p"
    assert sess.timeout == 30.0
    assert sess.get_auth_headers()["x-project-id"] == "p"


def test_incomplete_credentials_say_what_is_missing():
    with pytest.raises(errors.InputError, match="OS_USER_ID"):
        make_session(env={"OS_AUTH_TYPE": "noauth", "OS_ENDPOINT": "http://x/v3"})
    with pytest.raises(errors.InputError, match="OS_AUTH_TYPE"):
        make_session(env={"OS_AUTH_TYPE": "no-such-plugin"})


def test_unknown_cloud_is_bad_input(tmp_path):
    (tmp_path / "clouds.yaml").write_text("clouds: {}\n")
    with pytest.raises(errors.InputError, match="nosuch"):
        make_session(cloud="nosuch", env={"OS_CLIENT_CONFIG_FILE": str(tmp_path / "clouds.yaml")})


def test_select_flow():
    new, old = types.SimpleNamespace(version=(3, 60)), types.SimpleNamespace(version=(3, 40))
    assert isinstance(select_flow(new, "auto"), AttachmentsFlow)
    assert isinstance(select_flow(old, "auto"), LegacyFlow)
    assert isinstance(select_flow(new, "legacy"), LegacyFlow)
    with pytest.raises(errors.InputError):
        select_flow(old, "attachments")
    with pytest.raises(errors.InputError):
        select_flow(new, "nova")


ISCSI = {"target_portal": "198.18.0.1:3260", "target_iqn": "iqn.2010-10.org.openstack:v1",
         "target_lun": 1, "auth_method": "CHAP", "auth_username": "user",
         "auth_password": "pass-1234", "volume_id": "v1", "access_mode": "ro"}


def test_connection_info_is_parsed_at_the_boundary_in_both_shapes():
    flat = dict(ISCSI, driver_volume_type="iscsi", attachment_id="a1")
    created = storage(att_create=Scripted({"id": "a1", "connection_info": flat}))\
        .attachment_create("v1", "i1", {"host": "h"})
    assert created.attachment_id == "a1"
    assert created.connection.iqn == ISCSI["target_iqn"] and created.connection.lun == 1
    assert created.connection.access_mode == "ro"
    assert created.connection.auth_password.reveal() == "pass-1234"
    assert "pass-1234" not in repr(created)
    nested = {"driver_volume_type": "iscsi", "data": ISCSI}
    conn = storage(vol_initialize_connection=Scripted(nested))\
        .initialize_connection("v1", {"host": "h"})
    assert conn == created.connection.__class__.from_cinder(nested, "v1")
    assert conn.portal.host == "198.18.0.1" and conn.auth_username == "user"


def test_an_attachment_without_connector_has_no_connection():
    created = storage(att_create=Scripted({"id": "a2", "connection_info": {}}))\
        .attachment_create("v1", "i1", None)
    assert created.attachment_id == "a2" and created.connection is None
    shown = storage(att_show=Scripted(types.SimpleNamespace(connection_info=None)))\
        .attachment_show("a2", "v1")
    assert shown is None
    updated = storage(att_update=Scripted(types.SimpleNamespace(
        connection_info=dict(ISCSI, driver_volume_type="iscsi"))))\
        .attachment_update("a2", "v1", {"host": "h"})
    assert updated.volume_id == "v1" and updated.iqn == ISCSI["target_iqn"]


def test_an_unusable_answer_leaves_no_attachment_or_export_behind():
    delete = Scripted(None)
    broken = {"id": "a3", "connection_info": {"driver_volume_type": "iscsi",
                                              "target_iqn": "iqn.x"}}  # no portal
    with pytest.raises(errors.InputError, match="target_portal"):
        storage(att_create=Scripted(broken), att_delete=delete)\
            .attachment_create("v1", "i1", {"host": "h"})
    assert delete.count == 1
    terminate = Scripted(None)
    with pytest.raises(errors.InputError, match="target_portal"):
        storage(vol_initialize_connection=Scripted({"driver_volume_type": "iscsi",
                                                    "data": {"target_iqn": "iqn.x"}}),
                vol_terminate_connection=terminate).initialize_connection("v1", {"host": "h"})
    assert terminate.count == 1


# ---------------------------------------------------------------------------------------
# what a user reads when a call fails, by the kind of failure

def test_a_refused_read_is_neither_retried_nor_called_unavailable():
    show = Scripted(cexc.Forbidden(403, "Policy doesn't allow volume:attachment_show"))
    with pytest.raises(errors.StorageError) as info:
        storage(att_show=show).attachment_show("a1", "v1")
    assert type(info.value) is errors.AuthError and info.value.exit_code == 3
    assert str(info.value) == ("GET attachment a1: Cinder refused the user this call (HTTP "
                               "403: Policy doesn't allow volume:attachment_show)")
    assert info.value.status == 403 and show.count == 1


def test_a_missing_attachment_is_not_found_with_the_servers_words():
    show = Scripted(cexc.NotFound(404, "VolumeAttachment a1 could not be found."))
    with pytest.raises(errors.StorageNotFound) as info:
        storage(att_show=show).attachment_show("a1", "v1")
    assert str(info.value) == ("GET attachment a1: not found (VolumeAttachment a1 could "
                               "not be found.)")
    assert info.value.status == 404 and show.count == 1


def test_server_errors_name_the_call_and_the_servers_words():
    reserve = Scripted(cexc.ClientException(503, "busy"))
    with pytest.raises(errors.StorageUnavailable) as info:
        storage(vol_reserve=reserve).reserve("v1")
    assert str(info.value) == "os-reserve v1: server error 503 (busy)"


def test_an_unreachable_https_api_is_reported_by_its_first_clause():
    story = ("Unable to establish connection to https://cinder.example:8776/v3/p/volumes/v1"
             ": HTTPSConnectionPool(host='cinder.example', port=8776): Max retries exceeded"
             " with url: /v3/p/volumes/v1 (Caused by ProxyError('Unable to connect to "
             "proxy': HTTPSConnectionPool(host='proxy', port=3128)))")
    get = Scripted(kexc.ConnectFailure(story))
    with pytest.raises(errors.StorageUnavailable) as info:
        storage(vol_get=get).get_volume("v1")
    assert str(info.value) == ("GET volume v1: cannot reach the storage API (Unable to "
                               "establish connection to https://cinder.example:8776/v3/p/"
                               "volumes/v1)")
    plain = story.replace("HTTPS", "HTTP").replace("https", "http")
    with pytest.raises(errors.StorageUnavailable) as info:
        storage(vol_get=Scripted(kexc.ConnectFailure(plain))).get_volume("v1")
    assert str(info.value) == ("GET volume v1: cannot reach the storage API (Unable to "
                               "establish connection to http://cinder.example:8776/v3/p/"
                               "volumes/v1)")


def test_keystoneauth_http_errors_are_translated_like_cinders():
    # keystoneauth raises its own HTTP errors, e.g. from the identity service or a proxy
    show = Scripted(kexc.http.NotFound())
    with pytest.raises(errors.StorageNotFound) as info:
        storage(att_show=show).attachment_show("a1", "v1")
    assert str(info.value) == "GET attachment a1: not found" and info.value.status == 404
    assert show.count == 1
    get = Scripted(kexc.http.InternalServerError(), kexc.http.ServiceUnavailable(), VOLUME)
    assert storage(vol_get=get).get_volume("v1").id == "v1" and get.count == 3
    get = Scripted(kexc.http.InternalServerError())
    with pytest.raises(errors.StorageUnavailable) as info:
        storage(vol_get=get).get_volume("v1")
    assert str(info.value) == "GET volume v1: server error 500"
    assert info.value.status == 500 and get.count == cinder_side.ATTEMPTS
    delete = Scripted(kexc.http.BadGateway(), None)
    storage(att_delete=delete).attachment_delete("a1")
    assert delete.count == 2  # answered with a server error: safe to repeat
    get = Scripted(kexc.http.Forbidden())
    with pytest.raises(errors.StorageError) as info:
        storage(vol_get=get).get_volume("v1")
    assert type(info.value) is errors.StorageError and info.value.status == 403
    assert str(info.value) == "GET volume v1: HTTP 403 (Forbidden (HTTP 403))"
    assert get.count == 1


def test_other_client_failures_name_the_call():
    get = Scripted(kexc.AuthorizationFailure("token expired"))
    with pytest.raises(errors.StorageError) as info:
        storage(vol_get=get).get_volume("v1")
    assert str(info.value) == "GET volume v1: token expired" and get.count == 1
    get = Scripted(cexc.UnsupportedVersion("Server does not support microversion 3.71"))
    with pytest.raises(errors.StorageError) as info:
        storage(vol_get=get).get_volume("v1")
    assert str(info.value) == "GET volume v1: Server does not support microversion 3.71"
    get = Scripted(ValueError("Expecting value: line 1 column 1 (char 0)"))
    with pytest.raises(errors.StorageError) as info:
        storage(vol_get=get).get_volume("v1")
    assert str(info.value) == ("GET volume v1: ValueError: Expecting value: line 1 "
                               "column 1 (char 0)")
    assert get.count == 1


def test_reads_back_off_exponentially_between_tries():
    sleeps = []
    get = Scripted(cexc.ClientException(503, "busy"))
    client = types.SimpleNamespace(volumes=types.SimpleNamespace(get=get))
    with pytest.raises(errors.StorageUnavailable):
        CinderStorage(client, (3, 71), sleep=sleeps.append).get_volume("v1")
    # doubling from 0.2 s up to 5 s: about 35 s in all before giving up
    assert sleeps == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2] + [5.0] * 6)


def test_a_volume_read_with_only_the_fields_every_cinder_sends():
    bare = types.SimpleNamespace(id="v1", status="available", attachments=None)
    vol = storage(vol_get=Scripted(bare)).get_volume("v1")
    assert (vol.name, vol.size, vol.multiattach, vol.attachments) == (None, 0, False, ())
    assert (vol.attach_status, vol.migration_status) == (None, None)
    full = types.SimpleNamespace(
        id="v1", name="data", status="in-use", size=3, multiattach=True,
        attach_status="attached", migration_status="migrating",
        attachments=[{"id": "a9", "server_id": "i1", "host_name": "hosta",
                      "device": "/dev/vdb"}])
    vol = storage(vol_get=Scripted(full)).get_volume("v1")
    assert (vol.size, vol.multiattach) == (3, True)
    assert (vol.attach_status, vol.migration_status) == ("attached", "migrating")
    assert vol.attachment_for("i1").attachment_id == "a9"  # a Cinder without attachment_id


def test_an_attachment_shown_without_connection_info_has_no_connection():
    shown = storage(att_show=Scripted(types.SimpleNamespace(id="a2", status="reserved")))\
        .attachment_show("a2", "v1")
    assert shown is None


NOAUTH = {"OS_AUTH_TYPE": "noauth", "OS_USER_ID": "u", "OS_PROJECT_ID": "p",
          "OS_ENDPOINT": "https://cinder.example:8776/v3"}


def test_tls_verification_follows_os_insecure_and_os_cacert():
    assert make_session(env=NOAUTH)[0].verify is True
    assert make_session(env=dict(NOAUTH, OS_INSECURE="1"))[0].verify is False
    assert make_session(env=dict(NOAUTH, OS_INSECURE=""))[0].verify is True
    sess, _ = make_session(env=dict(NOAUTH, OS_CACERT="/etc/ssl/lab-ca.pem"))
    assert sess.verify == "/etc/ssl/lab-ca.pem"
    sess, _ = make_session(env=dict(NOAUTH, OS_CACERT="/etc/ssl/lab-ca.pem", OS_INSECURE="1"))
    assert sess.verify == "/etc/ssl/lab-ca.pem"  # a CA given is used, not ignored


def test_the_storage_timeout_is_read_from_the_environment():
    assert make_session(env=dict(NOAUTH, ATTACHFLOW_STORAGE_TIMEOUT="12.5"))[0].timeout == 12.5
    assert make_session(env=dict(NOAUTH, ATTACHFLOW_STORAGE_TIMEOUT=""))[0].timeout == 30.0
    with pytest.raises(errors.InputError) as info:
        make_session(env=dict(NOAUTH, ATTACHFLOW_STORAGE_TIMEOUT="soon"))
    assert str(info.value) == ("ATTACHFLOW_STORAGE_TIMEOUT 'soon' is not a number of "
                               "seconds from 1 to 86400")
    assert info.value.exit_code == 2


def test_an_empty_variable_counts_as_unset():
    with pytest.raises(errors.InputError) as info:
        make_session(env=dict(NOAUTH, OS_USER_ID=""))
    assert str(info.value) == ("storage credentials incomplete: set OS_USER_ID "
                               "(or --os-cloud / OS_CLOUD)")
    sess, endpoint = make_session(env=dict(NOAUTH, OS_CLOUD="", OS_AUTH_TYPE=""))
    assert endpoint is None and sess.get_auth_headers()["x-project-id"] == "p"


def test_select_flow_at_the_microversion_boundary():
    at, below = types.SimpleNamespace(version=(3, 44)), types.SimpleNamespace(version=(3, 43))
    for api in ("auto", "attachments"):
        flow = select_flow(at, api)
        assert type(flow) is AttachmentsFlow and flow.storage is at
    flow = select_flow(below, "auto")
    assert type(flow) is LegacyFlow and flow.storage is below
    # without an API named, the microversion decides
    assert type(select_flow(at)) is AttachmentsFlow
    assert type(select_flow(below)) is LegacyFlow
    assert type(select_flow(at, "legacy")) is LegacyFlow
    with pytest.raises(errors.InputError) as info:
        select_flow(below, "attachments")
    assert str(info.value) == ("the storage API speaks microversion 3.43; the attachments "
                               "API needs 3.44 (use --api legacy)")
    with pytest.raises(errors.InputError) as info:
        select_flow(at, "Auto")
    assert str(info.value) == "unknown API 'Auto' (auto, attachments or legacy)"


def _record(api, attachment_id="a1"):
    from attachflow.model import ConnectionInfo
    from attachflow.record import VolumeRecord
    conn = ConnectionInfo.from_cinder(dict(ISCSI, driver_volume_type="iscsi"), "v1")
    return VolumeRecord("v1", api, "kernel", attachment_id, "hosta", "vdb",
                        {"host": "hosta", "ip": "198.18.0.11"}, conn.without_secrets())


def test_detach_goes_through_the_api_the_volume_was_attached_with():
    new = types.SimpleNamespace(version=(3, 71))
    assert type(flow_for_record(new, _record("legacy"), "auto")) is LegacyFlow
    assert type(flow_for_record(new, _record("attachments"), "auto")) is AttachmentsFlow
    assert type(flow_for_record(new, _record(None), "auto")) is AttachmentsFlow
    assert type(flow_for_record(new, None, "auto")) is AttachmentsFlow
    assert type(flow_for_record(new, _record("attachments"), "legacy")) is LegacyFlow
    assert type(flow_for_record(new, _record("legacy"), "attachments")) is AttachmentsFlow
    old = types.SimpleNamespace(version=(3, 40))
    assert type(flow_for_record(old, _record(None), "auto")) is LegacyFlow
    with pytest.raises(errors.InputError, match="needs 3.44"):
        flow_for_record(old, _record("attachments"), "auto")
    assert flow_for_record(new, _record("legacy"), "auto").storage is new


def test_the_storage_attachment_a_record_describes():
    from attachflow.model import ConnectionInfo
    rec = _record("legacy", attachment_id=None)
    att = StorageAttachment.from_record(rec, "v1", "i1")
    assert (att.volume_id, att.instance_id, att.api, att.attachment_id) == (
        "v1", "i1", "legacy", None)
    assert att.connection == rec.connection
    assert att.connector == {"host": "hosta", "ip": "198.18.0.11"}
    att.connector["host"] = "elsewhere"
    assert rec.connector["host"] == "hosta"  # the record is not changed through it
    att = StorageAttachment.from_record(_record(None), "v1", "i1")
    assert (att.api, att.attachment_id) == ("attachments", "a1")
    att = StorageAttachment.from_record(None, "v1", "i1")
    assert (att.volume_id, att.instance_id, att.api, att.attachment_id) == (
        "v1", "i1", "attachments", None)
    assert att.connection == ConnectionInfo("unknown", "v1") and att.connector == {}


def test_an_answer_that_cannot_be_shown_is_logged_by_its_type(caplog):
    class Odd:
        def to_dict(self):
            raise ValueError("no")

    caplog.set_level(logging.DEBUG, logger="attachflow.cinder")
    storage(vol_reserve=Scripted(Odd())).reserve("v1")
    assert caplog.records[-1].getMessage().startswith("cinder: os-reserve v1 -> Odd (")


def test_the_command_line_reads_clouds_yaml_without_loading_the_whole_sdk(tmp_path):
    # the command line's process: openstacksdk's clouds.yaml reader, not its services
    import subprocess
    import sys
    (tmp_path / "clouds.yaml").write_text(
        "clouds:\n  c:\n    auth:\n      auth_url: http://keystone.example:5000/v3\n"
        "      username: u\n      password: p-secret\n      project_name: pr\n"
        "      user_domain_name: Default\n      project_domain_name: Default\n")
    script = (
        "import sys\n"
        "from attachflow import identity\n"
        "identity.read_clouds_yaml_without_the_sdk()\n"
        "s = identity.open_session(cloud='c', env={'OS_CLIENT_CONFIG_FILE': sys.argv[1]})\n"
        "print([i.label for i in s.identities], s.identities[0].auth_url)\n"
        "print('openstack.connection' in sys.modules, 'openstack.config.loader' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "clouds.yaml")],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[\"user 'u' in project 'pr' (cloud 'c')\"] http://keystone.example:5000/v3",
                   "False True"]


def keystoneauth_connect_failure(inner: BaseException) -> kexc.ConnectFailure:
    """ConnectFailure as keystoneauth raises it: inside its handler of requests' error,
    which holds urllib3's retry error with the reason."""
    import requests
    import urllib3.exceptions
    retry = urllib3.exceptions.MaxRetryError(None, "/v3/volumes", reason=inner)
    try:
        try:
            raise requests.exceptions.ConnectionError(retry)
        except requests.exceptions.ConnectionError as exc:
            raise kexc.ConnectFailure(f"Unable to establish connection to /v3: {exc}")
    except kexc.ConnectFailure as failure:
        return failure


def test_a_refused_connection_is_known_never_to_have_sent_the_request():
    import urllib3.exceptions
    refused = keystoneauth_connect_failure(urllib3.exceptions.NewConnectionError(
        None, "Failed to establish a new connection: [Errno 111] Connection refused"))
    with pytest.raises(errors.StorageUnavailable) as info:
        storage(att_create=Scripted(refused)).attachment_create("v1", "i1", {"host": "h"})
    assert info.value.sent is False


def test_a_connection_broken_mid_request_may_have_sent_it():
    import urllib3.exceptions
    aborted = keystoneauth_connect_failure(urllib3.exceptions.ProtocolError(
        "Connection aborted.", ConnectionResetError(104, "reset by peer")))
    with pytest.raises(errors.StorageUnavailable) as info:
        storage(att_create=Scripted(aborted)).attachment_create("v1", "i1", {"host": "h"})
    assert info.value.sent is True


def test_writes_sent_are_counted_for_the_steps_and_reads_are_not():
    from attachflow import steps
    before = steps._sent()
    store = storage(vol_get=Scripted(VOLUME), vol_reserve=Scripted(None))
    store.get_volume("v1")
    assert steps._sent() == before
    store.reserve("v1")
    assert steps._sent() == before + 1
