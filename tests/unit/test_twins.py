"""The twins refuse what the real services refuse: each rule of Cinder, libvirt/QEMU and
os-brick that attachflow's flows rely on, checked on the twin itself."""

import pytest

from attachflow import domxml, errors
from attachflow.compute_side import MigrationRequest
from attachflow.connectors import iscsi_native
from attachflow.model import Portal, Secret

from twins import FakeBrick, FakeHypervisor, fake_host

CONNECTOR = {"host": "hosta", "ip": "198.18.0.11", "multipath": False,
             "initiator": "iqn.1993-08.org.debian:01:hosta"}
NO_INITIATOR = {"host": "hosta", "ip": "198.18.0.11", "multipath": False}


# -- Cinder ---------------------------------------------------------------------------------

def test_default_volume_is_exported_as_before(cinder):
    conn = cinder.initialize_connection(cinder.create_volume(), CONNECTOR)
    assert conn.driver_volume_type == "iscsi" and conn.lun == 1
    assert conn.access_mode == "rw" and conn.portal == Portal("198.18.0.1", 3260)
    assert conn.portals == () and conn.discovery_auth_method is None and conn.uses_chap


def test_connection_info_varies_with_the_volume(cinder):
    ro = cinder.initialize_connection(cinder.create_volume(readonly=True), CONNECTOR)
    assert ro.access_mode == "ro"
    assert cinder.initialize_connection(cinder.create_volume(lun=3), CONNECTOR).lun == 3
    vol = cinder.create_volume(portals=3)
    multi = cinder.initialize_connection(vol, CONNECTOR)
    assert [str(p) for p, _, _ in multi.portals] == ["198.18.0.1:3260", "198.18.1.1:3260",
                                                    "198.18.2.1:3260"]
    assert {(q, n) for _, q, n in multi.portals} == {(cinder.iqn(vol), 1)}
    assert multi.portal == multi.portals[0][0]
    disc = cinder.initialize_connection(cinder.create_volume(discovery_chap=True), CONNECTOR)
    assert disc.discovery_auth_method == "CHAP" and disc.discovery_auth_username
    assert disc.discovery_auth_password
    rbd = cinder.initialize_connection(cinder.create_volume(driver_volume_type="rbd"),
                                       NO_INITIATOR)
    assert rbd.driver_volume_type == "rbd" and rbd.iqn is None


def test_a_multipath_connector_gets_every_portal_listed(cinder):
    vol = cinder.create_volume()
    new = cinder.attachment_create(vol, "i1", dict(CONNECTOR, multipath=True))
    assert [str(p) for p, _, _ in new.connection.portals] == ["198.18.0.1:3260"]


def test_an_iscsi_export_needs_the_initiator(cinder):
    vol = cinder.create_volume()
    with pytest.raises(errors.VolumeStateError, match="initiator"):
        cinder.initialize_connection(vol, NO_INITIATOR)
    with pytest.raises(errors.StorageUnavailable, match="initiator") as info:
        cinder.attachment_create(vol, "i1", NO_INITIATOR)
    assert info.value.status == 500
    # as Cinder: the reservation made before the connection failed stays, unnamed
    [left] = cinder.attachments_of(vol)
    assert (left.instance_id, left.status) == ("i1", "reserved")
    assert not cinder.volumes[vol].exported
    cinder.attachment_delete(left.attachment_id)
    reserved = cinder.attachment_create(vol, "i1", None)  # no connector yet: fine
    with pytest.raises(errors.VolumeStateError, match="initiator"):
        cinder.attachment_update(reserved.attachment_id, vol, NO_INITIATOR)
    assert cinder.attachment_update(reserved.attachment_id, vol, CONNECTOR).iqn


def test_os_attach_mode_is_rw_or_ro_and_a_read_only_volume_refuses_rw(cinder):
    vol = cinder.create_volume()
    cinder.reserve(vol)
    with pytest.raises(errors.VolumeStateError, match="'rw' or 'ro'"):
        cinder.attach(vol, "i1", "/dev/vdb", "hosta", mode="wo")
    ro = cinder.create_volume(readonly=True)
    cinder.reserve(ro)
    with pytest.raises(errors.VolumeStateError, match="Invalid volume: .*read-only"):
        cinder.attach(ro, "i1", "/dev/vdb", "hosta", mode="rw")
    assert cinder.volumes[ro].status == "attaching"
    cinder.attach(ro, "i1", "/dev/vdb", "hosta", mode="ro")
    assert [a.mode for a in cinder.volumes[ro].attachments.values()] == ["ro"]


def test_attachments_of_a_read_only_volume_are_read_only(cinder):
    vol = cinder.create_volume(readonly=True)
    new = cinder.attachment_create(vol, "i1", CONNECTOR)
    cinder.attachment_complete(new.attachment_id)
    assert new.connection.access_mode == "ro"
    assert cinder.volumes[vol].attachments[new.attachment_id].mode == "ro"


# -- libvirt and QEMU -----------------------------------------------------------------------

def _domain(name, uuid, disks=()):
    return domxml.assemble(name, uuid, list(disks), {})


def test_define_needs_a_valid_uuid_unique_across_domains():
    hv = FakeHypervisor()
    uuid = hv.add_domain("vm1")
    with pytest.raises(errors.HypervisorError, match="malformed uuid"):
        hv.define_domain(_domain("vm2", "None"))
    with pytest.raises(errors.HypervisorError, match="'vm1' already exists with uuid"):
        hv.define_domain(_domain("vm2", uuid))
    with pytest.raises(errors.HypervisorError, match="'vm1' is already defined with uuid"):
        hv.define_domain(_domain("vm1", "6a1f4c2e-52b1-4a4e-9e7a-0c3a6f1f2b11"))
    hv.define_domain(_domain("vm3", "6A1F4C2E52B14A4E9E7A0C3A6F1F2B11"))
    assert hv.lookup("vm3").uuid == "6a1f4c2e-52b1-4a4e-9e7a-0c3a6f1f2b11"
    hv.define_domain(_domain("vm4", ""))  # libvirt makes one up
    assert len(hv.lookup("vm4").uuid) == 36
    assert sorted(hv.domains) == ["vm1", "vm3", "vm4"]


@pytest.fixture
def exported(cinder, host):
    """A domain and an exported volume whose CHAP secret is defined on the host."""
    host.hypervisor.add_domain("vm1")

    def make(**kwargs):
        vol = cinder.create_volume(**kwargs)
        conn = cinder.initialize_connection(vol, CONNECTOR)
        usage = iscsi_native.secret_usage(vol, "g1")
        host.hypervisor.define_secret(usage, conn.auth_password, "CHAP")
        return vol, conn, usage
    return make


def _network_disk(conn, usage, lun=None, hosts=None, readonly=False):
    source = domxml.NetworkISCSISource(
        iqn=conn.iqn, lun=conn.lun if lun is None else lun,
        hosts=(conn.portal,) if hosts is None else hosts,
        auth_username=conn.auth_username, secret_usage=usage)
    return domxml.Disk.build(domxml.DiskSpec(source, "vdb", conn.volume_id,
                                             readonly=readonly))


def test_qemu_logs_in_with_the_lun_portal_and_chap_of_the_export(cinder, host, exported):
    hv = host.hypervisor
    vol, conn, usage = exported(lun=3, portals=2)
    for disk, problem in (
            (_network_disk(conn, usage, lun=1), "LOGICAL_UNIT_NOT_SUPPORTED"),
            (_network_disk(conn, usage, hosts=(Portal("198.18.9.9", 3260),)),
             "not served there"),
            (_network_disk(conn, usage, hosts=tuple(p for p, _, _ in conn.portals)),
             "accepts only one host"),
            (_network_disk(conn, "attachflow-no-such-secret"), "no secret")):
        with pytest.raises(errors.HypervisorError, match=problem):
            hv.attach_device("vm1", disk, live=True, config=True)
        assert hv.domain("vm1").disk(vol) is None and not hv.sessions
    hv.attach_device("vm1", _network_disk(conn, usage, hosts=(conn.portals[1][0],)),
                     live=True, config=True)
    assert hv.sessions == {("vm1", cinder.iqn(vol))}


def test_a_read_only_volume_opens_only_read_only(cinder, host, exported):
    vol, conn, usage = exported(readonly=True)
    with pytest.raises(errors.HypervisorError, match="write protected"):
        host.hypervisor.attach_device("vm1", _network_disk(conn, usage), live=True,
                                      config=True)
    host.hypervisor.attach_device("vm1", _network_disk(conn, usage, readonly=True),
                                  live=True, config=True)
    assert host.hypervisor.domain("vm1").disk(vol).readonly


def test_qemu_opens_only_block_devices_the_host_has(cinder, host):
    hv = host.hypervisor
    hv.add_domain("vm1")
    vol = cinder.create_volume(readonly=True)
    conn = cinder.initialize_connection(vol, CONNECTOR)

    def disk(path, readonly=False):
        return domxml.Disk.build(domxml.DiskSpec(domxml.BlockSource(path), "vdb", vol,
                                                 readonly=readonly))
    with pytest.raises(errors.HypervisorError, match="No such file"):
        hv.attach_device("vm1", disk("/dev/sdz"), live=True, config=True)
    path = host.brick.connect("ISCSI", conn.to_brick(), False)["path"]
    with pytest.raises(errors.HypervisorError, match="Read-only file system"):
        hv.attach_device("vm1", disk(path), live=True, config=True)
    hv.attach_device("vm1", disk(path, readonly=True), live=True, config=True)


def test_a_disk_libvirt_cannot_parse_is_refused(host):
    host.hypervisor.add_domain("vm1")
    no_target = domxml.Disk.parse("<disk type='block' device='disk'>"
                                  "<source dev='/images/x'/><serial>v</serial></disk>")
    with pytest.raises(errors.HypervisorError, match="missing target"):
        host.hypervisor.attach_device("vm1", no_target, live=False, config=True)


class _Migration:
    """Two twin hosts and a running guest on the first."""

    def __init__(self):
        network = {}
        self.a = fake_host("hosta", None, "198.18.0.11", network)
        self.b = fake_host("hostb", None, "198.18.0.12", network)
        self.uuid = self.a.hypervisor.add_domain("vm", devices=("vda", "vdb"))
        self.live = self.a.hypervisor.domain("vm", migratable=True)

    def request(self, dest=None, postcopy=False):
        return MigrationRequest(self.b.cfg.libvirt_uri, dest or self.live, postcopy=postcopy)


@pytest.mark.parametrize("postcopy", [False, True])
def test_post_copy_needs_a_migration_started_for_it(postcopy):
    m = _Migration()
    hv = m.a.hypervisor
    with pytest.raises(errors.HypervisorError, match="outgoing migration is in progress"):
        hv.start_postcopy("vm")
    seen = []

    def during(fake):
        try:
            fake.start_postcopy("vm")
        except errors.HypervisorError as exc:
            seen.append(str(exc))
            fake.abort_job("vm")
        else:
            with pytest.raises(errors.HypervisorError, match="post-copy mode"):
                fake.abort_job("vm")
    hv.during_migration = during
    if postcopy:
        hv.migrate("vm", m.request(postcopy=True))
        assert hv.postcopy_started and "vm" in m.b.hypervisor.domains and not seen
    else:
        with pytest.raises(errors.HypervisorError, match="canceled"):
            hv.migrate("vm", m.request())
        assert seen and "post-copy migration is not enabled" in seen[0]
        assert not hv.postcopy_started and "vm" in hv.domains


def test_the_destination_definition_keeps_the_guest_abi():
    m = _Migration()
    other_serial = domxml.Domain.parse(
        m.live.to_xml().replace("<serial>local-vdb</serial>", "<serial>other</serial>"))
    other_uuid = m.live.to_xml().replace(m.uuid, "6a1f4c2e-52b1-4a4e-9e7a-0c3a6f1f2b11")
    for dest, problem in ((other_serial, "Target disk .* does not match"),
                          (domxml.Domain.parse(other_uuid), "uuid .* does not match")):
        with pytest.raises(errors.HypervisorError, match=problem):
            m.a.hypervisor.migrate("vm", m.request(dest))
        assert "vm" in m.a.hypervisor.domains and not m.b.hypervisor.domains


def test_a_destination_with_that_uuid_under_another_name_refuses_the_guest():
    m = _Migration()
    m.b.hypervisor.add_domain("twin", uuid=m.uuid)
    with pytest.raises(errors.HypervisorError, match="'twin' already exists with uuid"):
        m.a.hypervisor.migrate("vm", m.request())


# -- os-brick -------------------------------------------------------------------------------

def _props(cinder, vol, connector=CONNECTOR):
    return cinder.initialize_connection(vol, connector).to_brick()


def test_brick_logs_in_to_the_lun_and_portal_it_is_given(cinder):
    brick = FakeBrick("hosta", cinder)
    vol = cinder.create_volume(lun=3)
    props = _props(cinder, vol)
    for wrong, problem in (({"target_lun": 1}, "Volume device not found"),
                           ({"target_portal": "198.18.9.9:3260"}, "target not found"),
                           ({"auth_password": "wrong"}, "login failed")):
        with pytest.raises(errors.HostError, match=problem):
            brick.connect("ISCSI", dict(props, **wrong), False)
        assert not brick.sessions and not brick.devices
    path = brick.connect("ISCSI", props, False)["path"]
    assert path.endswith(f"{cinder.iqn(vol)}-lun-3")
    assert brick.devices == {path: ("198.18.0.1:3260", cinder.iqn(vol), 3)}


def test_brick_single_path_takes_the_first_portal_that_works_multipath_all(cinder):
    vol = cinder.create_volume(portals=["198.18.9.9:3260", "198.18.1.1:3260"])
    props = _props(cinder, vol)
    props["target_portals"][0] = "198.18.7.7:3260"  # a portal that does not answer
    single = FakeBrick("hosta", cinder)
    single.connect("ISCSI", props, False)
    assert single.sessions == {("198.18.1.1:3260", cinder.iqn(vol))}
    multi = FakeBrick("hosta", cinder)
    info = multi.connect("ISCSI", _props(cinder, vol, dict(CONNECTOR, multipath=True)), True)
    assert info["path"].startswith("/dev/dm-") and len(multi.maps[info["path"]]) == 2
    assert {p for p, _ in multi.sessions} == {"198.18.9.9:3260", "198.18.1.1:3260"}


def test_brick_discovers_portals_with_discovery_chap(cinder):
    vol = cinder.create_volume(portals=2, discovery_chap=True)
    props = _props(cinder, vol)
    for key in ("target_portals", "target_iqns", "target_luns"):
        props.pop(key)
    brick = FakeBrick("hosta", cinder)
    with pytest.raises(errors.HostError, match="discovery .* Authentication failure"):
        brick.connect("ISCSI", dict(props, discovery_auth_password="wrong"), True)
    assert not brick.sessions
    brick.connect("ISCSI", props, True)
    assert len(brick.sessions) == 2


def test_brick_disconnects_the_target_the_connection_names(cinder):
    brick = FakeBrick("hosta", cinder)
    one, two = cinder.create_volume(), cinder.create_volume(lun=2)
    p1, p2 = _props(cinder, one), _props(cinder, two)
    path1 = brick.connect("ISCSI", p1, False)["path"]
    path2 = brick.connect("ISCSI", p2, False)["path"]
    with pytest.raises(errors.HostError, match="does not belong"):
        brick.disconnect("ISCSI", p2, {"type": "block", "path": path1}, False)
    assert set(brick.devices) == {path1, path2}
    brick.disconnect("ISCSI", p2, {}, False)  # the connection says which
    assert set(brick.devices) == {path1}
    assert {q for _, q in brick.sessions} == {cinder.iqn(one)}
    brick.disconnect("ISCSI", p2, {"type": "block", "path": path2}, False)  # no session: done
    brick.disconnect("ISCSI", p1, {"type": "block", "path": path1}, False)
    assert not brick.sessions and not brick.devices


def test_secrets_stay_secret_in_connection_props(cinder):
    conn = cinder.initialize_connection(cinder.create_volume(discovery_chap=True), CONNECTOR)
    assert isinstance(conn.discovery_auth_password, Secret)
    assert "discovery_auth_password" not in conn.to_record()
