"""Domain errors. They carry no transport detail: the serving layer maps them to codes."""


class RaysightError(Exception):
    """Base class of every error raysight raises on purpose."""


class DataError(RaysightError, ValueError):
    """A dataset is missing, malformed or inconsistent. The message names the file."""


class CheckpointError(RaysightError, ValueError):
    """A checkpoint is missing, tampered with, truncated or of an unknown format."""


class ConfigError(RaysightError, ValueError):
    """A configuration value is invalid. The message names the field."""


class InputError(RaysightError, ValueError):
    """A request's input is malformed (shape, dtype, size). The message names the field."""
