"""Stage 2: snapshot -> trained checkpoint, with per-epoch metrics in MLflow."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.config import DataConfig, TrainConfig
from auditflow.data import Snapshot, make_splits
from auditflow.tracking import RunLogger, Tracker, TrackingRef
from models.runtime import resolve_runtime
from models.training import EpochStats, fit
from tasks._common import cache_dir, run_dir


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str  # final checkpoint of this run
    val_accuracy: float  # last epoch, 0..1
    train_seconds: float  # training passes only


def resume_key(digest: str, data_cfg: DataConfig, train_cfg: TrainConfig) -> str:
    """Checkpoints of an unfinished run are found again by data + config."""
    blob = json.dumps([digest, data_cfg.model_dump(mode="json"), train_cfg.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@task(name="train", cache_policy=NO_CACHE)
def train_model(ref: TrackingRef, snapshot_path: str, data_cfg: DataConfig, cfg: TrainConfig, workdir: str) -> TrainResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "train") as run:
        runtime = resolve_runtime(cfg.device, cfg.precision, cfg.num_threads)
        run.log_params({f"train.{k}": v for k, v in cfg.model_dump().items()})
        run.set_tags(runtime.describe())
        RunLogger(tracker.client, ref.run_id).set_tags(
            {"auditflow.device": runtime.describe()["device_name"], "auditflow.precision": runtime.describe()["precision"]}
        )
        snapshot = Snapshot.open(snapshot_path)
        splits = make_splits(snapshot, data_cfg)
        work = cache_dir(workdir) / "checkpoints" / resume_key(snapshot.digest, data_cfg, cfg)

        def on_epoch(stats: EpochStats) -> None:
            run.log_metrics({k: v for k, v in stats.__dict__.items() if k != "epoch"}, step=stats.epoch)

        result = fit(splits, cfg, runtime, work, on_epoch=on_epoch)
        final = run_dir(workdir, ref.run_id) / "model.pt"
        shutil.copy2(result.checkpoint, final)
        shutil.rmtree(work, ignore_errors=True)  # finished: nothing left to resume
        run.log_artifact(final, "checkpoint")
        last = result.history[-1]
        summary = {
            "model": cfg.model, "parameters": result.parameters, "epochs": cfg.epochs,
            "train_seconds": result.train_seconds,
            "images_per_second": result.images_per_second,
            "final_val_accuracy": last.val_accuracy,
            "best_val_accuracy": max(h.val_accuracy for h in result.history),
            "resumed_from_epoch": result.resumed_from_epoch, "runtime": runtime.describe(),
        }
        run.log_metrics({k: summary[k] for k in ("train_seconds", "images_per_second", "final_val_accuracy", "parameters")})
        run.log_summary("train", summary)
    return TrainResult(str(final), last.val_accuracy, result.train_seconds)
