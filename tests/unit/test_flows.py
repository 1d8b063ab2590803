"""Attach, detach and boot on the in-memory twins: what a user would check afterwards
(volume status and attachments in Cinder, the disk in the domain's live and persistent
XML, sessions and secrets on the host), for both APIs and both transports, and the undo
at every step that can fail."""

import pytest

from attachflow import domxml, errors, operations, record
from attachflow.connectors import get_transport, iscsi_native
from attachflow.model import ConnectionInfo, Secret

from twins import FakeCinder

APIS = ["attachments", "legacy"]
TRANSPORTS = ["native", "kernel"]


def snapshot(cinder, host):
    """Everything a leak could hide in."""
    hv, brick = host.hypervisor, host.brick
    return {
        "volumes": {v.id: (v.status, sorted((a.instance_id, a.status)
                                            for a in v.attachments.values()), v.exported)
                    for v in cinder.volumes.values()},
        "domains": {d.name: (d.active, sorted(x.to_xml() for x in d.live),
                             sorted(x.to_xml() for x in d.config), dict(d.live_meta),
                             dict(d.config_meta)) for d in hv.domains.values()},
        "secrets": dict(hv.secrets),
        "qemu_sessions": set(hv.sessions),
        "host_sessions": (set(brick.sessions), dict(brick.devices), dict(brick.maps)),
    }


def in_use_by(cinder, volume_id):
    vol = cinder.volumes[volume_id]
    return vol.status, [(a.instance_id, a.status) for a in vol.attachments.values()]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_then_detach_leaves_nothing(cinder, host, api, transport):
    uuid = host.hypervisor.add_domain("vm1")
    bystander = cinder.create_volume()
    operations.attach(cinder, host, get_transport(transport), bystander, "vm1", api=api)
    bystander_record = record.read(host.hypervisor.domain("vm1"))[bystander]
    vol = cinder.create_volume()
    before = snapshot(cinder, host)

    res = operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)

    assert res.device == "vdc"
    assert in_use_by(cinder, vol) == ("in-use", [(uuid, "attached")])
    live = host.hypervisor.domain("vm1").disk(vol)
    persistent = host.hypervisor.domain("vm1", inactive=True).disk(vol)
    assert live and persistent and live.target_dev == "vdc"
    if transport == "native":
        assert live.disk_type == "network"
        assert live.source.secret_usage in host.hypervisor.secrets
        assert ("vm1", cinder.iqn(vol)) in host.hypervisor.sessions
        assert not host.brick.sessions
    else:
        assert live.disk_type == "block"
        assert sorted(iqn for _portal, iqn in host.brick.sessions) == sorted(
            [cinder.iqn(bystander), cinder.iqn(vol)])
        assert live.source.path in host.brick.devices and len(host.brick.devices) == 2
        assert not host.hypervisor.secrets
    rec = record.read(host.hypervisor.domain("vm1"))[vol]
    assert rec.api == api and rec.transport == transport and rec.device == "vdc"
    assert "auth_password" not in rec.to_json()["connection"]
    assert rec.connection.auth_password is None
    for inactive in (False, True):
        assert record.read(host.hypervisor.domain("vm1", inactive=inactive))[bystander] \
            == bystander_record

    res = operations.detach(cinder, host, vol, "vm1", api="auto")
    assert res.api == api and res.transport == transport
    assert snapshot(cinder, host) == before
    assert cinder.volumes[vol].status == "available"
    for inactive in (False, True):
        records = record.read(host.hypervisor.domain("vm1", inactive=inactive))
        assert records == {bystander: bystander_record}


def test_attachments_api_costs_two_storage_calls_per_attach_and_one_per_detach(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert cinder.calls == ["attachment_create", "attachment_complete"]
    cinder.calls.clear()
    operations.detach(cinder, host, vol, "vm1")
    assert cinder.calls == ["attachment_delete"]


def test_auto_picks_legacy_on_old_server(host):
    old = FakeCinder(version=(3, 27))
    host.hypervisor.target = old
    host.hypervisor.add_domain("vm1")
    vol = old.create_volume()
    res = operations.attach(old, host, get_transport("native"), vol, "vm1", api="auto")
    assert res.api == "legacy"
    with pytest.raises(errors.InputError, match="3.44"):
        operations.attach(old, host, get_transport("native"), old.create_volume(), "vm1",
                          api="attachments")


def test_device_defaults_to_next_free_and_explicit_device_is_honoured(cinder, host):
    host.hypervisor.add_domain("vm1", devices=("vda", "vdb"))
    first = operations.attach(cinder, host, get_transport("native"), cinder.create_volume(),
                              "vm1")
    second = operations.attach(cinder, host, get_transport("native"),
                               cinder.create_volume(), "vm1", device="vdf")
    assert (first.device, second.device) == ("vdc", "vdf")


def test_shut_off_domain_gets_persistent_disk_only(cinder, host):
    host.hypervisor.add_domain("vm1", active=False)
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    dom = host.hypervisor.domains["vm1"]
    assert dom.live == [] and host.hypervisor.domain("vm1", inactive=True).disk(vol)
    operations.detach(cinder, host, vol, "vm1")
    assert cinder.volumes[vol].status == "available"
    assert len(dom.config) == 1


# -- bad input: clear error, exit 2, nothing changed ----------------------------------------

@pytest.mark.parametrize("api", APIS)
def test_bad_input_changes_nothing(cinder, host, api):
    host.hypervisor.add_domain("vm1")
    host.hypervisor.add_domain("vm2")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1", api=api)
    other = cinder.create_volume()
    before = snapshot(cinder, host)
    native = get_transport("native")
    cases = [
        (errors.DomainNotFound, lambda: operations.attach(cinder, host, native, other,
                                                          "nosuch", api=api)),
        (errors.VolumeNotFound, lambda: operations.attach(
            cinder, host, native, "7d7c1c6a-0b9e-4c56-9d3c-5f1c2b1e9a10", "vm2", api=api)),
        (errors.InputError, lambda: operations.attach(cinder, host, native,
                                                      "0000-missing", "vm2", api=api)),
        (errors.VolumeStateError, lambda: operations.attach(cinder, host, native, vol,
                                                            "vm2", api=api)),
        (errors.DeviceInUse, lambda: operations.attach(cinder, host, native, vol,
                                                       "vm1", api=api, device="vdc")),
        (errors.TransportMismatch, lambda: operations.attach(
            cinder, host, get_transport("kernel"), vol, "vm1", api=api)),
        (errors.DeviceInUse, lambda: operations.attach(cinder, host, native, other, "vm1",
                                                       api=api, device="vdb")),
        (errors.InputError, lambda: operations.attach(cinder, host, native, other, "vm1",
                                                      api=api, device="sda")),
        (errors.NotAttached, lambda: operations.detach(cinder, host, other, "vm1", api=api,
                                                       strict=True)),
        (errors.InputError, lambda: operations.boot(cinder, host, native, "vm1", other,
                                                    api=api)),
    ]
    for expected, call in cases:
        with pytest.raises(errors.AttachflowError) as info:
            call()
        exc = info.value
        assert isinstance(exc, expected) or isinstance(getattr(exc, "cause", None), expected)
        assert exc.exit_code == 2, exc
        assert snapshot(cinder, host) == before, exc


def test_volume_in_use_message_names_where(cinder, host):
    uuid = host.hypervisor.add_domain("vm1")
    host.hypervisor.add_domain("vm2")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    with pytest.raises(errors.VolumeStateError, match=f"in-use.*{uuid}"):
        operations.attach(cinder, host, get_transport("native"), vol, "vm2")


def test_multiattach_volume_attaches_to_two_domains(cinder, host):
    host.hypervisor.add_domain("vm1")
    host.hypervisor.add_domain("vm2")
    vol = cinder.create_volume(multiattach=True)
    for dom in ("vm1", "vm2"):
        operations.attach(cinder, host, get_transport("native"), vol, dom)
    assert len(cinder.volumes[vol].attachments) == 2
    operations.detach(cinder, host, vol, "vm1")
    assert cinder.volumes[vol].status == "in-use"
    assert len(host.hypervisor.secrets) == 1


# -- the native transport's libvirt secret --------------------------------------------------

def old_secret_usage(volume_id, owner):
    """The usage name versions before the schema-valid one gave the secret."""
    return f"attachflow/{volume_id}/{owner}"


def test_secret_usage_names_volume_and_guest_without_a_slash():
    assert iscsi_native.secret_usage("v1", "g1") == "attachflow-v1-g1"
    assert iscsi_native.secret_usages("v1", "g1") == ("attachflow-v1-g1",
                                                      old_secret_usage("v1", "g1"))


def test_detach_removes_the_secret_of_a_guest_attached_by_an_earlier_version(
        cinder, host, monkeypatch):
    uuid = host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    with monkeypatch.context() as earlier:
        earlier.setattr(iscsi_native, "secret_usage", old_secret_usage)
        # earlier versions wrote that name without checking it against the schema
        earlier.setattr(domxml, "_check_source", lambda source: None)
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert list(host.hypervisor.secrets) == [old_secret_usage(vol, uuid)]
    operations.detach(cinder, host, vol, "vm1")
    assert not host.hypervisor.secrets
    assert cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("name", [iscsi_native.secret_usage, old_secret_usage])
def test_native_disconnect_without_the_disk_removes_the_secret_by_either_name(host, name):
    hv = host.hypervisor
    hv.define_secret(name("v1", "g1"), Secret("pw"), "CHAP")
    hv.define_secret(iscsi_native.secret_usage("v2", "g1"), Secret("pw"), "CHAP")
    conn = ConnectionInfo(driver_volume_type="iscsi", volume_id="v1")
    get_transport("native").disconnect(host, conn, None, "g1")
    assert list(hv.secrets) == [iscsi_native.secret_usage("v2", "g1")]


def test_native_disconnect_removes_the_secret_the_disk_names(host):
    hv = host.hypervisor
    for usage in ("named-by-the-disk", iscsi_native.secret_usage("v1", "g1")):
        hv.define_secret(usage, Secret("pw"), "CHAP")
    source = domxml.NetworkISCSISource(iqn="iqn.2010-10.org.openstack:volume-v1", lun=1,
                                       hosts=(), auth_username="u",
                                       secret_usage="named-by-the-disk")
    conn = ConnectionInfo(driver_volume_type="iscsi", volume_id="v1")
    get_transport("native").disconnect(host, conn, source, "g1")
    assert list(hv.secrets) == [iscsi_native.secret_usage("v1", "g1")]


# -- undo at every failing step -------------------------------------------------------------

ATTACH_FAILURES = {
    # (api, transport) -> [(object, method)], each one a step of attach that can fail
    "attachments": [("cinder", "attachment_create"), ("cinder", "attachment_complete")],
    "legacy": [("cinder", "reserve"), ("cinder", "initialize_connection"),
               ("cinder", "attach")],
    "native": [("hv", "define_secret"), ("hv", "attach_device"), ("hv", "set_metadata")],
    "kernel": [("brick", "properties"), ("brick", "connect"), ("hv", "attach_device"),
               ("hv", "set_metadata")],
}


def _target(cinder, host, which):
    return {"cinder": cinder, "hv": host.hypervisor, "brick": host.brick}[which]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_attach_undoes_everything_when_any_step_fails(cinder, host, api, transport):
    host.hypervisor.add_domain("vm1")
    # a volume already attached: its record must survive every undo
    operations.attach(cinder, host, get_transport(transport), cinder.create_volume(), "vm1",
                      api=api)
    for which, method in ATTACH_FAILURES[api] + ATTACH_FAILURES[transport]:
        vol = cinder.create_volume()
        before = snapshot(cinder, host)
        _target(cinder, host, which).fail(method, errors.AttachflowError(f"{method} broke"))
        with pytest.raises(errors.AttachflowError, match=f"{method} broke") as info:
            operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
        assert info.value.exit_code == 1
        assert snapshot(cinder, host) == before, method
        assert "could NOT undo" not in str(info.value)


def test_wrong_chap_password_fails_cleanly(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    cinder.volumes[vol].chap_password = "changed-on-target"
    real_conn = cinder._conn

    def stale(*args):  # the storage side hands out a password the target no longer takes
        out = real_conn(*args)
        out["auth_password"] = "stale-password!!"
        return out

    cinder._conn = stale
    before = snapshot(cinder, host)
    with pytest.raises(errors.OperationFailed, match="Authentication failure") as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    assert "stale-password" not in str(info.value)
    assert info.value.step == "guest attach"
    assert snapshot(cinder, host) == before


def test_failed_undo_is_reported(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    cinder.fail("attachment_complete", errors.StorageUnavailable("cinder went away"))
    host.hypervisor.fail("undefine_secret", errors.HypervisorError("libvirtd went away"),
                         after=1)
    with pytest.raises(errors.OperationFailed) as info:
        operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    msg = str(info.value)
    assert "storage complete" in msg and "could NOT undo" in msg and "libvirtd went away" \
        in msg
    assert info.value.exit_code == 1
    # what came after the failed undo was undone; what it stands on is left, and named
    assert host.hypervisor.domain("vm1").disk(vol) is None
    assert "storage connect (attachments): left in place" in msg
    assert cinder.volumes[vol].status == "attaching"


DETACH_FAILURES = {
    "attachments": [("cinder", "attachment_delete")],
    "legacy": [("cinder", "get_volume"), ("cinder", "begin_detaching"),
               ("cinder", "terminate_connection"), ("cinder", "detach")],
    "native": [("hv", "detach_device"), ("hv", "undefine_secret"), ("hv", "set_metadata")],
    "kernel": [("hv", "detach_device"), ("brick", "disconnect"), ("hv", "set_metadata")],
}


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_detach_undoes_everything_when_any_step_fails(cinder, host, api, transport):
    host.hypervisor.add_domain("vm1")
    bystander = cinder.create_volume()
    operations.attach(cinder, host, get_transport(transport), bystander, "vm1", api=api)
    for which, method in DETACH_FAILURES[api] + DETACH_FAILURES[transport]:
        vol = cinder.create_volume()
        operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
        before = snapshot(cinder, host)
        records_before = [record.read(host.hypervisor.domain("vm1", inactive=inactive))
                          for inactive in (False, True)]
        _target(cinder, host, which).fail(method, errors.AttachflowError(f"{method} broke"))
        with pytest.raises(errors.AttachflowError, match=f"{method} broke") as info:
            operations.detach(cinder, host, vol, "vm1")
        assert "could NOT undo" not in str(info.value) and info.value.exit_code == 1
        after = snapshot(cinder, host)
        # the disk is back where it was (live XML gets re-plugged at the end of the list)
        for key in ("volumes", "secrets", "host_sessions", "qemu_sessions"):
            assert after[key] == before[key], (method, key)
        assert [record.read(host.hypervisor.domain("vm1", inactive=inactive))
                for inactive in (False, True)] == records_before, method
        assert host.hypervisor.domain("vm1").disk(vol)
        assert host.hypervisor.domain("vm1", inactive=True).disk(vol)
        assert vol in record.read(host.hypervisor.domain("vm1"))
        # and a second detach now succeeds and leaves nothing
        operations.detach(cinder, host, vol, "vm1")
        assert cinder.volumes[vol].status == "available"


def test_a_guest_that_does_not_answer_the_unplug_keeps_the_detach_going(cinder, host):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    operations.attach(cinder, host, get_transport("native"), vol, "vm1")
    host.hypervisor.refuse_detach.add("vdb")
    with pytest.raises(errors.OperationFailed, match="did not release vdb") as failed:
        operations.detach(cinder, host, vol, "vm1", timeout=5)
    # Asked once, the guest may still let the disk go: nothing is taken back, and the
    # error says what finishes the detach.
    assert failed.value.uncertain and "earlier steps kept" in str(failed.value)
    assert "'attachflow recover <operation id>' finishes the detach" in str(failed.value)
    assert cinder.volumes[vol].status == "in-use"
    assert host.hypervisor.domain("vm1").disk(vol) is not None
    assert host.hypervisor.domain("vm1", inactive=True).disk(vol) is None
    assert len(host.hypervisor.secrets) == 1


# -- boot -------------------------------------------------------------------------------------

@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_boot_volume_backed_domain(cinder, host, api, transport):
    vol = cinder.create_volume()
    res = operations.boot(cinder, host, get_transport(transport), "vm9", vol, api=api,
                          virt_type="qemu")
    dom = host.hypervisor.domains["vm9"]
    assert dom.active and res.device == "vda"
    disk = host.hypervisor.domain("vm9").disk(vol)
    assert disk.target_dev == "vda"
    assert in_use_by(cinder, vol) == ("in-use", [(dom.uuid, "attached")])
    assert record.read(host.hypervisor.domain("vm9"))[vol].api == api
    assert dom.uuid == host.hypervisor.domain("vm9").uuid
    # a second volume can then be attached and detached
    data = cinder.create_volume()
    assert operations.attach(cinder, host, get_transport(transport), data, "vm9",
                             api=api).device == "vdb"
    operations.detach(cinder, host, data, "vm9")


def test_boot_defines_the_guest_as_asked(cinder, host):
    import xml.etree.ElementTree as ET
    vol = cinder.create_volume()
    host.runner.files.update({"/boot/vmlinuz", "/boot/initrd.img"})
    operations.boot(cinder, host, get_transport("native"), "vm9", vol, memory_mib=384,
                    vcpus=3, virt_type="qemu", emulator="/usr/bin/qemu-system-x86_64",
                    direct_boot=domxml.DirectBoot("/boot/vmlinuz", "/boot/initrd.img",
                                                  "console=ttyS0"))
    root = ET.fromstring(host.hypervisor.domains["vm9"].defined.to_xml())
    assert root.get("type") == "qemu" and root.findtext("name") == "vm9"
    assert (root.find("memory").get("unit"), root.findtext("memory")) == ("MiB", "384")
    assert root.findtext("vcpu") == "3"
    (att,) = cinder.volumes[vol].attachments.values()
    assert root.findtext("uuid") == att.instance_id
    assert [(el.tag, el.text) for el in root.find("os") if el.tag != "type"] == [
        ("kernel", "/boot/vmlinuz"), ("initrd", "/boot/initrd.img"),
        ("cmdline", "console=ttyS0")]
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"
    assert [d.find("target").get("dev") for d in root.findall("devices/disk")] == ["vda"]
    # without a kernel the guest boots from the volume
    other = cinder.create_volume()
    operations.boot(cinder, host, get_transport("native"), "vm10", other, virt_type="kvm")
    root = ET.fromstring(host.hypervisor.domains["vm10"].defined.to_xml())
    assert root.get("type") == "kvm" and root.find("os/boot").get("dev") == "hd"
    assert root.find("os/kernel") is None and root.find("devices/emulator") is None
    assert (root.findtext("memory"), root.findtext("vcpu")) == ("128", "1")


@pytest.mark.parametrize("which,method", [("cinder", "attachment_create"),
                                          ("hv", "define_secret"), ("hv", "define_domain"),
                                          ("hv", "start"), ("cinder", "attachment_complete")])
def test_boot_undoes_everything(cinder, host, which, method):
    vol = cinder.create_volume()
    before = snapshot(cinder, host)
    _target(cinder, host, which).fail(method, errors.AttachflowError(f"{method} broke"))
    with pytest.raises(errors.AttachflowError, match=f"{method} broke") as info:
        operations.boot(cinder, host, get_transport("native"), "vm9", vol)
    assert info.value.exit_code == 1
    assert snapshot(cinder, host) == before
    assert "vm9" not in host.hypervisor.domains


def test_boot_refuses_bad_names_and_sizes(cinder, host):
    vol = cinder.create_volume()
    for kwargs in ({"name": "bad name"}, {"name": "x", "memory_mib": 1},
                   {"name": "x", "virt_type": "xen"}):
        args = {"name": "vm", **kwargs}
        with pytest.raises(errors.InputError):
            operations.boot(cinder, host, get_transport("native"), args.pop("name"), vol,
                            **args)
    assert cinder.calls == []


# -- volumes exported otherwise: read-only, another LUN, several portals, discovery CHAP ------

VARIANTS = {"read-only": {"readonly": True}, "lun 3": {"lun": 3},
            "three portals": {"portals": 3}, "discovery CHAP": {"discovery_chap": True}}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_volume_exported_otherwise_attaches_as_exported_and_detaches_to_nothing(
        cinder, host, api, transport, variant):
    uuid = host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume(**VARIANTS[variant])
    before = snapshot(cinder, host)
    operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    assert in_use_by(cinder, vol) == ("in-use", [(uuid, "attached")])
    exported = cinder.volumes[vol]
    for disk in (host.hypervisor.domain("vm1").disk(vol),
                 host.hypervisor.domain("vm1", inactive=True).disk(vol)):
        assert disk.readonly == exported.readonly
        if transport == "native":  # QEMU's initiator: the primary portal only
            assert (disk.source.iqn, disk.source.lun) == (cinder.iqn(vol), exported.lun)
            assert [str(p) for p in disk.source.hosts] == [exported.portals[0]]
        else:
            assert disk.source.path.endswith(f"{cinder.iqn(vol)}-lun-{exported.lun}")
            assert host.brick.devices[disk.source.path] == (exported.portals[0],
                                                            cinder.iqn(vol), exported.lun)
    operations.detach(cinder, host, vol, "vm1")
    assert snapshot(cinder, host) == before


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_read_only_volume_is_readonly_in_the_domain_and_attached_ro(cinder, host,
                                                                      transport):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume(readonly=True)
    operations.attach(cinder, host, get_transport(transport), vol, "vm1", api="legacy")
    assert "<readonly />" in host.hypervisor.domain("vm1").disk(vol).to_xml()
    assert "<readonly />" in host.hypervisor.domain("vm1", inactive=True).disk(vol).to_xml()
    # os-attach said 'ro' (Cinder refuses 'rw' for a read-only volume)
    assert [a.mode for a in cinder.volumes[vol].attachments.values()] == ["ro"]
    assert record.read(host.hypervisor.domain("vm1"))[vol].connection.access_mode == "ro"


@pytest.mark.parametrize("api", APIS)
def test_a_multipath_connection_to_a_multi_portal_volume_uses_every_portal(cinder, host,
                                                                           api):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume(portals=3)
    before = snapshot(cinder, host)
    operations.attach(cinder, host, get_transport("kernel", multipath=True), vol, "vm1",
                      api=api)
    disk = host.hypervisor.domain("vm1").disk(vol)
    assert disk.source.path in host.brick.maps
    assert sorted(host.brick.sessions) == [(p, cinder.iqn(vol))
                                           for p in cinder.volumes[vol].portals]
    operations.detach(cinder, host, vol, "vm1")
    assert snapshot(cinder, host) == before


@pytest.mark.parametrize("api", APIS)
def test_discovery_chap_reaches_os_brick_and_stays_out_of_the_record(cinder, host, api):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume(discovery_chap=True)
    operations.attach(cinder, host, get_transport("kernel"), vol, "vm1", api=api)
    props = host.brick.connected[host.hypervisor.domain("vm1").disk(vol).source.path]
    exported = cinder.volumes[vol]
    assert (props["discovery_auth_method"], props["discovery_auth_username"],
            props["discovery_auth_password"]) == ("CHAP", exported.discovery_user,
                                                  exported.discovery_password)
    connection = record.read(host.hypervisor.domain("vm1"))[vol].to_json()["connection"]
    assert connection["discovery_auth_username"] == exported.discovery_user
    assert "discovery_auth_password" not in connection


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_volume_that_is_not_iscsi_is_refused_and_nothing_is_left(cinder, host, api,
                                                                   transport):
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume(driver_volume_type="rbd")
    before = snapshot(cinder, host)
    with pytest.raises(errors.OperationFailed, match="exported as 'rbd'") as info:
        operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    assert isinstance(info.value.cause, errors.TransportMismatch)
    assert info.value.exit_code == 2 and "could NOT undo" not in str(info.value)
    assert snapshot(cinder, host) == before
    assert cinder.volumes[vol].status == "available"


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_detach_of_a_volume_attachflow_has_no_record_of(cinder, host, api, transport):
    """Attached by another tool (or by a version that kept no connector): Cinder still
    gets this host's connector, which an iSCSI export needs."""
    host.hypervisor.add_domain("vm1")
    vol = cinder.create_volume()
    before = snapshot(cinder, host)
    operations.attach(cinder, host, get_transport(transport), vol, "vm1", api=api)
    dom = host.hypervisor.domains["vm1"]
    dom.live_meta, dom.config_meta = {}, {}
    res = operations.detach(cinder, host, vol, "vm1", api=api)
    assert res.transport == transport
    assert snapshot(cinder, host) == before


def test_a_connection_cinder_fails_at_create_leaves_no_reservation(cinder):
    """Cinder answers 500 and keeps the reservation it made (the contract suite shows
    both Cinders do): the flow releases the guest's reservation, and says it did."""
    from attachflow.cinder_side import AttachmentsFlow
    from attachflow.model import ConnectorProperties
    vol = cinder.create_volume()
    no_initiator = ConnectorProperties(host="hosta", ip="198.18.0.11")
    with pytest.raises(errors.StorageUnavailable) as failed:
        AttachmentsFlow(cinder).connect(vol, "guest-uuid", no_initiator, "/dev/vdb")
    assert "released the reservation Cinder left" in str(failed.value)
    assert cinder.attachments_of(vol) == [] and cinder.volumes[vol].status == "available"
