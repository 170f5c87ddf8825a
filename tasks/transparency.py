"""Stage 4b: the transparency audit, as a thin Prefect task.

What the shipped model looks at, whether those maps can be trusted, and whether a class owes
its recall to a shortcut window: the pure stage `auditflow.models.explain.stage.transparency_stage`.
The task loads the model and the test split, calls the stage, draws its figures and publishes
the report (metrics, checks and the `verdict/transparency` tag, the shortcut table, the figures).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.plots import attribution_examples_figure, deletion_figure, mean_maps_figure
from auditflow.core.config import DataConfig, TransparencyConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.names import Stage, Transparency
from auditflow.core.predictions import Predictions
from auditflow.core.tracking import Tracker, TrackingRef
from auditflow.models.explain.stage import DESCRIPTION, Explanations, transparency_stage
from auditflow.models.training.checkpoints import load_model
from auditflow.tasks.audit import VerdictResult


def _figures(found: Explanations) -> dict[str, Any]:
    """The deletion curves always; the maps only when they passed their sanity check."""
    d = found.deletion
    figures: dict[str, Any] = {
        Transparency.DELETION_PNG: deletion_figure(d.fractions, d.attributed.mean(0), d.random.mean(0))
    }
    if found.shown:
        windows = [(w.top, w.left, w.side) if w else None for w in found.windows]
        figures[Transparency.MEAN_MAPS_PNG] = mean_maps_figure(
            found.mean_maps, windows=windows, statuses=found.statuses, classes=found.classes
        )
        figures[Transparency.EXAMPLES_PNG] = attribution_examples_figure(
            found.images,
            found.maps,
            found.labels,
            predicted=found.predicted,
            roles=found.roles,
            classes=found.classes,
            statuses=found.statuses,
        )
    return figures


@task(name="transparency-audit", cache_policy=NO_CACHE)
def transparency_audit(
    ref: TrackingRef,
    checkpoint: str,
    predictions: str,
    snapshot_path: str,
    data_cfg: DataConfig,
    classes: tuple[str, ...],
    cfg: TransparencyConfig,
    train_seconds: float,
) -> VerdictResult:
    """Explain the model of `checkpoint` on the test split; `predictions` gives the shipped
    model's logits that choose the confident examples; `train_seconds` prices the audit."""
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.TRANSPARENCY, DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("test",))
        splits = make_splits(Snapshot.open(snapshot_path), data_cfg)
        model, _ = load_model(checkpoint, "cpu")
        found = transparency_stage(
            model,
            splits.test_x,
            splits.test_y,
            shipped_logits=Predictions.load(predictions).test_logits_no_tta,
            classes=classes,
            cfg=cfg,
            train_seconds=train_seconds,
        )
        report = found.outcome.report
        tracker.publish(ref, run, replace(report, figures=_figures(found.explanations)))
    outcome = found.outcome
    return VerdictResult(outcome.status, outcome.reasons, outcome.headline)
