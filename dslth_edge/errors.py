"""The toolkit's exception hierarchy and the exit codes of the ``dslth-edge`` command.

Every error a user can cause is a :class:`DslthError`; the CLI maps each class to an
exit code and prints its message as one line. Library code never calls ``sys.exit``.

Exit codes (docs/cli.md has the table, with what each means for a restart policy):

====  =====================================================================
0     done
1     an unexpected error (a bug: please report it with the traceback)
2     bad input: option, name, path, data, or a run directory that does not fit
3     over budget: an export violates its device's budget
4     isolated: a fleet node heard no neighbour in any round
5     the network failed: broker unreachable, credentials refused
6     not worth deploying: an exported file scores near chance or far below its masked model
130   interrupted (SIGINT/SIGTERM); the last checkpoint is kept
====  =====================================================================
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
    "OverBudgetError",
    "IsolatedError",
    "WeakModelError",
    "EXIT_OK",
    "EXIT_BUG",
    "EXIT_USAGE",
    "EXIT_OVER_BUDGET",
    "EXIT_ISOLATED",
    "EXIT_NETWORK",
    "EXIT_WEAK",
    "EXIT_INTERRUPTED",
    "EXIT_CODES",
]

EXIT_OK = 0
EXIT_BUG = 1
EXIT_USAGE = 2
EXIT_OVER_BUDGET = 3
EXIT_ISOLATED = 4
EXIT_NETWORK = 5
EXIT_WEAK = 6
EXIT_INTERRUPTED = 130

#: code -> meaning, the one table docs/cli.md and `dslth-edge --help` repeat
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_BUG: "unexpected error (a bug; the traceback says where)",
    EXIT_USAGE: "bad input: option, name, path, data, or a run directory that does not fit",
    EXIT_OVER_BUDGET: "over budget: an export violates its device's budget, or training does not fit its RAM even at micro-batch 1",
    EXIT_ISOLATED: "isolated: a fleet node heard no neighbour in any round",
    EXIT_NETWORK: "network failure: broker unreachable or credentials refused",
    EXIT_WEAK: "not worth deploying: an exported file scores near chance or far below its masked model",
    EXIT_INTERRUPTED: "interrupted (SIGINT/SIGTERM); the last checkpoint is kept",
}


class DslthError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    exit_code: int = EXIT_BUG


class UsageError(DslthError):
    """The user asked for something that cannot be done as asked (bad option, name, path)."""

    exit_code = EXIT_USAGE


class ProfileError(UsageError):
    """A hardware profile is unknown or its TOML is invalid."""


class DatasetError(UsageError):
    """A dataset is missing, malformed, or a partition cannot be built."""


class WeightsError(UsageError):
    """A fixed-weights file is missing, malformed, or does not match the model."""


class CheckpointError(DslthError):
    """A checkpoint or run directory is missing, corrupt, or from another configuration."""

    exit_code = EXIT_USAGE


class FrameError(DslthError):
    """A mask frame failed a check; subclasses in :mod:`dslth_edge.wire` name the check."""


class TransportError(DslthError):
    """The transport (MQTT broker, connection, credentials) failed."""

    exit_code = EXIT_NETWORK


class ExportError(DslthError):
    """Shrinking or exporting a model failed, or an export extra is missing."""

    exit_code = EXIT_USAGE


class OverBudgetError(DslthError):
    """An exported model violates its device's budget (flash, RAM, latency)."""

    exit_code = EXIT_OVER_BUDGET


class IsolatedError(DslthError):
    """A fleet node finished without hearing any neighbour in any round (wrong fleet name or broker?)."""

    exit_code = EXIT_ISOLATED


class WeakModelError(DslthError):
    """An exported file is not worth deploying: near chance, or far below the node's masked model."""

    exit_code = EXIT_WEAK
