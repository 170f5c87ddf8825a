"""Where a run's files live inside the work folder."""

from __future__ import annotations

from pathlib import Path

CACHE_DIR = "auditflow-cache"


def cache_dir(workdir: str | Path) -> Path:
    """Snapshots and resumable checkpoints, shared by all runs in `workdir`."""
    return Path(workdir).resolve() / CACHE_DIR


def run_dir(workdir: str | Path, run_id: str) -> Path:
    """Files of one pipeline run (checkpoint, predictions, ONNX, report) before they are logged."""
    path = cache_dir(workdir) / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path
