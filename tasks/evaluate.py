"""Stage 3: checkpoint -> logits of the test, validation and member splits, test metrics and calibration.

The `Predictions` file is the one input of the fairness and privacy audits: logits are computed
once per split (`auditflow.models.evaluation.stage.score_splits`), and judged by the pure
`evaluate_stage`. This task loads the model, draws the privacy audit's points, saves the
container, draws the two figures and publishes the report.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.plots import confusion_figure, mistakes_figure, reliability_figure
from auditflow.audits.privacy import AuditSet, choose_audit_set
from auditflow.core.config import DataConfig, EvalConfig, PrivacyConfig, TrainConfig
from auditflow.core.data import Snapshot, Splits, make_splits
from auditflow.core.names import Evaluate, Stage
from auditflow.core.paths import run_dir
from auditflow.core.predictions import Predictions
from auditflow.core.tracking import Tracker, TrackingRef
from auditflow.models.evaluation.stage import AuditDraw, EvaluationStage, evaluate_stage, score_splits
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.runtime import resolve_runtime
from auditflow.models.training.stage import TrainResult

DESCRIPTION = (
    "Evaluate: test accuracy with and without test-time augmentation (the shipped ONNX model has none), "
    "per-class precision/recall/F1, confusion matrix, calibration (ECE raw and after temperature scaling, "
    "reliability diagram, temperature fitted on the validation split; the export stage folds it into the ONNX "
    "graph and judges the calibration there), the learning check. Logits are saved for the audits."
)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    predictions: str  # the `Predictions` container (auditflow.core.predictions), `evaluate/predictions.npz`
    accuracy: float  # test top-1 as configured (with TTA when the profile uses it), 0..1
    accuracy_no_tta: float  # test top-1 of the shipped model (no TTA), 0..1
    learning: str  # "pass", or "fail" when test accuracy cannot be told apart from chance
    learning_message: str
    temperature: float = 1.0  # T fitted on the validation split; export folds it into the ONNX graph
    temperature_fitted_on: str = "nothing (no validation split), so T = 1"  # in words


def _figures(stage: EvaluationStage, splits: Splits, predictions: Predictions) -> dict[str, Any]:
    """The confusion matrix, the reliability diagram and the most confident mistakes, all of the
    shipped model (the plots are `audits`, which the pure stage in `models` does not import)."""
    cal = stage.calibration
    return {
        Evaluate.CONFUSION_MATRIX_PNG: confusion_figure(stage.metrics.confusion, stage.metrics.classes),
        Evaluate.RELIABILITY_PNG: reliability_figure(asdict(cal.before), asdict(cal.after), cal.temperature),
        Evaluate.MISTAKES_PNG: mistakes_figure(
            splits.test_x, splits.test_y, predictions.test_logits_no_tta, classes=splits.classes
        ),
    }


def _log_matched_down(audit_set: AuditSet, classes: tuple[str, ...]) -> None:
    for cls, (drawn, kept) in audit_set.matched_down.items():
        log.info(
            "privacy audit: class %r has %d training images for %d drawn non-members: %d on each side",
            classes[cls],
            kept,
            drawn,
            kept,
        )


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_model(
    ref: TrackingRef,
    trained: TrainResult,
    snapshot_path: str,
    *,
    data_cfg: DataConfig,
    cfg: EvalConfig,
    train_cfg: TrainConfig,
    privacy_cfg: PrivacyConfig,
    workdir: str,
) -> EvaluateResult:
    """Score `trained.checkpoint` on every split once (TTA and device from `train_cfg`; the
    privacy audit's points drawn with `privacy_cfg.n_samples`, `.seed`, `.queries`), scoring
    apart the canaries the train stage drew (`trained.canaries`), and judge the scores."""
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.EVALUATE, DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "validation", "test"))
        runtime = resolve_runtime(train_cfg.device, "fp32")  # the precision of the exported model
        model, _ = load_model(trained.checkpoint, runtime.device)
        splits = make_splits(Snapshot.open(snapshot_path), data_cfg)
        # The privacy audit's points: test non-members and training members with the same class
        # counts, scored by the model as it ships (no TTA); never a canary as a member
        audit_set = choose_audit_set(
            splits.train_y,
            splits.test_y,
            n=privacy_cfg.n_samples,
            seed=privacy_cfg.seed,
            exclude=trained.canaries.index,
        )
        _log_matched_down(audit_set, splits.classes)
        predictions = score_splits(
            runtime.prepare(model),
            splits,
            runtime,
            cfg=cfg,
            tta=train_cfg.tta,
            tta_translate=train_cfg.tta_translate,
            audit=AuditDraw(audit_set.members, audit_set.nonmembers, audit_set.wanted),
            queries=privacy_cfg.queries,
            canaries=trained.canaries,
        )
        path = predictions.save(run_dir(workdir, ref.run_id) / "predictions.npz")
        stage = evaluate_stage(
            predictions, classes=splits.classes, cfg=cfg, tta=train_cfg.tta, tta_translate=train_cfg.tta_translate
        )
        tracker.publish(
            ref,
            run,
            replace(stage.report, figures=_figures(stage, splits, predictions), files=((path, Stage.EVALUATE),)),
        )
    return EvaluateResult(
        str(path),
        stage.accuracy,
        stage.accuracy_no_tta,
        stage.learning,
        stage.learning_message,
        stage.calibration.temperature,
        stage.fitted_on,
    )
