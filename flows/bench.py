"""A flow that runs only ingest + train, to measure what orchestration and tracking add."""

from __future__ import annotations

import time

from prefect import flow

from auditflow.core.config import load_config
from auditflow.models.training.benchtrain import TrainBench
from auditflow.tasks.ingest import ingest_data
from auditflow.tasks.run import close_run, open_run
from auditflow.tasks.train import train_model


@flow(name="auditflow-train-overhead")
def train_overhead(profile: str, data: str, overrides: list[str] | None = None, workdir: str = ".") -> dict[str, float]:
    """Wall time of the train task as the flow sees it (Prefect + MLflow + checkpoint copies)."""
    cfg = load_config(profile, overrides or [])
    ref = open_run(cfg, data, workdir, "train-overhead")
    try:
        snap = ingest_data(ref, data, cfg.data, workdir)
        start = time.perf_counter()
        trained = train_model(ref, snap.snapshot, data_cfg=cfg.data, cfg=cfg.train, workdir=workdir)
        task_wall = time.perf_counter() - start
    except BaseException as err:
        close_run(ref, err)
        raise
    close_run(ref)
    return {"task_wall_seconds": task_wall, "train_seconds": trained.train_seconds}


def overhead_split(direct: TrainBench, flow_result: dict[str, float]) -> dict[str, float]:
    """What the flow adds over a direct `fit` call of the same config.

    The training loop runs the same code in both and differs only by noise, so the time
    outside the loop is what orchestration and tracking can add to (`outside_loop_extra_*`);
    `overhead_fraction` is the whole task against the whole direct call."""
    outside = (flow_result["task_wall_seconds"] - flow_result["train_seconds"]) - (
        direct.wall_seconds - direct.train_seconds
    )
    return {
        "direct_wall_seconds": direct.wall_seconds,
        "direct_train_seconds": direct.train_seconds,
        **flow_result,
        "overhead_fraction": flow_result["task_wall_seconds"] / direct.wall_seconds - 1,
        "outside_loop_extra_seconds": outside,
        "outside_loop_extra_fraction": outside / direct.wall_seconds,
    }
