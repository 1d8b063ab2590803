"""End-to-end checks of `attachflow lab` on the real lab.

What a user checks by hand after `attachflow lab up`: Cinder answers and its
volume service is up, a volume becomes available, an attachment hands out
iSCSI CHAP credentials that really log in to tgtd (and wrong ones do not),
both hosts' libvirtd answer through the URIs of the hosts file, the hosts
reach each other over ssh, a guest live-migrates between them, and
`lab down` leaves nothing behind.

The lab stays up for the whole test session; it is taken down (and checked
for leftovers) when the session ends, unless ATTACHFLOW_LAB_KEEP=1.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
import tomllib
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
]

import attachflow.lab as manager  # noqa: E402
from attachflow.lab import layout  # noqa: E402
from labenv import evaluated  # noqa: E402
from leftovers import leftovers, machine_paths  # noqa: E402

HOST_PARTS = ("namespaces", "virtlogd", "libvirtd", "sshd")


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def lab_up():
    before = None if manager.state_dir().exists() else machine_paths()
    lines: list[str] = []
    status = manager.up(echo=lines.append)
    yield {"status": status, "log": lines}
    if os.environ.get("ATTACHFLOW_LAB_KEEP") == "1":
        return
    manager.down(echo=lambda _m: None)
    left = leftovers()
    if before is not None:
        after = machine_paths()
        left += [f"{k}: {before[k]} before, {after[k]} after"
                 for k in before if before[k] != after[k]]
    assert not left, f"lab down left behind: {left}"


def _lab_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OS_", "CINDER_"))}
    return evaluated(manager.env_lines(), base=env)


def _cinder(service_role: bool = False, cloud: str | None = None):
    """cinderclient as the lab's member user (or another cloud of its clouds.yaml).
    Without a service token Cinder refuses to delete an attachment that carries an
    instance until Nova confirms the detach (there is no Nova)."""
    from cinderclient import client
    from attachflow.identity import make_session

    env = _lab_env()
    if not service_role:
        env.pop("ATTACHFLOW_SERVICE_CLOUD", None)
    sess, endpoint = make_session(cloud, env=env)
    return client.Client(env["OS_VOLUME_API_VERSION"], session=sess,
                         endpoint_override=endpoint)


def _hosts() -> dict:
    return tomllib.loads(manager.hosts_file().read_text())["hosts"]


def _ssh_argv(host: str, *remote: str, known_hosts: str | None = None) -> list[str]:
    h = _hosts()[host]
    return ["ssh", "-F", "/dev/null", "-i", h["ssh_key"], "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts or h['known_hosts']}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(h["ssh_port"]),
            f"{h['ssh_user']}@{h['address']}", "--", *remote]


def _virsh(host: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cp = subprocess.run(["virsh", "-c", _hosts()[host]["libvirt_uri"], *args],
                        capture_output=True, text=True, timeout=120)
    if check:
        assert cp.returncode == 0, f"virsh {host} {args[0]}: {cp.stderr.strip()}"
    return cp


def _wait_status(cinder, volume_id: str, want: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        vol = cinder.volumes.get(volume_id)
        if vol.status == want:
            return vol
        assert not vol.status.startswith("error"), f"volume {volume_id}: {vol.status}"
        assert time.monotonic() < deadline, f"volume {volume_id} still {vol.status}"
        time.sleep(0.1)


def _connector(host: str) -> dict:
    return {"initiator": manager.initiator_name(host), "ip": manager.HOSTS[host],
            "host": host, "platform": "x86_64", "os_type": "linux", "multipath": False}


def _tgt_show() -> str:
    return subprocess.run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
                          capture_output=True, text=True, check=True).stdout


def _target_block(iqn: str) -> str:
    blocks = re.split(r"(?m)^(?=Target \d+: )", _tgt_show())
    return next((b for b in blocks if b.startswith("Target ") and f": {iqn}\n" in b), "")


@pytest.fixture
def volume(lab_up):
    cinder = _cinder(service_role=True)
    vol = cinder.volumes.create(1, name=f"lab-test-{uuid.uuid4().hex[:8]}")
    vol = _wait_status(cinder, vol.id, "available")
    yield vol
    for att in cinder.attachments.list(search_opts={"volume_id": vol.id}):
        cinder.attachments.delete(att.id)
    _wait_status(cinder, vol.id, "available")
    cinder.volumes.delete(vol.id)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

def test_status_reports_every_component_up(lab_up):
    st = manager.status()
    assert st["state"] == "up", st
    comps = st["components"]
    assert st["auth"] == "keystone"
    for name in ("network", "mariadb", "rabbitmq", "tgtd", "keystone-db",
                 "keystone-bootstrap", "keystone", "keystone-accounts", "cinder-api",
                 "cinder-scheduler", "cinder-volume", "hosta", "hostb"):
        assert comps[name]["state"] == "up", (name, comps[name])
    assert comps["cinder-volume"]["service"] == "up"
    for host, addr in manager.HOSTS.items():
        assert comps[host]["address"] == addr
        for part in HOST_PARTS:
            assert comps[host][part]["state"] == "up", (host, part)
    assert comps["tgtd"]["portal"] == f"{layout.STORAGE_IP}:{layout.ISCSI_PORT}"


def test_status_says_how_long_the_bring_up_took(lab_up):
    # How long it takes is a benchmark's figure (benchmarks.lab_bringup, against a
    # baseline in the same run), not a test's.
    seconds = manager.status()["bring_up_seconds"]
    assert isinstance(seconds, (int, float)) and seconds > 0, lab_up["log"]


def test_cinder_volume_service_up_for_the_admin(lab_up):
    services = _cinder(cloud="attachflow-lab-admin").services.list(binary="cinder-volume")
    states = {s.host: (s.state, s.status) for s in services}
    assert states.get(f"{layout.CINDER_HOST}@{layout.CINDER_BACKEND}") == ("up", "enabled")


def test_volume_attachment_gives_working_chap_credentials(lab_up, volume):
    cinder = _cinder(service_role=True)
    att = cinder.attachments.create(volume.id, _connector("hosta"),
                                    instance_id=str(uuid.uuid4()))
    info = att["connection_info"]
    assert info["driver_volume_type"] == "iscsi"
    assert info["target_portal"] == f"{layout.STORAGE_IP}:{layout.ISCSI_PORT}"
    assert info["target_iqn"].endswith(volume.id)
    assert info["auth_method"] == "CHAP"
    user, password = info["auth_username"], info["auth_password"]
    assert user and password

    block = _target_block(info["target_iqn"])
    assert block, "tgtd has no target for the attached volume"
    assert f"/cinder/files/volume-{volume.id}" in block
    assert user in block  # CHAP account bound to the target

    def inq(secret: str) -> subprocess.CompletedProcess:
        url = (f"iscsi://{user}%{secret}@{info['target_portal']}/"
               f"{info['target_iqn']}/{info['target_lun']}")
        # From hosta's network namespace, as a compute host would log in.
        return subprocess.run(["ip", "netns", "exec", "af-hosta", "iscsi-inq", url],
                              capture_output=True, text=True, timeout=30)

    good = inq(password)
    assert good.returncode == 0, "login with Cinder's CHAP credentials failed"
    assert "DIRECT_ACCESS" in good.stdout
    bad = inq("x" * len(password) if password != "x" * len(password) else "y" * 16)
    assert bad.returncode != 0, "login with a wrong CHAP password succeeded"
    assert "Authentication failure" in bad.stdout + bad.stderr

    cinder.attachments.delete(att["id"])
    _wait_status(cinder, volume.id, "available")
    assert not _target_block(info["target_iqn"]), "export left after the last detach"


def test_extend_snapshot_clone_delete(lab_up, volume):
    """The file driver's other operations, checked on the backing files."""
    cinder = _cinder(service_role=True)
    files = manager.state_dir() / "cinder" / "files"
    src = files / f"volume-{volume.id}"
    stamp = os.urandom(4096)
    with open(src, "r+b") as f:
        f.seek(12345678)
        f.write(stamp)

    cinder.volumes.extend(volume.id, 2)
    assert _wait_status(cinder, volume.id, "available").size == 2
    assert src.stat().st_size == 2 << 30

    snap = cinder.volume_snapshots.create(volume.id)
    deadline = time.monotonic() + 30
    while (snap := cinder.volume_snapshots.get(snap.id)).status != "available":
        assert snap.status != "error" and time.monotonic() < deadline, snap.status
        time.sleep(0.1)
    made = [cinder.volumes.create(3, snapshot_id=snap.id),
            cinder.volumes.create(2, source_volid=volume.id)]
    try:
        for vol in made:
            vol = _wait_status(cinder, vol.id, "available")
            path = files / f"volume-{vol.id}"
            assert path.stat().st_size == vol.size << 30
            # Sparse: a few KiB written, so far less than a GiB allocated.
            assert path.stat().st_blocks * 512 < 64 << 20
            with open(path, "rb") as f:
                f.seek(12345678)
                assert f.read(len(stamp)) == stamp
    finally:
        for vol in made:
            cinder.volumes.delete(vol.id)
        cinder.volume_snapshots.delete(snap.id)
    gone = {f"volume-{v.id}" for v in made} | {f"snapshot-{snap.id}"}
    deadline = time.monotonic() + 30
    while left := gone & {p.name for p in files.iterdir()}:
        assert time.monotonic() < deadline, f"files not deleted: {sorted(left)}"
        time.sleep(0.2)


@pytest.mark.parametrize("host", sorted(manager.HOSTS))
def test_virsh_through_hosts_file_uri(lab_up, host):
    cp = _virsh(host, "list", "--all")
    assert "Name" in cp.stdout
    assert _virsh(host, "hostname").stdout.strip() == host


def test_hosts_file(lab_up):
    hosts = _hosts()
    # and the compute-node VMs' entries when the kernel tests brought them up
    expected = {**manager.HOSTS, **(layout.NODES if layout.kernel_nodes() else {})}
    assert set(hosts) == set(expected)
    for name, h in hosts.items():
        assert h["address"] == expected[name]
        assert h["ssh_user"] == "root" and h["ssh_port"] == 22
        assert Path(h["ssh_key"]).is_file()
        known = Path(h["known_hosts"]).read_text()
        assert h["address"] in known and name in known
        assert h["libvirt_uri"].startswith(f"qemu+ssh://root@{h['address']}/system")


@pytest.mark.parametrize("src,dst", [("hosta", "hostb"), ("hostb", "hosta")])
def test_ssh_between_hosts(lab_up, src, dst):
    cp = subprocess.run(_ssh_argv(src, "ssh", dst, "hostname"), capture_output=True,
                        text=True, timeout=30)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == dst


def test_host_key_checking_is_on(lab_up):
    with tempfile.NamedTemporaryFile("w", suffix="known_hosts") as empty:
        cp = subprocess.run(_ssh_argv("hosta", "true", known_hosts=empty.name),
                            capture_output=True, text=True, timeout=30)
    assert cp.returncode != 0
    assert "Host key verification failed" in cp.stderr


def test_hosts_have_own_identity(lab_up):
    for host in manager.HOSTS:
        out = subprocess.run(_ssh_argv(host, "cat", "/etc/iscsi/initiatorname.iscsi"),
                             capture_output=True, text=True, timeout=30).stdout
        assert f"InitiatorName={manager.initiator_name(host)}" in out
    caps = {re.search(r"<uuid>(.*)</uuid>", _virsh(h, "capabilities").stdout).group(1)
            for h in manager.HOSTS}
    assert len(caps) == len(manager.HOSTS), "both libvirtds report the same host uuid"


def test_live_migration_of_iscsi_backed_guest(lab_up, volume):
    """virsh migrate --live --p2p from hosta to hostb with a QEMU-native iSCSI disk."""
    cinder = _cinder(service_role=True)
    instance = str(uuid.uuid4())
    att_a = cinder.attachments.create(volume.id, _connector("hosta"), instance_id=instance)
    info = att_a["connection_info"]
    cinder.attachments.complete(att_a["id"])
    secret = str(uuid.uuid4())
    name = f"lab-mig-{instance[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        secret_xml = Path(tmp, "secret.xml")
        secret_xml.write_text(
            f"<secret ephemeral='no' private='yes'><uuid>{secret}</uuid>"
            f"<usage type='iscsi'><target>{volume.id}</target></usage></secret>")
        value = Path(tmp, "value")
        fd = os.open(value, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, info["auth_password"].encode())
        os.close(fd)
        for host in manager.HOSTS:
            _virsh(host, "secret-define", str(secret_xml))
            _virsh(host, "secret-set-value", secret, "--file", str(value), "--plain")
        host_addr, port = info["target_portal"].rsplit(":", 1)
        dom_xml = Path(tmp, "domain.xml")
        dom_xml.write_text(f"""<domain type='qemu'>
  <name>{name}</name><uuid>{instance}</uuid>
  <memory unit='MiB'>64</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='none'/>
      <source protocol='iscsi' name='{info["target_iqn"]}/{info["target_lun"]}'>
        <host name='{host_addr}' port='{port}'/>
        <auth username='{info["auth_username"]}'><secret type='iscsi' usage='{volume.id}'/></auth>
        <initiator><iqn name='{manager.initiator_name("hosta")}'/></initiator>
      </source>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>
""")
        try:
            _virsh("hosta", "define", str(dom_xml))
            _virsh("hosta", "start", name)
            nexus = _target_block(info["target_iqn"])
            assert f"Initiator: {manager.initiator_name('hosta')}" in nexus
            assert f"IP Address: {manager.HOSTS['hosta']}" in nexus

            att_b = cinder.attachments.create(volume.id, _connector("hostb"),
                                              instance_id=instance)
            assert att_b["connection_info"]["target_iqn"] == info["target_iqn"]
            _virsh("hosta", "migrate", "--live", "--p2p", "--persistent", "--undefinesource",
                   name, "qemu+ssh://root@hostb/system")
            assert _virsh("hostb", "domstate", name).stdout.strip() == "running"
            assert name not in _virsh("hosta", "list", "--all", "--name").stdout
            nexus = _target_block(info["target_iqn"])
            assert f"IP Address: {manager.HOSTS['hostb']}" in nexus
            assert f"IP Address: {manager.HOSTS['hosta']}" not in nexus
            cinder.attachments.delete(att_a["id"])
            cinder.attachments.complete(att_b["id"])
        finally:
            for host in manager.HOSTS:
                _virsh(host, "destroy", name, check=False)
                _virsh(host, "undefine", name, check=False)
                _virsh(host, "secret-undefine", secret, check=False)


def test_second_up_is_idempotent(lab_up):
    before = manager.status()
    lines: list[str] = []
    after = manager.up(echo=lines.append)
    assert after["state"] == "up"
    assert not any("install" in l for l in lines), lines
    for name, comp in before["components"].items():
        if "pid" in comp:
            assert after["components"][name]["pid"] == comp["pid"], name
    for host in manager.HOSTS:
        for part in HOST_PARTS:
            assert after["components"][host][part]["pid"] == \
                before["components"][host][part]["pid"], (host, part)


def test_lab_commands(lab_up):
    """`attachflow lab status` and `attachflow lab env`, as typed by a user."""
    import json
    cp = subprocess.run(["attachflow", "lab", "status", "-f", "json"], capture_output=True,
                        text=True, timeout=60)
    assert cp.returncode == 0, cp.stderr
    st = json.loads(cp.stdout)
    assert st["state"] == "up"
    assert st["components"]["cinder-volume"]["service"] == "up"
    cp = subprocess.run(["attachflow", "lab", "status"], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    table = {line.split()[0]: line.split()[1] for line in cp.stdout.splitlines()[1:]
             if line.startswith("  ") and not line.startswith("    ")}
    assert cp.stdout.startswith("lab up")
    assert table["cinder-volume"] == "up" and table["hosta"] == "up"
    cp = subprocess.run(["attachflow", "lab", "env"], capture_output=True, text=True,
                        timeout=60)
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines() == manager.env_lines()


def test_env_lines_point_every_client_at_the_lab(lab_up):
    env = _lab_env()
    assert "OS_AUTH_TYPE" not in env
    assert env["OS_CLOUD"] == "attachflow-lab"
    assert env["ATTACHFLOW_SERVICE_CLOUD"] == "attachflow-lab-service"
    assert env["ATTACHFLOW_HOSTS"] == str(manager.hosts_file())
    assert env["ATTACHFLOW_VIRT_TYPE"] == "qemu"
    clouds = Path(env["OS_CLIENT_CONFIG_FILE"])
    assert clouds.stat().st_mode & 0o777 == 0o600
    # what guests boot is each host's own, in the hosts file: no variable for all hosts
    assert not [name for name in env if name.startswith("ATTACHFLOW_BOOT_")]
    from attachflow.hosts import load_hosts
    for host in manager.HOSTS:
        cfg = load_hosts(env)[host]
        assert Path(cfg.boot_kernel).is_file() and Path(cfg.boot_initrd).is_file(), host
    # No password in what `lab env` prints, nor in the environment it leaves: the cinder
    # CLI gets the member's from a root-only file, in a subshell.
    from attachflow.lab import keystone
    printed = "\n".join(manager.env_lines())
    for password in keystone.passwords().values():
        assert password not in printed
    assert not any(name in env for name in ("OS_PASSWORD", "OS_USERNAME", "OS_AUTH_TYPE"))
    assert keystone.openrc_path().stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("command", [
    "openstack volume service list -f value -c Binary -c State --os-cloud attachflow-lab-admin",
    "openstack volume create --size 1 envcheck -f value -c id",
    "cinder list",
    "attachflow list --host hosta -f json",
])
def test_clients_work_with_nothing_but_lab_env(lab_up, command):
    """What a user types after `eval "$(attachflow lab env)"`, in a clean shell; each
    answer checked against what the service itself says."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    cinder = _cinder()
    listed_one = None
    if command == "cinder list":  # a volume the listing must show
        listed_one = _wait_status(cinder, cinder.volumes.create(1, name="envlist").id,
                                  "available")
    try:
        cp = subprocess.run(["bash", "-c", "\n".join(manager.env_lines()) + "\n" + command],
                            capture_output=True, text=True, env=env, timeout=120)
        assert cp.returncode == 0, cp.stderr
        _check_listing(cinder, command, cp.stdout)
    finally:
        if listed_one is not None:
            cinder.volumes.delete(listed_one.id)


def _check_listing(cinder, command: str, out: str) -> None:
    if command == "cinder list":
        # every volume of the member's project, by id and name, as Cinder's API has it
        volumes = {v.id: v.name for v in cinder.volumes.list()}
        rows = [line.split("|") for line in out.splitlines()
                if line.startswith("| ") and not line.startswith("| ID ")]
        assert {row[1].strip(): row[3].strip() for row in rows} == volumes, out
        assert "envlist" in volumes.values()
    elif command.startswith("attachflow list"):
        # the guests on hosta and their disks with a volume's serial, as libvirt has them
        import json
        import libvirt
        from attachflow.hosts import load_host
        from story import read_disk
        conn = libvirt.open(load_host("hosta").libvirt_uri)
        try:
            volumes = {v.id for v in cinder.volumes.list()}
            expected = {(d.name(), serial) for d in conn.listAllDomains()
                        for serial in volumes if read_disk(d.XMLDesc(0), serial)}
        finally:
            conn.close()
        assert {(r["domain"], r["volume_id"]) for r in json.loads(out)} == expected, out
    elif command.startswith("openstack volume service"):
        assert "cinder-volume up" in out, out
    elif command.startswith("openstack volume create"):
        vid = out.strip()
        assert cinder.volumes.get(vid).name == "envcheck"
        cinder.volumes.delete(vid)
