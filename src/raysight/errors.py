"""Domain errors. They carry no transport detail: the serving layer maps them to codes."""


class RaysightError(Exception):
    """Base class of every error raysight raises on purpose."""


class DataError(RaysightError, ValueError):
    """A dataset is missing, malformed or inconsistent. The message names the file."""


class CheckpointError(RaysightError, ValueError):
    """A checkpoint is missing, corrupted, truncated or of an unknown format."""


class ConfigError(RaysightError, ValueError):
    """A configuration value is invalid. The message names the field."""


class InputError(RaysightError, ValueError):
    """A request's input is malformed (shape, dtype, size). The message names the field.

    `reason` is a short fixed word for metrics (never request data): invalid_input,
    bad_shape, too_large, not_an_image, ...
    """

    def __init__(self, message: str, reason: str = "invalid_input") -> None:
        super().__init__(message)
        self.reason = reason
