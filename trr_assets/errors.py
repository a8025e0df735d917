"""One root exception and its family.

Driver and boto errors are wrapped where they happen (``db`` and ``storage``)
with ``raise ... from exc``; the CLI maps each class to one exit code, and
nothing else decides exit codes.
"""

from __future__ import annotations

from typing import Any, Protocol


class TrrAssetsError(Exception):
    """Root of every error trr-assets raises on purpose.

    Messages are one line, name the problem, and never carry a secret.
    """

    exit_code = 1


class ConfigError(TrrAssetsError):
    """A configuration value is missing, malformed or unknown (exit 2)."""

    exit_code = 2


class UsageError(TrrAssetsError):
    """A command-line argument is malformed (exit 2)."""

    exit_code = 2


class DatabaseError(TrrAssetsError):
    """PostgreSQL refused or could not be reached (exit 1)."""


class StorageError(TrrAssetsError):
    """S3 refused or could not be reached (exit 1)."""


class BucketNotFound(StorageError):
    """The bucket does not exist or is not visible with these credentials."""


class MigrationError(DatabaseError):
    """A migration file failed to apply; nothing of it was recorded."""


class AssetNotFound(TrrAssetsError, LookupError):
    """No row the caller may see has this id."""


class UploadRefused(TrrAssetsError):
    """``upload_url`` refused an upload (size, content type, rights, no such
    show); no row was written."""


class DriftFound(TrrAssetsError):
    """``reconcile --exit-code`` found drift (exit 3)."""

    exit_code = 3


class RepairRefused(TrrAssetsError):
    """``reconcile --repair`` refused by a safety limit; nothing deleted (exit 4)."""

    exit_code = 4


class Summary(Protocol):
    """What every job's report offers: its figures, and what failed."""

    @property
    def failures(self) -> tuple[str, ...]:
        """One line per part that failed; empty when the whole run succeeded."""
        ...

    def as_dict(self) -> dict[str, Any]: ...


class PartialFailure(TrrAssetsError):
    """A job ran but part of it failed (exit 1); ``summary`` is its report.

    The one way a partial failure reaches the edge: the CLI renders the
    summary, then exits with this error's code; the worker logs the summary's
    figures with the failure.
    """

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


class ReconcileIncomplete(PartialFailure):
    """A bucket could not be read whole, or repairs failed (exit 1)."""


class ReconcileRefused(RepairRefused, PartialFailure):
    """Repair refused for at least one bucket by a safety limit (exit 4)."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its class name when it has none."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


class QueueError(TrrAssetsError):
    """SQS refused or could not be reached, or a queue does not exist (exit 1)."""


class MessageError(TrrAssetsError, ValueError):
    """A queue message that is not an S3 Event Notification (plain or wrapped by SNS)."""
