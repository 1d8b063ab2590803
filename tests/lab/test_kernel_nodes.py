"""The kernel iSCSI path (os-brick, CHAP, multipath) on the lab's compute-node VMs.

``nodea`` and ``nodeb`` run Debian's kernel under QEMU TCG (`lab up --kernel-nodes`):
attachflow on this machine drives os-brick on the nodes over ssh (``host-call``) and their
libvirtd over qemu+ssh, exactly as on production compute hosts. The guests inside the
nodes run nested under TCG with no operating system (a Linux guest does not boot there
in reasonable time), so data is written and read through QEMU's monitor (qemu-io on the
guest's own block backend) and checked where it lands, in tgtd's backing file; and a
detach is done with the guest stopped, since only a guest OS acknowledges a live unplug
(live detach is proven on the lab's hosts; here, that a live detach nobody answers is
finished by recover once the guest is stopped).

What is checked on a node is what an operator would look at: ``iscsiadm -m session``
and ``-m node``, the SCSI devices (``/sys/class/scsi_device``, ``lsblk``), the multipath
maps (``multipath -ll``, ``dmsetup ls``); on the storage side, tgtd's I_T nexus list.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid

import pytest

pytestmark = [pytest.mark.lab, pytest.mark.kernel]

NODES = ("nodea", "nodeb")
APIS = ("attachments", "legacy")
PATTERN = "0x5c"
MIB = 1 << 20

# One ssh command that prints what a node holds, as JSON. A tool that fails makes the
# script fail (exit 3, naming it): a node whose tools cannot answer never reads as empty.
# iscsiadm's 21 is its "no records / no sessions found", an empty answer.
STATE_SCRIPT = r"""
python3 - <<'EOF'
import json, os, subprocess, sys
def out(*argv, empty=()):
    cp = subprocess.run(argv, capture_output=True, text=True)
    if cp.returncode in empty:
        return []
    if cp.returncode != 0:
        print(f"{' '.join(argv)}: exit {cp.returncode}: {cp.stderr.strip()}",
              file=sys.stderr)
        sys.exit(3)
    return [l for l in cp.stdout.splitlines() if l.strip()]
print(json.dumps({
    "sessions": out("iscsiadm", "-m", "session", empty=(21,)),
    "records": out("iscsiadm", "-m", "node", empty=(21,)),
    "scsi": sorted(os.listdir("/sys/class/scsi_device")),
    "disks": out("lsblk", "-S", "-n", "-o", "NAME,TRAN,SERIAL"),
    "maps": out("multipath", "-ll", "-v1"),
    "dm": [l for l in out("dmsetup", "ls") if l != "No devices found"],
}))
EOF
"""


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def initiator(node: str) -> str:
    from attachflow.lab import initiator_name
    return initiator_name(node)


class Nodes:
    """The compute-node VMs, seen through ssh and the lab's own records."""

    def __init__(self, lab):
        self.lab = lab
        # What `lab env` gives, with the kernel transport and guests without an OS.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("ATTACHFLOW_BOOT_")}
        self.env["ATTACHFLOW_TRANSPORT"] = "kernel"

    def sh(self, node: str, script: str, check: bool = True) -> subprocess.CompletedProcess:
        from attachflow.lab.ssh import ssh_argv
        cp = subprocess.run(ssh_argv(node, script), capture_output=True, text=True,
                            timeout=300)
        if check:
            assert cp.returncode == 0, (node, script, cp.stdout, cp.stderr)
        return cp

    def state(self, node: str) -> dict:
        return json.loads(self.sh(node, STATE_SCRIPT).stdout)

    def leftovers(self, node: str) -> dict[str, list[str]]:
        """What ``node`` holds of any volume: sessions, node records, SCSI devices,
        multipath maps, dm devices, and I_T nexuses from it on the target (empty: none)."""
        found = {what: held for what, held in self.state(node).items() if held}
        nexus = [iqn for iqn, t in self.lab.targets().items()
                 if initiator(node) in t["initiators"]]
        if nexus:
            found["nexus"] = nexus
        return found

    def assert_empty(self, node: str) -> None:
        assert self.leftovers(node) == {}, node

    def af(self, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
        return self.lab.af(*args, expect=expect, env=self.env)

    def af_json(self, *args: str) -> dict:
        return json.loads(self.af(*args, "-f", "json").stdout)

    def qemu_log(self, node: str, dom: str) -> str:
        return self.sh(node, f"cat /var/log/libvirt/qemu/{dom}.log", check=False).stdout

    def write(self, node: str, dom: str, volume_id: str, pattern: str = PATTERN) -> None:
        """A pattern through the guest's block backend, flushed to the target."""
        self.lab.qemu_io(node, dom, volume_id, f"write -P {pattern} 0 1M")
        self.lab.qemu_io(node, dom, volume_id, "flush")

    def read_back(self, node: str, dom: str, volume_id: str, pattern: str = PATTERN) -> None:
        """The guest on ``node`` reads the pattern through its own block backend (qemu-io
        reports on QEMU's log on the node), and the target's backing file holds it."""
        before = self.qemu_log(node, dom)
        self.lab.qemu_io(node, dom, volume_id, f"read -P {pattern} 0 1M")
        deadline = time.monotonic() + 30
        while True:
            log = self.qemu_log(node, dom)[len(before):]
            if "read 1048576/1048576" in log or "Pattern verification failed" in log:
                break
            assert time.monotonic() < deadline, f"no qemu-io answer on {node}: {log!r}"
            time.sleep(0.5)
        assert "Pattern verification failed" not in log, log
        with open(self.lab.backing_file(volume_id), "rb") as f:
            assert f.read(MIB) == bytes([int(pattern, 16)]) * MIB

    def assert_attached(self, node: str, dom: str, volume_id: str) -> None:
        """One attachment, for ``node``'s guest; a block disk in the live XML; the node's
        initiator (and only it) logged in to the volume's target."""
        vol = self.lab.volume(volume_id)
        assert vol.status == "in-use"
        dom_uuid = self.lab.conn(node).lookupByName(dom).UUIDString()
        assert [a["server_id"] for a in vol.attachments] == [dom_uuid], vol.attachments
        disk = self.lab.disk(node, dom, volume_id)
        assert disk is not None and disk.disk_type == "block", disk
        assert self.lab.initiators_of(volume_id) == [initiator(node)] * \
            len(self.lab.initiators_of(volume_id)) != []

    def reset(self, node: str) -> None:
        """After a test, whatever it left: a safety net, not part of any check."""
        self.sh(node, "virsh list --name --all | while read d; do [ -n \"$d\" ] && "
                      "{ virsh destroy $d; virsh undefine $d; }; done; "
                      "iscsiadm -m node -u; iscsiadm -m node -o delete; multipath -F; "
                      "systemctl unmask --runtime iscsid.socket iscsid.service; "
                      "systemctl start iscsid.socket", check=False)


@pytest.fixture(scope="module")
def nodes(lab):
    lab.manager.up(echo=lambda line: print(line, flush=True), kernel_nodes=True)
    return Nodes(lab)


@pytest.fixture
def guests(lab, nodes, cleanup):
    """Guests booted on the nodes, removed with their volumes afterwards."""
    made = []

    def boot(node: str, api: str = "attachments") -> tuple[str, str]:
        root = lab.create_volume(name="kroot")
        cleanup["volumes"].append(root)
        dom = name("kvm")
        made.append((node, dom))
        res = nodes.af_json("boot", dom, "--volume", root, "--host", node, "--api", api,
                            "--memory", "64")
        assert res["transport"] == "kernel" and res["host"] == node
        return dom, root

    yield boot
    for node, dom in made:
        for where in NODES:
            with contextlib.suppress(Exception):
                if dom in lab.domains(where):
                    nodes.af("delete", dom, "--host", where, expect=None)
    # What the test left once its guests are deleted, read before the reset (which only
    # makes a failed test's leftovers harmless to the next), and then a failure.
    left = {node: nodes.leftovers(node) for node in NODES}
    for node in NODES:
        nodes.reset(node)
    assert left == {node: {} for node in NODES}, left


def data_volume(lab, cleanup) -> str:
    vol = lab.create_volume(name="kdata")
    cleanup["volumes"].append(vol)
    return vol


def stop_guest(lab, node: str, dom: str) -> None:
    lab.conn(node).lookupByName(dom).destroy()


# ---------------------------------------------------------------------------------------

def test_status_and_hosts_file_show_the_nodes(lab, nodes):
    from attachflow.hosts import load_host
    from attachflow.lab import layout
    st = lab.manager.status()
    assert st["state"] == "up", st
    for node, address in layout.NODES.items():
        comp = st["components"][node]
        assert (comp["state"], comp["address"], comp["processes"]) == ("up", address, 1)
        cfg = load_host(node)
        assert (cfg.address, cfg.ssh_user) == (address, "root")
        assert cfg.libvirt_uri.startswith(f"qemu+ssh://root@{address}/system")
        assert nodes.sh(node, "hostname").stdout.strip() == node
    assert st["components"]["node-ssh-mesh"]["state"] == "up"
    # qemu+ssh between the nodes, as a migration's source libvirtd dials it
    for src, dst in (("nodea", "nodeb"), ("nodeb", "nodea")):
        uri = load_host(dst).inbound_migration_uri
        assert nodes.sh(src, f"virsh -c {uri} hostname").stdout.strip() == dst


def test_connector_reports_the_nodes_own_initiator(nodes):
    for node in NODES:
        props = nodes.af_json("connector", "--host", node)
        assert props["initiator"] == initiator(node)
        cfg = nodes.sh(node, "cat /etc/iscsi/initiatorname.iscsi").stdout
        assert f"InitiatorName={initiator(node)}" in cfg


@pytest.mark.parametrize("api", [
    "attachments", pytest.param("legacy", marks=pytest.mark.kernel_long)])
def test_attach_write_detach_leaves_nothing_on_the_node(lab, nodes, guests, cleanup, api):
    dom, root = guests("nodea", api)
    vol = data_volume(lab, cleanup)
    res = nodes.af_json("attach", vol, dom, "--host", "nodea", "--api", api)
    assert res["device"] == "vdb" and res["transport"] == "kernel"
    nodes.assert_attached("nodea", dom, vol)
    state = nodes.state("nodea")
    assert len(state["sessions"]) == 2, state  # root and data volume, one path each
    assert any(vol in s for s in state["sessions"])
    disk = lab.disk("nodea", dom, vol)
    assert nodes.sh("nodea", f"test -b {disk.source_path}", check=False).returncode == 0
    nodes.write("nodea", dom, vol)
    nodes.read_back("nodea", dom, vol)

    stop_guest(lab, "nodea", dom)
    res = nodes.af_json("detach", vol, dom, "--host", "nodea")
    assert res["transport"] == "kernel"
    v = lab.volume(vol)
    assert v.status == "available" and not v.attachments
    assert lab.disk("nodea", dom, vol, inactive=True) is None
    state = nodes.state("nodea")
    assert not any(vol in line for line in state["sessions"] + state["records"]), state
    assert len(state["scsi"]) == 1 and len(state["disks"]) == 1, state  # the root disk
    assert lab.initiators_of(vol) == []
    nodes.af("delete", dom, "--host", "nodea")
    nodes.assert_empty("nodea")


def test_a_live_detach_the_guest_never_answers_is_finished_by_recover_once_stopped(
        lab, nodes, guests, cleanup):
    """The guests here have no OS, so none answers a live unplug: the detach says what to
    do next and leaves the operation to recover, which finishes it once the guest is
    stopped, logging the node out."""
    dom, _root = guests("nodea")
    vol = data_volume(lab, cleanup)
    nodes.af_json("attach", vol, dom, "--host", "nodea")
    proc = nodes.af("detach", vol, dom, "--host", "nodea", "--timeout", "5", expect=1)
    [error] = proc.stderr.strip().splitlines()
    op_id = error.split("'attachflow recover ")[1].split("'")[0]
    assert "did not release" in error and error.endswith(
        f"'attachflow recover {op_id}' finishes the detach"), error
    nodes.assert_attached("nodea", dom, vol)  # the guest still has it: so does the node
    assert lab.disk("nodea", dom, vol, inactive=True) is None
    stop_guest(lab, "nodea", dom)
    [done] = json.loads(nodes.af("recover", op_id, "-f", "json").stdout)
    assert done["decision"] == "forward" and done["problem"] is None, done
    v = lab.volume(vol)
    assert v.status == "available" and not v.attachments
    state = nodes.state("nodea")
    assert not any(vol in line for line in state["sessions"] + state["records"]), state
    assert lab.initiators_of(vol) == []
    assert json.loads(nodes.af("recover", "--all", "-f", "json").stdout) == []


@pytest.mark.kernel_long
@pytest.mark.parametrize("api", APIS)
def test_migration_there_and_back_keeps_data_and_leaves_the_source_empty(
        lab, nodes, guests, cleanup, api):
    dom, root = guests("nodea", api)
    vol = data_volume(lab, cleanup)
    nodes.af_json("attach", vol, dom, "--host", "nodea", "--api", api)
    nodes.write("nodea", dom, vol)
    nodes.write("nodea", dom, root, "0x3a")
    for src, dst in (("nodea", "nodeb"), ("nodeb", "nodea")):
        res = nodes.af_json("migrate", dom, "--host", src, "--to", dst)
        assert res["runs_on"] == dst and not res["left_behind"], res
        assert dom not in lab.domains(src)
        for volume_id in (root, vol):
            nodes.assert_attached(dst, dom, volume_id)
        nodes.read_back(dst, dom, vol)
        nodes.read_back(dst, dom, root, "0x3a")
        nodes.assert_empty(src)
    stop_guest(lab, "nodea", dom)
    nodes.af_json("detach", vol, dom, "--host", "nodea")
    nodes.af("delete", dom, "--host", "nodea")
    for node in NODES:
        nodes.assert_empty(node)


@pytest.mark.kernel_long
def test_migration_with_the_destinations_initiator_down_leaves_the_guest_on_the_source(
        lab, nodes, guests, cleanup):
    dom, root = guests("nodea")
    vol = data_volume(lab, cleanup)
    nodes.af_json("attach", vol, dom, "--host", "nodea")
    nodes.write("nodea", dom, vol)
    # Stopped and masked: iscsiadm would otherwise start it again on demand
    # (iscsid.startup in iscsid.conf).
    nodes.sh("nodeb", "systemctl mask --runtime --now iscsid.socket iscsid.service")
    try:
        proc = nodes.af("migrate", dom, "--host", "nodea", "--to", "nodeb", expect=1)
    finally:
        nodes.sh("nodeb", "systemctl unmask --runtime iscsid.socket iscsid.service && "
                          "systemctl start iscsid.socket")
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "undone" in lines[0], proc.stderr
    assert lab.conn("nodea").lookupByName(dom).isActive()
    assert dom not in lab.domains("nodeb")
    for volume_id in (root, vol):
        nodes.assert_attached("nodea", dom, volume_id)
    nodes.read_back("nodea", dom, vol)
    nodes.assert_empty("nodeb")


@pytest.mark.kernel_long
def test_multipath_attach_uses_both_portals_and_detach_removes_the_map(
        lab, nodes, guests, cleanup):
    from attachflow.lab.layout import STORAGE_IP, STORAGE_IP_2
    dom, root = guests("nodea")
    vol = data_volume(lab, cleanup)
    res = nodes.af_json("attach", vol, dom, "--host", "nodea", "--multipath")
    disk = lab.disk("nodea", dom, vol)
    assert disk.disk_type == "block"
    state = nodes.state("nodea")
    sessions = [s for s in state["sessions"] if vol in s]
    assert sorted(s.split()[2].split(":")[0] for s in sessions) == \
        sorted([STORAGE_IP, STORAGE_IP_2]), state
    assert len(state["maps"]) == 1, state
    holder = nodes.sh("nodea", f"readlink -f {disk.source_path}").stdout.strip()
    assert holder.startswith("/dev/dm-"), holder
    assert lab.initiators_of(vol) == [initiator("nodea")] * 2
    nodes.write("nodea", dom, vol)
    nodes.read_back("nodea", dom, vol)
    assert res["device"] == "vdb"

    stop_guest(lab, "nodea", dom)
    nodes.af_json("detach", vol, dom, "--host", "nodea")
    state = nodes.state("nodea")
    assert not any(vol in line for line in state["sessions"] + state["records"]), state
    assert state["maps"] == [] and state["dm"] == [], state
    assert lab.initiators_of(vol) == []


@pytest.mark.kernel_long
def test_multipath_attach_works_with_one_portal_down(lab, nodes, guests, cleanup):
    from attachflow.lab.layout import BRIDGE, PREFIX_LEN, STORAGE_IP, STORAGE_IP_2
    dom, root = guests("nodea")
    vol = data_volume(lab, cleanup)
    cidr = f"{STORAGE_IP_2}/{PREFIX_LEN}"
    subprocess.run(["ip", "addr", "del", cidr, "dev", BRIDGE], check=True)
    try:
        res = nodes.af_json("attach", vol, dom, "--host", "nodea", "--multipath")
    finally:
        subprocess.run(["ip", "addr", "add", cidr, "dev", BRIDGE], check=True)
    assert res["device"] == "vdb"
    state = nodes.state("nodea")
    sessions = [s for s in state["sessions"] if vol in s]
    assert [s.split()[2].split(":")[0] for s in sessions] == [STORAGE_IP], state
    nodes.write("nodea", dom, vol)
    nodes.read_back("nodea", dom, vol)
    stop_guest(lab, "nodea", dom)
    nodes.af_json("detach", vol, dom, "--host", "nodea")
    nodes.af("delete", dom, "--host", "nodea")
    nodes.assert_empty("nodea")


@pytest.mark.kernel_long
def test_wrong_chap_password_fails_cleanly_on_the_node(lab, nodes, guests, cleanup):
    dom, root = guests("nodea")
    vol = data_volume(lab, cleanup)
    # Export the volume once to learn its target's CHAP account, then give that account
    # another password on the target: the node's login must fail, and all be undone.
    nodes.af_json("attach", vol, dom, "--host", "nodea")
    account = lab.target_of(vol)["accounts"][0]
    stop_guest(lab, "nodea", dom)
    nodes.af_json("detach", vol, dom, "--host", "nodea")
    before = nodes.state("nodea")
    since = nodes.sh("nodea", "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    with lab.chap_password_changed(account):
        proc = nodes.af("attach", vol, dom, "--host", "nodea", expect=1)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "host connect (kernel)" in lines[0], proc.stderr
    # the cause, as the node's initiator logged it: the target refused the login
    iscsid = nodes.sh("nodea", f"journalctl -u iscsid --no-pager --since '{since}'").stdout
    assert f"Login failed to authenticate with target iqn.2010-10.org.openstack:" \
           f"volume-{vol}" in iscsid, iscsid
    assert "all earlier steps undone" in lines[0]
    assert nodes.state("nodea") == before
    v = lab.volume(vol)
    assert v.status == "available" and not v.attachments
    assert lab.initiators_of(vol) == []
