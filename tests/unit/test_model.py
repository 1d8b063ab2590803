from attachflow.model import ConnectionInfo, ConnectorProperties, Secret, masked

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
