"""iSCSI through the host kernel's initiator, driven by os-brick.

os-brick's ``connect_volume`` logs in (CHAP, multipath when asked) on the host that runs
the guest and returns a block device; the guest gets ``<disk type='block'>``. On a remote
host the os-brick calls run there, over SSH.
"""

from __future__ import annotations

from attachflow import errors
from attachflow.compute_side import ComputeHost
from attachflow.connectors.base import Transport
from attachflow.domxml import BlockSource
from attachflow.model import ConnectionInfo, ConnectorProperties


class KernelISCSI(Transport):
    name = "kernel"
    driver_volume_types = frozenset({"iscsi"})
    protocol = "ISCSI"

    def __init__(self, multipath: bool = False):
        self.multipath = multipath

    def connector_properties(self, host: ComputeHost) -> ConnectorProperties:
        props = host.brick.properties(host.cfg.address, self.multipath)
        if not props.get("initiator"):
            raise errors.HostError(
                f"{host.name}: no iSCSI initiator name (is open-iscsi installed and "
                "/etc/iscsi/initiatorname.iscsi present?)")
        props = dict(props)
        props["host"] = host.cfg.connector_host
        return ConnectorProperties.from_dict(props)

    def connect(self, host, conn: ConnectionInfo, owner):
        try:
            info = host.brick.connect(self.protocol, conn.to_brick(), self.multipath)
        except errors.HostError as exc:
            # A failed login leaves what os-brick made on the way: a node record for
            # every portal it tried, maybe a session. Its disconnect removes what is
            # there and passes over what is not.
            try:
                host.brick.disconnect(self.protocol, conn.to_brick(), {}, self.multipath)
            except errors.AttachflowError as cleanup:
                # the cleanup's failure is the cause; the connect's is its context
                raise errors.HostError(f"{exc}; cleaning up after it failed too: "
                                       f"{cleanup}") from cleanup
            raise
        path = info.get("path")
        if not path:
            raise errors.HostError(f"{host.name}: os-brick returned no device path")
        return BlockSource(path=str(path))

    def disconnect(self, host, conn, source, owner):
        device_info = {"type": "block", "path": source.path} if isinstance(
            source, BlockSource) else {}
        host.brick.disconnect(self.protocol, conn.to_brick(), device_info, self.multipath)

    def predicted_source(self, source, destination):
        # The device path is known only once os-brick connects on the destination.
        return source
