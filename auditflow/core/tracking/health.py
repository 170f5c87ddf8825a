"""Whether the tracking store can be used: checked once before any work, and its errors told
apart (an outage that a later try may not meet, or a bad request).

`preflight` fails fast, naming what is wrong and what to do, when an HTTP tracking server does
not answer or a SQLite store's folder is not writable or its file is not a readable SQLite
database; the CLI and `open_pipeline_run` call it before work starts. `_is_store_error` and
`_first_line` let the tracker turn MLflow's errors into `TrackingOutageError` (retried) or
`TrackingError` with one readable line.

Re-exported by `auditflow.core.tracking`; import from there.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from auditflow.core.errors import TrackingError, TrackingOutageError
from auditflow.core.files import check_sqlite_file, check_writable

PROBE_TIMEOUT_S = 5.0  # the preflight check of an HTTP tracking server


# Errors of the store that a later try may not meet: an outage, not a bad request (MLflow's SQL
# store maps SQLite's "database is locked" to TEMPORARILY_UNAVAILABLE; its REST client raises
# INTERNAL_ERROR when the server cannot be reached or fails).
_OUTAGE_CODES = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")


def _is_store_error(err: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code in _OUTAGE_CODES


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", "") or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def preflight(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check once, before any work, that the store at `uri` can be used: an HTTP tracking
    server answers within `timeout_s`; a SQLite store's folder is writable and its file, when
    there is one, is a readable SQLite database. `TrackingError` naming what is wrong and
    what to do. Other schemes (postgresql, databricks ...) are not checked here."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                return
        except urllib.error.HTTPError:  # it answered (an auth proxy, an older server): reachable
            return
        except (OSError, ValueError) as err:  # refused, unresolvable, timed out
            reason = getattr(err, "reason", None) or err
            raise TrackingOutageError(
                f"cannot reach the MLflow store at {uri}: {reason}; start the tracking server or point "
                "MLFLOW_TRACKING_URI (or tracking.tracking_uri) at one that runs"
            ) from err
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    check_writable(db.parent, f"the folder of the MLflow store {db.parent}", TrackingError)
    fix = f"move it aside (mv {db} {db}.bad) to start an empty store there, or restore it from a backup"
    check_sqlite_file(db, f"the MLflow store {db}", fix, error=TrackingError)
