"""The ingest stage's report on a tiny hand-made snapshot (no files, no Prefect, no MLflow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditflow.audits.ingest import DATA_DIGEST_TAG, class_counts, ingest_params, ingest_stage
from auditflow.core.config import CardConfig, DataConfig
from auditflow.core.data import Snapshot, Splits
from auditflow.core.errors import DataError
from auditflow.core.names import Ingest, Stage, per_class


def _tiny(classes: tuple[str, ...] = ("cat", "dog")) -> tuple[Snapshot, Splits]:
    rng = np.random.default_rng(0)

    def images(n: int) -> np.ndarray:
        return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)

    train_x, test_x = images(6), images(3)
    test_x[0] = train_x[0]  # one exact train/test duplicate
    splits = Splits(
        train_x=train_x,
        train_y=np.array([0, 0, 0, 1, 1, 1]),
        val_x=images(2),
        val_y=np.array([0, 1]),
        test_x=test_x,
        test_y=np.array([0, 1, 1]),
        classes=classes,
    )
    snapshot = Snapshot(
        path=Path("/cache/snapshots/abc"),
        digest="abc123",
        classes=classes,
        counts={"train": [4, 4], "test": [1, 2]},
        image_shape=(32, 32, 3),
        source="folder",
        conversions={"exif_rotated": 1},
    )
    return snapshot, splits


def test_the_report_counts_images_per_split_and_class() -> None:
    snapshot, splits = _tiny()
    report = ingest_stage(snapshot, splits, source="data/", cfg=DataConfig(), card=CardConfig(examples_per_class=1))
    assert report.stage == Stage.INGEST
    m = report.metrics
    assert m[Ingest.IMAGES.format(split="train")] == 6 and m[Ingest.IMAGES.format(split="validation")] == 2
    assert m[per_class(Ingest.IMAGES.format(split="test"), "dog")] == 2
    assert m[Ingest.N_CLASSES] == 2 and m[Ingest.IMAGE_HEIGHT_PX] == 32 and m[Ingest.IMAGE_CHANNELS] == 3
    assert m[Ingest.EXACT_DUPLICATES] == 1
    assert m[Ingest.NEAR_DUPLICATE_SHARE] == pytest.approx(m[Ingest.NEAR_DUPLICATES] / 3)
    assert report.columns[Ingest.CLASS_COUNTS_JSON] == {
        "class": ["cat", "dog"],
        "train": [3, 3],
        "validation": [1, 1],
        "test": [1, 2],
    }
    assert set(report.figures) == {Ingest.EXAMPLES_PNG}
    assert report.parent_tags == {DATA_DIGEST_TAG: "abc123"}
    summary = report.summary
    assert summary["counts"] == {"train": [3, 3], "val": [1, 1], "test": [1, 2]}
    assert summary["snapshot"] == "/cache/snapshots/abc" and summary["class_keys"] == ["cat", "dog"]
    assert summary["preprocessing"][-1] == "1 image(s) turned upright by their EXIF orientation tag"
    assert not report.checks and not report.params  # the task logs the params before ingesting


def test_params_and_counts() -> None:
    _, splits = _tiny()
    assert class_counts(splits) == {"train": [3, 3], "validation": [1, 1], "test": [1, 2]}
    params = ingest_params("data/", DataConfig(seed=3))
    assert params["data.source"] == "data/" and params["data.seed"] == 3


def test_classes_that_share_a_metric_key_are_refused() -> None:
    snapshot, splits = _tiny(("a+b", "a_b"))
    with pytest.raises(DataError, match="would log under the same MLflow key 'a_b'"):
        ingest_stage(snapshot, splits, source="data/", cfg=DataConfig(), card=CardConfig())
