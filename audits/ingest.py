"""The ingest stage's report: what the datasheet says about the data, as a `StageReport`.

A pure function of the snapshot and its splits (no Prefect, no MLflow): images per split and
per class, image size, the train/test duplicate check (`datasheet.duplicate_check`), example
images and the summary (source, digest, classes, preprocessing in words). It lives in `audits`
beside the datasheet and the plots it uses; the snapshot itself is `auditflow.core.data`'s. The
task logs the splits as dataset inputs (which the report cannot carry) and publishes the report.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from auditflow.audits.datasheet import duplicate_check
from auditflow.audits.fairness import settleability
from auditflow.audits.plots import examples_figure
from auditflow.audits.privacy_stage import settleability as privacy_settleability
from auditflow.core.config import CardConfig, DataConfig, FairnessConfig, PrivacyConfig
from auditflow.core.data import CONVERSIONS, Snapshot, Splits
from auditflow.core.names import Ingest, Stage, per_class
from auditflow.core.stage import StageReport
from auditflow.core.tracking import class_keys

DATA_DIGEST_TAG = "auditflow.data_digest"  # on the parent run: the snapshot's content digest


def ingest_params(source: str, cfg: DataConfig) -> dict[str, object]:
    """The stage's params: the data config (`data.<field>`) and the source."""
    return {f"data.{k}": v for k, v in cfg.model_dump().items()} | {"data.source": source}


def class_counts(splits: Splits) -> dict[str, list[int]]:
    """Split (train, validation, test) -> images per class, in class order."""
    k = len(splits.classes)
    labels = {"train": splits.train_y, "validation": splits.val_y, "test": splits.test_y}
    return {split: np.bincount(y, minlength=k).tolist() for split, y in labels.items()}


def preprocessing(snapshot: Snapshot, cfg: DataConfig) -> list[str]:
    """The preprocessing steps, in words, for the datasheet."""
    height, width, channels = snapshot.image_shape
    return [
        f"decoded to {height} x {width} x {channels} uint8 pixels"
        + (f", resized to {cfg.image_size} px" if cfg.resize else " (images of another size are rejected)"),
        f"validation: a stratified {cfg.val_fraction:g} of the training split, seed {cfg.seed}",
        "caps per class: "
        + f"train {cfg.max_train_per_class or 'none'}, test {cfg.max_test_per_class or 'none'} (seeded)",
        "model input: float32 N x 3 x H x W in [0, 1] (pixels / 255); the model normalises internally",
        "training augmentation (train split only): random horizontal flip and padded random crop, per config",
        *(f"{n} image(s) {CONVERSIONS[key]}" for key, n in snapshot.conversions.items()),
    ]


def ingest_stage(
    snapshot: Snapshot,
    splits: Splits,
    *,
    source: str,
    cfg: DataConfig,
    card: CardConfig,
    fairness: FairnessConfig | None = None,
    privacy: PrivacyConfig | None = None,
) -> StageReport:
    """The report of a snapshot and its splits: `ingest/images_<split>` (images, also per class),
    `ingest/n_classes`, image height/width in pixels and channels, exact and near train/test
    duplicates (near: dHash within `card.duplicate_max_distance` bits; share of the test split,
    0 ideal), the class counts table, example images and the summary. `DataError` when two class
    folders would share a metric key. With `fairness`, the summary says whether the test split
    can settle the class-level fairness checks at all (`settleable`: `fairness.settleability`), and
    with `privacy` whether the audit set it will draw can state and pass the privacy verdict
    (`privacy_stage.settleability`)."""
    counts = class_counts(splits)
    keys = class_keys(snapshot.classes)  # two folders that would share a metric key fail here
    height, width, channels = snapshot.image_shape
    duplicates = duplicate_check(
        np.concatenate([splits.train_x, splits.val_x]), splits.test_x, max_distance=card.duplicate_max_distance
    )
    images = {Ingest.IMAGES.format(split=split): sum(c) for split, c in counts.items()} | {
        per_class(Ingest.IMAGES.format(split=split), key): n
        for split, c in counts.items()
        for key, n in zip(keys, c, strict=True)
    }
    metrics = images | {
        Ingest.N_CLASSES: snapshot.num_classes,
        Ingest.IMAGE_HEIGHT_PX: height,
        Ingest.IMAGE_WIDTH_PX: width,
        Ingest.IMAGE_CHANNELS: channels,
        Ingest.EXACT_DUPLICATES: duplicates.exact,
        Ingest.NEAR_DUPLICATES: duplicates.near,
        Ingest.NEAR_DUPLICATE_SHARE: duplicates.near / max(duplicates.n_test, 1),
        Ingest.DUPLICATE_MAX_DISTANCE: duplicates.max_distance,
    }
    summary = {
        "source": source,
        "digest": snapshot.digest,
        "classes": list(snapshot.classes),
        "class_keys": keys,
        "counts": {"train": counts["train"], "val": counts["validation"], "test": counts["test"]},
        "image_shape": list(snapshot.image_shape),
        "snapshot": str(snapshot.path),
        "duplicates": asdict(duplicates),
        "preprocessing": preprocessing(snapshot, cfg),
        "conversions": snapshot.conversions,
    }
    found = settleability(counts["test"], snapshot.classes, fairness) if fairness is not None else ()
    if privacy is not None:
        found += privacy_settleability(splits.train_y, splits.test_y, privacy)
    if fairness is not None or privacy is not None:
        summary["settleable"] = [asdict(x) for x in found]
    figure = examples_figure(splits.train_x, splits.train_y, snapshot.classes, per_class=card.examples_per_class)
    return StageReport(
        stage=Stage.INGEST,
        metrics=metrics,
        parent_tags={DATA_DIGEST_TAG: snapshot.digest},
        columns={Ingest.CLASS_COUNTS_JSON: {"class": list(snapshot.classes), **counts}},
        figures={Ingest.EXAMPLES_PNG: figure},
        summary=summary,
    )
