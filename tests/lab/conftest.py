"""Fixtures for tests on the real lab: real Cinder, tgtd, libvirtd/QEMU and sshd.

The lab is brought up once per test session (``attachflow lab up`` is idempotent) and
its environment applied, so the tests run the ``attachflow`` command exactly as a user
would after ``eval "$(attachflow lab env)"``. The checks look where a user would look:
Cinder's volume and attachment records, the domains' live and persistent XML on each
host, tgtd's target list (accounts, connected initiators, backing files), libvirt secrets.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

import secrets_seen

pytestmark = pytest.mark.lab

HOSTS = ("hosta", "hostb")


def pytest_terminal_summary(terminalreporter):
    """What the crash sweeps (test_crash_recovery) killed at."""
    import sys
    crash = sys.modules.get("test_crash_recovery")
    for sweep in getattr(crash, "SWEEPS", []):
        terminalreporter.write_line(f"crash sweep, {sweep.summary()}")
    kills = getattr(crash, "RANDOM_KILLS", [])
    if kills:
        terminalreporter.write_line(f"random kills, at boundaries: {sorted(kills)}")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/lab/" in str(item.fspath):
            item.add_marker(pytest.mark.lab)
    # The compute-node VMs, once up, make every later `lab up` probe them under TCG:
    # their tests run after the others, the one that brings them up from a pip-installed
    # attachflow first (it needs a lab without them); then the sweep for secrets left
    # behind; last, the up/down cycles, which take the lab down.
    def rank(item) -> int:
        name = item.fspath.basename
        if item.get_closest_marker("kernel"):
            return 1 if name == "test_installed_lab.py" else 2
        return {"test_secrets_left.py": 3, "test_up_down_cycles.py": 4}.get(name, 0)
    items.sort(key=rank)


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (they start Cinder, tgtd, libvirtd, sshd)")
    import attachflow.lab as manager
    manager.up(echo=lambda line: print(line, flush=True))
    saved = dict(os.environ)
    from labenv import evaluated
    applied = evaluated(manager.env_lines(), base=dict(os.environ))
    os.environ.clear()
    os.environ.update(applied)
    yield Lab(manager)
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _secrets_gathered(request):
    """After each lab test: the secrets its lab used, for test_secrets_left."""
    yield
    if "lab" in request.fixturenames:
        import attachflow.lab as manager
        secrets_seen.gather(manager.state_dir())


class Lab:
    def __init__(self, manager):
        self.manager = manager
        self.state = manager.state_dir()
        self._cinder = None
        self._conns = {}

    # -- the attachflow command, as a user runs it -------------------------------------------
    def af(self, *args: str, expect: int | None = 0,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        proc = subprocess.run(["attachflow", *args], capture_output=True, text=True,
                              timeout=600, env=env)
        secrets_seen.OUTPUTS.extend((proc.stdout, proc.stderr))
        if expect is not None:
            assert proc.returncode == expect, (args, proc.returncode, proc.stdout,
                                               proc.stderr)
        return proc

    def af_json(self, *args: str) -> dict:
        return json.loads(self.af(*args, "-f", "json").stdout)

    # -- Cinder, through python-cinderclient directly ---------------------------------------
    @property
    def cinder(self):
        if self._cinder is None:
            from cinderclient import client
            from attachflow.identity import make_session
            sess, _ = make_session()
            self._cinder = client.Client("3.71", session=sess)
        return self._cinder

    def create_volume(self, size: int = 1, name: str = "e2e") -> str:
        vol = self.cinder.volumes.create(size, name=name)
        self.wait_volume(vol.id, "available")
        return vol.id

    def wait_volume(self, volume_id: str, status: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            vol = self.cinder.volumes.get(volume_id)
            if vol.status == status:
                return vol
            assert vol.status not in ("error", "error_deleting"), vol.status
            assert time.monotonic() < deadline, f"{volume_id} stuck in {vol.status}"
            time.sleep(0.2)

    def volume(self, volume_id: str):
        return self.cinder.volumes.get(volume_id)

    def attachments(self, volume_id: str) -> list[dict]:
        return list(self.volume(volume_id).attachments)

    def delete_volume(self, volume_id: str) -> None:
        try:
            self.cinder.volumes.delete(volume_id)
        except Exception:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.cinder.volumes.get(volume_id)
            except Exception:
                return
            time.sleep(0.2)

    # -- libvirt on each host -------------------------------------------------------------
    def uri(self, host: str) -> str:
        from attachflow.hosts import load_host
        return load_host(host).libvirt_uri

    def conn(self, host: str):
        if host not in self._conns:
            import libvirt
            self._conns[host] = libvirt.open(self.uri(host))
        return self._conns[host]

    def domains(self, host: str) -> list[str]:
        return [d.name() for d in self.conn(host).listAllDomains()]

    def domain_xml(self, host: str, name: str, inactive: bool = False) -> str:
        import libvirt
        dom = self.conn(host).lookupByName(name)
        return dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)

    def disk(self, host: str, name: str, serial: str, inactive: bool = False):
        """The disk with ``serial`` in the domain's live (or persistent) XML, read with a
        plain XML parser (``story.read_disk``), not attachflow's."""
        from story import read_disk
        return read_disk(self.domain_xml(host, name, inactive), serial)

    def secrets(self, host: str) -> list[str]:
        return [s.usageID() for s in self.conn(host).listAllSecrets()]

    def destroy_domain(self, host: str, name: str) -> None:
        import libvirt
        try:
            dom = self.conn(host).lookupByName(name)
        except libvirt.libvirtError:
            return
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()

    def console(self, host: str, name: str) -> str:
        path = self.host_path(host, f"/var/log/libvirt/qemu/{name}-console.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def qemu_log(self, host: str, name: str) -> str:
        path = self.host_path(host, f"/var/log/libvirt/qemu/{name}.log")
        return path.read_text(errors="replace") if path.exists() else ""

    def log_after(self, host: str, name: str, before: str, wanted: str, count: int = 1,
                  timeout: float = 15) -> str:
        """What QEMU logged for ``name`` since ``before``, once it holds ``count`` lines
        with ``wanted`` (qemu-io reports on QEMU's stderr, which virtlogd writes out a
        moment after the monitor command returns)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.qemu_log(host, name)[len(before):]
            if log.count(wanted) >= count or time.monotonic() > deadline:
                return log
            time.sleep(0.1)

    def host_path(self, host: str, path: str) -> Path:
        """A file of a lab host, seen from the root namespace."""
        for inside, outside in (("/var/log/libvirt/", "var-log-libvirt/"),
                                ("/var/lib/libvirt/", "var-lib-libvirt/"),
                                ("/etc/libvirt/", "etc-libvirt/")):
            if path.startswith(inside):
                return self.state / "hosts" / host / outside / path[len(inside):]
        return Path(path)

    def wait_guest_ready(self, host: str, name: str, timeout: float = 180) -> None:
        from attachflow.lab.guest import READY_MARKER
        deadline = time.monotonic() + timeout
        while READY_MARKER not in self.console(host, name):
            assert time.monotonic() < deadline, f"guest {name} on {host} did not boot"
            time.sleep(0.5)

    def qemu_io(self, host: str, name: str, serial: str, command: str) -> None:
        """Run qemu-io on the guest's own block backend of the disk with ``serial``."""
        import libvirt_qemu
        disk = self.disk(host, name, serial)
        dom = self.conn(host).lookupByName(name)
        libvirt_qemu.qemuMonitorCommand(
            dom, f'qemu-io -d /machine/peripheral/{disk.alias}/virtio-backend "{command}"',
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)

    # -- tgtd -----------------------------------------------------------------------------
    def targets(self) -> dict[str, dict]:
        from attachflow.lab.tgtd import targets
        return targets()

    def target_of(self, volume_id: str) -> dict | None:
        for iqn, target in self.targets().items():
            if iqn.endswith(volume_id):
                return target
        return None

    def initiators_of(self, volume_id: str) -> list[str]:
        target = self.target_of(volume_id)
        return target["initiators"] if target else []

    @contextlib.contextmanager
    def chap_password_changed(self, username: str):
        """Give the target's CHAP account another password behind Cinder's back.

        tgt-admin binds an account that already exists instead of re-creating it, so the
        volume's next export carries the wrong password. Afterwards the account is
        removed, and the next export creates it again from Cinder's credentials."""
        def tgtadm(*args):
            subprocess.run(["tgtadm", "--lld", "iscsi", "--mode", "account", *args],
                           capture_output=True, check=False)

        tgtadm("--op", "delete", "--user", username)
        tgtadm("--op", "new", "--user", username, "--password", "wrong-pass-12345")
        try:
            yield
        finally:
            tgtadm("--op", "delete", "--user", username)

    @contextlib.contextmanager
    def account_password(self, password: str, username: str):
        """Change a bound CHAP account's password on the live target; sessions already
        logged in stay up, new logins need the new password. Restored from Cinder's own
        target file afterwards."""
        bound = [(iqn, t) for iqn, t in self.targets().items() if username in t["accounts"]]
        original = None
        for conf in (self.state / "cinder" / "volumes").glob("*"):
            for line in conf.read_text().splitlines():
                parts = line.split()
                if parts[:2] == ["incominguser", username]:
                    original = parts[2]
        assert original, f"no Cinder target file names {username}"

        def reset(pw):
            for _iqn, target in bound:
                self._tgtadm("account", "--op", "unbind", "--tid", target["tid"],
                             "--user", username)
            self._tgtadm("account", "--op", "delete", "--user", username)
            self._tgtadm("account", "--op", "new", "--user", username, "--password", pw)
            for _iqn, target in bound:
                self._tgtadm("account", "--op", "bind", "--tid", target["tid"],
                             "--user", username)

        reset(password)
        try:
            yield
        finally:
            reset(original)

    @staticmethod
    def _tgtadm(mode: str, *args: str) -> None:
        subprocess.run(["tgtadm", "--lld", "iscsi", "--mode", mode, *args],
                       capture_output=True, check=False)

    # -- breaking a host on purpose --------------------------------------------------------
    def host_up(self, host: str) -> bool:
        return self.manager.status()["components"][host]["libvirtd"]["state"] == "up"

    @contextlib.contextmanager
    def stopped(self, host: str, daemon: str):
        """Stop one daemon of a lab host, as an operator would with supervisorctl (a
        daemon killed behind supervisord's back is restarted); ``up`` starts it again
        afterwards."""
        status = self.manager.status()
        pid = status["components"][host][daemon]["pid"]
        assert pid, f"{daemon} on {host} is not running"
        from attachflow.lab.layout import VENV
        subprocess.run([str(VENV / "bin" / "supervisorctl"), "-c",
                        status["supervisor"]["config"], "stop", f"{host}-{daemon}"],
                       check=True, capture_output=True, timeout=60)
        assert not Path(f"/proc/{pid}").exists(), f"{daemon} on {host} still runs"
        try:
            yield
        finally:
            self._conns.pop(host, None)
            self.manager.up(echo=lambda _line: None)

    def kill_qemu(self, host: str, name: str) -> None:
        """Kill the QEMU process of domain ``name`` that runs inside ``host``."""
        pids = subprocess.run(["ip", "netns", "pids", f"af-{host}"], capture_output=True,
                              text=True, check=True).stdout.split()
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and b"qemu-system" in cmdline[0] and \
                    any(arg.startswith(f"guest={name},".encode()) for arg in cmdline):
                os.kill(int(pid), 9)
                return
        raise AssertionError(f"no QEMU of {name} on {host}")

    def volume_file(self, volume_id: str) -> Path:
        """The file the lab's Cinder backend keeps the volume in (tgtd exports it)."""
        path = self.state / "cinder" / "files" / f"volume-{volume_id}"
        assert path.is_file(), path
        return path

    def backing_file(self, volume_id: str) -> Path:
        target = self.target_of(volume_id)
        assert target and target["backing"], f"no exported LUN for {volume_id}"
        return Path(target["backing"][-1])


@pytest.fixture
def cleanup(lab):
    """Volumes and domains a test creates, removed afterwards whatever happened."""
    made = {"volumes": [], "domains": []}
    yield made
    for host, name in made["domains"]:
        lab.destroy_domain(host, name)
    for volume_id in made["volumes"]:
        for att in lab.attachments(volume_id):
            try:
                lab.cinder.attachments.delete(att["attachment_id"])
            except Exception:
                pass
        lab.delete_volume(volume_id)
