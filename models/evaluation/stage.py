"""The evaluate stage without Prefect or MLflow: scoring the splits once, and judging the scores.

`score_splits` runs the model over the test, validation and audited images (and the one-run
audit's canaries) and returns the `Predictions` container the audits read. `evaluate_stage`
turns a `Predictions` into the stage's report: test accuracy with and without test-time
augmentation (the shipped ONNX model has none) with intervals, per-class precision/recall/F1,
the confusion matrix, calibration (temperature fitted on the validation split's no-TTA logits;
test ECE and NLL raw and after scaling) and the learning check. The calibration check is the
export stage's: it judges the `probabilities` output of the shipped ONNX file, into which the
temperature fitted here is folded.

The two figures (confusion matrix, reliability diagram) are drawn by the task from
`EvaluationStage.metrics` and `.calibration`: the plots live in `auditflow.audits`, which
`models` does not import.
"""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from auditflow.core.checks import Check
from auditflow.core.config import EvalConfig
from auditflow.core.data import Splits
from auditflow.core.names import Evaluate, Stage, Verdict, per_class
from auditflow.core.predictions import AuditPoints, CanaryScores, Predictions
from auditflow.core.stage import StageReport
from auditflow.core.stats import wilson_interval
from auditflow.models.evaluation.calibration import CalibrationResult, calibrate, fit_description
from auditflow.models.evaluation.inference import audit_logits, predict, query_logits
from auditflow.models.evaluation.metrics import EvalResult, LearningCheck, check_learning, evaluate
from auditflow.models.training.canaries import Canaries
from auditflow.models.training.runtime import Runtime

log = logging.getLogger(__name__)
INTERVAL = 0.95  # two-sided level of the accuracy intervals shown on the card


@dataclass(frozen=True)
class AuditDraw:
    """The membership audit's points as drawn (`auditflow.audits.privacy.choose_audit_set`)."""

    members: np.ndarray  # (n_m,) int64, into the training split
    nonmembers: np.ndarray  # (n_n,) int64, into the test split
    wanted: np.ndarray  # (K,) int64: non-members drawn per class before matching down


def score_splits(
    model: nn.Module,
    splits: Splits,
    runtime: Runtime,
    *,
    cfg: EvalConfig,
    tta: bool,
    tta_translate: int,
    audit: AuditDraw,
    queries: int = 1,
    canaries: Canaries | None = None,
) -> Predictions:
    """Logits of every split the audits read, computed once: the test split with the profile's
    TTA (`tta`, `tta_translate`) and without it (the shipped model), the validation split, the
    audited members under `queries` views (and the non-members' views: their plain logits are
    the test split's), and the canaries, scored apart (an excluded one was never trained on)."""
    batch = cfg.batch_size
    test_logits = predict(model, splits.test_x, runtime, batch_size=batch, tta=tta, translate=tta_translate)
    shipped = predict(model, splits.test_x, runtime, batch_size=batch) if tta else test_logits
    val_logits = predict(model, splits.val_x, runtime, batch_size=batch)
    if queries > 1:  # the membership audit's augmented views (query 0 is the plain image)
        log.info(
            "scoring %d audited images under %d views for the privacy audit",
            len(audit.members) + len(audit.nonmembers),
            queries,
        )
    member_logits, member_views = audit_logits(
        model, splits.train_x[audit.members], runtime, queries=queries, batch_size=batch
    )
    nonmember_views = None
    if member_views is not None:
        nonmember_views = query_logits(
            model, splits.test_x[audit.nonmembers], runtime, queries=queries, batch_size=batch
        )
    scored = None
    if canaries is not None and len(canaries.index):
        scored = CanaryScores(
            index=canaries.index,
            included=canaries.included,
            labels=splits.train_y[canaries.index],
            logits=predict(model, splits.train_x[canaries.index], runtime, batch_size=batch),
        )
    points = AuditPoints(
        member_index=audit.members,
        member_labels=splits.train_y[audit.members],
        member_logits=member_logits,
        nonmember_index=audit.nonmembers,
        nonmember_wanted=audit.wanted,
        member_query_logits=member_views,
        nonmember_query_logits=nonmember_views,
    )
    return Predictions(
        test_logits=test_logits,
        test_logits_no_tta=shipped,
        test_labels=splits.test_y,
        val_logits=val_logits,
        val_labels=splits.val_y,
        audit=points,
        canaries=scored,
    )


@dataclass(frozen=True)
class EvaluationStage:
    """The evaluate stage's report and the small summary the flow returns."""

    report: StageReport
    accuracy: float  # test top-1 as configured (with TTA when the profile uses it), 0..1
    accuracy_no_tta: float  # test top-1 of the shipped model (no TTA), 0..1
    learning: str  # "pass", or "fail" when test accuracy cannot be told apart from chance
    learning_message: str
    metrics: EvalResult  # the shipped model's (no TTA): the confusion matrix figure draws it
    calibration: CalibrationResult  # the reliability figure draws it; export folds its T into the graph

    @property
    def fitted_on(self) -> str:
        """Where the temperature was fitted, in words."""
        return fit_description(self.calibration.fitted_on, self.calibration.n_fit)


def _interval_metrics(name: str, preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    low, high = wilson_interval(int((preds == labels).sum()), len(labels), INTERVAL)
    return {f"{name}_ci_low": float(low), f"{name}_ci_high": float(high)}


def _confusion_csv(result: EvalResult) -> str:
    out = io.StringIO()
    np.savetxt(out, np.asarray(result.confusion), fmt="%d", delimiter=",", header=",".join(result.classes), comments="")
    return out.getvalue()


def evaluation_checks(learned: LearningCheck) -> tuple[Check, ...]:
    """The learning check: the 99% Wilson lower bound of the shipped model's test accuracy above
    chance. (Calibration is judged at export, on the shipped file's `probabilities` output.)"""
    learning = Check(
        key="learning/above_chance",
        verdict=Verdict.LEARNING,
        title="Model learned (held-out accuracy above chance)",
        condition="99% Wilson lower bound of test accuracy > chance accuracy (majority-class share)",
        stage=Stage.EVALUATE,
        metric=Evaluate.TEST_ACCURACY_CI99_LOW,
        value=learned.interval[0],
        threshold=learned.chance,
        status=learned.verdict,
        evidence="#evaluation",
        note=learned.message,
    )
    return (learning,)


def evaluate_stage(
    predictions: Predictions, *, classes: tuple[str, ...], cfg: EvalConfig, tta: bool, tta_translate: int
) -> EvaluationStage:
    """Judge `predictions` (of a model over `classes`): metrics with and without TTA, per-class
    P/R/F1, calibration and the learning and calibration checks, as the stage's report.
    `tta`, `tta_translate` only say in the summary how `predictions.test_logits` were made."""
    p, labels = predictions, predictions.test_labels
    result = evaluate(p.test_logits, labels, classes, ece_bins=cfg.ece_bins)
    shipped = evaluate(p.test_logits_no_tta, labels, classes, ece_bins=cfg.ece_bins)
    calibration = calibrate(
        p.val_logits, p.val_labels, test_logits=p.test_logits_no_tta, test_labels=labels, n_bins=cfg.ece_bins
    )
    member_accuracy = float((p.audit.member_logits.argmax(1) == p.audit.member_labels).mean())
    learned = check_learning(p.test_logits_no_tta.argmax(1), labels, train_accuracy=member_accuracy)  # what users get
    if learned.verdict == "fail":
        log.warning("MODEL DID NOT LEARN: %s", learned.message)
    headline = {
        Evaluate.TEST_ACCURACY: result.accuracy,
        Evaluate.TEST_ACCURACY_NO_TTA: shipped.accuracy,
        Evaluate.TEST_ECE_NO_TTA: calibration.ece_before,
        Evaluate.TEST_ECE_CALIBRATED: calibration.ece_after,
        Evaluate.TEMPERATURE: calibration.temperature,
    }
    metrics = (
        _interval_metrics(Evaluate.TEST_ACCURACY, p.test_logits.argmax(1), labels)
        | _interval_metrics(Evaluate.TEST_ACCURACY_NO_TTA, p.test_logits_no_tta.argmax(1), labels)
        | {
            Evaluate.TEST_NLL: result.nll,
            Evaluate.TEST_ECE: result.ece,
            Evaluate.TEST_MACRO_F1: result.macro_f1,
            Evaluate.TEST_MACRO_F1_NO_TTA: shipped.macro_f1,
            Evaluate.TEST_NLL_NO_TTA: calibration.nll_before,
            Evaluate.TEST_NLL_CALIBRATED: calibration.nll_after,
            Evaluate.TEMPERATURE_FIT_IMAGES: calibration.n_fit,
            Evaluate.MEMBER_ACCURACY: member_accuracy,
            Evaluate.CHANCE_ACCURACY: learned.chance,
            Evaluate.TEST_ACCURACY_CI99_LOW: learned.interval[0],
            Evaluate.TEST_IMAGES: len(labels),
        }
        | {
            per_class(name, c): v
            for name, values in (
                (Evaluate.RECALL, shipped.recall),
                (Evaluate.PRECISION, shipped.precision),
                (Evaluate.F1, shipped.f1),
            )
            for c, v in zip(shipped.classes, values, strict=True)
        }
    )
    # per class, the shipped model's (what users get); with TTA only the top-line figures above
    rows = shipped.per_class_rows()
    summary = {
        **asdict(shipped),
        "macro_f1": shipped.macro_f1,
        "per_class": rows,
        "per_class_model": "the shipped model (ONNX, no test-time augmentation)",
        "tta": tta,
        "tta_translate": tta_translate,
        "accuracy_tta": result.accuracy,
        "accuracy_no_tta": shipped.accuracy,
        "learning": asdict(learned),
        "calibration": asdict(calibration),
        "max_ece": cfg.max_ece,
        "warn_ece": cfg.warn_ece,
    }
    report = StageReport(
        Stage.EVALUATE,
        metrics=metrics,
        headline=headline,
        checks=evaluation_checks(learned),
        tables={Evaluate.PER_CLASS_JSON: rows},
        texts={Evaluate.CONFUSION_MATRIX_CSV: _confusion_csv(shipped)},
        documents={
            Evaluate.TEMPERATURE_JSON: {
                "temperature": calibration.temperature,
                "apply": "softmax(logits / temperature)",
                "fitted_on": fit_description(calibration.fitted_on, calibration.n_fit),
                "shipped": "folded into the exported ONNX graph as its `probabilities` output",
            }
        },
        summary=summary,
    )
    return EvaluationStage(
        report, result.accuracy, shipped.accuracy, learned.verdict, learned.message, shipped, calibration
    )
