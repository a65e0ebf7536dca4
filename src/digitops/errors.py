"""The package's exceptions and the exit codes they stand for.

Every error the library raises on purpose is a :class:`DigitopsError`; each area
has its subclass, and each class carries the exit code the command line ends
with. The one place that turns them into an exit is
:class:`digitops.cli.DigitopsGroup` (the ``digitops`` group), so every
command exits the same way for the same trouble:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     ok (the gate passed, the command did what was asked)
1     the answer is no: the gate failed, a notebook failed, ``doctor`` found a problem
2     the command could not do what was asked: bad usage or parameters, missing
      configuration, an unreadable store or service, unknown run or version, a
      checksum mismatch, or the gate cannot judge (fail closed)
128+N stopped by signal N (130 for Ctrl-C, 143 for SIGTERM); the run is marked failed
====  ==========================================================================
"""

from __future__ import annotations

EXIT_OK = 0
#: The gate failed, a notebook failed, a check found a problem.
EXIT_FAILED = 1
#: Usage, configuration or an error that kept the command from doing its job.
EXIT_ERROR = 2
#: Added to the signal number for a run stopped by a signal.
EXIT_SIGNAL_BASE = 128


class DigitopsError(Exception):
    """Root of the errors digitops raises on purpose; ``exit_code`` is what the CLI exits with."""

    exit_code: int = EXIT_ERROR


class UsageError(DigitopsError):
    """An argument or option that cannot work (checked before any work starts)."""


class NotFound(UsageError, FileNotFoundError):
    """A file or run the command was pointed at does not exist (still a ``FileNotFoundError``)."""


class ConfigError(DigitopsError):
    """A setting (environment variable, config file) is missing or malformed."""


class ParameterError(UsageError, ValueError):
    """A notebook parameter is unknown, of the wrong type or out of range."""


class DataError(DigitopsError):
    """The dataset cannot be found, read or trusted."""


class ChecksumError(DataError):
    """A file's SHA256 differs from the one expected (a dataset file, a registered model)."""


class StoreError(DigitopsError):
    """A local store (SQLite database, state folder) cannot be used."""


class TrackingError(StoreError):
    """The tracker cannot do what was asked (unknown run, unreadable store, Comet down)."""


class RegistryError(StoreError):
    """The model registry cannot do what was asked (unknown version, bad status, unreadable)."""


class CompareError(DigitopsError):
    """The comparison cannot be made (unknown run, missing metric, bad gate)."""


class CannotJudge(CompareError):
    """The gate cannot see what it needs (production or history unreadable): never a pass."""


class PublishError(DigitopsError):
    """A report or trigger could not be published."""


class SyncError(DigitopsError):
    """Offline Comet data could not be (fully) uploaded; what was not sent is kept."""


class NotebookFailed(DigitopsError):
    """A stage's notebook raised or its kernel died (exit 1, like a failed gate)."""

    exit_code = EXIT_FAILED
