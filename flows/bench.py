"""A flow that runs only ingest + train, to measure what orchestration and tracking add."""

from __future__ import annotations

import time

from prefect import flow

from auditflow.config import load_config
from tasks.ingest import ingest_data
from tasks.run import close_run, open_run
from tasks.train import train_model


@flow(name="auditflow-train-overhead")
def train_overhead(profile: str, data: str, overrides: list[str] | None = None, workdir: str = ".") -> dict[str, float]:
    """Wall time of the train task as the flow sees it (Prefect + MLflow + checkpoint copies)."""
    cfg = load_config(profile, overrides or [])
    ref = open_run(cfg, data, workdir, "train-overhead")
    try:
        snap = ingest_data(ref, data, cfg.data, workdir)
        start = time.perf_counter()
        trained = train_model(ref, snap.snapshot, cfg.data, cfg.train, workdir)
        task_wall = time.perf_counter() - start
    except BaseException as err:
        close_run(ref, err)
        raise
    close_run(ref)
    return {"task_wall_seconds": task_wall, "train_seconds": trained.train_seconds}
