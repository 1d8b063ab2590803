"""End to end on the lab, through the attachflow command, for both Cinder attach APIs with
QEMU's own iSCSI initiator (the host kernel here has no iSCSI initiator): the failure
paths on real parts, each leaving the lab exactly as it was. The data's journey (attach,
write, detach, attach on the other host, read back) is the shipped smoke scenario's,
which test_scenarios_lab runs.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET

import pytest

from attachflow.connectors.iscsi_native import INITIATOR_PREFIX

APIS = ["attachments", "legacy"]
MiB = 1024 * 1024


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def boot(lab, cleanup, host: str, api: str) -> tuple[str, str]:
    root = lab.create_volume()
    cleanup["volumes"].append(root)
    dom = name("vm")
    cleanup["domains"].append((host, dom))
    res = lab.af_json("boot", dom, "--volume", root, "--host", host, "--api", api)
    assert res["device"] == "vda" and res["host"] == host
    lab.wait_guest_ready(host, dom)
    return dom, root


def assert_attached(lab, volume_id: str, host: str, dom: str, device: str):
    """What a user checks after an attach."""
    vol = lab.volume(volume_id)
    assert vol.status == "in-use"
    uuid_ = lab.conn(host).lookupByName(dom).UUIDString()
    assert [a["server_id"] for a in vol.attachments] == [uuid_]
    for inactive in (False, True):
        disk = lab.disk(host, dom, volume_id, inactive=inactive)
        assert disk is not None and disk.target_dev == device, (inactive, disk)
        assert disk.disk_type == "network"
    target = lab.target_of(volume_id)
    assert target["accounts"], "CHAP account bound to the target"
    assert target["initiators"] == [f"{INITIATOR_PREFIX}:{host}"]
    assert any(volume_id in usage for usage in lab.secrets(host))


def assert_detached(lab, volume_id: str, host: str, dom: str):
    """What a user checks after a detach: nothing left anywhere."""
    vol = lab.volume(volume_id)
    assert vol.status == "available" and not vol.attachments
    for inactive in (False, True):
        assert lab.disk(host, dom, volume_id, inactive=inactive) is None
    assert lab.initiators_of(volume_id) == []
    assert not any(volume_id in usage for h in ("hosta", "hostb") for usage in lab.secrets(h))


def lab_state(lab):
    """The parts of the lab a failed command must leave exactly as they were."""
    vols = {}
    for vol in lab.cinder.volumes.list():
        vols[vol.id] = (vol.status, sorted(a["attachment_id"] for a in vol.attachments))
    return {
        "volumes": vols,
        "targets": {iqn: (t["accounts"], t["initiators"]) for iqn, t in lab.targets().items()},
        "domains": {h: sorted(lab.domains(h)) for h in ("hosta", "hostb")},
        # canonical XML: libvirt may repeat a namespace declaration when metadata is
        # rewritten, which changes nothing
        "xml": {(h, d): (ET.canonicalize(lab.domain_xml(h, d)),
                         ET.canonicalize(lab.domain_xml(h, d, inactive=True)))
                for h in ("hosta", "hostb") for d in lab.domains(h)},
        "secrets": {h: sorted(lab.secrets(h)) for h in ("hosta", "hostb")},
    }


@pytest.mark.parametrize("api", APIS)
def test_failures_are_clear_and_change_nothing(lab, cleanup, api):
    vm, root = boot(lab, cleanup, "hosta", api)
    other_vm, _ = boot(lab, cleanup, "hosta", api)
    busy = lab.create_volume()
    free = lab.create_volume()
    cleanup["volumes"] += [busy, free]
    lab.af_json("attach", busy, other_vm, "--host", "hosta", "--api", api)
    before = lab_state(lab)

    cases = {
        "no such domain": (["attach", free, "no-such-domain"], 2, "not found"),
        "volume in use": (["attach", busy, vm], 2, "in-use"),
        "device taken": (["attach", free, vm, "--device", "vda"], 2, "already in use"),
        "no such volume": (["attach", str(uuid.uuid4()), vm], 2, "not found"),
        "not attached": (["detach", free, vm, "--strict"], 2, "not attached"),
    }
    for case, (args, code, words) in cases.items():
        proc = lab.af(*args, "--host", "hosta", "--api", api, expect=None)
        assert proc.returncode == code, (case, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], (case, proc.stderr)
        assert lab_state(lab) == before, case


@pytest.mark.parametrize("api", APIS)
def test_wrong_chap_password_is_undone(lab, cleanup, api):
    vm, _ = boot(lab, cleanup, "hosta", api)
    vol = lab.create_volume()
    cleanup["volumes"].append(vol)
    # Export the volume once to learn its target's CHAP account, then give that account
    # another password on the target: QEMU's login must fail, and everything be undone.
    lab.af_json("attach", vol, vm, "--host", "hosta", "--api", api)
    account = lab.target_of(vol)["accounts"][0]
    lab.af_json("detach", vol, vm, "--host", "hosta")
    before = lab_state(lab)
    with lab.chap_password_changed(account):
        proc = lab.af("attach", vol, vm, "--host", "hosta", "--api", api, expect=1)
        assert lab_state(lab) == before
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "guest attach" in lines[0], proc.stderr
    # the cause, as QEMU's initiator reported it: the target refused the login
    assert "Authentication failure" in lines[0], lines[0]
    assert "all earlier steps undone" in lines[0]
    # and with the right password back, the same volume attaches
    assert lab.af_json("attach", vol, vm, "--host", "hosta", "--api", api)["device"] == "vdb"
