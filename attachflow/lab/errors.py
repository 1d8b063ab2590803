"""The lab's one exception, part of attachflow's exception tree."""

from attachflow.errors import AttachflowError


class LabError(AttachflowError):
    """The lab could not be brought up, inspected or torn down."""
