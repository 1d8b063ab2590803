"""The lab's fixed names, addresses, ports and paths, and the one place that fills the
configuration templates (``templates/``) from them.

One lab per machine: everything here is fixed except the state directory
(``ATTACHFLOW_LAB_DIR``, default /var/lib/attachflow-lab). Side effect owned: writing
rendered configuration files.
"""

from __future__ import annotations

import json
import os
import shlex
import string
import sys
import urllib.parse
from importlib import resources
from pathlib import Path

from attachflow.lab.errors import LabError

INSTALL_DIR = Path("/opt/attachflow-lab")
# Cinder, supervisord (and later Keystone) share one virtual environment.
VENV = INSTALL_DIR / "venv"
LOCK_FILE = INSTALL_DIR / "lab.lock"
# What a fresh lab would otherwise recompute on every `up` (Cinder's database schema,
# QEMU's capabilities); each entry is checked for validity before it is used.
CACHE_DIR = INSTALL_DIR / "cache"

BRIDGE = "afbr0"
STORAGE_IP = "198.18.0.1"
PREFIX_LEN = 24
HOSTS = {"hosta": "198.18.0.11", "hostb": "198.18.0.12"}
# Compute-node virtual machines with their own kernels (`lab up --kernel-nodes`).
NODES = {"nodea": "198.18.0.21", "nodeb": "198.18.0.22"}
# The storage side's second portal address, so that a volume has two paths (multipath).
STORAGE_IP_2 = "198.18.0.2"
TAP_PREFIX = "aft-"
NETNS_PREFIX = "af-"
VETH_PREFIX = "afv-"

ISCSI_PORT = 3260
CINDER_HOST = "attachflow-lab"
CINDER_BACKEND = "lab"
CINDER_LISTEN = "127.0.0.1"
CINDER_PORT = 8776
KEYSTONE_LISTEN = "127.0.0.1"
KEYSTONE_PORT = 5000
RABBIT_PORT = 5682      # off the system default 5672 so both can coexist
RABBIT_DIST_PORT = 25682
EPMD_PORT = 4379
RABBIT_NODE = "attachflow-lab@localhost"

# Under noauth, Cinder takes the user and project from the request as given.
LAB_USER_ID = "attachflow"
LAB_PROJECT_ID = "attachflow"
# How the lab's Cinder authenticates its callers (`lab up --auth`); the first is the
# default, as real deployments run.
AUTH_MODES = ("keystone", "noauth")
VOLUME_API_VERSION = "3.71"  # python-cinderclient 9.x maximum; attachments need >=3.27

NETNS_DIR = Path("/run/netns")
INITIATOR_FILE = Path("/etc/iscsi/initiatorname.iscsi")
TGT_RUN_DIR = Path("/run/tgtd")
TGT_INCLUDE = Path("/etc/tgt/conf.d/attachflow-lab.conf")
CGROUP_NAME = "attachflow-lab"

# What the lab's daemons see of the environment: nothing of the caller's shell (OS_*,
# virtualenvs, PYTHONPATH) that would point them elsewhere.
DAEMON_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "LANG": "C.UTF-8", "HOME": "/root", "USER": "root", "LOGNAME": "root"}


def state_dir() -> Path:
    return Path(os.environ.get("ATTACHFLOW_LAB_DIR", "/var/lib/attachflow-lab")).absolute()


def path(*parts: str) -> Path:
    return state_dir().joinpath(*parts)


def auth_mode() -> str:
    """The running (or last) lab's authentication, as `lab up --auth` chose it; the
    default for a lab not brought up yet."""
    return recorded_auth_mode() or AUTH_MODES[0]


def recorded_auth_mode() -> str | None:
    """What `lab up` recorded, or None where no lab was brought up."""
    try:
        value = path("auth").read_text().strip()
    except OSError:
        return None
    return value if value in AUTH_MODES else None


def kernel_nodes() -> bool:
    """Whether the running lab has its compute-node VMs (`lab up --kernel-nodes`)."""
    return path("kernel-nodes").exists()


def address(machine: str) -> str:
    """The address of a lab host or node."""
    return {**HOSTS, **NODES}[machine]


def hosts_file() -> Path:
    return path("hosts.toml")


def initiator_name(host: str) -> str:
    """The iSCSI initiator name os-brick finds on a lab host."""
    return f"iqn.2004-10.org.attachflow-lab:{host}"


def cinder_endpoint() -> str:
    return f"http://{CINDER_LISTEN}:{CINDER_PORT}/v3"


def ssh_wrapper() -> Path:
    return path("ssh", "ssh")


def libvirt_uri(host: str) -> str:
    wrapper = urllib.parse.quote(str(ssh_wrapper()), safe="/")
    return f"qemu+ssh://root@{address(host)}/system?command={wrapper}&no_tty=1"


def remote_command() -> str:
    # The hosts share this machine's file system but not its shell set-up (PATH from
    # pyenv, virtualenvs), so name the interpreter and the code explicitly for the
    # `attachflow host-call` runs over ssh.
    pkg_parent = Path(__file__).resolve().parents[2]
    return shlex.join(["env", f"PYTHONPATH={pkg_parent}", sys.executable, "-m",
                       "attachflow.cli"])


def values() -> dict[str, str]:
    """Every name a template may use, besides the values its caller adds."""
    st = state_dir()
    return {
        "state_dir": str(st), "venv": str(VENV), "storage_ip": STORAGE_IP,
        "storage_ip_2": STORAGE_IP_2,
        "iscsi_port": str(ISCSI_PORT), "cinder_host": CINDER_HOST,
        "cinder_backend": CINDER_BACKEND, "cinder_listen": CINDER_LISTEN,
        "cinder_port": str(CINDER_PORT), "rabbit_port": str(RABBIT_PORT),
        "keystone_url": f"http://{KEYSTONE_LISTEN}:{KEYSTONE_PORT}",
        "lab_project_id": LAB_PROJECT_ID,
        "hosts_lines": "".join(f"{addr}\t{host}\n"
                               for host, addr in {**HOSTS, **NODES}.items()),
    }


class _Template(string.Template):
    # Only ${lower_case} is a placeholder, so shell ("$@", "$$", "${H}"), supervisord
    # and URL text in a template stays as written.
    flags = 0
    pattern = r"""
        \$\{(?P<braced>[a-z][a-z0-9_]*)\}
        | (?P<escaped>(?!))
        | (?P<named>(?!))
        | (?P<invalid>(?!))
    """


def render_text(template: str, **extra: str) -> str:
    text = resources.files("attachflow.lab").joinpath("templates", template).read_text()
    try:
        return _Template(text).substitute({**values(), **extra})
    except KeyError as exc:
        raise LabError(f"template {template}: no value for {exc.args[0]}") from exc


def write(dest: Path, text: str, mode: int = 0o644) -> None:
    """Write a file atomically with its mode set before it appears."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)


def render(template: str, dest: Path, mode: int = 0o644, **extra: str) -> None:
    write(dest, render_text(template, **extra), mode)


def toml_string(value: str) -> str:
    """A TOML basic string (JSON's escaping is a subset TOML accepts)."""
    return json.dumps(value)


def load_json(file: Path, default):
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return default
