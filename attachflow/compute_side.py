"""The compute side: a host that runs guests, its hypervisor and its block devices.

This module owns the hypervisor and puts a compute host together. Three seams, each with a
real implementation and an in-memory twin for the tests (``tests/unit/twins.py``):

- ``Hypervisor`` (here): libvirt (``LibvirtHypervisor``, local ``qemu:///system`` or
  ``qemu+ssh://``): domains, disks, secrets, and the volume records attachflow keeps in
  each domain's metadata.
- ``HostConnector`` (``attachflow.brick``): os-brick on the host, in this process or over
  SSH with the secret-bearing request on stdin, never in argv.
- ``Runner`` (``attachflow.remote``): a command on the host, over SSH with paramiko.

Which hosts there are and how to reach them is the hosts file's business
(``attachflow.hosts``).
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from attachflow import domxml, errors, timings
from attachflow.brick import BrickLocal, BrickRemote, HostConnector
from attachflow.hosts import LOCAL, HostConfig, load_host
from attachflow.model import Secret
from attachflow.remote import Runner, SSHRunner

LOG = logging.getLogger("attachflow.libvirt")


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
    def warm(self) -> None:
        """Open the connection to the hypervisor now, if it has one; a connection that
        fails here fails again, with its error, where it is needed."""

    @abc.abstractmethod
    def lookup(self, name: str) -> DomainRef: ...

    @abc.abstractmethod
    def list_domains(self) -> list[DomainRef]:
        """Every domain on the host, running or defined."""

    @abc.abstractmethod
    def hostname(self) -> str:
        """The host's name as its libvirtd reports it (proves that libvirtd answers)."""

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
    def shutdown(self, name: str) -> None:
        """Ask the guest OS to power off (ACPI); returns at once."""

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
    except ImportError as exc:
        raise errors.HostError("libvirt-python is not installed: pip install "
                               "'attachflow[libvirt]' (needs libvirt-dev)") from exc
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
        if self._conn is not None and not self._alive():
            # libvirtd restarted, or the link to it broke: a new connection for what
            # comes next instead of an error on every later call.
            LOG.debug("libvirt connection to %s lost; connecting again", self.host_name)
            self._drop()
        if self._conn is None:
            libvirt = _libvirt()
            try:
                with timings.phase("connection", f"libvirt {self.host_name}"):
                    self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise errors.HostError(f"{self.host_name}: cannot connect to libvirt at "
                                       f"{self.uri}: {_lverr(exc)}") from exc
            if not self.uri.startswith("qemu:///"):  # remote: keep the link alive
                try:
                    self._conn.setKeepAlive(5, 3)
                except libvirt.libvirtError:
                    pass
        return self._conn

    def warm(self) -> None:
        try:
            self.conn  # noqa: B018 - the property connects
        except errors.HostError:
            pass

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except Exception:  # a connection that cannot even say so is not alive
            return False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        try:
            conn.close()
        except Exception:  # closing a dead connection may fail: it is gone either way
            pass

    def _read(self, run: Callable[[], Any]) -> Any:
        """A call that changes nothing, once more on a new connection when it failed
        because the connection died (libvirtd restarted mid-operation)."""
        try:
            return run()
        except (errors.HypervisorError, errors.HostError):
            if self._conn is None or self._alive():
                raise
            self._drop()
            return run()

    def _change(self, name: str, what: str, call: Callable[[Any], Any]) -> Any:
        """``call(dom)``: a change to domain ``name``. When libvirt's client refused to
        send it because the connection had closed since the lookup (libvirtd restarted),
        it never reached libvirtd: it is made once, on a new connection."""
        dom = self._dom(name)
        try:
            return self._wrap(what, lambda: call(dom))
        except _Unsent:
            LOG.debug("libvirt %s on %s: not sent, the connection closed; again on a new "
                      "one", what, self.host_name)
            self._drop()
            dom = self._dom(name)
            return self._wrap(what, lambda: call(dom))

    def _dom(self, name: str):
        """The domain's handle. Every call on a domain starts here, so this lookup is
        what finds a connection that died since the last call (libvirtd restarted before
        the event loop noticed): it is asked once more on a new connection, and the
        change that follows goes over that one."""
        libvirt = _libvirt()

        def lookup():
            try:
                return self.conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise errors.DomainNotFound(
                        f"domain '{name}' not found on host {self.host_name}") from exc
                raise errors.HypervisorError(f"{self.host_name}: {_lverr(exc)}") from exc
        return self._read(lookup)

    def _wrap(self, what: str, fn: Callable[[], Any]) -> Any:
        libvirt = _libvirt()
        started = time.monotonic()
        try:
            with timings.phase("libvirt", f"{what} on {self.host_name}"):
                result = fn()
        except libvirt.libvirtError as exc:
            LOG.debug("libvirt %s on %s: %s", what, self.host_name, _lverr(exc))
            kind = _Unsent if _never_sent(exc) else errors.HypervisorError
            raise kind(f"{what} on {self.host_name}: {_lverr(exc)}") from exc
        LOG.debug("libvirt %s on %s (%.0f ms)", what, self.host_name,
                  (time.monotonic() - started) * 1000)
        return result

    def hostname(self):
        return self._read(lambda: self._wrap("host name", self.conn.getHostname))

    def list_domains(self):
        libvirt = _libvirt()

        def describe(d) -> DomainRef | None:
            try:
                return DomainRef(name=d.name(), uuid=d.UUIDString(),
                                 active=bool(d.isActive()), persistent=bool(d.isPersistent()))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None   # undefined since it was listed: no longer there
                raise

        def run():
            found = self._wrap("list domains", lambda: self.conn.listAllDomains(0))
            refs = [self._wrap("describe domain", lambda d=d: describe(d)) for d in found]
            return sorted((r for r in refs if r is not None), key=lambda r: r.name)
        return self._read(run)

    def lookup(self, name):
        def run():
            dom = self._dom(name)
            return self._wrap("lookup", lambda: DomainRef(
                name=dom.name(), uuid=dom.UUIDString(), active=bool(dom.isActive()),
                persistent=bool(dom.isPersistent())))
        return self._read(run)

    def domain(self, name, inactive=False, migratable=False):
        libvirt = _libvirt()
        flags = ((libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0)
                 | (libvirt.VIR_DOMAIN_XML_MIGRATABLE if migratable else 0))

        def run():
            dom = self._dom(name)
            return domxml.Domain.parse(self._wrap("read XML", lambda: dom.XMLDesc(flags)))
        return self._read(run)

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
        xml = disk.to_xml()
        self._change(name, "attach disk",
                     lambda dom: dom.attachDeviceFlags(xml, self._flags(live, config)))

    def detach_device(self, name, disk, live, config, timeout):
        if config:
            xml = disk.to_xml()
            self._change(name, "detach disk (persistent)",
                         lambda dom: dom.detachDeviceFlags(xml, self._flags(False, True)))
        if live:
            _LiveUnplug(self, name, disk, timeout).run()

    @staticmethod
    def _live_disks(dom) -> list[domxml.Disk]:
        return domxml.Domain.parse(dom.XMLDesc(0)).disks

    def _disk_present(self, dom, target: str) -> bool:
        return any(d.target_dev == target for d in self._live_disks(dom))

    def set_metadata(self, name, metadata, live, config):
        libvirt = _libvirt()
        self._change(name, "set metadata", lambda dom: dom.setMetadata(
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
                                         f"{_lverr(exc)}") from exc

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
        self._change(name, "start domain", lambda dom: dom.create())

    def shutdown(self, name):
        dom = self._dom(name)
        if dom.isActive():
            self._wrap("shut down domain", dom.shutdown)

    def destroy(self, name):
        dom = self._dom(name)
        if dom.isActive():
            self._wrap("destroy domain", dom.destroy)

    def undefine(self, name):
        libvirt = _libvirt()
        self._change(name, "undefine domain",
                     lambda dom: dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM))

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None


def _lverr(exc) -> str:
    return (exc.get_error_message() or str(exc)).strip()


class _LiveUnplug:
    """One live unplug of a disk: ask the guest to let go of it, and wait until it has.

    Owns the DeviceRemoved watch it registers. The domain's handle, the watch and every
    call go over one connection, since libvirt refuses a handle of one connection on
    another. When libvirtd restarts during the wait (the connection dies), all three are
    made again on a new connection and the request is sent again: libvirt answers a
    repeated request with "already in the process of unplug", or the disk is gone."""

    RECONNECTS = 3

    def __init__(self, hypervisor: LibvirtHypervisor, name: str, disk: domxml.Disk,
                 timeout: float):
        self._hv = hypervisor
        self._name = name
        self._xml = disk.to_xml()
        self._target = disk.target_dev
        self._alias = disk.alias
        self._timeout = timeout
        self._removed = threading.Event()
        self._conn = self._dom = self._watch_id = None

    def run(self) -> None:
        libvirt = _libvirt()
        deadline = time.monotonic() + self._timeout
        attempt_wait = max(1.0, self._timeout / 6)
        reconnects = 0
        try:
            while True:
                try:
                    if self._dom is None:
                        self._watch()
                    if self._asked_and_gone() or self._released(
                            min(deadline, time.monotonic() + attempt_wait)):
                        return
                except libvirt.libvirtError as exc:
                    if not self._connection_lost(exc) or reconnects >= self.RECONNECTS:
                        raise self._error(exc) from exc
                    reconnects += 1
                    LOG.debug("live detach on %s: connection lost (%s); again on a new "
                              "one", self._hv.host_name, _lverr(exc))
                    self._unwatch(drop_connection=True)
                    continue
                if time.monotonic() >= deadline:
                    raise errors.DeviceRemovalTimeout(
                        f"guest '{self._name}' did not release {self._target} within "
                        f"{self._timeout:.0f} s")
        finally:
            self._unwatch()

    def _watch(self) -> None:
        """The domain's handle and the DeviceRemoved watch, both on one connection."""
        libvirt = _libvirt()
        self._conn = conn = self._hv.conn
        dom = conn.lookupByName(self._name)
        if self._alias is None:  # a disk as built, not as libvirt shows it: ask for it
            found = [d for d in LibvirtHypervisor._live_disks(dom)
                     if d.target_dev == self._target]
            self._alias = found[0].alias if found else None
        self._watch_id = conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, self._on_removed, None)
        self._dom = dom

    def _on_removed(self, _conn, _dom, dev_alias, _opaque) -> None:
        if dev_alias in (self._alias, self._target):
            self._removed.set()

    def _asked_and_gone(self) -> bool:
        """Send the request; True when libvirt says the disk is already gone."""
        libvirt = _libvirt()
        try:
            self._dom.detachDeviceFlags(self._xml, self._hv._flags(True, False))
        except libvirt.libvirtError as exc:
            if self._connection_lost(exc):
                raise
            if not self._present():
                return True
            # "already in the process of unplug" means keep waiting
            if exc.get_error_code() != libvirt.VIR_ERR_OPERATION_FAILED:
                raise
        return False

    def _released(self, until: float) -> bool:
        while time.monotonic() < until:
            # The event says it at once; the XML, read at most once a second, covers an
            # event lost with a reconnecting link or a restarted libvirtd.
            if self._removed.wait(min(1.0, max(0.0, until - time.monotonic()))) \
                    or not self._present():
                return True
        return False

    def _present(self) -> bool:
        return any(d.target_dev == self._target
                   for d in LibvirtHypervisor._live_disks(self._dom))

    def _connection_lost(self, exc) -> bool:
        if _never_sent(exc):
            return True
        if self._conn is None:
            return False
        try:
            return not self._conn.isAlive()
        except Exception:  # a connection that cannot even say so is not alive
            return True

    def _unwatch(self, drop_connection: bool = False) -> None:
        libvirt = _libvirt()
        conn, watch_id = self._conn, self._watch_id
        self._conn = self._dom = self._watch_id = None
        if conn is not None and watch_id is not None:
            try:
                conn.domainEventDeregisterAny(watch_id)
            except libvirt.libvirtError:
                pass  # gone with its connection
        if drop_connection and (conn is None or self._hv._conn is conn):
            self._hv._drop()

    def _error(self, exc) -> errors.AttachflowError:
        libvirt = _libvirt()
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return errors.DomainNotFound(
                f"domain '{self._name}' not found on host {self._hv.host_name}")
        return errors.HypervisorError(
            f"detach disk on {self._hv.host_name}: {_lverr(exc)}")


class _Unsent(errors.HypervisorError):
    """A call libvirt's client did not send: its connection had closed."""


def _never_sent(exc) -> bool:
    # libvirt's remote client refuses to send a call on a connection it knows closed
    # ("client socket is closed"), and fails writing one on a connection that closed
    # unnoticed ("Cannot write data: Broken pipe"); libvirtd acts only on a whole
    # message, so neither reached it. A call that failed after it was sent (the answer
    # lost) says something else and is not made again.
    text = _lverr(exc)
    return "client socket is closed" in text or text.startswith("Cannot write data")


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
        # The parts are made on first use, possibly by several threads at once (volumes
        # finished side by side after a migration): one of each, not one per thread.
        self._parts_lock = threading.RLock()

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def hypervisor(self) -> Hypervisor:
        with self._parts_lock:
            if self._hypervisor is None:
                self._hypervisor = LibvirtHypervisor(self.cfg.libvirt_uri, self.cfg.name)
            return self._hypervisor

    @property
    def runner(self) -> Runner:
        with self._parts_lock:
            if self._runner is None:
                self._runner = SSHRunner(self.cfg)
            return self._runner

    @property
    def brick(self) -> HostConnector:
        with self._parts_lock:
            if self._brick is None:
                self._brick = BrickLocal() if self.cfg.local else BrickRemote(self.runner,
                                                                              self.cfg)
            return self._brick

    def close(self) -> None:
        if self._hypervisor is not None:
            self._hypervisor.close()
        if self._brick is not None:
            self._brick.close()
        if self._runner is not None:
            self._runner.close()

    def __enter__(self) -> ComputeHost:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_host(name: str, env=None) -> ComputeHost:
    return ComputeHost(load_host(name or LOCAL, env))
