"""The public face of attachflow for Python callers: one ``Client`` made from the same
settings as the command line, offering every operation with typed results.

The client owns the connections it opens: the storage API session (made on first use,
so ``connector`` needs no Cinder) and one ``ComputeHost`` per host name (libvirt and SSH
connections), all closed by ``close()`` or at the end of a ``with`` block. Every attach,
detach, boot and migration it runs is journaled and locked (``tracking``); ``recover``
settles the ones that were interrupted.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Mapping, TypeVar

from attachflow import domxml, errors, inventory, operations, redact
from attachflow import migrate as _migrate
from attachflow import recover as _recover
from attachflow.journal import INCOMPLETE, OperationEntry
from attachflow.cinder_side import CinderStorage, StorageAPI
from attachflow.compute_side import ComputeHost, open_host
from attachflow.connectors import get_transport
from attachflow.connectors.base import Transport
from attachflow.events import Listener
from attachflow.hosts import LOCAL
from attachflow.model import ConnectorProperties
from attachflow.tracking import Tracker

_T = TypeVar("_T")

DEFAULT_TRANSPORT = "kernel"
DEFAULT_API = "auto"
TRANSPORTS = ("kernel", "native")
APIS = ("auto", "attachments", "legacy")


class Client:
    """attachflow's operations against one storage API and the hosts of one hosts file.

    Settings, each defaulting like the command line's option:

    - ``cloud``: a cloud from ``clouds.yaml`` (``$OS_CLOUD``); without one, the ``OS_*``
      variables, or ``OS_AUTH_TYPE=noauth`` with ``OS_ENDPOINT`` for labs.
    - ``service_cloud``: a cloud for a user with the ``service`` role, whose token goes
      with every request (``$ATTACHFLOW_SERVICE_CLOUD``, or the ``OS_SERVICE_*``
      variables): Cinder releases a guest's attachment only for a service.
    - ``hosts_file``: the TOML hosts file (``$ATTACHFLOW_HOSTS``, else
      ``~/.config/attachflow/hosts.toml``).
    - ``transport``: ``kernel`` (os-brick and the host's initiator) or ``native``
      (QEMU's initiator) for new attachments (``$ATTACHFLOW_TRANSPORT``).
    - ``api``: ``auto``, ``attachments`` or ``legacy`` (Cinder's attach API).
    - ``progress``: a listener called with every ``attachflow.events.Event``.
    - ``storage`` / ``hosts``: an already made storage API and compute hosts by name,
      used instead of the settings (the client then does not close them).
    - ``state_dir``: where the operations journal and the locks live
      (``$ATTACHFLOW_STATE_DIR``, else ``/var/lib/attachflow``).
    - ``lock_wait``: seconds an operation waits for another one on the same volume or
      domain before it fails with ``Busy`` (``$ATTACHFLOW_LOCK_WAIT``, else 60).
    """

    def __init__(self, *, cloud: str | None = None, service_cloud: str | None = None,
                 hosts_file: str | None = None,
                 transport: str | None = None, api: str | None = None,
                 progress: Listener | None = None, storage: StorageAPI | None = None,
                 hosts: Mapping[str, ComputeHost] | None = None,
                 state_dir: str | None = None, lock_wait: float | None = None,
                 env: Mapping[str, str] | None = None):
        redact.install()  # whatever the caller's logging shows, it shows no secret
        env = dict(os.environ if env is None else env)
        if hosts_file is not None:
            env["ATTACHFLOW_HOSTS"] = str(hosts_file)
        if state_dir is not None:
            env["ATTACHFLOW_STATE_DIR"] = str(state_dir)
        self._env = env
        self._lock_wait = lock_wait
        self._tracker: Tracker | None = None
        self.cloud = cloud
        self.service_cloud = service_cloud
        self.transport = _choice("transport", transport or env.get("ATTACHFLOW_TRANSPORT")
                                 or DEFAULT_TRANSPORT, TRANSPORTS)
        self.api = _choice("api", api or DEFAULT_API, APIS)
        self.progress = progress
        self._storage = storage
        self._own_storage = storage is None
        self._given_hosts = dict(hosts or {})
        self._opened: dict[str, ComputeHost] = {}

    # -- what the client owns --------------------------------------------------------------
    @property
    def storage(self) -> StorageAPI:
        """The storage API, connected (and its microversion negotiated) on first use."""
        if self._storage is None:
            self._storage = CinderStorage.connect(cloud=self.cloud, env=self._env,
                                                  service_cloud=self.service_cloud)
        return self._storage

    @property
    def tracker(self) -> Tracker:
        """The journal and locks every operation of this client runs under."""
        if self._tracker is None:
            self._tracker = Tracker.from_env(self._env, self._lock_wait)
        return self._tracker

    def host(self, name: str = LOCAL) -> ComputeHost:
        """The compute host ``name`` (``local``, or a name from the hosts file)."""
        if name in self._given_hosts:
            return self._given_hosts[name]
        if name not in self._opened:
            self._opened[name] = open_host(name, self._env)
        return self._opened[name]

    def close(self) -> None:
        """Close every host connection this client opened, and keep its logins for the next
        command (the token cache)."""
        opened, self._opened = self._opened, {}
        for host in opened.values():
            host.close()
        if self._own_storage and self._storage is not None:
            self._storage.close()
        if self._tracker is not None:
            self._tracker.journal.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _connected(self, *hosts: ComputeHost) -> None:
        """Open the storage API and every host's libvirt connection side by side: the
        handshakes (Keystone and Cinder; SSH to each host) are independent, and queued
        they are most of a short command's time. The storage API's errors come first, as
        they would without this; a host's come where the operation first needs it."""
        distinct = list(dict.fromkeys(hosts))
        with concurrent.futures.ThreadPoolExecutor(len(distinct)) as pool:
            opening = [pool.submit(h.hypervisor.warm) for h in distinct]
            try:
                self.storage  # noqa: B018 - connects
            finally:
                concurrent.futures.wait(opening)

    def _transport(self, name: str | None, multipath: bool = False) -> Transport:
        return get_transport(_choice("transport", name or self.transport, TRANSPORTS),
                             multipath)

    def _api(self, api: str | None) -> str:
        return _choice("api", api or self.api, APIS)

    # -- operations --------------------------------------------------------------------------
    def connector(self, host: str = LOCAL, *, transport: str | None = None,
                  multipath: bool = False) -> ConnectorProperties:
        """What ``host`` tells the storage side about itself (initiator, ip, host, ...).
        The host must answer: kernel asks its os-brick, native its libvirtd."""
        compute = self.host(host)
        chosen = self._transport(transport, multipath)
        if chosen.name == "native":
            compute.hypervisor.hostname()  # QEMU's initiator runs there: it must answer
        return chosen.connector_properties(compute)

    def attach(self, volume: str, domain: str, *, host: str = LOCAL,
               device: str | None = None, transport: str | None = None,
               multipath: bool = False, api: str | None = None,
               detach_timeout: float = operations.DEFAULT_DETACH_TIMEOUT
               ) -> operations.Result:
        """Attach ``volume`` to ``domain`` as the next free vdX (or ``device``).
        Attaching a volume already attached there as asked returns its attachment with
        ``already`` set; another device, transport or guest is a refusal."""
        compute = self.host(host)  # a host that is not known fails before any contact
        self._connected(compute)
        return self._settled(lambda: operations.attach(
            self.storage, compute, self._transport(transport, multipath), volume, domain,
            api=self._api(api), device=device, detach_timeout=detach_timeout,
            progress=self.progress, tracker=self.tracker))

    def detach(self, volume: str, domain: str, *, host: str = LOCAL,
               transport: str | None = None, api: str | None = None,
               timeout: float = operations.DEFAULT_DETACH_TIMEOUT, strict: bool = False
               ) -> operations.Result:
        """Detach ``volume`` from ``domain`` with the API and transport it was attached
        with. A volume that is not attached there is a success with ``already`` set
        (``strict``: ``NotAttached``). ``transport``, when given, must match."""
        chosen = _choice("transport", transport, TRANSPORTS) if transport else None
        compute = self.host(host)
        self._connected(compute)
        return self._settled(lambda: operations.detach(
            self.storage, compute, volume, domain, api=self._api(api),
            transport_name=chosen, timeout=timeout, strict=strict, progress=self.progress,
            tracker=self.tracker))

    def boot(self, name: str, volume: str, *, host: str = LOCAL, memory_mib: int = 128,
             vcpus: int = 1, virt_type: str = "kvm",
             direct_boot: domxml.DirectBoot | None = None, transport: str | None = None,
             api: str | None = None) -> operations.Result:
        """Define and start ``name`` with ``volume`` as its root disk (vda). A guest of
        that name already running from that volume is returned with ``already`` set."""
        compute = self.host(host)
        self._connected(compute)
        return self._settled(lambda: operations.boot(
            self.storage, compute, self._transport(transport), name, volume,
            api=self._api(api), memory_mib=memory_mib, vcpus=vcpus, virt_type=virt_type,
            direct_boot=direct_boot, progress=self.progress, tracker=self.tracker))

    def start_guest(self, name: str, *, host: str = LOCAL) -> bool:
        """Start the defined guest ``name``; False when it was running already."""
        return operations.start_guest(self.host(host), name)

    def shutdown_guest(self, name: str, *, host: str = LOCAL, timeout: float = 120.0
                       ) -> bool:
        """Ask the guest OS to power off and wait up to ``timeout`` seconds; False when it
        was not running. A guest that does not stop is a HypervisorError, left running."""
        return operations.shutdown_guest(self.host(host), name, timeout)

    def list_volumes(self, *, host: str = LOCAL, domain: str | None = None
                     ) -> list[inventory.Entry]:
        """Every volume attachflow attached on ``host`` (or to ``domain``), with its state
        in the storage API and any disagreement between the two sides."""
        compute = self.host(host)
        self._connected(compute)
        return inventory.inventory(self.storage, compute, domain)

    def delete_guest(self, name: str, *, host: str = LOCAL, force: bool = False,
                     shutdown_timeout: float = 60.0, strict: bool = False
                     ) -> operations.DeleteResult:
        """Stop and undefine a guest attachflow booted, detaching and releasing its
        volumes first (``force``: any guest). A guest that does not exist is a success
        with ``already`` set (``strict``: ``DomainNotFound``)."""
        compute = self.host(host)
        self._connected(compute)
        return self._settled(lambda: operations.delete_guest(
            self.storage, compute, name, force=force, shutdown_timeout=shutdown_timeout,
            strict=strict, progress=self.progress, tracker=self.tracker))

    def plan_migration(self, domain: str, *, source: str, destination: str,
                       options: _migrate.MigrationOptions | None = None,
                       api: str | None = None) -> _migrate.Plan:
        """Check everything a migration needs, change nothing; ``PreflightError`` says
        what stands in the way. ``migration_preview(plan)`` shows the plan."""
        src, dst = self.host(source), self.host(destination)
        self._connected(src, dst)
        return _migrate.preflight(self.storage, src, dst, domain, api=self._api(api),
                                  options=options)

    def migrate(self, domain: str, *, source: str, destination: str,
                options: _migrate.MigrationOptions | None = None, api: str | None = None
                ) -> _migrate.MigrationResult:
        """Live-migrate ``domain`` from ``source`` to ``destination`` with every volume
        reconnected there; rolled back while the guest still runs on the source, finished
        once it runs on the destination (``left_behind`` names anything not cleaned up)."""
        src, dst = self.host(source), self.host(destination)
        self._connected(src, dst)
        return self._settled(lambda: _migrate.run(
            self.storage, src, dst, domain, api=self._api(api), options=options,
            progress=self.progress, tracker=self.tracker))

    def _settled(self, run: Callable[[], _T]) -> _T:
        """Run an operation; when it fails leaving something for recover (an undo that
        failed, or a step that may have taken effect), recover it at once, from the
        real state, and say so in the error. Only what this cannot settle is left for
        `attachflow recover`."""
        try:
            return run()
        except errors.AttachflowError as exc:
            op = self.tracker.journal.get(exc.operation_id) if exc.operation_id else None
            if op is None or op.state != INCOMPLETE:
                raise
            if isinstance(exc, errors.OperationFailed) and exc.next_step:
                if isinstance(exc.cause, errors.DeviceRemovalTimeout):
                    raise  # the guest has not answered: waiting again here would not help
                exc.next_step = ""  # recover, now, is the next step
            try:
                [settled] = self.recover(op.id)
            except errors.AttachflowError as again:
                exc.message += (f"; recovering it failed too ({again}): run 'attachflow "
                                f"recover {op.id[:8]}' once that is fixed")
                raise
            if settled.needs_human:
                exc.message += (f"; left for a human: {settled.problem} (then 'attachflow "
                                f"recover {op.id[:8]}')")
            else:
                exc.message += f"; recovered: {settled.describe().split(': ', 1)[1]}"
            raise

    # -- the journal -----------------------------------------------------------------------
    def operations(self, *, include_finished: bool = False) -> list[OperationEntry]:
        """Operations in the journal: unfinished ones (running, interrupted, incomplete,
        needing a human), or all that are kept. ``shown_state(op)`` says which."""
        return self.tracker.journal.operations(unfinished_only=not include_finished)

    def shown_state(self, op: OperationEntry) -> str:
        """``op``'s state as a user reads it: "interrupted" for a running entry whose
        process is gone."""
        return self.tracker.shown_state(op)

    def recover(self, op_id: str | None = None, *, dry_run: bool = False,
                job_wait: float = _recover.DEFAULT_JOB_WAIT,
                unplug_wait: float = _recover.DEFAULT_UNPLUG_WAIT,
                echo=None) -> list[_recover.Recovery]:
        """Settle operation ``op_id`` (an id or its first characters), or every
        interrupted or incomplete one: forward past its point of no return, back before
        it, from the real state. ``dry_run``: decide and say, change nothing.
        ``unplug_wait``: how long a guest asked to release a disk gets to finish."""
        recoverer = _recover.Recoverer(self.tracker, lambda: self.storage, self.host,
                                       job_wait=job_wait, echo=echo,
                                       unplug_wait=unplug_wait)
        if op_id is not None:
            ops = [self.tracker.journal.find(op_id)]
        else:
            ops = recoverer.pending()
        return [recoverer.recover(op, dry_run=dry_run) for op in ops]


def migration_preview(plan: _migrate.Plan) -> dict:
    """The steps a migration would take and the domain XML change, for a dry run."""
    return _migrate.dry_run(plan)


def _choice(what: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise errors.InputError(f"unknown {what} '{value}' (choose from {', '.join(allowed)})")
    return value
