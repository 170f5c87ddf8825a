"""The work folder's layout, defined once: the MLflow store, artifacts and caches."""

from __future__ import annotations

from pathlib import Path

DB_NAME = "mlflow.db"  # the default SQLite tracking store
ARTIFACT_DIR = "mlartifacts"  # artifacts of the default store
CACHE_DIR = "auditflow-cache"  # snapshots, resumable checkpoints, per-run files, reports


def cache_dir(workdir: str | Path) -> Path:
    """Snapshots and resumable checkpoints, shared by all runs in `workdir`."""
    return Path(workdir).resolve() / CACHE_DIR


def run_dir(workdir: str | Path, run_id: str) -> Path:
    """Files of one pipeline run (checkpoint, predictions, ONNX, report) before they are logged."""
    path = cache_dir(workdir) / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def reports_dir(workdir: str | Path, run_id: str) -> Path:
    """Where `auditflow report RUN_ID` rebuilds a past run's report."""
    return cache_dir(workdir) / "reports" / run_id


def trained_dir(workdir: str | Path, key: str) -> Path:
    """A finished training of data + config `key` (checkpoint and `result.json`), which a later
    run with the same data and config reuses instead of training again."""
    return cache_dir(workdir) / "trained" / key


def log_file(workdir: str | Path, stamp: str) -> Path:
    """The full log of one CLI run (tracebacks included), named by its start time."""
    path = cache_dir(workdir) / "logs" / f"run-{stamp}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
