"""User-facing errors: the CLI prints them as one line and exits with their code."""

from __future__ import annotations


class ClvError(Exception):
    """Base class of errors caused by the user's input or settings, not by a bug."""

    exit_code = 2


class ConfigError(ClvError):
    """A configuration file or override is missing, malformed or has a bad value."""


class InputDataError(ClvError):
    """A transaction log or features file cannot be used as it is."""


class TrackingError(ClvError):
    """The MLflow tracking server or registry cannot be reached or used."""

    exit_code = 3


class LockHeldError(ClvError):
    """Another retrain holds the lock."""

    exit_code = 75  # EX_TEMPFAIL: a scheduler may simply try again later


class ReleaseRejectedError(ClvError):
    """A retrain's challenger failed the release gates: registered, tagged, never promoted."""

    exit_code = 4


class EngineError(ClvError):
    """The compute engine failed under a run: a lost executor, a cluster that cannot be reached
    or started, a job out of memory. Nothing was committed; rerunning may succeed."""

    exit_code = 5


class DataQualityWarning(UserWarning):
    """Usable input with something a person should look at (printed as one ``warning:`` line)."""
