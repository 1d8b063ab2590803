"""The compute side: a host that runs guests, its hypervisor and its block devices.

Three seams, each with a real implementation here and an in-memory twin in
``attachflow.testing``:

- ``Hypervisor``: libvirt (``LibvirtHypervisor``, local ``qemu:///system`` or
  ``qemu+ssh://``): domains, disks, secrets, and the volume records attachflow keeps in
  each domain's metadata.
- ``HostConnector``: os-brick on the host (``BrickLocal`` in this process,
  ``BrickRemote`` over SSH by running ``attachflow host-call`` there with the
  secret-bearing JSON on stdin, never in argv).
- ``Runner``: a command on the host (``SSHRunner`` with paramiko).

A host is ``local`` (this machine) or a name from the hosts file (TOML, ``ATTACHFLOW_HOSTS``
or ``~/.config/attachflow/hosts.toml``); a bare name not in the file means root over SSH to
that name and ``qemu+ssh://root@NAME/system``.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import os
import shlex
import socket
import threading
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

from attachflow import domxml, errors
from attachflow.model import Secret

LOG = logging.getLogger("attachflow.compute")

LOCAL = "local"


# ---------------------------------------------------------------------------------------
# Hosts

@dataclasses.dataclass(frozen=True)
class HostConfig:
    name: str
    address: str
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: str | None = None
    known_hosts: str | None = None
    libvirt_uri: str = "qemu:///system"
    remote_command: str = "attachflow"
    hostname: str | None = None  # what the storage side is told (connector 'host')

    @property
    def local(self) -> bool:
        return self.name == LOCAL

    @property
    def connector_host(self) -> str:
        return self.hostname or (socket.gethostname() if self.local else self.name)


def hosts_file_path(env=None) -> Path:
    env = os.environ if env is None else env
    if env.get("ATTACHFLOW_HOSTS"):
        return Path(env["ATTACHFLOW_HOSTS"])
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "attachflow" / \
        "hosts.toml"


_HOST_KEYS = {f.name for f in dataclasses.fields(HostConfig)} - {"name"}


def load_host(name: str, env=None) -> HostConfig:
    path = hosts_file_path(env)
    entries: dict[str, Any] = {}
    if path.exists():
        try:
            entries = tomllib.loads(path.read_text()).get("hosts", {})
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise errors.InputError(f"hosts file {path}: {exc}") from None
    if name in entries:
        entry = dict(entries[name])
        unknown = set(entry) - _HOST_KEYS
        if unknown:
            raise errors.InputError(
                f"hosts file {path}: host '{name}' has unknown keys {sorted(unknown)}")
        entry.setdefault("address", name)
        entry.setdefault("libvirt_uri", LOCAL_URI if name == LOCAL else
                         f"qemu+ssh://{entry.get('ssh_user', 'root')}@{entry['address']}/system")
        return HostConfig(name=name, **entry)
    if name == LOCAL:
        return HostConfig(name=LOCAL, address=_local_address(), libvirt_uri=LOCAL_URI)
    if not name or any(c in name for c in " /@:"):
        raise errors.UnknownHost(f"'{name}' is not a host name")
    return HostConfig(name=name, address=name, libvirt_uri=f"qemu+ssh://root@{name}/system")


LOCAL_URI = "qemu:///system"


def _local_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


# ---------------------------------------------------------------------------------------
# Remote commands

class Runner(abc.ABC):
    @abc.abstractmethod
    def run(self, argv: list[str], stdin: bytes | None = None,
            timeout: float = 300) -> tuple[int, bytes, bytes]: ...

    @abc.abstractmethod
    def ping(self, timeout: float = 5) -> None:
        """Raise HostError unless the host's SSH server answers right now."""

    def close(self) -> None:
        pass


class SSHRunner(Runner):
    """paramiko, known-hosts checking on: an unknown or changed host key is an error."""

    def __init__(self, cfg: HostConfig, connect_timeout: float = 10):
        self.cfg = cfg
        self._timeout = connect_timeout
        self._client = None

    def _connect(self):
        if self._client is not None:
            return self._client
        import paramiko
        import tenacity
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            if self.cfg.known_hosts:
                client.load_host_keys(os.path.expanduser(self.cfg.known_hosts))
            else:
                client.load_system_host_keys()
        except OSError as exc:
            raise errors.HostError(f"{self.cfg.name}: known hosts: {exc}") from None

        def connect():
            client.connect(self.cfg.address, port=self.cfg.ssh_port,
                           username=self.cfg.ssh_user,
                           key_filename=os.path.expanduser(self.cfg.ssh_key)
                           if self.cfg.ssh_key else None,
                           timeout=self._timeout, banner_timeout=self._timeout,
                           auth_timeout=self._timeout, allow_agent=False)

        try:
            # Only a refused or timed-out TCP connect is retried: host key and auth
            # failures are answers, not accidents.
            tenacity.Retrying(
                retry=tenacity.retry_if_exception_type((ConnectionRefusedError,
                                                        socket.timeout)),
                stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(0.5),
                reraise=True)(connect)
        except paramiko.SSHException as exc:
            raise errors.HostError(f"ssh {self.cfg.ssh_user}@{self.cfg.address}: {exc}") \
                from None
        except OSError as exc:
            raise errors.HostError(f"ssh {self.cfg.ssh_user}@{self.cfg.address}: "
                                   f"{exc.strerror or exc}") from None
        self._client = client
        return client

    def ping(self, timeout=5):
        # A fresh TCP connection and the server's banner: cheap, and unlike a shared
        # or pooled SSH connection it shows that sshd answers now.
        try:
            with socket.create_connection((self.cfg.address, self.cfg.ssh_port),
                                          timeout=timeout) as sock:
                banner = sock.recv(256)
        except OSError as exc:
            raise errors.HostError(f"ssh {self.cfg.address}:{self.cfg.ssh_port}: "
                                   f"{exc.strerror or exc}") from None
        if not banner.startswith(b"SSH-"):
            raise errors.HostError(f"{self.cfg.address}:{self.cfg.ssh_port} does not speak "
                                   "SSH")

    def run(self, argv, stdin=None, timeout=300):
        client = self._connect()
        command = " ".join(shlex.quote(a) for a in argv)
        chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
        if stdin is not None:
            chan_in.write(stdin)
        chan_in.channel.shutdown_write()
        out = chan_out.read()
        err = chan_err.read()
        return chan_out.channel.recv_exit_status(), out, err

    def close(self):
        if self._client is not None:
            self._client.close()
            self._client = None


# ---------------------------------------------------------------------------------------
# Host connector: os-brick

class HostConnector(abc.ABC):
    """os-brick's three calls, wherever they run."""

    @abc.abstractmethod
    def properties(self, my_ip: str, multipath: bool) -> dict[str, Any]: ...

    @abc.abstractmethod
    def connect(self, protocol: str, props: dict[str, Any],
                multipath: bool) -> dict[str, Any]: ...

    @abc.abstractmethod
    def disconnect(self, protocol: str, props: dict[str, Any], device_info: dict[str, Any],
                   multipath: bool) -> None: ...


_BRICK_READY = threading.Lock()
_brick_set_up = False


def _brick():
    """Import os-brick lazily (it costs about half a second) and let its privileged calls
    run in this process when we are root, since there is no sudo to spawn a helper."""
    global _brick_set_up
    from os_brick.initiator import connector as brick_connector
    with _BRICK_READY:
        if not _brick_set_up:
            import os_brick.privileged
            if os.geteuid() == 0:
                os_brick.privileged.default.set_client_mode(False)
            _brick_set_up = True
    return brick_connector


class BrickLocal(HostConnector):
    def properties(self, my_ip, multipath):
        try:
            return _brick().get_connector_properties(None, my_ip, multipath, False)
        except Exception as exc:
            raise errors.HostError(f"connector properties: {exc}") from None

    def _connector(self, protocol, multipath):
        return _brick().InitiatorConnector.factory(protocol, None, use_multipath=multipath,
                                                   device_scan_attempts=3)

    def connect(self, protocol, props, multipath):
        try:
            return dict(self._connector(protocol, multipath).connect_volume(props))
        except Exception as exc:
            raise errors.HostError(f"os-brick connect_volume ({protocol}): "
                                   f"{_scrub(str(exc), props)}") from None

    def disconnect(self, protocol, props, device_info, multipath):
        try:
            self._connector(protocol, multipath).disconnect_volume(props, device_info,
                                                                   force=False)
        except Exception as exc:
            raise errors.HostError(f"os-brick disconnect_volume ({protocol}): "
                                   f"{_scrub(str(exc), props)}") from None


def _scrub(text: str, props: dict[str, Any]) -> str:
    for key, value in props.items():
        if isinstance(value, str) and value and "password" in key:
            text = text.replace(value, "***")
    return text


class BrickRemote(HostConnector):
    """Runs ``attachflow host-call`` on the host; the request (with CHAP data) goes on
    stdin, the answer comes back as JSON on stdout."""

    def __init__(self, runner: Runner, cfg: HostConfig):
        self.runner = runner
        self.cfg = cfg

    def _call(self, request: dict[str, Any]) -> Any:
        argv = shlex.split(self.cfg.remote_command) + ["host-call"]
        rc, out, err = self.runner.run(argv, json.dumps(request).encode())
        if rc != 0:
            line = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
            raise errors.HostError(f"{self.cfg.name}: host-call {request['op']}: {line}")
        try:
            return json.loads(out or b"null")
        except ValueError:
            raise errors.HostError(f"{self.cfg.name}: host-call {request['op']}: "
                                   "unreadable answer") from None

    def properties(self, my_ip, multipath):
        return self._call({"op": "properties", "my_ip": my_ip, "multipath": multipath})

    def connect(self, protocol, props, multipath):
        return self._call({"op": "connect", "protocol": protocol, "props": props,
                           "multipath": multipath})

    def disconnect(self, protocol, props, device_info, multipath):
        self._call({"op": "disconnect", "protocol": protocol, "props": props,
                    "device_info": device_info, "multipath": multipath})


def host_call(request: dict[str, Any], brick: HostConnector | None = None) -> Any:
    """The host end of BrickRemote: one request in, one JSON-able answer out."""
    brick = brick or BrickLocal()
    op = request.get("op")
    if op == "properties":
        return brick.properties(request.get("my_ip") or _local_address(),
                                bool(request.get("multipath")))
    if op == "connect":
        return brick.connect(request["protocol"], request["props"],
                             bool(request.get("multipath")))
    if op == "disconnect":
        brick.disconnect(request["protocol"], request["props"],
                         request.get("device_info") or {}, bool(request.get("multipath")))
        return None
    raise errors.InputError(f"unknown host-call op '{op}'")


# ---------------------------------------------------------------------------------------
# Hypervisor

@dataclasses.dataclass(frozen=True)
class DomainRef:
    name: str
    uuid: str
    active: bool
    persistent: bool


@dataclasses.dataclass(frozen=True)
class MigrationRequest:
    """One live migration as libvirt's migrateToURI3 takes it (always LIVE, PEER2PEER,
    PERSIST_DEST and UNDEFINE_SOURCE)."""

    dest_uri: str
    dest: domxml.Domain
    persist: domxml.Domain | None = None
    auto_converge: bool = False
    postcopy: bool = False
    bandwidth_mib: int | None = None
    copy_disks: tuple[str, ...] = ()  # local disks to copy (block migration)


class Hypervisor(abc.ABC):
    @abc.abstractmethod
    def lookup(self, name: str) -> DomainRef: ...

    @abc.abstractmethod
    def domain(self, name: str, inactive: bool = False,
               migratable: bool = False) -> domxml.Domain:
        """The domain's live (or persistent, with ``inactive``) definition, parsed."""

    @abc.abstractmethod
    def attach_device(self, name: str, disk: domxml.Disk, live: bool,
                      config: bool) -> None: ...

    @abc.abstractmethod
    def detach_device(self, name: str, disk: domxml.Disk, live: bool, config: bool,
                      timeout: float) -> None:
        """Detach; with live, wait for the guest to release it (DeviceRemoved)."""

    @abc.abstractmethod
    def set_metadata(self, name: str, metadata: str | None, live: bool,
                     config: bool) -> None: ...

    @abc.abstractmethod
    def define_secret(self, usage: str, value: Secret, description: str) -> None: ...

    @abc.abstractmethod
    def undefine_secret(self, usage: str) -> bool: ...

    @abc.abstractmethod
    def define_domain(self, domain: domxml.Domain) -> None: ...

    @abc.abstractmethod
    def start(self, name: str) -> None: ...

    @abc.abstractmethod
    def destroy(self, name: str) -> None: ...

    @abc.abstractmethod
    def undefine(self, name: str) -> None: ...

    @abc.abstractmethod
    def migrate(self, name: str, request: MigrationRequest) -> None:
        """Run the migration; returns when it is over, raises HypervisorError if it
        failed (libvirt then leaves the guest running on the source)."""

    @abc.abstractmethod
    def job_stats(self, name: str, completed: bool = False) -> dict[str, Any]: ...

    @abc.abstractmethod
    def abort_job(self, name: str) -> None: ...

    @abc.abstractmethod
    def start_postcopy(self, name: str) -> None: ...

    @abc.abstractmethod
    def set_max_downtime(self, name: str, milliseconds: int) -> None: ...

    def close(self) -> None:
        pass


_EVENT_LOOP = threading.Lock()
_event_loop_started = False


def _libvirt():
    global _event_loop_started
    try:
        import libvirt
    except ImportError:
        raise errors.HostError("libvirt-python is not installed: pip install "
                               "'attachflow[libvirt]' (needs libvirt-dev)") from None
    with _EVENT_LOOP:
        if not _event_loop_started:
            # Events must be registered before the first connection is opened; they
            # carry DeviceRemoved and the keepalives of remote connections.
            libvirt.virEventRegisterDefaultImpl()
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

            def loop():
                while True:
                    libvirt.virEventRunDefaultImpl()

            threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
            _event_loop_started = True
    return libvirt


class LibvirtHypervisor(Hypervisor):
    def __init__(self, uri: str, host_name: str = "local"):
        self.uri = uri
        self.host_name = host_name
        self._conn = None

    @property
    def conn(self):
        if self._conn is None:
            libvirt = _libvirt()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise errors.HostError(f"{self.host_name}: cannot connect to libvirt at "
                                       f"{self.uri}: {_lverr(exc)}") from None
            if not self.uri.startswith("qemu:///"):  # remote: keep the link alive
                try:
                    self._conn.setKeepAlive(5, 3)
                except libvirt.libvirtError:
                    pass
        return self._conn

    def _dom(self, name: str):
        libvirt = _libvirt()
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise errors.DomainNotFound(
                    f"domain '{name}' not found on host {self.host_name}") from None
            raise errors.HypervisorError(f"{self.host_name}: {_lverr(exc)}") from None

    def _wrap(self, what: str, fn: Callable[[], Any]) -> Any:
        libvirt = _libvirt()
        try:
            return fn()
        except libvirt.libvirtError as exc:
            raise errors.HypervisorError(f"{what} on {self.host_name}: {_lverr(exc)}") \
                from None

    def lookup(self, name):
        dom = self._dom(name)
        return self._wrap("lookup", lambda: DomainRef(
            name=dom.name(), uuid=dom.UUIDString(), active=bool(dom.isActive()),
            persistent=bool(dom.isPersistent())))

    def domain(self, name, inactive=False, migratable=False):
        libvirt = _libvirt()
        dom = self._dom(name)
        flags = ((libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
                 | (libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0))
        return domxml.Domain.parse(self._wrap("read XML", lambda: dom.XMLDesc(flags)))

    def migrate(self, name, request):
        libvirt = _libvirt()
        dom = self._dom(name)
        flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
                 | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
        if request.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if request.postcopy:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        params: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_DEST_XML: request.dest.to_xml()}
        if request.persist is not None:
            params[libvirt.VIR_MIGRATE_PARAM_PERSIST_XML] = request.persist.to_xml()
        if request.bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(request.bandwidth_mib)
        if request.copy_disks:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(request.copy_disks)
        self._wrap("live migration",
                   lambda: dom.migrateToURI3(request.dest_uri, params, flags))

    def job_stats(self, name, completed=False):
        libvirt = _libvirt()
        dom = self._dom(name)
        # keep the completed job's statistics for whoever reads them next
        flags = (libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED
                 | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED) if completed else 0
        return dict(self._wrap("job stats", lambda: dom.jobStats(flags)))

    def abort_job(self, name):
        dom = self._dom(name)
        self._wrap("abort job", dom.abortJob)

    def start_postcopy(self, name):
        dom = self._dom(name)
        self._wrap("start post-copy", lambda: dom.migrateStartPostCopy(0))

    def set_max_downtime(self, name, milliseconds):
        dom = self._dom(name)
        self._wrap("set max downtime", lambda: dom.migrateSetMaxDowntime(int(milliseconds), 0))

    @staticmethod
    def _flags(live: bool, config: bool) -> int:
        libvirt = _libvirt()
        return ((libvirt.VIR_DOMAIN_AFFECT_LIVE if live else 0)
                | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if config else 0))

    def attach_device(self, name, disk, live, config):
        dom = self._dom(name)
        xml = disk.to_xml()
        self._wrap("attach disk", lambda: dom.attachDeviceFlags(xml, self._flags(live,
                                                                                  config)))

    def detach_device(self, name, disk, live, config, timeout):
        libvirt = _libvirt()
        dom = self._dom(name)
        xml = disk.to_xml()
        if config:
            self._wrap("detach disk (persistent)",
                       lambda: dom.detachDeviceFlags(xml, self._flags(False, True)))
        if not live:
            return
        target = disk.target_dev
        alias = disk.alias
        if alias is None:  # a disk as built, not as libvirt shows it: ask for its alias
            found = [d for d in self._live_disks(dom) if d.target_dev == target]
            alias = found[0].alias if found else None
        removed = threading.Event()

        def on_removed(_conn, _dom, dev_alias, _opaque):
            if dev_alias in (alias, target):
                removed.set()

        cb = self.conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, on_removed, None)
        try:
            deadline = time.monotonic() + timeout
            attempt_wait = max(1.0, timeout / 6)
            while True:
                try:
                    dom.detachDeviceFlags(xml, self._flags(True, False))
                except libvirt.libvirtError as exc:
                    if not self._disk_present(dom, target):
                        return
                    # "already in the process of unplug" means keep waiting
                    if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_FAILED:
                        raise errors.HypervisorError(
                            f"detach disk on {self.host_name}: {_lverr(exc)}") from None
                wait_until = min(deadline, time.monotonic() + attempt_wait)
                while time.monotonic() < wait_until:
                    # The event says it at once; the XML, read at most once a second,
                    # covers an event lost with a reconnecting link.
                    if removed.wait(min(1.0, max(0.0, wait_until - time.monotonic()))) \
                            or not self._disk_present(dom, target):
                        return
                if time.monotonic() >= deadline:
                    raise errors.DeviceRemovalTimeout(
                        f"guest '{name}' did not release {target} within {timeout:.0f} s")
        finally:
            try:
                self.conn.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass

    @staticmethod
    def _live_disks(dom) -> list[domxml.Disk]:
        return domxml.Domain.parse(dom.XMLDesc(0)).disks

    def _disk_present(self, dom, target: str) -> bool:
        return any(d.target_dev == target for d in self._live_disks(dom))

    def set_metadata(self, name, metadata, live, config):
        libvirt = _libvirt()
        dom = self._dom(name)
        self._wrap("set metadata", lambda: dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata, domxml.METADATA_KEY,
            domxml.METADATA_NS, self._flags(live, config)))

    def _secret(self, usage):
        libvirt = _libvirt()
        try:
            return self.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_ISCSI, usage)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return None
            raise errors.HypervisorError(f"secret lookup on {self.host_name}: "
                                         f"{_lverr(exc)}") from None

    def define_secret(self, usage, value, description):
        secret = self._wrap("define secret", lambda: self.conn.secretDefineXML(
            domxml.secret_xml(usage, description)))
        try:
            self._wrap("set secret value", lambda: secret.setValue(value.reveal().encode()))
        except errors.HypervisorError:
            secret.undefine()
            raise

    def undefine_secret(self, usage):
        secret = self._secret(usage)
        if secret is None:
            return False
        self._wrap("undefine secret", secret.undefine)
        return True

    def define_domain(self, domain):
        xml = domain.to_xml(pretty=True)
        self._wrap("define domain", lambda: self.conn.defineXML(xml))

    def start(self, name):
        dom = self._dom(name)
        self._wrap("start domain", dom.create)

    def destroy(self, name):
        dom = self._dom(name)
        if dom.isActive():
            self._wrap("destroy domain", dom.destroy)

    def undefine(self, name):
        libvirt = _libvirt()
        dom = self._dom(name)
        self._wrap("undefine domain",
                   lambda: dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM))

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


def _lverr(exc) -> str:
    return (exc.get_error_message() or str(exc)).strip()


# ---------------------------------------------------------------------------------------
# A compute host

class ComputeHost:
    """One compute host: its configuration, its hypervisor, its host connector."""

    def __init__(self, cfg: HostConfig, hypervisor: Hypervisor | None = None,
                 brick: HostConnector | None = None, runner: Runner | None = None):
        self.cfg = cfg
        self._hypervisor = hypervisor
        self._brick = brick
        self._runner = runner

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def hypervisor(self) -> Hypervisor:
        if self._hypervisor is None:
            self._hypervisor = LibvirtHypervisor(self.cfg.libvirt_uri, self.cfg.name)
        return self._hypervisor

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = SSHRunner(self.cfg)
        return self._runner

    @property
    def brick(self) -> HostConnector:
        if self._brick is None:
            self._brick = BrickLocal() if self.cfg.local else BrickRemote(self.runner,
                                                                          self.cfg)
        return self._brick

    def close(self) -> None:
        if self._hypervisor is not None:
            self._hypervisor.close()
        if self._runner is not None:
            self._runner.close()


def open_host(name: str, env=None) -> ComputeHost:
    return ComputeHost(load_host(name or LOCAL, env))
