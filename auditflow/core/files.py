"""Checks of local files and folders a run will write, made once before any work so that a
bad one is one line naming it rather than minutes of retries: used for the MLflow store
(`auditflow.core.tracking.preflight`) and Prefect's home (`auditflow.flows.preflight`)."""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path

from auditflow.core.errors import AuditflowError

SQLITE_MAGIC = b"SQLite format 3\x00"


def check_writable(folder: Path, what: str, error: type[AuditflowError] = AuditflowError) -> None:
    """`error` unless a file can be created in `folder` (SQLite writes a journal beside its
    database). A real write, not a permission check: root ignores the mode bits, a read-only
    mount does not. A folder that does not exist yet passes: it is made later, under a folder
    the caller checks."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".auditflow-write-check-"):
            pass
    except FileNotFoundError:
        return
    except OSError as err:
        raise error(f"{what} is not writable: {err.strerror}; make it writable or use another folder") from err


def check_sqlite_file(db: Path, what: str, fix: str, *, error: type[AuditflowError] = AuditflowError) -> None:
    """`error` unless `db` (when it exists) opens for writing and reads as an SQLite database.
    `what` names it ("the MLflow store /w/mlflow.db"), `fix` says what to do."""
    if not db.exists():
        return
    try:
        with open(db, "r+b") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise error(f"{what} cannot be opened for writing: {err.strerror}") from err
    if head and head != SQLITE_MAGIC:
        raise error(f"{what} is not an SQLite database (damaged or another file); {fix}")
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
            conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as err:
        raise error(f"{what} cannot be read ({err}); {fix}") from err
