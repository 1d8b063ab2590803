"""One-machine lab: real Cinder, tgtd, and two libvirt/QEMU compute hosts.

Layout
------
* The root network namespace is the storage host: bridge ``afbr0`` with 198.18.0.1/24,
  tgtd (iSCSI portal on that address), MariaDB and RabbitMQ (private instances, own
  sockets/ports/dirs), cinder-api/-scheduler/-volume from the venv under
  /opt/attachflow-lab.
* ``hosta`` and ``hostb`` each get a network namespace (``af-hosta``, veth into the
  bridge) plus a mount and UTS namespace held by a long-lived process. Inside: tmpfs /run,
  private /etc/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt,
  /root/.ssh, /etc/hosts and /etc/iscsi/initiatorname.iscsi; virtlogd, libvirtd and sshd.
* Each of these is a component (component.py) in a module of its own; ``COMPONENTS``
  below lists them, and up, down and status go through that list in dependency order.
* supervisord runs every daemon; every process the lab starts, and all they spawn, lives
  in the cgroup ``attachflow-lab`` (supervision.py).
* Everything the lab writes lives under the state dir (``ATTACHFLOW_LAB_DIR``, default
  /var/lib/attachflow-lab), except: the tgt include file /etc/tgt/conf.d/attachflow-lab.conf
  (tgt-admin only reads targets.conf), /run/netns (handles and ip's bind mount),
  /run/tgtd, the cgroup, and mount points that did not exist. ``down`` removes all of
  these. Installation (Debian packages, the kvm/libvirt-qemu accounts libvirtd insists on,
  the venv) stays.
* Names, addresses and ports are fixed (layout.py): one lab per machine.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shlex
import shutil
import time
from typing import Any, Callable

from attachflow.lab.errors import LabError
from attachflow.lab.layout import HOSTS, hosts_file, initiator_name, state_dir

__all__ = ["LabError", "up", "down", "status", "env_lines", "state_dir", "hosts_file",
           "initiator_name", "HOSTS", "components"]


def components(auth: str | None = None, kernel_nodes: bool | None = None) -> list:
    """Every component of the lab; adding one is adding its module and a line here.
    ``auth``: keystone or noauth; ``kernel_nodes``: whether the compute-node VMs belong
    to it; by default what the lab was brought up with."""
    from attachflow.lab import layout
    from attachflow.lab.cinder import CinderDB, CinderService
    from attachflow.lab.computehost import ComputeHost
    from attachflow.lab.guest import GuestImage
    from attachflow.lab.mariadb import MariaDB
    from attachflow.lab.network import Network
    from attachflow.lab.rabbitmq import RabbitMQ
    from attachflow.lab.ssh import SshKeys, SshMesh
    from attachflow.lab.tgtd import Tgtd
    identity = []
    if (auth or layout.auth_mode()) == "keystone":
        from attachflow.lab.keystone import (KeystoneAccounts, KeystoneBootstrap,
                                             KeystoneDB, KeystoneService)
        identity = [KeystoneDB(), KeystoneBootstrap(), KeystoneService(), KeystoneAccounts()]
    nodes = []
    if layout.kernel_nodes() if kernel_nodes is None else kernel_nodes:
        from attachflow.lab.nodeimage import NodeImage
        from attachflow.lab.nodes import KernelNode
        nodes = [NodeImage(), *(KernelNode(node) for node in layout.NODES),
                 SshMesh(tuple(layout.NODES), name="node-ssh-mesh")]
    return [
        Network(),
        SshKeys(),
        GuestImage(),
        Tgtd(),
        MariaDB(),
        RabbitMQ(),
        *identity,
        CinderDB(),
        CinderService("cinder-api", requires=()),
        CinderService("cinder-scheduler", requires=()),
        # cinder-volume reports its pools once, at start, to the schedulers that listen
        # then: a scheduler that starts alongside can miss it and wait for the next
        # report (a minute). A ready scheduler (a heartbeat since its start) listens.
        CinderService("cinder-volume", requires=("tgtd", "cinder-scheduler")),
        *(ComputeHost(host) for host in HOSTS),
        SshMesh(tuple(HOSTS)),
        *nodes,
    ]


@contextlib.contextmanager
def _locked():
    import fasteners
    from attachflow.lab.layout import LOCK_FILE
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with fasteners.InterProcessLock(str(LOCK_FILE)):
        yield


def _need_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, tgtd, mounts, cgroups)")


def _write_hosts_file(comps: list) -> None:
    from attachflow.lab import layout
    entries = [c.hosts_entry() for c in comps if hasattr(c, "hosts_entry")]
    layout.write(hosts_file(), layout.render_text("hosts.toml", entries="".join(entries)))


def _prepare_state_dir(auth: str, fresh: bool, echo: Callable[[str], None]) -> None:
    """The state dir, with what the lab is brought up with (kept for the next ``up``)."""
    from attachflow.lab import layout
    st = state_dir()
    st.mkdir(parents=True, exist_ok=True)
    # Cinder's per-target tgt files hold CHAP passwords; everything here is used
    # by root only.
    os.chmod(st, 0o700)
    layout.write(layout.path("auth"), auth + "\n")
    layout.path("log").mkdir(exist_ok=True)
    echo(f"state dir {st}")
    if fresh:
        layout.write(layout.path("ready-seconds.json"), "{}\n")


def up(echo: Callable[[str], None] = print, auth: str | None = None,
       kernel_nodes: bool = False) -> dict[str, Any]:
    """Install what is missing, start the lab, wait until it is usable.

    ``auth``: ``keystone`` (the default: Cinder behind a real Keystone) or ``noauth``; a
    running lab keeps what it was brought up with. ``kernel_nodes``: also the two
    compute-node VMs (added to a running lab that lacks them; kept once there)."""
    from attachflow.lab import install, layout
    from attachflow.lab.component import Lab, bring_up
    _need_root()
    if auth is not None and auth not in layout.AUTH_MODES:
        raise LabError(f"unknown auth '{auth}': one of {', '.join(layout.AUTH_MODES)}")
    t0 = time.monotonic()
    with _locked():
        lab = Lab(echo)
        fresh = not state_dir().exists() or not lab.cgroup.populated()
        chosen = None if fresh else layout.auth_mode()
        if auth and chosen and auth != chosen:
            raise LabError(f"the lab runs with {chosen}; `attachflow lab down` first to "
                           f"bring it up with {auth}")
        auth = auth or chosen or layout.AUTH_MODES[0]
        # Nodes this call adds to a running lab, taken out again if the call fails.
        adding_nodes = kernel_nodes and not fresh and not layout.kernel_nodes()
        kernel_nodes = kernel_nodes or (not fresh and layout.kernel_nodes())
        comps = components(auth, kernel_nodes)
        try:
            install.install(comps, echo)
            _prepare_state_dir(auth, fresh, echo)
            lab.supervisor.write_config([p for c in comps for p in c.programs()])
            _write_hosts_file(comps)
            lab.supervisor.ensure_running()
            bring_up(lab, comps)
            # Only nodes that came up belong to the lab: a later plain `up` brings them
            # up again, and must not fail on nodes that never ran.
            if kernel_nodes:
                layout.write(layout.path("kernel-nodes"), "yes\n")
        except BaseException as e:
            if fresh:
                echo(f"lab up failed: {e}; tearing down")
                with contextlib.suppress(Exception):
                    _down(lambda _m: None)
            elif adding_nodes:
                raise _without_nodes(lab, auth, e) from e
            else:
                # The lab ran before this call: leave the running parts (and their
                # volumes) alone; `lab down` removes everything.
                echo(f"lab up failed: {e}")
            if isinstance(e, LabError):
                raise
            if isinstance(e, Exception):
                raise LabError(f"lab up failed: {e}") from e
            raise
        elapsed = time.monotonic() - t0
        if fresh:
            layout.write(layout.path("bring-up-seconds"), f"{elapsed:.1f}\n")
    result = status()
    echo(f"lab up in {elapsed:.1f}s")
    return result


def _without_nodes(lab, auth: str, failure: BaseException) -> LabError:
    """Take out the kernel nodes a failed `up` was adding to a running lab, so that the
    lab runs as it did before; the error to raise says so."""
    from attachflow.lab.component import bring_down
    base = components(auth, kernel_nodes=False)
    names = {c.name for c in base}
    lab.echo(f"lab up failed: {failure}; taking the kernel nodes out again")
    problems = bring_down(lab, [c for c in components(auth, True) if c.name not in names])
    try:
        lab.supervisor.write_config([p for c in base for p in c.programs()])
        _write_hosts_file(base)
        lab.supervisor.ensure_running()
    except (LabError, OSError) as e:
        problems.append(str(e))
    left = f"; not undone: {'; '.join(problems)}" if problems else ""
    return LabError(f"the kernel nodes did not come up: {failure}; the lab runs without "
                    f"them, as before{left} (fix that, then `attachflow lab up "
                    f"--kernel-nodes` again)")


def down(echo: Callable[[str], None] = print) -> None:
    """Stop and remove everything the lab created (the installation stays); returns only
    once no process of the lab is left."""
    _need_root()
    with _locked():
        _down(echo)


def _down(echo: Callable[[str], None]) -> None:
    from attachflow.lab import machine_paths
    from attachflow.lab.component import Lab, bring_down
    lab = Lab(echo)
    count = len(lab.cgroup.pids())
    if count:
        echo(f"stopping {count} lab processes")
    # With the nodes, whether or not the lab records them: an `up` adding them that was
    # killed before it did may have left their tap devices.
    problems = bring_down(lab, components(kernel_nodes=True))
    # Each step on its own: a supervisord that hangs must not keep the cgroup's SIGKILL,
    # the backstop for exactly that, from running.
    for what, step in (("supervisord", lab.supervisor.shutdown),
                       ("processes", lab.cgroup.kill), ("cgroup", lab.cgroup.remove)):
        try:
            step()
        except Exception as e:  # reported, and the teardown goes on
            problems.append(f"{what}: {e}")
    problems += machine_paths.remove_created()
    st = state_dir()
    if st.exists():
        shutil.rmtree(st, ignore_errors=True)
        if st.exists():
            problems.append(f"could not remove {st}")
    if problems:
        raise LabError("lab down incomplete: " + "; ".join(problems))
    echo("lab down")


def status() -> dict[str, Any]:
    """State of every lab component; JSON-able."""
    from attachflow.lab import layout
    from attachflow.lab.component import Lab, Status
    lab = Lab()
    comps = components()
    times = lab.ready_times()
    def one(comp) -> "Status":
        # A lab half up or half down, or a machine without the packages yet: say what
        # could not be looked at instead of failing the whole report.
        try:
            return comp.status(lab)
        except (LabError, OSError) as e:
            return Status("unknown", details={"error": str(e)})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        states = list(pool.map(one, comps))
    out = {c.name: s.to_json(times.get(c.name), len(lab.cgroup.pids(c.name)))
           for c, s in zip(comps, states)}
    sup_pid = lab.supervisor.pid()
    supervisor = {"state": "up" if sup_pid else "down", "pid": sup_pid,
                  "config": str(lab.supervisor.conf), "cgroup": str(lab.cgroup.root),
                  "processes": len(lab.cgroup.pids())}
    st = state_dir()
    all_up = sup_pid is not None and all(c["state"] == "up" for c in out.values())
    return {
        "state": "up" if all_up else ("down" if not st.exists() else "degraded"),
        "state_dir": str(st),
        "hosts_file": str(hosts_file()),
        "cinder_endpoint": layout.cinder_endpoint(),
        "auth": layout.recorded_auth_mode(),
        "bring_up_seconds": layout.load_json(layout.path("bring-up-seconds"), None),
        "supervisor": supervisor,
        "components": out,
    }


# What each kind of lab sets, so that `lab env` can unset the other's: a shell that
# evaluated a noauth lab's lines and then a Keystone lab's must not mix the two.
_NOAUTH_VARIABLES = ("OS_AUTH_TYPE", "OS_ENDPOINT", "CINDER_ENDPOINT", "OS_USER_ID",
                     "OS_PROJECT_ID")
_KEYSTONE_VARIABLES = ("OS_CLIENT_CONFIG_FILE", "OS_CLOUD", "ATTACHFLOW_SERVICE_CLOUD",
                       "OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME",
                       "OS_USER_DOMAIN_NAME", "OS_PROJECT_DOMAIN_NAME", "OS_REGION_NAME",
                       "OS_INTERFACE", "OS_IDENTITY_API_VERSION")


_BOOT_VARIABLES = ("ATTACHFLOW_BOOT_KERNEL", "ATTACHFLOW_BOOT_INITRD",
                   "ATTACHFLOW_BOOT_CMDLINE")


def _auth_env() -> tuple[list[tuple[str, str]], list[str]]:
    """The variables (and lines to run after them) that point clients at the lab's
    Cinder; the first line unsets what the other kind of lab sets."""
    from attachflow.lab import layout
    if layout.recorded_auth_mode() is None:
        raise LabError("the lab is not up (attachflow lab up)")
    if layout.auth_mode() == "noauth":
        return [
            ("OS_AUTH_TYPE", "noauth"),
            # The noauth plugin appends "/<project id>" to this itself.
            ("OS_ENDPOINT", layout.cinder_endpoint()),
            # The cinder CLI reads its --os-endpoint default from here.
            ("CINDER_ENDPOINT", layout.cinder_endpoint()),
            ("OS_USER_ID", layout.LAB_USER_ID),
            ("OS_PROJECT_ID", layout.LAB_PROJECT_ID)], []
    from attachflow.lab import keystone
    # Rewritten from the passwords file each time, so they always agree with it.
    keystone.write_client_files()
    return [
        ("OS_CLIENT_CONFIG_FILE", str(keystone.clouds_path())),
        # The member user, who owns the lab's volumes; attachflow and the openstack CLI
        # take it from clouds.yaml.
        ("OS_CLOUD", keystone.MEMBER.cloud),
        ("ATTACHFLOW_SERVICE_CLOUD", keystone.SERVICE.cloud),
    ], [
        # The cinder CLI reads no clouds.yaml: `cinder` becomes a shell function that
        # runs it with the member's OS_* settings from a file only root can read. They
        # stay out of the shell's environment, where the openstack CLI would let them
        # override --os-cloud, and the password stays out of this output.
        f"cinder() ( . {shlex.quote(str(keystone.openrc_path()))} && command cinder \"$@\" )",
        # The openstack CLI, installed with Keystone in the lab's environment.
        f'export PATH={shlex.quote(str(layout.INSTALL_DIR / "bin"))}:"$PATH"',
    ]


def env_lines() -> list[str]:
    """Shell lines that point the openstack and cinder CLIs and attachflow at the lab."""
    from attachflow.lab import layout
    auth_values, auth_lines = _auth_env()
    stale = _KEYSTONE_VARIABLES if layout.auth_mode() == "noauth" else _NOAUTH_VARIABLES
    values = [
        *auth_values,
        ("OS_VOLUME_API_VERSION", layout.VOLUME_API_VERSION),
        ("ATTACHFLOW_HOSTS", str(hosts_file())),
        # The lab's operations journal and locks live with the lab: `lab down` removes
        # them with everything else, and a lab's operations never meet a real host's.
        ("ATTACHFLOW_STATE_DIR", str(state_dir() / "attachflow")),
        ("ATTACHFLOW_VIRT_TYPE", "qemu"),
        # The lab's hosts run on a kernel without an iSCSI initiator: QEMU's own one it is.
        ("ATTACHFLOW_TRANSPORT", "native"),
    ]
    # What guests boot is per host, in the hosts file (hosta and hostb: the small guest
    # OS on this machine, so hot-unplug has a guest to complete it; the nodes: their
    # volume). One variable for every host would name a file the nodes do not have:
    # what an earlier `lab env` exported goes.
    stale = (*stale, *_BOOT_VARIABLES)
    return ([f"unset {' '.join(stale)}"]
            + [f"export {k}={shlex.quote(v)}" for k, v in values] + auth_lines)
