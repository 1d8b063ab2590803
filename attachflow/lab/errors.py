"""The lab's exceptions, part of attachflow's exception tree."""

from attachflow.errors import AttachflowError


class LabError(AttachflowError):
    """The lab could not be brought up, inspected or torn down."""


class NeverReady(LabError):
    """A component that failed in a way waiting will not mend (a unit that failed at boot):
    a readiness wait stops at once with this instead of polling out its timeout."""
