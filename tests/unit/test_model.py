import pytest

from attachflow.errors import InputError
from attachflow.model import (ConnectionInfo, ConnectorProperties, Portal, Secret, Volume,
                              VolumeAttachment, is_secret_key, masked)

FLAT = {"driver_volume_type": "iscsi", "attachment_id": "att-1", "target_portal":
        "198.18.0.1:3260", "target_iqn": "iqn.2010-10.org.openstack:volume-v1",
        "target_lun": 1, "auth_method": "CHAP", "auth_username": "chapuser",
        "auth_password": "s3cr3t-pass-1234", "access_mode": "rw", "volume_id": "v1"}
NESTED = {"driver_volume_type": "iscsi",
          "data": {k: v for k, v in FLAT.items() if k != "driver_volume_type"}}


def test_both_shapes_parse_alike():
    flat, nested = (ConnectionInfo.from_cinder(FLAT, "v1"),
                    ConnectionInfo.from_cinder(NESTED, "v1"))
    assert flat == nested
    assert flat.portal.host == "198.18.0.1" and flat.portal.port == 3260
    assert flat.iqn.endswith("volume-v1") and flat.lun == 1 and flat.uses_chap
    assert flat.attachment_id == "att-1"


def test_password_never_in_repr_str_or_record():
    conn = ConnectionInfo.from_cinder(FLAT, "v1")
    for text in (repr(conn), str(conn), repr(conn.auth_password), str(conn.to_record()),
                 str(masked(FLAT))):
        assert "s3cr3t" not in text
    assert conn.auth_password.reveal() == "s3cr3t-pass-1234"
    assert conn.to_brick()["auth_password"] == "s3cr3t-pass-1234"
    assert ConnectionInfo.from_cinder(conn.to_record(), "v1").iqn == conn.iqn


def test_secret_masks_and_compares():
    assert repr(Secret("x")) == "Secret(***)" and Secret("a") == Secret("a")
    assert masked({"a": {"auth_password": "p", "list": [{"password": "q"}]}}) == \
        {"a": {"auth_password": "***", "list": [{"password": "***"}]}}


def test_unknown_type_keeps_data_for_a_clear_refusal():
    conn = ConnectionInfo.from_cinder({"driver_volume_type": "rbd", "data": {"name": "p/v"}},
                                      "v1")
    assert conn.driver_volume_type == "rbd" and conn.iqn is None


def test_connector_round_trip_and_mountpoint():
    props = ConnectorProperties.from_dict({"host": "h", "ip": "1.2.3.4", "initiator": "iqn.x",
                                           "multipath": False, "do_local_attach": False})
    out = props.to_dict(mountpoint="/dev/vdb")
    assert out["do_local_attach"] is False and out["mountpoint"] == "/dev/vdb"
    assert ConnectorProperties.from_dict(out).initiator == "iqn.x"


# -- secrets ---------------------------------------------------------------------------------

def test_secret_reveals_its_value_and_is_falsy_only_when_empty():
    assert Secret("pw").reveal() == "pw"
    assert str(Secret("pw")) == "Secret(***)"
    assert bool(Secret("pw")) is True and bool(Secret("")) is False
    assert Secret("a") != Secret("b") and Secret("a") != "a"
    assert hash(Secret("a")) == hash(Secret("a"))
    assert {Secret("a"), Secret("a"), Secret("b")} == {Secret("a"), Secret("b")}


def test_secret_keys_are_found_whatever_their_case():
    for key in ("password", "Auth_Password", "SECRET_UUID", "auth_key", "x-token"):
        assert is_secret_key(key), key
    for key in ("auth_username", "target_iqn", "host", ""):
        assert not is_secret_key(key), key


def test_masked_hides_every_secret_and_keeps_the_rest():
    value = {"auth_password": "p", "auth_username": "u", "empty_password": "",
             "no_secret": None, "Token": 7, "nested": ({"secret": "s", "n": 1}, [2, "x"]),
             "held": Secret("v"), 3: "three"}
    assert masked(value) == {
        "auth_password": "***", "auth_username": "u", "empty_password": "",
        "no_secret": None, "Token": "***", "nested": [{"secret": "***", "n": 1}, [2, "x"]],
        "held": "***", 3: "three"}
    assert masked([Secret("v"), "plain"]) == ["***", "plain"]
    assert masked("plain") == "plain" and masked(None) is None
    assert value["auth_password"] == "p"  # a copy: the input is left as it was


# -- connector properties -------------------------------------------------------------------

def test_connector_dict_is_exactly_what_storage_is_told():
    props = ConnectorProperties("h1", "198.18.0.11", initiator="iqn.1993-08.org.debian:01:h1",
                                multipath=True, extra=(("do_local_attach", False),))
    assert props.to_dict() == {
        "host": "h1", "ip": "198.18.0.11", "initiator": "iqn.1993-08.org.debian:01:h1",
        "multipath": True, "platform": "x86_64", "os_type": "linux",
        "do_local_attach": False}
    assert props.to_dict(mountpoint="/dev/vdb")["mountpoint"] == "/dev/vdb"
    bare = ConnectorProperties("h2", "198.18.0.12")
    assert bare.to_dict() == {"host": "h2", "ip": "198.18.0.12", "multipath": False,
                              "platform": "x86_64", "os_type": "linux"}
    assert bare.to_dict(mountpoint="") == bare.to_dict()
    # what the host reports cannot override the modelled fields
    odd = ConnectorProperties("h3", "1.1.1.1", extra=(("host", "other"), ("ip", "2.2.2.2")))
    assert odd.to_dict()["host"] == "h3" and odd.to_dict()["ip"] == "1.1.1.1"


def test_connector_from_dict_defaults_and_extras():
    assert ConnectorProperties.from_dict({"host": "h", "ip": "1.2.3.4"}) == \
        ConnectorProperties("h", "1.2.3.4", None, False, "x86_64", "linux", ())
    props = ConnectorProperties.from_dict({
        "host": 5, "ip": 6, "initiator": "iqn.x", "multipath": 1, "platform": "aarch64",
        "os_type": "linux2", "mountpoint": "/dev/vdb", "zeta": 1, "alpha": [2]})
    assert props == ConnectorProperties("5", "6", "iqn.x", True, "aarch64", "linux2",
                                        (("alpha", [2]), ("zeta", 1)))
    assert props.to_dict()["alpha"] == [2] and "mountpoint" not in props.to_dict()


@pytest.mark.parametrize("missing", ["host", "ip"])
def test_connector_without_host_or_ip_is_refused(missing):
    data = {"host": "h", "ip": "1.2.3.4"}
    del data[missing]
    with pytest.raises(InputError) as exc:
        ConnectorProperties.from_dict(data)
    assert exc.value.message == f"connector properties lack '{missing}'"
    assert exc.value.exit_code == 2


# -- portals --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,host,port,shown", [
    ("198.18.0.1:3260", "198.18.0.1", 3260, "198.18.0.1:3260"),
    ("198.18.0.1:3261", "198.18.0.1", 3261, "198.18.0.1:3261"),
    ("198.18.0.1", "198.18.0.1", 3260, "198.18.0.1:3260"),
    ("[fd00::1]:3262", "fd00::1", 3262, "[fd00::1]:3262"),
    ("storage.example:3260", "storage.example", 3260, "storage.example:3260"),
    ("[storage.example]", "storage.example", 3260, "storage.example:3260"),
    ("XSTOR-X", "XSTOR-X", 3260, "XSTOR-X:3260"),
    ("XSTOR-X:3260", "XSTOR-X", 3260, "XSTOR-X:3260"),
])
def test_portal_parses_and_prints(text, host, port, shown):
    portal = Portal.parse(text)
    assert (portal.host, portal.port) == (host, port)
    assert str(portal) == shown
    assert Portal.parse(shown) == portal


@pytest.mark.parametrize("text", ["198.18.0.1:iscsi", "198.18.0.1:", "[fd00::1]:x"])
def test_bad_portal_is_refused(text):
    with pytest.raises(InputError) as exc:
        Portal.parse(text)
    assert exc.value.message.startswith(f"bad iSCSI portal '{text}' (")


# -- connection info ------------------------------------------------------------------------

IQN = "iqn.2010-10.org.openstack:volume-v2"
RICH = {"target_discovered": False, "target_portal": "198.18.0.1:3260", "target_iqn": IQN,
        "target_lun": "2", "volume_id": "v2", "auth_method": "CHAP",
        "auth_username": "chapuser", "auth_password": "s3cr3t-pass-1234",
        "target_portals": ["198.18.0.1:3260", "[fd00::2]:3261"],
        "target_iqns": [IQN, IQN + "-b"], "target_luns": [2, 3],
        "discovery_auth_method": "CHAP", "discovery_auth_username": "discuser",
        "discovery_auth_password": "d1sc-pass", "encrypted": True, "access_mode": "ro",
        "discard": True, "qos_specs": None, "cacheable": False}


def test_every_iscsi_field_is_parsed():
    conn = ConnectionInfo.from_cinder({"driver_volume_type": "iscsi", "data": RICH,
                                       "attachment_id": "att-9"}, "v2")
    assert conn == ConnectionInfo(
        driver_volume_type="iscsi", volume_id="v2", portal=Portal("198.18.0.1", 3260),
        iqn=IQN, lun=2,
        portals=((Portal("198.18.0.1", 3260), IQN, 2), (Portal("fd00::2", 3261), IQN + "-b", 3)),
        auth_method="CHAP", auth_username="chapuser", auth_password=Secret("s3cr3t-pass-1234"),
        discovery_auth_method="CHAP", discovery_auth_username="discuser",
        discovery_auth_password=Secret("d1sc-pass"), access_mode="ro", discard=True,
        encrypted=True, attachment_id="att-9",
        data=(("cacheable", False), ("qos_specs", None), ("target_discovered", False)))
    assert conn.uses_chap


def test_what_os_brick_is_handed_is_the_connection_cinder_gave():
    conn = ConnectionInfo.from_cinder(dict(RICH, driver_volume_type="iscsi",
                                           attachment_id="att-9"), "v2")
    assert conn.to_brick() == {
        "target_discovered": False, "qos_specs": None, "cacheable": False,
        "volume_id": "v2", "access_mode": "ro", "encrypted": True, "discard": True,
        "attachment_id": "att-9", "target_portal": "198.18.0.1:3260", "target_iqn": IQN,
        "target_lun": 2, "target_portals": ["198.18.0.1:3260", "[fd00::2]:3261"],
        "target_iqns": [IQN, IQN + "-b"], "target_luns": [2, 3], "auth_method": "CHAP",
        "auth_username": "chapuser", "auth_password": "s3cr3t-pass-1234",
        "discovery_auth_method": "CHAP", "discovery_auth_username": "discuser",
        "discovery_auth_password": "d1sc-pass"}


def test_record_keeps_everything_but_the_passwords_and_parses_back():
    conn = ConnectionInfo.from_cinder(dict(RICH, driver_volume_type="iscsi",
                                           attachment_id="att-9"), "v2")
    rec = conn.to_record()
    assert rec == {k: v for k, v in conn.to_brick().items()
                   if k not in ("auth_password", "discovery_auth_password")} | {
        "driver_volume_type": "iscsi"}
    back = ConnectionInfo.from_record(rec, "v2")
    assert back == conn.without_secrets()
    assert back.auth_password is None and back.discovery_auth_password is None
    assert back.auth_username == "chapuser" and back.portals == conn.portals
    # a record of the masked form does not bring the mask back as a password
    assert ConnectionInfo.from_record(dict(rec, auth_password="***"), "v2") == back


def test_without_secrets_drops_only_the_passwords():
    conn = ConnectionInfo.from_cinder(dict(RICH, driver_volume_type="iscsi"), "v2")
    bare = conn.without_secrets()
    assert bare == ConnectionInfo(**{**conn.__dict__, "auth_password": None,
                                     "discovery_auth_password": None})
    assert conn.auth_password == Secret("s3cr3t-pass-1234")  # the original keeps its own


def test_minimal_iscsi_connection_takes_the_defaults():
    conn = ConnectionInfo.from_cinder({"driver_volume_type": "iscsi", "data": {
        "target_portal": "198.18.0.1", "target_iqn": IQN}}, "v3")
    assert conn == ConnectionInfo("iscsi", "v3", portal=Portal("198.18.0.1", 3260), iqn=IQN,
                                  lun=0)
    assert conn.access_mode == "rw" and not conn.discard and not conn.encrypted
    assert not conn.uses_chap and conn.attachment_id is None
    assert conn.to_brick() == {"volume_id": "v3", "access_mode": "rw", "encrypted": False,
                               "discard": False, "target_portal": "198.18.0.1:3260",
                               "target_iqn": IQN, "target_lun": 0}
    assert conn.to_record() == dict(conn.to_brick(), driver_volume_type="iscsi")


def test_portals_without_their_iqns_and_luns_take_the_primary_ones():
    conn = ConnectionInfo.from_cinder({
        "driver_volume_type": "iscsi", "target_portal": "198.18.0.1:3260",
        "target_iqn": IQN, "target_lun": 4,
        "target_portals": ["198.18.0.1:3260", "198.18.1.1:3260"]}, "v4")
    assert conn.portals == ((Portal("198.18.0.1", 3260), IQN, 4),
                            (Portal("198.18.1.1", 3260), IQN, 4))


@pytest.mark.parametrize("method,chap", [("CHAP", True), ("chap", True), (None, False),
                                         ("None", False)])
def test_chap_is_recognised_whatever_its_case(method, chap):
    conn = ConnectionInfo.from_cinder(dict(FLAT, auth_method=method), "v1")
    assert conn.uses_chap is chap


def test_empty_or_masked_password_is_no_password():
    for value in ("", None, "***"):
        conn = ConnectionInfo.from_cinder(dict(FLAT, auth_password=value,
                                               discovery_auth_password=value), "v1")
        assert conn.auth_password is None and conn.discovery_auth_password is None
        assert "auth_password" not in conn.to_brick()
        assert "discovery_auth_password" not in conn.to_brick()


def test_attachment_id_beside_or_inside_the_data():
    inside = {"driver_volume_type": "iscsi",
              "data": {"target_portal": "p:3260", "target_iqn": IQN, "attachment_id": "a-in"}}
    assert ConnectionInfo.from_cinder(inside, "v").attachment_id == "a-in"
    beside = dict(inside, attachment_id="a-out")
    assert ConnectionInfo.from_cinder(beside, "v").attachment_id == "a-out"
    flat = {"driver_volume_type": "iscsi", "target_portal": "p:3260", "target_iqn": IQN,
            "attachment_id": "a-flat"}
    conn = ConnectionInfo.from_cinder(flat, "v")
    assert conn.attachment_id == "a-flat" and conn.to_brick()["attachment_id"] == "a-flat"
    assert conn.volume_id == "v"


@pytest.mark.parametrize("raw", [None, [], "iscsi", {"data": {"target_iqn": IQN}}])
def test_connection_without_a_type_is_refused(raw):
    with pytest.raises(InputError) as exc:
        ConnectionInfo.from_cinder(raw, "v1")
    assert exc.value.message == "storage returned connection info without driver_volume_type"


@pytest.mark.parametrize("missing", ["target_portal", "target_iqn"])
def test_iscsi_connection_without_its_target_is_refused(missing):
    data = {k: v for k, v in FLAT.items() if k != missing}
    with pytest.raises(InputError) as exc:
        ConnectionInfo.from_cinder(data, "v1")
    assert exc.value.message == f"iSCSI connection info lacks '{missing}'"


def test_other_types_keep_their_data_but_no_secret():
    raw = {"driver_volume_type": "rbd", "data": {
        "name": "volumes/volume-v5", "hosts": ["198.18.0.1"], "auth_username": "cinder",
        "secret_uuid": "7c3b", "keyring": None, "auth_enabled": True, "discard": True,
        "access_mode": "ro", "volume_id": "v5", "target_portal": "not-an-iscsi-field"}}
    conn = ConnectionInfo.from_cinder(raw, "v5")
    assert conn == ConnectionInfo(
        "rbd", "v5", access_mode="ro", discard=True, data=(
            ("auth_enabled", True), ("auth_username", "cinder"),
            ("hosts", ["198.18.0.1"]), ("keyring", None),
            ("name", "volumes/volume-v5"),
            ("target_portal", "not-an-iscsi-field")))
    assert conn.iqn is None and conn.portal is None and not conn.uses_chap
    assert conn.to_brick() == {
        "access_mode": "ro", "auth_enabled": True, "auth_username": "cinder",
        "discard": True, "hosts": ["198.18.0.1"], "keyring": None,
        "name": "volumes/volume-v5", "target_portal": "not-an-iscsi-field",
        "volume_id": "v5", "encrypted": False}
    rec = conn.to_record()
    assert rec["driver_volume_type"] == "rbd" and "secret_uuid" not in rec
    back = ConnectionInfo.from_record(rec, "v5")
    assert back.driver_volume_type == "rbd" and back.to_brick() == conn.to_brick()
    assert back.to_record() == rec


def test_other_types_parse_alike_in_both_shapes():
    data = {"name": "volumes/volume-v5", "hosts": ["198.18.0.1"], "volume_id": "v5"}
    nested = ConnectionInfo.from_cinder({"driver_volume_type": "rbd", "data": data}, "v5")
    flat = ConnectionInfo.from_cinder(dict(data, driver_volume_type="rbd"), "v5")
    assert flat == nested
    assert flat.to_brick() == dict(data, access_mode="rw", encrypted=False, discard=False)


def test_record_of_an_attachment_made_elsewhere_is_unknown():
    assert ConnectionInfo.from_record({}, "v6") == ConnectionInfo("unknown", "v6")
    assert ConnectionInfo.from_record(None, "v6") == ConnectionInfo("unknown", "v6")
    typeless = ConnectionInfo.from_record({"attachment_id": "a6", "foo": 1}, "v6")
    assert typeless == ConnectionInfo("unknown", "v6", attachment_id="a6",
                                      data=(("foo", 1),))


def test_record_of_a_flat_iscsi_connection():
    rec = {"driver_volume_type": "iscsi", "target_portal": "198.18.0.1:3260",
           "target_iqn": IQN, "target_lun": 1, "volume_id": "v7", "access_mode": "ro",
           "attachment_id": "a7", "auth_method": "CHAP", "auth_username": "u",
           "discard": True, "encrypted": True}
    conn = ConnectionInfo.from_record(rec, "v7")
    assert conn == ConnectionInfo("iscsi", "v7", portal=Portal("198.18.0.1", 3260),
                                  iqn=IQN, lun=1, auth_method="CHAP", auth_username="u",
                                  access_mode="ro", discard=True, encrypted=True,
                                  attachment_id="a7")
    assert conn.to_record() == rec


# -- volumes --------------------------------------------------------------------------------

def test_attachment_for_finds_the_servers_own():
    mine, other = VolumeAttachment("a1", "s1", "h1"), VolumeAttachment("a2", "s2", "h2")
    vol = Volume("v", None, "in-use", 1, multiattach=True, attachments=(other, mine))
    assert vol.attachment_for("s1") is mine and vol.attachment_for("s2") is other
    assert vol.attachment_for("s3") is None
    assert Volume("v", None, "available", 1).attachment_for("s1") is None
