"""Stage 1: data source -> validated snapshot, logged as an MLflow dataset input."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.datasheet import duplicate_check
from auditflow.audits.plots import examples_figure
from auditflow.core.config import CardConfig, DataConfig
from auditflow.core.data import CONVERSIONS, ingest, make_splits
from auditflow.core.paths import cache_dir
from auditflow.core.tracking import Tracker, TrackingRef, class_keys, metric_key

DESCRIPTION = (
    "Ingest: the data source validated into a content-addressed snapshot, split into train (members), "
    "validation and test (non-members); class counts, image size, a train/test duplicate check and example "
    "images for the datasheet. The splits are logged as dataset inputs."
)


@dataclass(frozen=True)
class IngestResult:
    snapshot: str  # snapshot folder
    digest: str  # sha256 of pixels, labels and classes
    classes: tuple[str, ...]


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_data(
    ref: TrackingRef, source: str, cfg: DataConfig, workdir: str, card: CardConfig | None = None
) -> IngestResult:
    card = card or CardConfig()
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "ingest", DESCRIPTION) as run:
        run.log_params({f"data.{k}": v for k, v in cfg.model_dump().items()} | {"data.source": source})
        snapshot = ingest(source, cfg, cache_dir(workdir))
        splits = make_splits(snapshot, cfg)
        k = snapshot.num_classes
        labels = {"train": splits.train_y, "validation": splits.val_y, "test": splits.test_y}
        counts = {split: np.bincount(y, minlength=k).tolist() for split, y in labels.items()}
        for context, count in counts.items():
            dataset = {
                "name": f"{snapshot.path.name}-{context}",
                "digest": snapshot.digest,
                "source": source,
                "profile": {"classes": list(snapshot.classes), "counts": count},
                "context": context,
            }
            run.log_dataset(**dataset)
            tracker.parent(ref).log_dataset(**dataset)  # the pipeline run used every split
        run.log_table({"class": list(snapshot.classes), **counts}, "ingest/class_counts.json")
        keys = class_keys(snapshot.classes)  # two folders that would share a metric key fail here
        height, width, channels = snapshot.image_shape
        duplicates = duplicate_check(
            np.concatenate([splits.train_x, splits.val_x]), splits.test_x, card.duplicate_max_distance
        )
        run.log_metrics(
            {f"ingest/images_{split}": sum(c) for split, c in counts.items()}
            | {
                metric_key("ingest", f"images_{split}", "class", key): n
                for split, c in counts.items()
                for key, n in zip(keys, c, strict=True)
            }
            | {
                "ingest/n_classes": k,
                "ingest/image_height_px": height,
                "ingest/image_width_px": width,
                "ingest/image_channels": channels,
                "ingest/exact_duplicates": duplicates.exact,
                "ingest/near_duplicates": duplicates.near,
                "ingest/near_duplicate_share": duplicates.near / max(duplicates.n_test, 1),
                "ingest/duplicate_max_distance": duplicates.max_distance,
            }
        )
        run.log_figure(
            examples_figure(splits.train_x, splits.train_y, snapshot.classes, card.examples_per_class),
            "ingest/examples.png",
        )
        summary = {
            "source": source,
            "digest": snapshot.digest,
            "classes": list(snapshot.classes),
            "class_keys": keys,
            "counts": {"train": counts["train"], "val": counts["validation"], "test": counts["test"]},
            "image_shape": list(snapshot.image_shape),
            "snapshot": str(snapshot.path),
            "duplicates": asdict(duplicates),
            "preprocessing": [
                f"decoded to {height} x {width} x {channels} uint8 pixels"
                + (f", resized to {cfg.image_size} px" if cfg.resize else " (images of another size are rejected)"),
                f"validation: a stratified {cfg.val_fraction:g} of the training split, seed {cfg.seed}",
                "caps per class: "
                + f"train {cfg.max_train_per_class or 'none'}, test {cfg.max_test_per_class or 'none'} (seeded)",
                "model input: float32 N x 3 x H x W in [0, 1] (pixels / 255); the model normalises internally",
                "training augmentation (train split only): random horizontal flip and padded random crop, per config",
                *(f"{n} image(s) {CONVERSIONS[key]}" for key, n in snapshot.conversions.items()),
            ],
            "conversions": snapshot.conversions,
        }
        run.log_summary("ingest", summary)
        tracker.parent(ref).set_tags({"auditflow.data_digest": snapshot.digest})
    return IngestResult(str(snapshot.path), snapshot.digest, snapshot.classes)
