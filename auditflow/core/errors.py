"""One error hierarchy for the whole project.

Every error a user can cause derives from :class:`AuditflowError`, names the bad value and,
where it helps, what would be accepted. The CLI turns these into one red line and exit code 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class AuditflowError(Exception):
    """Base class of every error caused by user input or the environment."""


class ConfigError(AuditflowError):
    """A configuration value, profile or override is invalid."""


class DataError(AuditflowError):
    """A data source is missing, unreadable, corrupt or inconsistent."""


class UnsafeArchiveError(DataError):
    """An archive entry would escape its folder or is a link."""


class TrackingError(AuditflowError):
    """The tracking store is unreachable or a run id is unknown."""


class TrackingOutageError(TrackingError):
    """The tracking store stopped answering during a run: transient, so a retry or a rerun
    (which reuses finished work) may succeed."""


class OrchestrationError(AuditflowError):
    """The Prefect API a run depends on stopped answering."""


class ModelError(AuditflowError):
    """An unknown model name, or a checkpoint that does not fit its model."""
