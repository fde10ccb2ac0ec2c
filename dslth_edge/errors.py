"""The toolkit's exception hierarchy.

Every error a user can cause is a :class:`DslthError`; the CLI maps each class to an
exit code and prints its message as one line. Library code never calls ``sys.exit``.
"""

from __future__ import annotations

__all__ = [
    "DslthError",
    "UsageError",
    "ProfileError",
    "DatasetError",
    "WeightsError",
    "CheckpointError",
    "FrameError",
    "TransportError",
    "ExportError",
]


class DslthError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code: int = 1


class UsageError(DslthError):
    """The user asked for something that cannot be done as asked (bad option, name, path)."""

    exit_code = 2


class ProfileError(UsageError):
    """A hardware profile is unknown or its TOML is invalid."""


class DatasetError(UsageError):
    """A dataset is missing, malformed, or a partition cannot be built."""


class WeightsError(UsageError):
    """A fixed-weights file is missing, malformed, or does not match the model."""


class CheckpointError(DslthError):
    """A checkpoint or run directory is missing, corrupt, or from another configuration."""

    exit_code = 2


class FrameError(DslthError):
    """A mask frame failed a check; subclasses in :mod:`dslth_edge.wire` name the check."""


class TransportError(DslthError):
    """The transport (MQTT broker, connection, credentials) failed."""

    exit_code = 3


class ExportError(DslthError):
    """Shrinking or exporting a model failed, or an export extra is missing."""

    exit_code = 2
