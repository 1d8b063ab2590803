"""One-machine lab: real Cinder, tgtd, and two libvirt/QEMU compute hosts.

Layout
------
* The root network namespace is the storage host: bridge ``afbr0`` with
  198.18.0.1/24, tgtd (iSCSI portal on that address), MariaDB and RabbitMQ
  (private instances, own sockets/ports/dirs), cinder-api/-scheduler/-volume
  from a venv under /opt/attachflow-lab.
* ``hosta`` and ``hostb`` each get a network namespace (``af-hosta``, veth into
  the bridge) plus a mount and UTS namespace held by a long-lived process.
  Inside: tmpfs /run, private /etc/libvirt, /var/lib/libvirt, /var/log/libvirt,
  /var/cache/libvirt, /root/.ssh, /etc/hosts and /etc/iscsi/initiatorname.iscsi;
  virtlogd, libvirtd and sshd.
* Everything the lab writes lives under the state dir (``ATTACHFLOW_LAB_DIR``,
  default /var/lib/attachflow-lab), except: the tgt include file
  /etc/tgt/conf.d/attachflow-lab.conf (tgt-admin only reads targets.conf),
  /run/netns (handles and ip's bind mount), /run/tgtd, and mount points that
  did not exist.  ``down`` removes all of these.  Installation (Debian
  packages, the kvm/libvirt-qemu accounts libvirtd insists on, the Cinder
  venv) stays.
* Names, addresses and ports are fixed: one lab per machine.

Every process the lab starts carries ``ATTACHFLOW_LAB_TAG=<state dir>`` in its
environment, so ``down`` finds daemons that fork away from their parent
(epmd, privsep helpers) even after a half-finished ``up``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable, Iterable

__all__ = ["LabError", "up", "down", "status", "env_lines", "state_dir",
           "hosts_file", "HOSTS"]


class LabError(RuntimeError):
    """The lab could not be brought up, inspected or torn down."""


# ---------------------------------------------------------------------------
# Fixed layout
# ---------------------------------------------------------------------------

INSTALL_DIR = Path("/opt/attachflow-lab")
VENV = INSTALL_DIR / "cinder-venv"
LOCK_FILE = INSTALL_DIR / "lab.lock"

BRIDGE = "afbr0"
STORAGE_IP = "198.18.0.1"
PREFIX_LEN = 24
HOSTS = {"hosta": "198.18.0.11", "hostb": "198.18.0.12"}
NETNS_PREFIX = "af-"
VETH_PREFIX = "afv-"

ISCSI_PORT = 3260
CINDER_HOST = "attachflow-lab"
CINDER_BACKEND = "lab"
CINDER_LISTEN = "127.0.0.1"
CINDER_PORT = 8776
RABBIT_PORT = 5682      # off the system default 5672 so both can coexist
RABBIT_DIST_PORT = 25682
EPMD_PORT = 4379
RABBIT_NODE = "attachflow-lab@localhost"

LAB_USER_ID = "attachflow"
LAB_PROJECT_ID = "attachflow"
VOLUME_API_VERSION = "3.71"  # python-cinderclient 9.x maximum; attachments need >=3.27

NETNS_DIR = Path("/run/netns")
INITIATOR_FILE = Path("/etc/iscsi/initiatorname.iscsi")
TGT_RUN_DIR = Path("/run/tgtd")
TGT_INCLUDE = Path("/etc/tgt/conf.d/attachflow-lab.conf")
TAG_VAR = "ATTACHFLOW_LAB_TAG"

APT_PACKAGES = [
    "libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",
    "qemu-system-x86", "qemu-block-extra", "qemu-utils", "tgt",
    "libiscsi-bin", "open-iscsi", "rabbitmq-server", "mariadb-server",
    "openssh-server", "openssh-client", "iproute2", "netcat-openbsd",
    "util-linux",
]
PIP_PACKAGES = ["cinder", "python-cinderclient", "PyMySQL"]

# Directories that must exist in the root mount namespace to serve as bind
# mount points inside the hosts; created on demand and removed by down().
MOUNT_POINTS = ["/etc/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
                "/var/cache/libvirt", "/root/.ssh"]

UP_TIMEOUT = 90.0


def state_dir() -> Path:
    return Path(os.environ.get("ATTACHFLOW_LAB_DIR", "/var/lib/attachflow-lab")).absolute()


def hosts_file() -> Path:
    return state_dir() / "hosts.toml"


def initiator_name(host: str) -> str:
    """The iSCSI initiator name os-brick finds on a lab host."""
    return f"iqn.2004-10.org.attachflow-lab:{host}"


def _remote_command() -> str:
    # The hosts share this machine's file system but not its shell set-up
    # (PATH from pyenv, virtualenvs), so name the interpreter and the code
    # explicitly for the `attachflow host-call` runs over ssh.
    pkg_parent = Path(__file__).resolve().parents[2]
    return shlex.join(["env", f"PYTHONPATH={pkg_parent}", sys.executable, "-m",
                       "attachflow.cli"])


def _p(*parts: str) -> Path:
    return state_dir().joinpath(*parts)


def _cinder_endpoint() -> str:
    return f"http://{CINDER_LISTEN}:{CINDER_PORT}/v3"


def _libvirt_uri(host: str) -> str:
    wrapper = urllib.parse.quote(str(_p("ssh", "ssh")), safe="/")
    return f"qemu+ssh://root@{HOSTS[host]}/system?command={wrapper}&no_tty=1"


# ---------------------------------------------------------------------------
# Small process helpers
# ---------------------------------------------------------------------------

def _tail(text: str | bytes | None, n: int = 1) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
    return " | ".join(lines[-n:])


def _run(argv: list[str], *, timeout: float = 120, env: dict | None = None,
         check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            env=env, input=input,
                            stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise LabError(f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise LabError(f"{shlex.join(argv[:4])}: no answer within {timeout:.0f}s") from None
    if check and cp.returncode != 0:
        detail = _tail(cp.stderr) or _tail(cp.stdout)
        raise LabError(f"{shlex.join(argv[:4])} failed (exit {cp.returncode}): {detail}")
    return cp


def _tagged_env(extra: dict | None = None, *, base: dict | None = None) -> dict:
    env = dict(base if base is not None else os.environ)
    # Variables of the caller's shell that would point lab daemons elsewhere.
    for k in list(env):
        if k.startswith(("OS_", "RABBITMQ_", "PYTHON")) or k in ("VIRTUAL_ENV",):
            env.pop(k)
    env[TAG_VAR] = str(state_dir())
    env.setdefault("LANG", "C.UTF-8")
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if extra:
        env.update(extra)
    return env


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


# Popen objects of daemons started by this process, kept so they can be
# reaped instead of lingering as zombies while the caller lives on (pytest).
_CHILDREN: list[subprocess.Popen] = []


def _reap() -> None:
    for child in list(_CHILDREN):
        if child.poll() is not None:
            _CHILDREN.remove(child)


def _spawn(name: str, argv: list[str], *, env: dict, cwd: str = "/") -> int:
    log = _p("log", f"{name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)
        except FileNotFoundError:
            raise LabError(f"{name}: {argv[0]} not found") from None
    _CHILDREN.append(child)
    start = _proc_start_time(child.pid) or ""
    _p("run").mkdir(parents=True, exist_ok=True)
    _p("run", f"{name}.pid").write_text(f"{child.pid} {start}\n")
    return child.pid


def _pid_of(name: str) -> int | None:
    _reap()
    try:
        pid_s, start = _p("run", f"{name}.pid").read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_s)
    return pid if _proc_start_time(pid) == start else None


def _wait_for(what: str, probe: Callable[[], object], timeout: float,
              interval: float = 0.2, dead: Callable[[], str | None] | None = None):
    deadline = time.monotonic() + timeout
    last_err = ""
    while True:
        try:
            result = probe()
            if result:
                return result
        except LabError as e:
            last_err = str(e)
        except (OSError, ValueError) as e:
            last_err = str(e)
        if dead is not None:
            why = dead()
            if why:
                raise LabError(f"{what}: {why}")
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not ready after {timeout:.0f}s"
                           + (f" ({last_err})" if last_err else ""))
        time.sleep(interval)


def _died(name: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if _pid_of(name) is None:
            return f"process exited; see {_p('log', name + '.log')}: " + \
                _tail(_read_tail(_p("log", name + ".log")))
        return None
    return check


def _read_tail(path: Path, size: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _port_open(host: str, port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@contextlib.contextmanager
def _lock():
    INSTALL_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _load_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


# ---------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------

def _apt_packages() -> list[str]:
    from attachflow.lab import guest
    return APT_PACKAGES + [p for p in guest.PACKAGES if p not in APT_PACKAGES]


def _missing_packages() -> list[str]:
    wanted = _apt_packages()
    cp = _run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *wanted],
              check=False)
    installed = {line.split()[0] for line in cp.stdout.splitlines()
                 if line.endswith(" installed")}
    return [p for p in wanted if p not in installed]


def _system_accounts(echo: Callable[[str], None]) -> None:
    # libvirtd resolves its compiled-in default QEMU user and group before it
    # reads qemu.conf (which says root), so they must exist; Debian creates
    # them in libvirt-daemon-system, which needs systemd and is not used here.
    if _run(["getent", "group", "kvm"], check=False).returncode != 0:
        echo("creating group kvm")
        _run(["groupadd", "-r", "kvm"])
    if _run(["getent", "group", "libvirt-qemu"], check=False).returncode != 0:
        echo("creating group libvirt-qemu")
        _run(["groupadd", "-r", "libvirt-qemu"])
    if _run(["getent", "passwd", "libvirt-qemu"], check=False).returncode != 0:
        echo("creating user libvirt-qemu")
        _run(["useradd", "-r", "-g", "kvm", "-d", "/var/lib/libvirt", "-s",
              "/usr/sbin/nologin", "libvirt-qemu"])


def _install(echo: Callable[[str], None]) -> None:
    missing = _missing_packages()
    if missing:
        echo(f"installing Debian packages: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        _run(["apt-get", "update", "-q"], env=env, timeout=600)
        # With recommends, as the lab was proven with: a slimmer set is untested.
        _run(["apt-get", "install", "-y", "-q", *missing], env=env, timeout=1800)
    _system_accounts(echo)
    ready = VENV / ".attachflow-lab-ready"
    if not ready.exists() or ready.read_text().split() != PIP_PACKAGES:
        echo(f"installing Cinder into {VENV} (pip, about a minute)")
        if not (VENV / "bin" / "python").exists():
            _run([sys.executable, "-m", "venv", str(VENV)], timeout=300)
        _run([str(VENV / "bin" / "pip"), "install", "-q", *PIP_PACKAGES], timeout=1800)
        ready.write_text(" ".join(PIP_PACKAGES) + "\n")


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------

def _netns_list() -> list[str]:
    cp = _run(["ip", "netns", "list"], check=False)
    return [l.split()[0] for l in cp.stdout.splitlines() if l.strip()]


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", name], check=False).returncode == 0


def _is_mount_point(path: Path) -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == str(path):
            return True
    return False


def _release_netns_dir(problems: list[str]) -> None:
    created = _load_json(_p("created-netns.json"), {})
    if not NETNS_DIR.is_dir() or any(NETNS_DIR.iterdir()):
        return  # other namespaces live there: not the lab's to take away
    if created.get("mount") and _is_mount_point(NETNS_DIR):
        cp = _run(["umount", str(NETNS_DIR)], check=False)
        if cp.returncode != 0:
            problems.append(f"umount {NETNS_DIR}: {_tail(cp.stderr)}")
    if created.get("dir"):
        with contextlib.suppress(OSError):
            NETNS_DIR.rmdir()


def _network_up() -> None:
    if not _link_exists(BRIDGE):
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    addrs = _run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE]).stdout
    if f" {STORAGE_IP}/{PREFIX_LEN} " not in addrs:
        _run(["ip", "addr", "add", f"{STORAGE_IP}/{PREFIX_LEN}", "dev", BRIDGE])
    _run(["ip", "link", "set", BRIDGE, "up"])
    existing = set(_netns_list())
    if not any(n.startswith(NETNS_PREFIX) for n in existing):
        # `ip netns add` creates /run/netns and bind-mounts it onto itself
        # the first time; note that, so down() can take it back.
        created = _load_json(_p("created-netns.json"), {})
        created.setdefault("dir", not NETNS_DIR.exists())
        created.setdefault("mount", not _is_mount_point(NETNS_DIR))
        _write(_p("created-netns.json"), json.dumps(created))
    for host, addr in HOSTS.items():
        ns = NETNS_PREFIX + host
        veth = VETH_PREFIX + host
        if ns not in existing:
            _run(["ip", "netns", "add", ns])
        if not _link_exists(veth):
            _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
                  "netns", ns])
        _run(["ip", "link", "set", veth, "master", BRIDGE, "up"])
        inner = ["ip", "netns", "exec", ns]
        _run(inner + ["ip", "link", "set", "lo", "up"])
        _run(inner + ["ip", "link", "set", "eth0", "up"])
        addrs = _run(inner + ["ip", "-o", "-4", "addr", "show", "dev", "eth0"]).stdout
        if f" {addr}/{PREFIX_LEN} " not in addrs:
            _run(inner + ["ip", "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", "eth0"])


# ---------------------------------------------------------------------------
# tgtd
# ---------------------------------------------------------------------------

def _foreign(pattern: str) -> list[int]:
    """PIDs of processes named `pattern` that the lab did not start."""
    ours = set(_tagged_pids())
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if (d / "comm").read_text().strip() == pattern and int(d.name) not in ours:
                found.append(int(d.name))
        except OSError:
            continue
    return found


def _tgtd_up() -> None:
    if _pid_of("tgtd"):
        return
    others = _foreign("tgtd")
    if others:
        raise LabError(f"a tgtd not started by the lab is running (pid {others[0]}); "
                       "Cinder's tgtadm helper talks to the default tgtd control "
                       "socket, so stop it first")
    _note_created_dirs([TGT_RUN_DIR])
    _write(TGT_INCLUDE, f"include {_p('cinder', 'volumes')}/*\n")
    _p("cinder", "volumes").mkdir(parents=True, exist_ok=True)
    _spawn("tgtd", ["tgtd", "-f", "--iscsi", f"portal={STORAGE_IP}:{ISCSI_PORT}"],
           env=_tagged_env())
    _wait_for("tgtd", lambda: _run(["tgtadm", "--lld", "iscsi", "--mode", "target",
                                    "--op", "show"], check=False).returncode == 0,
              timeout=15, dead=_died("tgtd"))


# ---------------------------------------------------------------------------
# MariaDB
# ---------------------------------------------------------------------------

def _mysql_socket() -> Path:
    return _p("mysql", "mysqld.sock")


def _mysql_cli(sql: str) -> subprocess.CompletedProcess:
    return _run(["mariadb", "--no-defaults", "-S", str(_mysql_socket()), "-uroot",
                 "-N", "-e", sql], timeout=30)


def _mariadb_up() -> None:
    if _pid_of("mariadb"):
        return
    data = _p("mysql", "data")
    if not (data / "mysql").is_dir():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        _run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
              "--auth-root-authentication-method=normal", "--skip-test-db"], timeout=120)
    _spawn("mariadb", [
        "mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={_mysql_socket()}",
        f"--pid-file={_p('mysql', 'mysqld.pid')}", "--skip-networking", "--user=root",
        f"--log-error={_p('log', 'mariadb.err')}", "--skip-name-resolve",
        "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M",
        "--performance-schema=off", "--max-connections=300",
    ], env=_tagged_env())
    _wait_for("mariadb", lambda: _run(["mariadb-admin", "--no-defaults", "-S",
                                       str(_mysql_socket()), "-uroot", "ping"],
                                      check=False).returncode == 0,
              timeout=30, dead=_died("mariadb"))


# ---------------------------------------------------------------------------
# RabbitMQ
# ---------------------------------------------------------------------------

def _rabbit_env() -> dict:
    base = _p("rabbitmq")
    return _tagged_env({
        "HOME": str(base),  # the Erlang cookie lives in $HOME
        "RABBITMQ_NODENAME": RABBIT_NODE,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(RABBIT_PORT),
        "RABBITMQ_DIST_PORT": str(RABBIT_DIST_PORT),
        "ERL_EPMD_PORT": str(EPMD_PORT),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(_p("log", "rabbitmq")),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
    })


def _amqp_ready() -> bool:
    # The listener accepts TCP before the broker boots fully; a protocol
    # header answered with Connection.Start means it is really serving.
    with contextlib.closing(socket.create_connection(("127.0.0.1", RABBIT_PORT), 1)) as s:
        s.settimeout(2)
        s.sendall(b"AMQP\x00\x00\x09\x01")
        head = s.recv(7)
        return len(head) == 7 and head[0] == 1


def _rabbit_up() -> None:
    if _pid_of("rabbitmq"):
        return
    base = _p("rabbitmq")
    base.mkdir(parents=True, exist_ok=True)
    _write(base / "rabbitmq.conf",
           f"listeners.tcp.1 = 127.0.0.1:{RABBIT_PORT}\n"
           "loopback_users.guest = true\n"
           "vm_memory_high_watermark.absolute = 512MB\n"
           "disk_free_limit.absolute = 50MB\n")
    _write(base / "advanced.config", "[].\n")
    _write(base / "enabled_plugins", "[].\n")
    _write(base / "rabbitmq-env.conf", "")
    if _port_open("127.0.0.1", RABBIT_PORT):
        raise LabError(f"port 127.0.0.1:{RABBIT_PORT} is taken by a process not started by the lab")
    _spawn("rabbitmq", ["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=_rabbit_env(),
           cwd=str(base))
    _wait_for("rabbitmq", _amqp_ready, timeout=60, dead=_died("rabbitmq"))


# ---------------------------------------------------------------------------
# Cinder
# ---------------------------------------------------------------------------

CINDER_SERVICES = ["cinder-api", "cinder-scheduler", "cinder-volume"]


def _cinder_conf() -> str:
    st = state_dir()
    conf = st / "cinder" / "cinder.conf"
    helper = f"{VENV}/bin/privsep-helper --config-file {conf}"
    db = (f"mysql+pymysql://root@localhost/cinder?unix_socket={_mysql_socket()}"
          "&charset=utf8")
    return f"""\
[DEFAULT]
host = {CINDER_HOST}
my_ip = {STORAGE_IP}
state_path = {st}/cinder
log_dir = {st}/log
debug = False
auth_strategy = noauth
# Admit non-hex project ids such as the lab's "{LAB_PROJECT_ID}".
project_id_regex = [0-9a-zA-Z_\\-]+
transport_url = rabbit://guest:guest@127.0.0.1:{RABBIT_PORT}/
api_paste_config = {VENV}/etc/cinder/api-paste.ini
osapi_volume_listen = {CINDER_LISTEN}
osapi_volume_listen_port = {CINDER_PORT}
osapi_volume_workers = 1
enabled_backends = {CINDER_BACKEND}
report_interval = 5
periodic_interval = 20
service_down_time = 30
use_default_quota_class = False
quota_volumes = -1
quota_snapshots = -1
quota_gigabytes = -1
quota_backups = -1
quota_backup_gigabytes = -1
quota_groups = -1
quota_per_volume_gigabytes = -1
rpc_response_timeout = 60

[database]
connection = {db}
max_pool_size = 10
max_overflow = 20

[oslo_concurrency]
lock_path = {st}/cinder/lock

[coordination]
backend_url = file://{st}/cinder/coordination

[oslo_messaging_rabbit]
heartbeat_timeout_threshold = 0
# The services start while RabbitMQ is still booting; keep their reconnect
# attempts frequent so they join as soon as it listens.
rabbit_retry_interval = 1
rabbit_retry_backoff = 0
rabbit_interval_max = 1

[cinder_sys_admin]
helper_command = {helper}

[privsep_osbrick]
helper_command = {helper}

[{CINDER_BACKEND}]
volume_driver = attachflow_lab_driver.FileDriver
volume_backend_name = {CINDER_BACKEND}
lab_files_dir = {st}/cinder/files
target_helper = tgtadm
target_protocol = iscsi
target_ip_address = {STORAGE_IP}
target_port = {ISCSI_PORT}
volumes_dir = {st}/cinder/volumes
use_chap_auth = True
volume_clear = none
"""


def _cinder_env() -> dict:
    return _tagged_env({"PYTHONPATH": str(_p("cinder", "driver")), "HOME": str(_p("cinder"))})


def _cinder_prepare() -> None:
    cdir = _p("cinder")
    for sub in ("lock", "files", "volumes", "driver", "coordination"):
        (cdir / sub).mkdir(parents=True, exist_ok=True)
    src = Path(__file__).with_name("cinder_driver.py")
    shutil.copyfile(src, cdir / "driver" / "attachflow_lab_driver.py")
    _write(cdir / "cinder.conf", _cinder_conf(), 0o600)


def _cinder_db_sync() -> None:
    marker = _p("cinder", "db-synced")
    if marker.exists():
        return
    _mysql_cli("CREATE DATABASE IF NOT EXISTS cinder CHARACTER SET utf8")
    _run([str(VENV / "bin" / "cinder-manage"), "--config-file",
          str(_p("cinder", "cinder.conf")), "db", "sync"], env=_cinder_env(), timeout=300)
    marker.write_text("")


def _cinder_start() -> None:
    conf = str(_p("cinder", "cinder.conf"))
    for svc in CINDER_SERVICES:
        if _pid_of(svc):
            continue
        if svc == "cinder-api" and _port_open(CINDER_LISTEN, CINDER_PORT):
            raise LabError(f"port {CINDER_LISTEN}:{CINDER_PORT} is taken by a process "
                           "not started by the lab")
        _spawn(svc, [str(VENV / "bin" / svc), "--config-file", conf], env=_cinder_env())
        _p("run", f"{svc}.started").write_text(f"{time.time()}\n")


def _reported_since_start(svc: str, record: dict) -> bool:
    """Whether the os-services record was written by the running process.

    A record keeps saying "up" for service_down_time after its process died,
    so after a restart only a heartbeat newer than the start counts.  The
    database keeps whole seconds (rounded), hence the extra second.
    """
    try:
        started = float(_p("run", f"{svc}.started").read_text())
    except (OSError, ValueError):
        return True
    stamp = record.get("updated_at")
    if not stamp:
        return False
    when = datetime.datetime.fromisoformat(stamp.split(".")[0]).replace(
        tzinfo=datetime.timezone.utc).timestamp()
    return when >= started + 1


def _api(path: str, timeout: float = 5) -> dict:
    req = urllib.request.Request(
        f"{_cinder_endpoint()}/{LAB_PROJECT_ID}/{path}",
        headers={"X-Auth-Token": f"{LAB_USER_ID}:{LAB_PROJECT_ID}",
                 "Accept": "application/json",
                 "OpenStack-API-Version": "volume 3.0"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise LabError(f"cinder-api {path}: {e}") from None


def _os_services() -> list[dict]:
    return _api("os-services")["services"]


def _cinder_ready() -> bool:
    services = {(s["binary"], s["host"]): s for s in _os_services()}
    vol = services.get(("cinder-volume", f"{CINDER_HOST}@{CINDER_BACKEND}"))
    sch = services.get(("cinder-scheduler", CINDER_HOST))
    if not (vol and sch and vol["state"] == "up" and sch["state"] == "up"):
        return False
    if not (_reported_since_start("cinder-volume", vol)
            and _reported_since_start("cinder-scheduler", sch)):
        return False
    # cinder-volume reports "up" before the scheduler holds its capabilities;
    # until then every create fails with "No valid backend".
    pools = _api("scheduler-stats/get_pools")["pools"]
    return any(p["name"].startswith(f"{CINDER_HOST}@{CINDER_BACKEND}") for p in pools)


def _cinder_dead() -> str | None:
    for svc in CINDER_SERVICES:
        why = _died(svc)()
        if why:
            return f"{svc}: {why}"
    return None


# ---------------------------------------------------------------------------
# Compute hosts
# ---------------------------------------------------------------------------

def _host_dir(host: str) -> Path:
    return _p("hosts", host)


def _keygen(path: Path, comment: str) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def _pub(path: Path) -> str:
    return Path(str(path) + ".pub").read_text().strip()


def _ssh_material() -> None:
    """Keys, known_hosts and the wrapper for the root namespace and both hosts."""
    sdir = _p("ssh")
    sdir.mkdir(parents=True, exist_ok=True)
    os.chmod(sdir, 0o700)
    _keygen(sdir / "id_ed25519", "attachflow-lab")
    known = []
    for host, addr in HOSTS.items():
        hdir = _host_dir(host)
        _keygen(hdir / "ssh_host_ed25519_key", f"root@{host}")
        _keygen(hdir / "root-ssh" / "id_ed25519", f"root@{host}")
        host_key = " ".join(_pub(hdir / "ssh_host_ed25519_key").split()[:2])
        known.append(f"{host},{addr} {host_key}")
    known_text = "\n".join(known) + "\n"
    _write(sdir / "known_hosts", known_text)
    authorized = [_pub(sdir / "id_ed25519")] + [
        _pub(_host_dir(h) / "root-ssh" / "id_ed25519") for h in HOSTS]
    for host in HOSTS:
        rs = _host_dir(host) / "root-ssh"
        os.chmod(rs, 0o700)
        _write(rs / "authorized_keys", "\n".join(authorized) + "\n", 0o600)
        _write(rs / "known_hosts", known_text)
        _write(rs / "config",
               "Host *\n"
               "    User root\n"
               "    IdentityFile ~/.ssh/id_ed25519\n"
               "    IdentitiesOnly yes\n"
               "    StrictHostKeyChecking yes\n"
               "    UserKnownHostsFile ~/.ssh/known_hosts\n"
               "    GlobalKnownHostsFile /dev/null\n"
               "    BatchMode yes\n"
               "    ConnectTimeout 10\n", 0o600)
    # libvirt's ssh transport runs `command` in place of ssh; the wrapper adds
    # the lab's key and known_hosts so /root/.ssh of the machine stays as is,
    # with host key checking on.  Connection sharing saves the ssh handshake
    # (~0.3 s) on every libvirt connection after the first.
    mux = str(sdir / "cm-%C")
    mux_opts = (f"-o ControlMaster=auto -o ControlPath={shlex.quote(mux)} "
                "-o ControlPersist=30 ") if len(mux) + 40 < 100 else ""
    _write(sdir / "ssh",
           "#!/bin/sh\n"
           f"exec /usr/bin/ssh -F /dev/null -i {shlex.quote(str(sdir / 'id_ed25519'))} "
           "-o IdentitiesOnly=yes "
           f"-o UserKnownHostsFile={shlex.quote(str(sdir / 'known_hosts'))} "
           "-o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes "
           "-o BatchMode=yes -o ConnectTimeout=10 -o LogLevel=ERROR "
           f"{mux_opts}\"$@\"\n", 0o755)


def _host_files(host: str) -> None:
    hdir = _host_dir(host)
    addr = HOSTS[host]
    for sub in ("etc-libvirt", "var-lib-libvirt/qemu", "var-log-libvirt/qemu",
                "var-cache-libvirt", "log"):
        (hdir / sub).mkdir(parents=True, exist_ok=True)
    etc = hdir / "etc-libvirt"
    uuid_file = hdir / "host_uuid"
    if not uuid_file.exists():
        uuid_file.write_text(str(uuid.uuid4()))
    host_uuid = uuid_file.read_text().strip()
    if Path("/etc/libvirt").is_dir():
        for f in Path("/etc/libvirt").iterdir():
            if f.is_file() and not (etc / f.name).exists():
                shutil.copy2(f, etc / f.name)
    _write(etc / "libvirtd.conf",
           f'host_uuid = "{host_uuid}"\n'
           "listen_tls = 0\n"
           "listen_tcp = 0\n"
           'auth_unix_ro = "none"\n'
           'auth_unix_rw = "none"\n'
           'unix_sock_rw_perms = "0700"\n'
           'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n')
    _write(etc / "qemu.conf",
           'user = "root"\n'
           'group = "root"\n'
           'security_driver = "none"\n'
           "remember_owner = 0\n"
           "stdio_handler = \"logd\"\n")
    _write(etc / "virtlogd.conf", 'log_outputs = "3:file:/var/log/libvirt/virtlogd.log"\n')
    _write(etc / "libvirt.conf", 'uri_default = "qemu:///system"\n')
    _write(hdir / "hosts",
           "127.0.0.1\tlocalhost\n"
           f"{STORAGE_IP}\tstorage\n"
           + "".join(f"{a}\t{h}\n" for h, a in HOSTS.items()))
    # os-brick reads the initiator name from this file; two hosts sharing one
    # name would look like one initiator to the target and to Cinder.
    _write(hdir / "initiatorname.iscsi", f"InitiatorName={initiator_name(host)}\n")
    _write(hdir / "sshd_config",
           f"ListenAddress {addr}\n"
           "Port 22\n"
           f"HostKey {hdir / 'ssh_host_ed25519_key'}\n"
           "PidFile /run/sshd.pid\n"
           "PermitRootLogin prohibit-password\n"
           "PubkeyAuthentication yes\n"
           "PasswordAuthentication no\n"
           "KbdInteractiveAuthentication no\n"
           "UsePAM no\n"
           "AuthorizedKeysFile .ssh/authorized_keys\n"
           "PrintMotd no\n"
           "UseDNS no\n"
           "MaxStartups 100:30:200\n"
           "AcceptEnv LANG\n"
           "Subsystem sftp /usr/lib/openssh/sftp-server\n")
    # Runs inside the host's fresh mount namespace (private propagation, so
    # none of this is visible in the root namespace).
    _write(hdir / "setup.sh",
           "set -e\n"
           f"H={shlex.quote(str(hdir))}\n"
           "mount -t tmpfs -o mode=0755 lab-run /run\n"
           "mkdir -p /run/sshd /run/libvirt /run/lock\n"
           "chmod 0755 /run/sshd\n"
           'mount --bind "$H/etc-libvirt" /etc/libvirt\n'
           'mount --bind "$H/var-lib-libvirt" /var/lib/libvirt\n'
           'mount --bind "$H/var-log-libvirt" /var/log/libvirt\n'
           'mount --bind "$H/var-cache-libvirt" /var/cache/libvirt\n'
           'mount --bind "$H/root-ssh" /root/.ssh\n'
           'mount --bind "$H/hosts" /etc/hosts\n'
           + ('mount --bind "$H/initiatorname.iscsi" /etc/iscsi/initiatorname.iscsi\n'
              if INITIATOR_FILE.exists() else "") +
           f"hostname {host}\n", 0o755)


_created_lock = threading.Lock()


def _note_created_dirs(paths: Iterable[Path], make: bool = False) -> None:
    """Record which of `paths` do not exist yet, so down() removes them again.

    The topmost missing ancestor is recorded, which is exactly what the lab
    adds to the machine's file system.  With `make`, the dirs are created.
    """
    with _created_lock:
        created = _load_json(_p("created-dirs.json"), [])
        for path in paths:
            if path.exists():
                continue
            top = path
            while not top.parent.exists():
                top = top.parent
            if make:
                path.mkdir(parents=True)
            if str(top) not in created:
                created.append(str(top))
        _write(_p("created-dirs.json"), json.dumps(created))


def _ensure_mount_points() -> None:
    _note_created_dirs([Path(mp) for mp in MOUNT_POINTS], make=True)


def _nsenter(host: str) -> list[str]:
    pid = _pid_of(f"{host}-ns")
    if not pid:
        raise LabError(f"{host}: namespace holder is not running")
    return ["nsenter", "-t", str(pid), "-m", "-u", "-n", "--"]


def _host_env() -> dict:
    return _tagged_env({"HOME": "/root", "USER": "root", "LOGNAME": "root"},
                       base={"LANG": "C.UTF-8"})


def _host_up(host: str) -> None:
    hdir = _host_dir(host)
    holder = f"{host}-ns"
    if not _pid_of(holder):
        # A fresh holder means fresh mounts: stop whatever ran in the old ones.
        _kill_pids(_netns_pids(NETNS_PREFIX + host))
        pid = _spawn(holder, ["ip", "netns", "exec", NETNS_PREFIX + host, "unshare",
                              "--mount", "--uts", "--propagation", "private",
                              "sleep", "infinity"], env=_host_env())
        own_mnt = os.readlink("/proc/self/ns/mnt")

        def unshared() -> bool:
            return (Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
                    and os.readlink(f"/proc/{pid}/ns/mnt") != own_mnt)
        _wait_for(f"{host} namespaces", unshared, timeout=10, interval=0.02,
                  dead=_died(holder))
        _run(_nsenter(host) + ["sh", str(hdir / "setup.sh")])
    enter = _nsenter(host)
    env = _host_env()
    if not _pid_of(f"{host}-virtlogd"):
        _spawn(f"{host}-virtlogd", enter + ["virtlogd"], env=env)
    if not _pid_of(f"{host}-libvirtd"):
        _spawn(f"{host}-libvirtd", enter + ["libvirtd"], env=env)
    if not _pid_of(f"{host}-sshd"):
        _spawn(f"{host}-sshd", enter + ["/usr/sbin/sshd", "-D", "-f",
                                        str(hdir / "sshd_config"), "-E",
                                        str(hdir / "log" / "sshd.log")], env=env)


def _ssh_cmd(host: str, *remote: str) -> list[str]:
    return [str(_p("ssh", "ssh")), f"root@{HOSTS[host]}", "--", *remote]


def _virsh_ok(host: str, timeout: float = 20) -> bool:
    cp = _run(["virsh", "-c", _libvirt_uri(host), "list", "--all"], check=False,
              timeout=timeout)
    if cp.returncode != 0:
        raise LabError(f"virsh -c {_libvirt_uri(host)} list: {_tail(cp.stderr)}")
    return True


def _host_ready(host: str) -> None:
    dead = lambda: (_died(f"{host}-libvirtd")() or _died(f"{host}-sshd")()
                    or _died(f"{host}-virtlogd")())
    _wait_for(f"{host} sshd", lambda: _port_open(HOSTS[host], 22), timeout=20,
              interval=0.05, dead=dead)
    _wait_for(f"{host} libvirtd", lambda: _virsh_ok(host), timeout=30, dead=dead)
    # libvirtd probes QEMU's capabilities on first need (seconds of TCG
    # start-ups); pay that here rather than in the first domain start.
    _run(["virsh", "-c", _libvirt_uri(host), "capabilities"], timeout=120)


def _peer_ssh_ok(src: str, dst: str) -> bool:
    cp = _run(_ssh_cmd(src, "ssh", dst, "hostname"), check=False, timeout=30)
    if cp.returncode != 0 or cp.stdout.strip() != dst:
        raise LabError(f"ssh {src} -> {dst}: {_tail(cp.stderr) or cp.stdout.strip()}")
    return True


def _guest_dir() -> Path:
    return _p("guest")


def _guest_build() -> None:
    """Kernel and initramfs the lab's guests boot (see guest.py)."""
    from attachflow.lab import guest
    dest = _guest_dir()
    if (dest / "vmlinuz").exists() and (dest / "initrd.img").exists():
        return
    try:
        guest.build(dest)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
        raise LabError(f"guest image: {e}") from None


def _write_hosts_toml() -> None:
    sdir = _p("ssh")
    lines = ["# attachflow lab compute hosts; written by `attachflow lab up`.", ""]
    for host, addr in HOSTS.items():
        lines += [
            f"[hosts.{host}]",
            f"address = {json.dumps(addr)}",
            'ssh_user = "root"',
            "ssh_port = 22",
            f"ssh_key = {json.dumps(str(sdir / 'id_ed25519'))}",
            f"known_hosts = {json.dumps(str(sdir / 'known_hosts'))}",
            f"libvirt_uri = {json.dumps(_libvirt_uri(host))}",
            f"remote_command = {json.dumps(_remote_command())}",
            "",
        ]
    _write(hosts_file(), "\n".join(lines))


# ---------------------------------------------------------------------------
# Teardown helpers
# ---------------------------------------------------------------------------

def _netns_pids(ns: str) -> list[int]:
    cp = _run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


def _tagged_pids() -> list[int]:
    tag = f"{TAG_VAR}={state_dir()}".encode()
    me = os.getpid()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if tag in env.split(b"\0"):
            found.append(int(d.name))
    return found


def _alive(pid: int) -> bool:
    return _proc_start_time(pid) is not None


def _kill_pids(pids: Iterable[int], grace: float = 10.0) -> None:
    pids = {p for p in pids if p != os.getpid()}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not any(_alive(p) for p in pids):
            return
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        _reap()
        time.sleep(0.05)
    _reap()


def _mux_pids() -> list[int]:
    """ssh connection-sharing masters of the wrapper (they carry no tag)."""
    marker = f"ssh: {_p('ssh', 'cm-')}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "cmdline").read_bytes().startswith(marker):
                    found.append(int(d.name))
    return found


def _lab_pids() -> set[int]:
    pids: set[int] = set(_tagged_pids()) | set(_mux_pids())
    for ns in _netns_list():
        if ns.startswith(NETNS_PREFIX):
            pids.update(_netns_pids(ns))
    run = _p("run")
    if run.is_dir():
        for f in run.glob("*.pid"):
            pid = _pid_of(f.stem)
            if pid:
                pids.add(pid)
    return pids


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------

def up(echo: Callable[[str], None] = print) -> dict:
    """Install what is missing, start the lab, wait until it is usable."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, tgtd, mounts)")
    t0 = time.monotonic()
    with _lock():
        fresh = not state_dir().exists() or not _lab_pids()
        try:
            _install(echo)
            _up(echo)
        except BaseException as e:
            if fresh:
                echo(f"lab up failed: {e}; tearing down")
                with contextlib.suppress(Exception):
                    _down(lambda _m: None)
            else:
                # The lab ran before this call: leave the running parts (and
                # their volumes) alone; `lab down` removes everything.
                echo(f"lab up failed: {e}")
            if isinstance(e, LabError):
                raise
            if isinstance(e, Exception):
                raise LabError(f"lab up failed: {e}") from e
            raise
        elapsed = time.monotonic() - t0
        if fresh:
            _p("bring-up-seconds").write_text(f"{elapsed:.1f}\n")
    result = status()
    echo(f"lab up in {elapsed:.1f}s")
    return result


def _up(echo: Callable[[str], None]) -> None:
    st = state_dir()
    st.mkdir(parents=True, exist_ok=True)
    # Cinder's per-target tgt files hold CHAP passwords; everything here is
    # used by root only.
    os.chmod(st, 0o700)
    for sub in ("run", "log"):
        (st / sub).mkdir(exist_ok=True)
    echo(f"state dir {st}")
    _ensure_mount_points()
    _network_up()
    _ssh_material()
    for host in HOSTS:
        _host_files(host)
    _write_hosts_toml()
    _cinder_prepare()
    _guest_build()

    def storage() -> None:
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            mq = ex.submit(_rabbit_up)
            tg = ex.submit(_tgtd_up)
            _mariadb_up()
            _cinder_db_sync()
            # cinder-volume re-exports existing volumes in init_host.
            tg.result()
            echo("mariadb and tgtd up; starting cinder")
            # Cinder's start-up (imports, init_host) overlaps RabbitMQ's boot;
            # the services reconnect until the broker listens.
            _cinder_start()
            mq.result()
            echo("rabbitmq up")
        _wait_for("cinder-volume up and known to the scheduler", _cinder_ready,
                  timeout=UP_TIMEOUT, interval=0.3, dead=_cinder_dead)
        echo("cinder up")

    def compute(host: str) -> None:
        _host_up(host)
        _host_ready(host)
        echo(f"{host} up ({HOSTS[host]})")

    with concurrent.futures.ThreadPoolExecutor(3) as ex:
        futures = [ex.submit(storage)] + [ex.submit(compute, h) for h in HOSTS]
        errors = []
        for f in futures:
            try:
                f.result()
            except Exception as e:  # collect all, report the first
                errors.append(e)
        if errors:
            raise errors[0]
    pairs = [(a, b) for a in HOSTS for b in HOSTS if a != b]
    with concurrent.futures.ThreadPoolExecutor(len(pairs)) as ex:
        for f in [ex.submit(_wait_for, f"ssh {a} -> {b}",
                            lambda a=a, b=b: _peer_ssh_ok(a, b), 20) for a, b in pairs]:
            f.result()
    echo("ssh between hosts ok")


def down(echo: Callable[[str], None] = print) -> None:
    """Stop and remove everything the lab created (the venv stays)."""
    if os.geteuid() != 0:
        raise LabError("the lab needs root")
    with _lock():
        _down(echo)


def _tgtd_stop() -> None:
    # tgtd ignores SIGTERM; the orderly way out is to drop every target and
    # then ask the daemon to exit.
    if not _pid_of("tgtd"):
        return
    show = ["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"]
    out = _run(show, check=False, timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("Target ") and ":" in line:
            tid = line.split()[1].rstrip(":")
            _run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "delete",
                  "--force", "--tid", tid], check=False, timeout=10)
    _run(["tgtadm", "--op", "delete", "--mode", "system"], check=False, timeout=10)
    with contextlib.suppress(LabError):
        _wait_for("tgtd exit", lambda: _pid_of("tgtd") is None, timeout=3, interval=0.05)


def _down(echo: Callable[[str], None]) -> None:
    problems = []
    _tgtd_stop()
    pids = _lab_pids()
    if pids:
        echo(f"stopping {len(pids)} lab processes")
    _kill_pids(pids)
    # Daemons may have spawned children while the first round was stopping.
    _kill_pids(_lab_pids(), grace=3)
    left = [p for p in _lab_pids() if _alive(p)]
    if left:
        problems.append(f"processes still running: {left}")
    for ns in _netns_list():
        if ns.startswith(NETNS_PREFIX):
            cp = _run(["ip", "netns", "del", ns], check=False)
            if cp.returncode != 0:
                problems.append(f"ip netns del {ns}: {_tail(cp.stderr)}")
    _release_netns_dir(problems)
    for link in [BRIDGE] + [VETH_PREFIX + h for h in HOSTS]:
        if _link_exists(link):
            cp = _run(["ip", "link", "del", link], check=False)
            # A veth vanishes with its peer's namespace, possibly meanwhile.
            if cp.returncode != 0 and "Cannot find device" not in cp.stderr:
                problems.append(f"ip link del {link}: {_tail(cp.stderr)}")
    with contextlib.suppress(FileNotFoundError):
        TGT_INCLUDE.unlink()
    if not _foreign("tgtd"):
        # tgtd leaves its control socket behind when stopped by a signal.
        for f in TGT_RUN_DIR.glob("socket.0*") if TGT_RUN_DIR.is_dir() else []:
            with contextlib.suppress(OSError):
                f.unlink()
    for d in reversed(_load_json(_p("created-dirs.json"), [])):
        # Only empty directory trees go: anything put there since is not the
        # lab's to delete.
        top = Path(d)
        if top.is_dir():
            for sub in sorted(top.rglob("*"), key=lambda x: len(x.parts), reverse=True):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()
        if top.exists():
            problems.append(f"{top} is not empty; left in place")
    st = state_dir()
    if st.exists():
        shutil.rmtree(st, ignore_errors=True)
        if st.exists():
            problems.append(f"could not remove {st}")
    if problems:
        raise LabError("lab down incomplete: " + "; ".join(problems))
    echo("lab down")


def _proc_state(name: str) -> dict:
    pid = _pid_of(name)
    return {"state": "up" if pid else "down", "pid": pid}


def status() -> dict:
    """State of every lab component; JSON-able."""
    st = state_dir()
    comps: dict[str, dict] = {}
    net_up = _link_exists(BRIDGE)
    comps["network"] = {"state": "up" if net_up else "down", "bridge": BRIDGE,
                        "address": f"{STORAGE_IP}/{PREFIX_LEN}",
                        "namespaces": [n for n in _netns_list() if n.startswith(NETNS_PREFIX)]}
    comps["mariadb"] = {**_proc_state("mariadb"), "socket": str(_mysql_socket()),
                        "database": "cinder"}
    comps["rabbitmq"] = {**_proc_state("rabbitmq"), "node": RABBIT_NODE,
                         "endpoint": f"amqp://127.0.0.1:{RABBIT_PORT}/"}
    tgt = _proc_state("tgtd")
    tgt["portal"] = f"{STORAGE_IP}:{ISCSI_PORT}"
    if tgt["pid"]:
        out = _run(["tgtadm", "--lld", "iscsi", "--mode", "target", "--op", "show"],
                   check=False).stdout
        tgt["targets"] = sum(1 for l in out.splitlines() if l.startswith("Target "))
    comps["tgtd"] = tgt

    services = {}
    api_error = None
    api = _proc_state("cinder-api")
    if api["pid"]:
        try:
            services = {(s["binary"], s["host"]): s for s in _os_services()}
        except LabError as e:
            api_error = str(e)
            api["state"] = "starting"
    api["endpoint"] = _cinder_endpoint()
    if api_error:
        api["error"] = api_error
    comps["cinder-api"] = api
    for svc, host in (("cinder-scheduler", CINDER_HOST),
                      ("cinder-volume", f"{CINDER_HOST}@{CINDER_BACKEND}")):
        c = _proc_state(svc)
        rec = services.get((svc, host))
        c["host"] = host
        c["service"] = rec["state"] if rec else None
        if c["state"] == "up" and c["service"] != "up":
            c["state"] = "starting"
        comps[svc] = c

    def host_status(host: str) -> dict:
        h = {"address": HOSTS[host], "netns": NETNS_PREFIX + host,
             "libvirt_uri": _libvirt_uri(host), "ssh": f"root@{HOSTS[host]}:22"}
        for part in ("ns", "virtlogd", "libvirtd", "sshd"):
            h[part if part != "ns" else "namespaces"] = _proc_state(f"{host}-{part}")
        ok = all(h[k]["state"] == "up" for k in ("namespaces", "virtlogd", "libvirtd", "sshd"))
        if ok:
            try:
                _virsh_ok(host, timeout=10)
            except LabError as e:
                ok = False
                h["libvirtd"]["state"] = "not answering"
                h["error"] = str(e)
        h["state"] = "up" if ok else "down"
        return h

    with concurrent.futures.ThreadPoolExecutor(len(HOSTS)) as ex:
        for host, res in zip(HOSTS, ex.map(host_status, HOSTS)):
            comps[host] = res

    all_up = all(c.get("state") == "up" for c in comps.values())
    return {
        "state": "up" if all_up else ("down" if not st.exists() else "degraded"),
        "state_dir": str(st),
        "hosts_file": str(hosts_file()),
        "cinder_endpoint": _cinder_endpoint(),
        "bring_up_seconds": _load_json(_p("bring-up-seconds"), None),
        "components": comps,
    }


def _guest_cmdline() -> str:
    from attachflow.lab import guest
    return guest.CMDLINE


def env_lines() -> list[str]:
    """Shell lines that point the cinder CLI and attachflow at the lab."""
    values = [
        ("OS_AUTH_TYPE", "noauth"),
        # The noauth plugin appends "/<project id>" to this itself.
        ("OS_ENDPOINT", _cinder_endpoint()),
        # The cinder CLI reads its --os-endpoint default from here.
        ("CINDER_ENDPOINT", _cinder_endpoint()),
        ("OS_USER_ID", LAB_USER_ID),
        ("OS_PROJECT_ID", LAB_PROJECT_ID),
        ("OS_VOLUME_API_VERSION", VOLUME_API_VERSION),
        ("ATTACHFLOW_HOSTS", str(hosts_file())),
        ("ATTACHFLOW_VIRT_TYPE", "qemu"),
        # Guests boot a small kernel + initramfs (the hosts see the state
        # dir), so hot-unplug has a guest OS to complete it.
        ("ATTACHFLOW_BOOT_KERNEL", str(_guest_dir() / "vmlinuz")),
        ("ATTACHFLOW_BOOT_INITRD", str(_guest_dir() / "initrd.img")),
        ("ATTACHFLOW_BOOT_CMDLINE", _guest_cmdline()),
    ]
    return [f"export {k}={shlex.quote(v)}" for k, v in values]
