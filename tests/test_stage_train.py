"""The train stage's pure parts (`models/training/stage.py`, `models/training/canaries.py`),
without training: the canaries drawn once and carried in the stage's result, the report's
names, params, tags, headline and summary built from a hand-made `FitResult`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditflow.core.config import TrainConfig
from auditflow.core.data import Splits
from auditflow.core.names import Stage, Train
from auditflow.models.training.canaries import choose_canaries, hold_out_canaries
from auditflow.models.training.fit import EpochStats, FitResult
from auditflow.models.training.runtime import resolve_runtime
from auditflow.models.training.speed import Peak
from auditflow.models.training.stage import (
    Places,
    TrainData,
    Training,
    epoch_metrics,
    start_report,
    train_metrics,
    train_report,
)

CPU = resolve_runtime("cpu", "fp32")


def _splits(n: int = 40) -> Splits:
    x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
    return Splits(x, np.arange(n) % 2, x[:4], np.zeros(4, int), x[:4], np.zeros(4, int), ("a", "b"))


def _fit(tmp_path: Path, **changes: object) -> FitResult:
    stats = [
        EpochStats(epoch=e, train_loss=1.0 / e, train_accuracy=0.5 + e / 10, val_loss=0.9, val_accuracy=0.6, lr=0.1,
                   seconds=2.0, images_per_second=100.0, val_seconds=0.5)
        for e in (1, 2)
    ]  # fmt: skip
    values: dict = {
        "checkpoint": tmp_path / "last.pt",
        "history": tuple(stats),
        "train_seconds": 4.0,
        "images_per_second": 100.0,
        "parameters": 1234,
        "resumed_from_epoch": 0,
        "flops_per_image": 1e6,
        "time_to_target": None,
        "state_digest": "ab" * 32,
        "compile_seconds": 0.5,
        "plan": {"epochs": 2, "reason": "2 of 2 epochs: no time budget"},
        "choice": {"kept": "raw", "raw_accuracy": 0.6, "ema_accuracy": None, "scored_on": "validation"},
        "final_val_accuracy": 0.6,
    }
    return FitResult(**(values | changes))


def _data(tmp_path: Path, canaries: int = 0) -> TrainData:
    whole = _splits()
    splits, chosen = hold_out_canaries(whole, canaries, 5)
    return TrainData(splits, len(whole.train_y), chosen, Places(tmp_path / "w", tmp_path / "f", tmp_path / "model.pt"))


def _report(tmp_path: Path, data: TrainData, reused: dict | None = None, **changes: object):
    training = Training(_fit(tmp_path, **changes), reused, data.places.final)
    return train_report(training, data, TrainConfig(epochs=2), peak=Peak(1e9, "measured"), runtime=CPU, sources={})


def test_the_canaries_drawn_by_the_train_stage_travel_in_its_result(tmp_path: Path) -> None:
    data = _data(tmp_path, canaries=10)
    expected = choose_canaries(40, 10, 5)  # the same seeded draw: once, here
    np.testing.assert_array_equal(data.canaries.index, expected.index)
    np.testing.assert_array_equal(data.canaries.included, expected.included)
    assert len(data.splits.train_y) == 40 - len(expected.excluded) and data.split_images == 40
    result = _report(tmp_path, data).result
    assert result.canaries is data.canaries  # handed on as data, for the evaluation to score
    assert result.images == len(data.splits.train_y) and result.split_images == 40


def test_without_canaries_the_splits_stay_whole_and_the_result_carries_none(tmp_path: Path) -> None:
    data = _data(tmp_path)
    assert data.splits is not None and len(data.splits.train_y) == 40
    stage = _report(tmp_path, data)
    assert len(stage.result.canaries.index) == 0 and stage.report.summary["canaries"] == 0


def test_the_report_carries_the_names_it_logged_before(tmp_path: Path) -> None:
    stage = _report(tmp_path, _data(tmp_path))
    report = stage.report
    assert report.stage == Stage.TRAIN
    assert set(report.headline) == {Train.FINAL_VAL_ACCURACY, Train.TRAIN_S, Train.PARAMETERS, Train.PLANNED_EPOCHS}
    assert {"train/compile_s", "train/val_s", "train/raw_val_accuracy", "train/final_train_accuracy"} <= set(
        report.metrics
    )
    assert Train.EPOCH.format(name="ema_val_accuracy") not in report.metrics  # no EMA: not logged
    assert "train/time_to_target_s" not in report.metrics  # target never reached
    assert report.tags[Train.KEPT_WEIGHTS] == "raw" and report.tags[Train.REUSED_FROM_RUN] == "none"
    assert report.tags[Train.PLAN] == "2 of 2 epochs: no time budget"
    assert report.files == ((tmp_path / "model.pt", Train.CHECKPOINT_FOLDER),)
    assert report.summary["best_val_accuracy"] == 0.6 and report.summary["epochs"] == 2
    assert stage.result.epochs == 2 and stage.result.dp_epsilon is None


def test_a_reused_and_private_training_says_so(tmp_path: Path) -> None:
    privacy = {"epsilon": 3.0, "delta": 1e-5, "noise_multiplier": 1.1, "accountant": "prv"}
    stage = _report(tmp_path, _data(tmp_path), reused={"train_run": "r1"}, privacy=privacy)
    assert stage.report.tags[Train.REUSED_FROM_RUN] == "r1" and stage.report.tags[Train.DP_ACCOUNTANT] == "prv"
    assert stage.report.headline[Train.DP_EPSILON] == 3.0 and stage.report.headline[Train.DP_DELTA] == 1e-5
    assert stage.report.metrics[Train.DP_NOISE_MULTIPLIER] == 1.1
    assert stage.result.dp_epsilon == 3.0 and stage.report.summary["reused_from_run"] == "r1"


def test_start_report_and_epoch_names() -> None:
    report = start_report(TrainConfig(), CPU.describe(), canaries=7)
    assert report.params["train.canaries"] == 7 and report.params["train.lr"] == TrainConfig().lr
    assert report.parent_tags == {"auditflow.device": "cpu", "auditflow.precision": "fp32"}
    assert "train.canaries" not in start_report(TrainConfig(), CPU.describe()).params
    stats = EpochStats(1, 0.5, 0.8, 0.6, 0.7, 0.1, 2.0, 100.0, 0.25)
    assert train_metrics(epoch_metrics(stats)) == pytest.approx(
        {
            "train/train_loss": 0.5,
            "train/train_accuracy": 0.8,
            "train/val_loss": 0.6,
            "train/val_accuracy": 0.7,
            "train/lr": 0.1,
            "train/epoch_s": 2.0,
            "train/images_per_second": 100.0,
            "train/val_s": 0.25,
        }
    )
