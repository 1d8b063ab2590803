"""The two transports on the twins: what the host tells Cinder about itself, what each
one hands os-brick or libvirt, and what it leaves behind on the host."""

import dataclasses

import pytest

from attachflow import errors
from attachflow.connectors import check_fits, get_transport, iscsi_native
from attachflow.connectors.iscsi_kernel import KernelISCSI
from attachflow.connectors.iscsi_native import NativeISCSI
from attachflow.domxml import BlockSource, NetworkISCSISource
from attachflow.model import ConnectorProperties, Portal, Secret

from twins import fake_host


def connection(cinder, host, transport, volume_id, owner="uuid-1"):
    """Cinder's connection for ``volume_id`` on ``host``, as an attach gets it."""
    props = transport.connector_properties(host)
    new = cinder.attachment_create(volume_id, owner, props.to_dict())
    return new.connection


# -- choosing a transport -------------------------------------------------------------------

def test_transport_by_name():
    kernel = get_transport("kernel")
    assert isinstance(kernel, KernelISCSI) and kernel.name == "kernel"
    assert kernel.multipath is False
    assert get_transport("kernel", multipath=True).multipath is True
    native = get_transport("native")
    assert isinstance(native, NativeISCSI) and native.name == "native"
    assert get_transport("native", multipath=False).name == "native"


def test_native_transport_refuses_multipath():
    with pytest.raises(errors.TransportMismatch) as exc:
        get_transport("native", multipath=True)
    assert exc.value.exit_code == 2
    assert exc.value.message == "QEMU's own initiator has no multipath; use --transport kernel"


@pytest.mark.parametrize("name", ["fc", "", "Kernel", "NATIVE"])
def test_unknown_transport_is_refused(name):
    with pytest.raises(errors.InputError) as exc:
        get_transport(name)
    assert exc.value.message == f"unknown transport '{name}' (kernel, native)"
    assert exc.value.exit_code == 2


@pytest.mark.parametrize("name", ["kernel", "native"])
def test_only_iscsi_fits(name):
    transport = get_transport(name)
    assert check_fits(transport, "iscsi", "v1") is None
    for other in ("rbd", "ISCSI", "unknown"):
        with pytest.raises(errors.TransportMismatch) as exc:
            check_fits(transport, other, "v1")
        assert exc.value.message == (f"volume v1 is exported as '{other}'; transport "
                                     f"'{name}' carries only iscsi")


def test_refusal_lists_every_type_the_transport_carries():
    class Wide(KernelISCSI):
        name = "wide"
        driver_volume_types = frozenset({"iser", "iscsi"})

    check_fits(Wide(), "iser", "v1")
    with pytest.raises(errors.TransportMismatch) as exc:
        check_fits(Wide(), "rbd", "v1")
    assert exc.value.message == ("volume v1 is exported as 'rbd'; transport 'wide' carries "
                                 "only iscsi, iser")


# -- kernel: os-brick on the host -----------------------------------------------------------

@pytest.mark.parametrize("multipath", [False, True])
def test_kernel_connector_is_what_os_brick_reports_under_the_hosts_name(cinder, multipath):
    host = fake_host("hostk", target=cinder, address="198.18.0.21")
    host.cfg = dataclasses.replace(host.cfg, hostname="hostk.example")
    props = KernelISCSI(multipath=multipath).connector_properties(host)
    assert props == ConnectorProperties(
        host="hostk.example", ip="198.18.0.21", initiator="iqn.1993-08.org.debian:01:hostk",
        multipath=multipath, platform="x86_64", os_type="linux")
    # a kernel transport made without saying otherwise is single-path
    assert KernelISCSI().connector_properties(host).multipath is False


@pytest.mark.parametrize("initiator", [None, ""])
def test_kernel_connector_without_an_initiator_is_refused(cinder, host, monkeypatch,
                                                          initiator):
    reported = dict(host.brick.properties("198.18.0.11", False), initiator=initiator)
    monkeypatch.setattr(host.brick, "properties", lambda ip, multipath: reported)
    with pytest.raises(errors.HostError) as exc:
        KernelISCSI().connector_properties(host)
    assert exc.value.message.startswith("hosta: no iSCSI initiator name")


@pytest.mark.parametrize("multipath", [False, True])
def test_kernel_connect_logs_in_and_disconnect_logs_out(cinder, multipath):
    host = fake_host("hostk", target=cinder)
    transport = KernelISCSI(multipath=multipath)
    vol = cinder.create_volume(portals=2)
    conn = connection(cinder, host, transport, vol)
    calls = []
    real = host.brick.connect
    host.brick.connect = lambda *args: calls.append(args) or real(*args)

    source = transport.connect(host, conn, "uuid-1")

    assert calls == [("ISCSI", conn.to_brick(), multipath)]
    assert isinstance(source, BlockSource) and host.brick.has_device(source.path)
    if multipath:
        assert source.path == "/dev/dm-1" and len(host.brick.maps[source.path]) == 2
        assert len(host.brick.sessions) == 2
    else:
        assert source.path == ("/dev/disk/by-path/ip-198.18.0.1:3260-iscsi-"
                               f"{cinder.iqn(vol)}-lun-1")
        assert host.brick.sessions == {("198.18.0.1:3260", cinder.iqn(vol))}

    undone = []
    real_disconnect = host.brick.disconnect
    host.brick.disconnect = lambda *args: undone.append(args) or real_disconnect(*args)
    transport.disconnect(host, conn, source, "uuid-1")
    assert undone == [("ISCSI", conn.to_brick(), {"type": "block", "path": source.path},
                       multipath)]
    assert not host.brick.sessions and not host.brick.devices and not host.brick.maps


def test_kernel_disconnect_without_a_block_source_still_logs_out(cinder, host):
    transport = KernelISCSI()
    vol = cinder.create_volume()
    conn = connection(cinder, host, transport, vol)
    transport.connect(host, conn, "uuid-1")
    undone = []
    real = host.brick.disconnect
    host.brick.disconnect = lambda *args: undone.append(args) or real(*args)
    for source in (None, NetworkISCSISource(cinder.iqn(vol), 1, (Portal("198.18.0.1", 3260),))):
        transport.disconnect(host, conn, source, "uuid-1")
    assert [args[2] for args in undone] == [{}, {}]
    assert not host.brick.sessions and not host.brick.devices


def test_kernel_disconnect_refuses_another_volumes_device(cinder, host):
    transport = KernelISCSI()
    mine, other = cinder.create_volume(), cinder.create_volume()
    conn = connection(cinder, host, transport, mine)
    transport.connect(host, conn, "uuid-1")
    theirs = transport.connect(host, connection(cinder, host, transport, other, "uuid-2"),
                               "uuid-2")
    with pytest.raises(errors.HostError):
        transport.disconnect(host, conn, theirs, "uuid-1")
    assert host.brick.has_device(theirs.path)


def test_kernel_connect_without_a_device_path_is_an_error(cinder, host, monkeypatch):
    transport = KernelISCSI()
    conn = connection(cinder, host, transport, cinder.create_volume())
    monkeypatch.setattr(host.brick, "connect", lambda *args: {"type": "block", "path": ""})
    with pytest.raises(errors.HostError) as exc:
        transport.connect(host, conn, "uuid-1")
    assert exc.value.message == "hosta: os-brick returned no device path"


def test_kernel_source_on_the_destination_is_known_only_after_connecting(host):
    source = BlockSource("/dev/dm-3")
    assert KernelISCSI().predicted_source(source, host) is source
    assert KernelISCSI().predicted_source(None, host) is None


# -- native: QEMU's own initiator -----------------------------------------------------------

def test_native_connector_names_the_host_by_its_own_initiator(cinder):
    host = fake_host("hostn", target=cinder, address="198.18.0.31")
    host.cfg = dataclasses.replace(host.cfg, hostname="hostn.example")
    assert NativeISCSI().connector_properties(host) == ConnectorProperties(
        host="hostn.example", ip="198.18.0.31",
        initiator="iqn.2024-01.dev.attachflow:hostn.example", multipath=False)
    assert iscsi_native.initiator_name(host) == "iqn.2024-01.dev.attachflow:hostn.example"


def test_native_connect_defines_the_chap_secret_and_names_it_in_the_source(cinder, host):
    transport = NativeISCSI()
    vol = cinder.create_volume(lun=3, portals=2)
    conn = connection(cinder, host, transport, vol)
    defined = []
    real = host.hypervisor.define_secret
    host.hypervisor.define_secret = lambda *args: defined.append(args) or real(*args)

    source = transport.connect(host, conn, "uuid-1")

    usage = f"attachflow-{vol}-uuid-1"
    user, password = cinder.credentials_for(cinder.iqn(vol))
    assert source == NetworkISCSISource(
        iqn=cinder.iqn(vol), lun=3, hosts=(Portal("198.18.0.1", 3260),), auth_username=user,
        secret_usage=usage, initiator_iqn="iqn.2024-01.dev.attachflow:hosta")
    assert defined == [(usage, Secret(password),
                        f"CHAP for Cinder volume {vol}, guest uuid-1")]
    assert host.hypervisor.secrets == {usage: password}
    assert not host.brick.sessions

    transport.disconnect(host, conn, source, "uuid-1")
    assert host.hypervisor.secrets == {}


def test_native_connect_replaces_a_secret_left_by_an_interrupted_run(cinder, host):
    transport = NativeISCSI()
    vol = cinder.create_volume()
    conn = connection(cinder, host, transport, vol)
    usage = iscsi_native.secret_usage(vol, "uuid-1")
    host.hypervisor.secrets[usage] = "stale"
    host.hypervisor.secrets["attachflow-other-uuid-1"] = "kept"
    transport.connect(host, conn, "uuid-1")
    assert host.hypervisor.secrets == {usage: conn.auth_password.reveal(),
                                       "attachflow-other-uuid-1": "kept"}


def test_native_connect_without_auth_defines_no_secret(cinder, host):
    transport = NativeISCSI()
    vol = cinder.create_volume()
    conn = connection(cinder, host, transport, vol).without_secrets()
    conn = dataclasses.replace(conn, auth_method=None, auth_username=None)
    source = transport.connect(host, conn, "uuid-1")
    assert source.secret_usage is None and source.auth_username is None
    assert source.lun == 1 and source.iqn == cinder.iqn(vol)
    assert host.hypervisor.secrets == {}


@pytest.mark.parametrize("method,user,password", [
    ("CHAP", "u", None), ("CHAP", None, ""), ("MD5", "u", "p"), (None, "u", "p"),
    (None, None, "p")])
def test_native_connect_refuses_what_qemu_cannot_log_in_with(cinder, host, method, user,
                                                            password):
    transport = NativeISCSI()
    vol = cinder.create_volume()
    conn = dataclasses.replace(connection(cinder, host, transport, vol), auth_method=method,
                               auth_username=user,
                               auth_password=Secret(password) if password is not None
                               else None)
    if user is None and not password:
        source = transport.connect(host, conn, "uuid-1")
        assert source.secret_usage is None
        return
    with pytest.raises(errors.TransportMismatch) as exc:
        transport.connect(host, conn, "uuid-1")
    assert exc.value.message == (f"volume {vol}: auth method '{method}' is not supported "
                                 "by QEMU's initiator (CHAP only)")
    assert host.hypervisor.secrets == {}


def test_native_connect_of_a_connection_without_iqn_or_lun(cinder, host):
    conn = dataclasses.replace(connection(cinder, host, NativeISCSI(), cinder.create_volume()),
                               iqn=None, lun=None, auth_method=None, auth_username=None,
                               auth_password=None)
    source = NativeISCSI().connect(host, conn, "uuid-1")
    assert source.iqn == "" and source.lun == 0


def test_native_disconnect_removes_the_secret_the_disk_names(cinder, host):
    transport = NativeISCSI()
    vol = cinder.create_volume()
    conn = connection(cinder, host, transport, vol)
    host.hypervisor.secrets.update({"named-by-disk": "a", f"attachflow-{vol}-uuid-1": "b",
                                    f"attachflow/{vol}/uuid-1": "c"})
    source = NetworkISCSISource(cinder.iqn(vol), 1, (Portal("198.18.0.1", 3260),),
                                auth_username="u", secret_usage="named-by-disk")
    transport.disconnect(host, conn, source, "uuid-1")
    assert host.hypervisor.secrets == {f"attachflow-{vol}-uuid-1": "b",
                                       f"attachflow/{vol}/uuid-1": "c"}


@pytest.mark.parametrize("source", [None, BlockSource("/dev/sdb"), "no-secret"])
def test_native_disconnect_without_a_named_secret_removes_every_name_it_may_have(
        cinder, host, source):
    transport = NativeISCSI()
    vol = cinder.create_volume()
    conn = connection(cinder, host, transport, vol)
    if source == "no-secret":
        source = NetworkISCSISource(cinder.iqn(vol), 1, (Portal("198.18.0.1", 3260),))
    host.hypervisor.secrets.update({f"attachflow-{vol}-uuid-1": "b",
                                    f"attachflow/{vol}/uuid-1": "c",
                                    f"attachflow-{vol}-uuid-2": "other guest"})
    transport.disconnect(host, conn, source, "uuid-1")
    assert host.hypervisor.secrets == {f"attachflow-{vol}-uuid-2": "other guest"}
    # a connection already gone counts as done
    transport.disconnect(host, conn, source, "uuid-1")


def test_secret_usage_names():
    assert iscsi_native.secret_usage("v1", "g1") == "attachflow-v1-g1"
    assert iscsi_native.secret_usages("v1", "g1") == ("attachflow-v1-g1", "attachflow/v1/g1")


def test_native_source_on_the_destination_has_the_destinations_initiator(cinder):
    here, there = fake_host("hosta", target=cinder), fake_host("hostb", target=cinder)
    source = NetworkISCSISource("iqn.x", 2, (Portal("198.18.0.1", 3260),), "u",
                                "attachflow-v-g", "iqn.2024-01.dev.attachflow:hosta")
    predicted = NativeISCSI().predicted_source(source, there)
    assert predicted == NetworkISCSISource("iqn.x", 2, (Portal("198.18.0.1", 3260),), "u",
                                           "attachflow-v-g",
                                           "iqn.2024-01.dev.attachflow:hostb")
    block = BlockSource("/dev/sdb")
    assert NativeISCSI().predicted_source(block, here) is block
    assert NativeISCSI().predicted_source(None, here) is None


def test_a_failed_kernel_login_leaves_no_node_record(cinder, host):
    """os-brick keeps a node record for every portal it tried when the login fails; the
    kernel transport removes them before it reports the failure."""
    vol = cinder.create_volume()
    conn = connection(cinder, host, KernelISCSI(), vol)
    wrong = dataclasses.replace(conn, auth_password=Secret("not-the-password"))
    with pytest.raises(errors.HostError, match="login failed"):
        KernelISCSI().connect(host, wrong, "uuid-1")
    assert host.brick.records == set() and host.brick.sessions == set()
    assert host.brick.devices == {}
