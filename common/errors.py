"""Typed error hierarchy: every error says what went wrong and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass


class FedsynthError(Exception):
    """Base class of all fedsynth errors."""


class ConfigError(FedsynthError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class SchemaError(FedsynthError, ValueError):
    """A schema file is malformed or inconsistent."""


@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in a site's table.

    Args:
        file: the file the row came from.
        row: 1-based data row number (the header is not counted), or ``None`` for file-level issues.
        column: the column concerned, or ``None``.
        message: what is wrong and what was expected.
    """

    file: str
    row: int | None
    column: str | None
    message: str

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column '{self.column}'")
        return f"{', '.join(where)}: {self.message}"


class DataValidationError(FedsynthError, ValueError):
    """A site's table does not match the declared schema.

    The message lists the first issues (file, row, column) and how many there are in all.
    """

    def __init__(self, issues: list[ValidationIssue], *, max_listed: int = 10) -> None:
        self.issues = list(issues)
        shown = "\n".join(f"  - {issue}" for issue in self.issues[:max_listed])
        more = len(self.issues) - max_listed
        tail = f"\n  ... and {more} more issue(s)" if more > 0 else ""
        super().__init__(
            f"{len(self.issues)} data validation issue(s); fix the file or the schema:\n{shown}{tail}"
        )


class PrivacyBudgetExceeded(FedsynthError):
    """Training would spend more epsilon than the site's budget allows."""


class CheckpointError(FedsynthError):
    """A checkpoint or ledger file is missing, corrupt or incompatible."""


class ArtifactError(FedsynthError):
    """A generator artifact is missing files, corrupt or of an unknown version."""


class ReleaseBlocked(FedsynthError):
    """The generator has not passed the privacy audit and must not be released."""


class ModelUpdateRejected(FedsynthError):
    """A client's model update has non-finite values or the wrong shape."""
