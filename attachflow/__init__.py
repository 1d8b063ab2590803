"""attachflow: attach Cinder volumes to libvirt guests, detach them, boot volume-backed
guests and live-migrate them, from both ends (the storage API and the compute host).

The public API is what this package exports (``__all__``); every other module and name
is internal and may change. Start with ``Client``::

    import attachflow

    with attachflow.Client(cloud="mycloud", transport="native") as af:
        result = af.attach(volume_id, "vm1", host="compute1")
        print(result.device)            # "vdb"

Errors are ``AttachflowError`` and its subclasses; each has an ``exit_code`` (1: the
operation failed and was undone; 2: bad input or state, nothing changed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use below, so that `attachflow --help` stays light
    from attachflow.client import Client, migration_preview
    from attachflow.domxml import DirectBoot
    from attachflow.errors import (AttachflowError, DeviceInUse, DeviceRemovalTimeout,
                                   DomainNotFound, HostError, HypervisorError, InputError,
                                   NotAttached, OperationFailed, PreflightError,
                                   StorageError, StorageNotFound, StorageUnavailable,
                                   TransportMismatch, UnknownHost, VolumeNotFound,
                                   VolumeStateError)
    from attachflow.events import (Event, MigrationProgress, StepDone, StepStarted,
                                   StepUndone, UndoFailed)
    from attachflow.migrate import MigrationOptions, MigrationResult, Plan
    from attachflow.model import ConnectorProperties
    from attachflow.inventory import Entry
    from attachflow.operations import RESULT_SCHEMA_VERSION, DeleteResult, Result

_EXPORTS = {
    "attachflow.client": ("Client", "migration_preview"),
    "attachflow.domxml": ("DirectBoot",),
    "attachflow.errors": ("AttachflowError", "DeviceInUse", "DeviceRemovalTimeout",
                          "DomainNotFound", "HostError", "HypervisorError", "InputError",
                          "NotAttached", "OperationFailed", "PreflightError", "StorageError",
                          "StorageNotFound", "StorageUnavailable", "TransportMismatch",
                          "UnknownHost", "VolumeNotFound", "VolumeStateError"),
    "attachflow.events": ("Event", "MigrationProgress", "StepDone", "StepStarted",
                          "StepUndone", "UndoFailed"),
    "attachflow.migrate": ("MigrationOptions", "MigrationResult", "Plan"),
    "attachflow.model": ("ConnectorProperties",),
    "attachflow.inventory": ("Entry",),
    "attachflow.operations": ("DeleteResult", "RESULT_SCHEMA_VERSION", "Result"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AttachflowError",
    "Client",
    "ConnectorProperties",
    "DeleteResult",
    "DeviceInUse",
    "DeviceRemovalTimeout",
    "DirectBoot",
    "DomainNotFound",
    "Entry",
    "Event",
    "HostError",
    "HypervisorError",
    "InputError",
    "MigrationOptions",
    "MigrationProgress",
    "MigrationResult",
    "NotAttached",
    "OperationFailed",
    "Plan",
    "PreflightError",
    "RESULT_SCHEMA_VERSION",
    "Result",
    "StepDone",
    "StepStarted",
    "StepUndone",
    "StorageError",
    "StorageNotFound",
    "StorageUnavailable",
    "TransportMismatch",
    "UndoFailed",
    "UnknownHost",
    "VolumeNotFound",
    "VolumeStateError",
    "migration_preview",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'attachflow' has no attribute '{name}'")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
