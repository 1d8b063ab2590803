"""Transports: one module each, chosen by Cinder's driver_volume_type plus what the user
asks for (``kernel``: os-brick on the host; ``native``: QEMU's own initiator)."""

from __future__ import annotations

from attachflow import errors
from attachflow.connectors.base import Transport

TRANSPORTS = ("kernel", "native")


def get_transport(name: str, multipath: bool = False) -> Transport:
    if name == "kernel":
        from attachflow.connectors.iscsi_kernel import KernelISCSI
        return KernelISCSI(multipath=multipath)
    if name == "native":
        if multipath:
            raise errors.TransportMismatch(
                "QEMU's own initiator has no multipath; use --transport kernel")
        from attachflow.connectors.iscsi_native import NativeISCSI
        return NativeISCSI()
    raise errors.InputError(f"unknown transport '{name}' ({', '.join(TRANSPORTS)})")


def check_fits(transport: Transport, driver_volume_type: str, volume_id: str) -> None:
    """Refuse a connection type the chosen transport cannot carry."""
    if driver_volume_type not in transport.driver_volume_types:
        raise errors.TransportMismatch(
            f"volume {volume_id} is exported as '{driver_volume_type}'; transport "
            f"'{transport.name}' carries only {', '.join(sorted(transport.driver_volume_types))}")
