"""Stage 1: data source -> validated snapshot, logged as an MLflow dataset input.

The stage's report is `audits/ingest.py`'s; this task ingests the source, logs the splits as
dataset inputs (on the stage run and the parent) and publishes the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.ingest import class_counts, ingest_params, ingest_stage
from auditflow.core.config import CardConfig, DataConfig, FairnessConfig, PrivacyConfig
from auditflow.core.data import ingest, make_splits
from auditflow.core.names import Stage
from auditflow.core.paths import cache_dir
from auditflow.core.tracking import Tracker, TrackingRef

log = logging.getLogger(__name__)
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
    ref: TrackingRef,
    source: str,
    cfg: DataConfig,
    workdir: str,
    card: CardConfig | None = None,
    fairness: FairnessConfig | None = None,
    privacy: PrivacyConfig | None = None,
) -> IngestResult:
    """Ingest `source` into a snapshot in the work folder's cache and split it; warn, before any
    training, of a fairness or privacy check the splits cannot settle."""
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.INGEST, DESCRIPTION) as run:
        run.log_params(ingest_params(source, cfg))  # before ingesting: a rejected source still shows them
        snapshot = ingest(source, cfg, cache_dir(workdir))
        splits = make_splits(snapshot, cfg)
        for context, count in class_counts(splits).items():
            dataset = {
                "name": f"{snapshot.path.name}-{context}",
                "digest": snapshot.digest,
                "source": source,
                "profile": {"classes": list(snapshot.classes), "counts": count},
                "context": context,
            }
            run.log_dataset(**dataset)
            tracker.parent(ref).log_dataset(**dataset)  # the pipeline run used every split
        report = ingest_stage(
            snapshot, splits, source=source, cfg=cfg, card=card or CardConfig(), fairness=fairness, privacy=privacy
        )
        tracker.publish(ref, run, report)
    for check in report.summary.get("settleable", []):
        if not check["can_pass"]:
            log.warning(check["text"])
    defaults = CardConfig()
    unset = [f"card.{k}" for k in ("owner", "licence") if card and getattr(card, k) == getattr(defaults, k)]
    if unset:
        log.warning(
            "%s not set: the model card will say 'unspecified'; set them in the profile or --set", " and ".join(unset)
        )
    return IngestResult(str(snapshot.path), snapshot.digest, snapshot.classes)
