"""The one exception tree of attachflow.

Every error the library raises on purpose derives from ``AttachflowError``; the CLI maps
the tree to one-line messages and exit codes (``exit_code``)::

    AttachflowError                      exit 1 unless a subclass says otherwise
    ├── InputError                       exit 2: bad usage or bad input, nothing changed
    │   ├── UnknownHost                  no such compute host in the hosts file
    │   ├── DomainNotFound               no such libvirt domain
    │   ├── VolumeNotFound               no such Cinder volume
    │   ├── VolumeStateError             the volume is not in a state the operation needs
    │   ├── DeviceInUse                  the requested target device is taken
    │   ├── NotAttached                  the volume is not attached to that domain
    │   ├── TransportMismatch            connection type and requested transport do not fit
    │   └── PreflightError               a live migration's check failed before any change
    ├── StorageError                     the storage API failed (HTTP, connection)
    │   ├── StorageNotFound              404 from the storage API
    │   ├── StorageUnavailable           connection refused, timeouts, 5xx
    │   │   └── KeystoneUnavailable      the same, from Keystone during a login
    │   └── AuthError                    exit 3: Keystone refused the credentials, or the
    │                                    storage API refused the user (401, 403)
    ├── HostError                        host-side connect/disconnect or the remote shell
    ├── HypervisorError                  libvirt refused or failed
    │   └── DeviceRemovalTimeout         the guest did not release a disk in time
    ├── OperationFailed                  a step of a multi-step operation failed; the steps
    │                                    already done were undone (``undo_failures`` lists
    │                                    what could not be), or kept when the failed step
    │                                    cannot be gone back on (``next_step`` says why)
    ├── JournalError                     the operations journal cannot be opened or written
    ├── Busy                             exit 4: another operation holds the volume or
    │                                    domain (after waiting for it)
    ├── RecoveryNeeded                   exit 5: an earlier operation on the volume or
    │                                    domain was interrupted (``attachflow recover``), or
    │                                    recover found something only a human can settle
    └── lab.LabError                     the local lab could not be brought up, inspected or
                                         torn down

Messages never carry secrets: connection info is parsed at the boundary into types whose
``repr`` masks CHAP passwords, and storage errors are re-raised without request bodies.
"""

from __future__ import annotations


class AttachflowError(Exception):
    exit_code = 1
    #: the journal's id of the operation that raised it, when it was one
    operation_id: str | None = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(AttachflowError):
    exit_code = 2


class UnknownHost(InputError):
    pass


class DomainNotFound(InputError):
    pass


class VolumeNotFound(InputError):
    pass


class VolumeStateError(InputError):
    pass


class DeviceInUse(InputError):
    pass


class NotAttached(InputError):
    pass


class PreflightError(InputError):
    pass


class TransportMismatch(InputError):
    pass


class StorageError(AttachflowError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class StorageNotFound(StorageError):
    pass


class StorageUnavailable(StorageError):
    """``sent`` is False when the request never reached the server (the connection was
    refused or timed out before it was made): the call certainly changed nothing."""

    def __init__(self, message: str, status: int | None = None, sent: bool = True):
        super().__init__(message, status)
        self.sent = sent


class KeystoneUnavailable(StorageUnavailable):
    pass


class AuthError(StorageError):
    """Keystone refused a login (wrong password, unknown user or project, no role there),
    or the storage API refused the user this call (policy). Exit 3: nothing was changed
    by the refused call; the fix is in the credentials or the user's roles."""
    exit_code = 3


class HostError(AttachflowError):
    pass


class HypervisorError(AttachflowError):
    pass


class DeviceRemovalTimeout(HypervisorError):
    pass


class OperationFailed(AttachflowError):
    """A step failed; what was done before it has been undone, as far as possible.

    ``step`` names the failed step, ``cause`` is the original error and
    ``undo_failures`` lists ``(step, error)`` pairs whose undo itself failed: those are
    the things an operator has to clean up by hand, and the message says so.

    ``next_step``: set when the failed step cannot be gone back on once started (see
    ``plans.Rule.FORWARD_ONCE_ASKED``): nothing was undone, and this says what the
    operator does next; ``{op_id}`` in it names the operation once the journal has it.
    """

    def __init__(self, operation: str, step: str, cause: BaseException,
                 undo_failures: list[tuple[str, BaseException]] | None = None,
                 uncertain: bool = False, next_step: str = ""):
        self.operation = operation
        self.step = step
        # The failed step changes something and did not fail by a refusal: it may
        # have taken effect (an answer lost after Cinder acted): recover looks.
        self.uncertain = uncertain
        self.cause = cause
        self.undo_failures = list(undo_failures or [])
        self.next_step = next_step
        message = f"{operation} failed at step '{step}': {cause}"
        if next_step:
            message += " (earlier steps kept)"
        elif self.undo_failures:
            left = "; ".join(f"{name}: {err}" for name, err in self.undo_failures)
            message += f" -- could NOT undo: {left}"
        else:
            message += " (all earlier steps undone)"
        super().__init__(message)

    def __str__(self) -> str:
        message = super().__str__()
        if not self.next_step:
            return message
        op_id = self.operation_id[:8] if self.operation_id else "<operation id>"
        return f"{message}; {self.next_step.format(op_id=op_id)}"

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        # Bad input found only by the service (e.g. Cinder refusing to reserve a volume
        # in use) is still bad input, and a refused login still a refused login: report
        # them as such once everything is undone.
        if isinstance(self.cause, (InputError, AuthError)) and not self.undo_failures:
            return self.cause.exit_code
        return 1


class JournalError(AttachflowError):
    pass


class Busy(AttachflowError):
    exit_code = 4


class RecoveryNeeded(AttachflowError):
    exit_code = 5
