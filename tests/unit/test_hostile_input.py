"""Hostile and malformed input, as properties over many generated values (hypothesis):
connection info from a storage side that answers anything, hosts files that are any
text or any TOML, and the XML attachflow builds from all of it. Each either comes out
typed and whole, or is refused with one ``InputError`` line; nothing else escapes."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from attachflow import domxml, errors
from attachflow.hosts import load_hosts
from attachflow.model import ConnectionInfo, Portal
from test_libvirt_schema import validate

VOLUME = str(uuid.UUID(int=7))

leaves = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
KNOWN = ["target_portal", "target_iqn", "target_lun", "target_portals", "target_iqns",
         "target_luns", "auth_method", "auth_username", "auth_password", "access_mode",
         "discard", "encrypted", "volume_id", "attachment_id", "discovery_auth_method",
         "discovery_auth_username", "discovery_auth_password", "qos_specs"]
portal_text = st.one_of(
    st.builds(lambda a, b, c, d, p: f"{a}.{b}.{c}.{d}:{p}", *[st.integers(0, 255)] * 4,
              st.integers(1, 65535)),
    st.text(max_size=30))
iqn_text = st.one_of(st.from_regex(r"\Aiqn\.20[0-9]{2}-[0-9]{2}\.[a-z.]{1,12}:[a-z0-9.-]{1,20}\Z"),
                     st.text(max_size=30))
field_values = st.fixed_dictionaries({}, optional={
    "target_portal": portal_text | json_values, "target_iqn": iqn_text | json_values,
    "target_lun": st.integers(-5, 70000) | json_values,
    "target_portals": st.lists(portal_text, max_size=3) | json_values,
    "target_iqns": st.lists(iqn_text, max_size=3) | json_values,
    "target_luns": st.lists(st.integers(0, 300), max_size=3) | json_values,
    "auth_method": st.sampled_from(["CHAP", "chap", "none"]) | json_values,
    "auth_username": st.text(max_size=20) | json_values,
    "auth_password": st.text(max_size=20) | json_values,
    "access_mode": st.sampled_from(["rw", "ro"]) | json_values,
    "discard": json_values, "encrypted": json_values,
    "qos_specs": json_values,
})


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and text.isprintable(), repr(text)
    assert len(text) < 600, len(text)
    return text


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(fields=field_values, extra=st.dictionaries(st.text(max_size=12), json_values,
                                                  max_size=3),
       dvt=st.sampled_from(["iscsi", "rbd", ""]) | st.text(max_size=10),
       nested=st.booleans())
def test_connection_info_is_parsed_whole_or_refused_in_one_line(fields, extra, dvt,
                                                                 nested):
    data = {**extra, **fields}
    raw = {"driver_volume_type": dvt, "data": data} if nested else \
        {"driver_volume_type": dvt, **data}
    try:
        conn = ConnectionInfo.from_cinder(raw, VOLUME)
    except errors.InputError as exc:
        one_line(exc)
        return
    # typed through and through
    assert isinstance(conn.driver_volume_type, str)
    assert isinstance(conn.access_mode, str) and conn.access_mode in ("rw", "ro")
    if conn.driver_volume_type == "iscsi":
        assert isinstance(conn.portal, Portal) and isinstance(conn.portal.port, int)
        assert 1 <= conn.portal.port <= 65535 and conn.portal.host
        assert isinstance(conn.iqn, str) and conn.iqn
        assert isinstance(conn.lun, int) and conn.lun >= 0
        for portal, iqn, lun in conn.portals:
            assert isinstance(portal, Portal) and isinstance(iqn, str) and iqn
            assert isinstance(lun, int) and lun >= 0
    # the secret never shows, and the record form (kept in the domain) parses back
    secret = fields.get("auth_password")
    # (text that shows even with the secrets taken out, as part of another value or a
    # field's name, is not the secret showing)
    others = repr(conn.without_secrets()) + json.dumps(conn.without_secrets().to_record())
    if isinstance(secret, str) and len(secret) > 3 and secret not in others:
        assert secret not in repr(conn) and secret not in json.dumps(conn.to_record())
    again = ConnectionInfo.from_record(conn.to_record(), VOLUME)
    assert again == conn.without_secrets()


@settings(max_examples=300)
@given(text=st.text(max_size=200))
def test_any_text_as_a_hosts_file_is_read_or_refused_in_one_line(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("hosts") / "hosts.toml"
    path.write_text(text)
    try:
        load_hosts({"ATTACHFLOW_HOSTS": str(path)})
    except errors.InputError as exc:
        assert str(path) in one_line(exc)


toml_values = st.one_of(st.text(max_size=30), st.integers(-2**40, 2**40), st.booleans())
HOST_KEYS = ["address", "ssh_user", "ssh_port", "ssh_key", "known_hosts", "libvirt_uri",
             "hostname", "migration_uri", "remote_command"]


def toml_of(hosts: dict) -> str:
    lines = []
    for name, entry in hosts.items():
        lines.append(f"[hosts.{json.dumps(name)}]")
        lines += [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=300)
@given(hosts=st.dictionaries(
    st.text(min_size=1, max_size=12),
    st.dictionaries(st.sampled_from(HOST_KEYS) | st.text(max_size=8), toml_values,
                    max_size=5), max_size=3))
def test_any_hosts_table_is_checked_key_by_key(tmp_path_factory, hosts):
    path = tmp_path_factory.mktemp("hosts") / "hosts.toml"
    path.write_text(toml_of(hosts))
    try:
        loaded = load_hosts({"ATTACHFLOW_HOSTS": str(path)})
    except errors.InputError as exc:
        assert str(path) in one_line(exc)
        return
    assert set(loaded) == set(hosts)
    for name, cfg in loaded.items():
        assert isinstance(cfg.ssh_port, int) and 1 <= cfg.ssh_port <= 65535
        for key in ("address", "ssh_user", "libvirt_uri"):
            value = getattr(cfg, key)
            assert isinstance(value, str) and value.strip() and value.isprintable()


names = st.text(max_size=40)


def root_disk(block, path, iqn, lun, host, port, user, usage):
    """(source, vda disk) of the volume: a block device at ``path``, or QEMU's iSCSI."""
    if block:
        source = domxml.BlockSource(path=path)
    else:
        source = domxml.NetworkISCSISource(
            iqn=iqn, lun=lun, hosts=(Portal(host, port),), auth_username=user,
            secret_usage=usage if user else None, initiator_iqn=None)
    return source, domxml.Disk.build(domxml.DiskSpec(source=source, target_dev="vda",
                                                     serial=VOLUME))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=names, iqn=iqn_text, host=st.one_of(st.ip_addresses(v=4).map(str),
                                                 st.text(max_size=20)),
       port=st.integers(-1, 70000), lun=st.integers(-1, 70000),
       user=st.none() | st.text(max_size=20), usage=st.none() | st.text(max_size=30),
       path=st.text(max_size=30), kernel=st.none() | st.text(max_size=30),
       cmdline=st.none() | st.text(max_size=30), block=st.booleans())
def test_built_xml_validates_with_every_value_escaped_or_is_refused(
        name, iqn, host, port, lun, user, usage, path, kernel, cmdline, block):
    try:
        source, disk = root_disk(block, path, iqn, lun, host, port, user, usage)
        boot = domxml.DirectBoot(kernel, None, cmdline) if kernel is not None else None
        dom = domxml.build_domain(name, str(uuid.UUID(int=9)), 64, 1, "qemu", disk,
                                  {VOLUME: json.dumps({"host": name})},
                                  direct_boot=boot)
        xml = dom.to_xml()
    except errors.InputError as exc:
        one_line(exc)
        return
    proc = validate(xml, "generated domain")
    assert proc.returncode == 0, (proc.stderr, xml)
    back = domxml.Domain.parse(xml)
    assert back.name == name
    parsed = back.disk(VOLUME)
    assert parsed is not None and parsed.source == source
    assert back.volume_entries() == {VOLUME: json.dumps({"host": name})}


@pytest.mark.parametrize("raw", [
    {"driver_volume_type": "iscsi", "data": {"target_portal": "198.18.0.1:3260"}},
    {"driver_volume_type": "iscsi", "target_iqn": "iqn.x:y", "target_portal": None},
    {"driver_volume_type": "iscsi", "target_iqn": "iqn.x:y",
     "target_portal": "198.18.0.1:3260", "target_lun": "lots"},
    {"driver_volume_type": "iscsi", "target_iqn": "iqn.x:y" * 10000,
     "target_portal": "198.18.0.1:3260"},
    {"driver_volume_type": "iscsi", "target_iqn": "<x/>", "target_portal": "h:99999"},
    {"driver_volume_type": "iscsi", "target_iqn": "iqn.x:y",
     "target_portal": "198.18.0.1:3260", "target_portals": "198.18.0.1:3260"},
    "not a dict", {"data": {}},
])
def test_malformed_connection_info_is_one_line(raw):
    with pytest.raises(errors.InputError) as refused:
        ConnectionInfo.from_cinder(raw, VOLUME)  # type: ignore[arg-type]
    one_line(refused.value)


def test_unknown_keys_in_connection_info_travel_without_being_trusted():
    conn = ConnectionInfo.from_cinder({
        "driver_volume_type": "iscsi", "target_iqn": "iqn.2010-10.org.x:vol",
        "target_portal": "198.18.0.1:3260", "target_lun": 1,
        "volume_backend_secret_key": "s3cret-value", "weird": {"a": [1, 2]}}, VOLUME)
    assert "s3cret-value" not in repr(conn) and "s3cret-value" not in json.dumps(
        conn.to_record())


def _accepted(make) -> bool:
    try:
        make()
    except errors.InputError as exc:
        one_line(exc)
        return False
    return True


# Characters on both sides of the iSCSI name and host patterns' edges.
_EDGE = st.sampled_from("aZ09.:-_/ <é\x00\x7f")


@settings(max_examples=300, deadline=None)
@given(iqn=st.text(_EDGE, max_size=6) | st.sampled_from(["q" * 223, "q" * 224]),
       host=st.text(_EDGE.filter(lambda c: c != ":"), max_size=6) |
       st.sampled_from(["fd00::2", "h" * 253, "h" * 254]),
       port=st.integers(-1, 65536), lun=st.integers(-1, 16384) | st.just(True))
def test_connection_info_and_the_xml_take_the_same_targets(iqn, host, port, lun):
    """The storage side's target, portal and LUN are accepted exactly when the disk XML
    takes them: the two checks cannot drift apart."""
    from_storage = _accepted(lambda: ConnectionInfo.from_cinder(
        {"driver_volume_type": "iscsi", "target_iqn": iqn, "target_lun": lun,
         "target_portal": f"[{host}]:{port}"}, VOLUME))
    into_xml = _accepted(lambda: domxml.Disk.build(domxml.DiskSpec(
        domxml.NetworkISCSISource(iqn=iqn, lun=lun, hosts=(Portal(host, port),)),
        "vdb", VOLUME)).to_xml())
    assert from_storage == into_xml


# Valid input must come through: a parser that refused everything would pass every
# "refused in one line" property above.
ipv4 = st.ip_addresses(v=4).map(str)
ports = st.integers(1, 65535)
valid_iqns = st.from_regex(r"\Aiqn\.20[0-9]{2}-(0[1-9]|1[0-2])\.[a-z]{1,8}(\.[a-z]{1,8}){0,2}"
                           r":[a-z0-9][a-z0-9.-]{0,30}\Z")
luns = st.integers(0, 16383)
chap_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1,
                    max_size=20)


@st.composite
def valid_connection_info(draw) -> dict:
    paths = draw(st.lists(st.tuples(ipv4, ports, valid_iqns, luns), min_size=1,
                          max_size=3))
    (host, port, iqn, lun), data = paths[0], {}
    data.update(target_portal=f"{host}:{port}", target_iqn=iqn, target_lun=lun,
                volume_id=VOLUME, access_mode=draw(st.sampled_from(["rw", "ro"])))
    if len(paths) > 1 or draw(st.booleans()):
        data.update(target_portals=[f"{h}:{p}" for h, p, _i, _l in paths],
                    target_iqns=[i for _h, _p, i, _l in paths],
                    target_luns=[lun_ for _h, _p, _i, lun_ in paths])
    if draw(st.booleans()):
        data.update(auth_method="CHAP", auth_username=draw(chap_text),
                    auth_password=draw(chap_text))
    return {"driver_volume_type": "iscsi", "data": data}


@settings(max_examples=300)
@given(raw=valid_connection_info())
def test_valid_connection_info_is_accepted_with_what_it_said(raw):
    conn = ConnectionInfo.from_cinder(raw, VOLUME)
    data = raw["data"]
    assert conn.driver_volume_type == "iscsi" and conn.access_mode == data["access_mode"]
    assert (f"{conn.portal.host}:{conn.portal.port}", conn.iqn, conn.lun) == \
        (data["target_portal"], data["target_iqn"], data["target_lun"])
    if "target_portals" in data:
        assert [(f"{p.host}:{p.port}", i, lun) for p, i, lun in conn.portals] == \
            list(zip(data["target_portals"], data["target_iqns"], data["target_luns"]))
    assert ConnectionInfo.from_record(conn.to_record(), VOLUME) == conn.without_secrets()


host_names = st.from_regex(r"\A[a-z][a-z0-9-]{0,11}\Z")
users = st.from_regex(r"\A[a-z_][a-z0-9_-]{0,15}\Z")


@settings(max_examples=200)
@given(hosts=st.dictionaries(host_names.filter(lambda n: n != "local"), st.fixed_dictionaries(
    {"address": ipv4}, optional={"ssh_user": users, "ssh_port": ports,
                                 "connect_timeout": st.integers(1, 300)}),
    min_size=1, max_size=3))
def test_a_valid_hosts_table_is_accepted_as_written(tmp_path_factory, hosts):
    path = tmp_path_factory.mktemp("hosts") / "hosts.toml"
    path.write_text(toml_of(hosts))
    loaded = load_hosts({"ATTACHFLOW_HOSTS": str(path)})
    assert set(hosts) <= set(loaded)
    for name, entry in hosts.items():
        cfg = loaded[name]
        assert cfg.address == entry["address"]
        assert cfg.ssh_port == entry.get("ssh_port", 22)
        if "ssh_user" in entry:
            assert cfg.ssh_user == entry["ssh_user"]
            assert f"{entry['ssh_user']}@{entry['address']}" in cfg.libvirt_uri


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.from_regex(r"\A[a-z][a-z0-9_-]{0,30}\Z"), iqn=valid_iqns, host=ipv4,
       port=ports, lun=luns, user=st.none() | users,
       usage=st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z"), block=st.booleans())
def test_valid_values_build_a_domain_libvirt_accepts(name, iqn, host, port, lun, user,
                                                     usage, block):
    source, disk = root_disk(block, f"/dev/disk/by-id/wwn-0x{lun:016x}", iqn, lun, host,
                             port, user, usage)
    xml = domxml.build_domain(name, str(uuid.UUID(int=9)), 64, 1, "qemu", disk, {},
                              direct_boot=None).to_xml()
    proc = validate(xml, "generated domain")
    assert proc.returncode == 0, (proc.stderr, xml)
    assert domxml.Domain.parse(xml).disk(VOLUME).source == source
