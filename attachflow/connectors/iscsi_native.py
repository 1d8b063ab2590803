"""iSCSI through QEMU's own initiator (libiscsi): no session on the host at all.

The guest's disk is ``<disk type='network'><source protocol='iscsi'>``; QEMU logs in to the
target itself. The CHAP password goes into a private libvirt secret, one per volume and
guest, removed on detach. The initiator name is per host, so the target's session list
shows which host a session belongs to.
"""

from __future__ import annotations

import dataclasses

from attachflow import errors
from attachflow.compute_side import ComputeHost
from attachflow.connectors.base import Transport
from attachflow.domxml import NetworkISCSISource
from attachflow.model import ConnectionInfo, ConnectorProperties

INITIATOR_PREFIX = "iqn.2024-01.dev.attachflow"


def secret_usage(volume_id: str, owner: str) -> str:
    """The usage name of the secret for this volume and guest (its UUID).

    libvirt's schema allows any character but '/' and newline in an iSCSI secret's usage
    target and in a disk's ``<secret usage=...>`` (``objectName``), hence the dashes.
    """
    return f"attachflow-{volume_id}-{owner}"


def secret_usages(volume_id: str, owner: str) -> tuple[str, ...]:
    """Every usage name the secret for this volume and guest may have: the current one,
    then ``attachflow/VOLUME/GUEST`` of guests attached by earlier versions (libvirt took
    it without validating, its schema refuses it)."""
    return (secret_usage(volume_id, owner), f"attachflow/{volume_id}/{owner}")


def initiator_name(host: ComputeHost) -> str:
    return f"{INITIATOR_PREFIX}:{host.cfg.connector_host}"


class NativeISCSI(Transport):
    name = "native"
    driver_volume_types = frozenset({"iscsi"})

    def connector_properties(self, host):
        return ConnectorProperties(host=host.cfg.connector_host, ip=host.cfg.address,
                                   initiator=initiator_name(host), multipath=False)

    def connect(self, host, conn: ConnectionInfo, owner):
        usage = None
        if conn.auth_username or conn.auth_password:
            if not conn.uses_chap or not conn.auth_password:
                raise errors.TransportMismatch(
                    f"volume {conn.volume_id}: auth method '{conn.auth_method}' is not "
                    "supported by QEMU's initiator (CHAP only)")
            usage = secret_usage(conn.volume_id, owner)
            # A secret left over by an earlier, interrupted run would make the define
            # fail; it is ours (the usage names this volume and guest), so replace it.
            host.hypervisor.undefine_secret(usage)
            host.hypervisor.define_secret(
                usage, conn.auth_password,
                f"CHAP for Cinder volume {conn.volume_id}, guest {owner}")
        # QEMU's initiator has no multipath: the primary portal only.
        return NetworkISCSISource(iqn=conn.iqn or "", lun=conn.lun or 0,
                                  hosts=(conn.portal,), auth_username=conn.auth_username,
                                  secret_usage=usage, initiator_iqn=initiator_name(host))

    def disconnect(self, host, conn, source, owner):
        # The disk names its secret, whichever name it was defined under; without that
        # name, every name it may have.
        named = source.secret_usage if isinstance(source, NetworkISCSISource) else None
        for usage in (named,) if named else secret_usages(conn.volume_id, owner):
            host.hypervisor.undefine_secret(usage)

    def predicted_source(self, source, destination):
        # The same target and CHAP user (what Cinder's target helpers return for a second
        # host); only the initiator is the destination's.
        if isinstance(source, NetworkISCSISource):
            return dataclasses.replace(source, initiator_iqn=initiator_name(destination))
        return source
