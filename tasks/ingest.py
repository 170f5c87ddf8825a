"""Stage 1: data source -> validated snapshot, logged as an MLflow dataset input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.core.config import DataConfig
from auditflow.core.data import ingest, make_splits
from auditflow.core.paths import cache_dir
from auditflow.core.tracking import Tracker, TrackingRef


@dataclass(frozen=True)
class IngestResult:
    snapshot: str  # snapshot folder
    digest: str  # sha256 of pixels, labels and classes
    classes: tuple[str, ...]


@task(name="ingest", cache_policy=NO_CACHE)
def ingest_data(ref: TrackingRef, source: str, cfg: DataConfig, workdir: str) -> IngestResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "ingest") as run:
        run.log_params({f"data.{k}": v for k, v in cfg.model_dump().items()} | {"data.source": source})
        snapshot = ingest(source, cfg, cache_dir(workdir))
        splits = make_splits(snapshot, cfg)
        k = snapshot.num_classes
        counts = {
            "train": np.bincount(splits.train_y, minlength=k).tolist(),
            "val": np.bincount(splits.val_y, minlength=k).tolist(),
            "test": np.bincount(splits.test_y, minlength=k).tolist(),
        }
        for context in ("train", "test"):
            run.log_dataset(
                name=f"{snapshot.path.name}-{context}",
                digest=snapshot.digest,
                source=source,
                profile={"classes": list(snapshot.classes), "counts": counts[context]},
                context=context,
            )
        run.log_table({"class": list(snapshot.classes), **counts}, "ingest/class_counts.json")
        run.log_metrics({f"images_{split}": sum(c) for split, c in counts.items()} | {"classes": k})
        summary = {
            "source": source,
            "digest": snapshot.digest,
            "classes": list(snapshot.classes),
            "counts": counts,
            "image_shape": list(snapshot.image_shape),
            "snapshot": str(snapshot.path),
        }
        run.log_summary("ingest", summary)
        tracker.parent(ref).set_tags({"auditflow.data_digest": snapshot.digest})
    return IngestResult(str(snapshot.path), snapshot.digest, snapshot.classes)
