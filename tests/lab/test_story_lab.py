"""The one-story check (``story.assert_one_story``) catches what it claims to: each test
plants one inconsistency on the real lab behind attachflow's back (a disk only in the
persistent definition, a second definition of the guest, an export left for a volume
Cinder says is available, a session from an initiator nobody expects), shows the check
fails naming it, removes it, and shows the check passes again."""

from __future__ import annotations

import subprocess
import time

import pytest

from story import assert_one_story, chap_account_of

pytestmark = pytest.mark.lab


@pytest.fixture
def consistent_guest(lab, cleanup):
    """A running guest on hosta with a data volume attached, and a volume no one uses;
    the check passes on both before anything is planted."""
    root = lab.create_volume(name="story-root")
    vol = lab.create_volume(name="story-data")
    spare = lab.create_volume(name="story-spare")
    cleanup["volumes"].extend((root, vol, spare))
    dom = f"story-{int(time.time() * 1000) % 10**8}"
    cleanup["domains"].extend((h, dom) for h in ("hosta", "hostb"))
    lab.af_json("boot", dom, "--volume", root, "--host", "hosta")
    lab.af_json("attach", vol, dom, "--host", "hosta")
    assert assert_one_story(lab, [root, vol, spare], dom) == "hosta"
    yield dom, root, vol, spare
    lab.af("detach", vol, dom, "--host", "hosta", expect=None)


def fails(lab, volumes, dom, wanted: str) -> None:
    with pytest.raises(AssertionError) as caught:
        assert_one_story(lab, volumes, dom)
    assert wanted in str(caught.value), caught.value


def test_a_disk_only_in_the_persistent_definition_is_caught(lab, consistent_guest):
    import libvirt
    dom, root, vol, spare = consistent_guest
    disk = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
            f"<source file='/var/lib/attachflow-story-{spare}'/>"
            f"<target dev='vdz' bus='virtio'/><serial>{spare}</serial></disk>")
    guest = lab.conn("hosta").lookupByName(dom)
    guest.attachDeviceFlags(disk, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    try:
        fails(lab, [spare], dom, "in the live definition False, in the persistent one True")
    finally:
        guest.detachDeviceFlags(disk, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert_one_story(lab, [root, vol, spare], dom)


def test_a_second_definition_of_the_guest_is_caught(lab, consistent_guest):
    import libvirt
    dom, root, vol, _spare = consistent_guest
    xml = lab.domain_xml("hosta", dom, inactive=True)
    copy = lab.conn("hostb").defineXML(xml)
    try:
        fails(lab, [vol], dom, f"{dom} defined on [('hosta', 'running'), ('hostb', 'off')]")
    finally:
        copy.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
    assert_one_story(lab, [root, vol], dom)


def test_an_export_left_for_an_available_volume_is_caught(lab, consistent_guest):
    dom, root, vol, spare = consistent_guest
    tid = str(max([int(t["tid"]) for t in lab.targets().values()] + [0]) + 100)
    iqn = f"iqn.2010-10.org.openstack:volume-{spare}"

    def tgtadm(*args: str) -> None:
        subprocess.run(["tgtadm", "--lld", "iscsi", "--mode", "target", *args,
                        "--tid", tid], check=True, capture_output=True)
    tgtadm("--op", "new", "--targetname", iqn)
    try:
        fails(lab, [spare], dom, "still exported")
    finally:
        tgtadm("--op", "delete")
    assert_one_story(lab, [root, vol, spare], dom)


def test_a_session_nobody_expects_is_caught(lab, consistent_guest, tmp_path):
    dom, root, vol, _spare = consistent_guest
    iqn = next(name for name in lab.targets() if name.endswith(vol))
    user, password = chap_account_of(lab, vol)
    secret = tmp_path / "chap"
    secret.touch(mode=0o600)
    secret.write_text(password)
    intruder = "iqn.2026-12.org.example:intruder"
    # QEMU's own initiator (libiscsi), logged in and holding the session for a minute
    reader = subprocess.Popen(
        ["qemu-io", "--object", f"secret,id=chap,file={secret}", "--image-opts",
         f"driver=iscsi,transport=tcp,portal=198.18.0.1:3260,target={iqn},lun=1,"
         f"user={user},password-secret=chap,initiator-name={intruder}",
         "-c", "sleep 60000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while intruder not in lab.initiators_of(vol):
            assert reader.poll() is None, reader.stderr.read().decode()
            assert time.monotonic() < deadline, "the second session never logged in"
            time.sleep(0.2)
        fails(lab, [vol], dom, "sessions")
    finally:
        reader.kill()
        reader.wait()
    assert_one_story(lab, [root, vol], dom)
