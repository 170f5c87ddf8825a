"""Training benchmark: one profile, several seeds, `fit` called directly (no orchestration).

Each seed trains from scratch, then the test split is scored in fp32 with the profile's test-time
augmentation (as the pipeline's evaluation reports it) and without (the file that ships).
Training time excludes validation, checkpoints and start-up, as the public CIFAR-10 speed
records time it.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auditflow.core.config import PipelineConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.models.evaluation.inference import predict
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.fit import fit
from auditflow.models.training.precision import trained_runtime
from auditflow.models.training.runtime import resolve_runtime
from auditflow.models.training.speed import Peak, device_peak, speed_metrics


@dataclass(frozen=True)
class TrainBench:
    profile: str
    seed: int
    test_accuracy: float  # 0..1, with the profile's TTA
    shipped_accuracy: float  # 0..1, without TTA: what the exported file does
    wall_seconds: float  # splits + fit, as a direct call
    train_seconds: float
    images_per_second: float
    flops_per_image: float
    achieved_flops_per_second: float
    fraction_of_peak: float
    peak_source: str
    time_to_target_seconds: float | None
    epochs: int  # epochs run (the time budget's choice, or the configured count)
    plan: str  # why that many epochs
    val_seconds: float  # sum of per-epoch validations (outside train_seconds)
    kept_weights: str  # "raw" or "ema"


def bench_train(
    snapshot: Snapshot, cfg: PipelineConfig, seed: int, *, peak: Peak | None = None, scratch: str | Path | None = None
) -> TrainBench:
    """Train `cfg` with `seed` on `snapshot` and measure it."""
    train = cfg.train.model_copy(update={"seed": seed})
    runtime = resolve_runtime(train.device, train.precision, train.num_threads)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        start = time.perf_counter()
        splits = make_splits(snapshot, cfg.data)
        result = fit(splits, train, runtime, checkpoint_dir=tmp)
        wall = time.perf_counter() - start
        model, _ = load_model(result.checkpoint, runtime.device)
    fp32 = resolve_runtime(train.device, "fp32")
    logits = predict(model, splits.test_x, fp32, tta=train.tta, translate=train.tta_translate)
    shipped = predict(model, splits.test_x, fp32, tta=False) if train.tta else logits
    peak = peak or device_peak(trained_runtime(runtime, result.precision))
    speed = speed_metrics(
        result.flops_per_image,
        result.images_per_second,
        result.train_seconds,
        peak_flops=peak.flops_per_second,
        time_to_target=result.time_to_target,
    )
    return TrainBench(
        profile=cfg.profile,
        seed=seed,
        test_accuracy=float((logits.argmax(1) == splits.test_y).mean()),
        shipped_accuracy=float((shipped.argmax(1) == splits.test_y).mean()),
        wall_seconds=wall,
        train_seconds=result.train_seconds,
        images_per_second=result.images_per_second,
        flops_per_image=result.flops_per_image,
        achieved_flops_per_second=speed["achieved_flops_per_second"],
        fraction_of_peak=speed["fraction_of_peak"],
        peak_source=peak.source,
        time_to_target_seconds=result.time_to_target,
        epochs=result.plan["epochs"],
        plan=result.plan["reason"],
        val_seconds=result.val_seconds,
        kept_weights=result.choice["kept"],
    )


def summarise(rows: list[TrainBench]) -> dict[str, float]:
    """Mean and sample standard deviation of accuracy and time over seeds."""
    acc = np.array([r.test_accuracy for r in rows])
    secs = np.array([r.train_seconds for r in rows])
    return {
        "n": len(rows),
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=1)) if len(rows) > 1 else 0.0,
        "train_seconds_mean": float(secs.mean()),
        "train_seconds_max": float(secs.max()),
    }


def compare_to_baseline(summary: dict[str, float], base: TrainBench) -> dict[str, float | None]:
    """The profile's mean against one baseline run: accuracy points gained (higher is better),
    error-rate ratio (lower is better; None when the baseline makes no error, as a ratio to
    zero means nothing) and training-time ratio."""
    return {
        "accuracy_points": 100 * (summary["accuracy_mean"] - base.test_accuracy),
        "train_time_ratio": summary["train_seconds_mean"] / base.train_seconds,
        "error_ratio": (1 - summary["accuracy_mean"]) / (1 - base.test_accuracy) if base.test_accuracy < 1 else None,
    }
