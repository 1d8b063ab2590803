"""The lab's one exception."""


class LabError(RuntimeError):
    """The lab could not be brought up, inspected or torn down."""
