"""The one interface every transport implements.

A transport turns a volume's typed ``ConnectionInfo`` into a disk source the hypervisor can
use on one compute host (``connect``), and takes that away again (``disconnect``). It also
says what the host tells the storage side about itself (``connector_properties``).
"""

from __future__ import annotations

import abc

from attachflow.compute_side import ComputeHost
from attachflow.domxml import DiskSource
from attachflow.model import ConnectionInfo, ConnectorProperties


class Transport(abc.ABC):
    #: the name users pass with --transport
    name: str
    #: the Cinder driver_volume_types this transport can connect
    driver_volume_types: frozenset[str]

    @abc.abstractmethod
    def connector_properties(self, host: ComputeHost) -> ConnectorProperties: ...

    @abc.abstractmethod
    def connect(self, host: ComputeHost, conn: ConnectionInfo, owner: str) -> DiskSource:
        """Make the volume reachable on ``host`` for the guest ``owner`` (its UUID)."""

    @abc.abstractmethod
    def disconnect(self, host: ComputeHost, conn: ConnectionInfo, source: DiskSource | None,
                   owner: str) -> None:
        """Undo ``connect``; a connection already gone counts as done."""

    @abc.abstractmethod
    def predicted_source(self, source: DiskSource | None,
                         destination: ComputeHost) -> DiskSource | None:
        """What ``connect`` on ``destination`` would return for the volume that is
        ``source`` here, as far as it can be known without connecting (a dry run)."""
