"""The fairness stage as one pure function: the shipped model's logits in, a `StageReport` out.

It runs the per-class quality-of-service audit (`fairness.py`), the within-class subgroup audit
(`subgroups.py`) and the logit-adjustment mitigation (`mitigation.py`), decides the three
checks (worst-class recall, recall gap, subgroup recall gap) on their intervals, and names every
metric and artifact from `auditflow.core.names`. No Prefect, no MLflow: the fairness task
publishes the report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from auditflow.audits.fairness import FairnessResult, audit_fairness, decidable_policy
from auditflow.audits.mitigation import MitigationResult, fit_logit_offsets, mitigation_effect, worth_exporting
from auditflow.audits.plots import recall_figure
from auditflow.audits.subgroups import SubgroupResult, audit_subgroups, derived_attributes, read_metadata
from auditflow.core.checks import Check, condition_text, worst
from auditflow.core.config import FairnessConfig
from auditflow.core.errors import ConfigError
from auditflow.core.names import Fairness, Stage, Verdict, per_class
from auditflow.core.predictions import Predictions
from auditflow.core.stage import AuditOutcome, StageReport

DESCRIPTION = (
    "Fairness: per-class quality of service of the shipped model (one-vs-rest recall, precision and "
    "false-positive rate per class, fairlearn MetricFrame) with simultaneous Wilson intervals; three-valued "
    "verdicts on those intervals; recall and false-positive-rate gaps between image-attribute groups within "
    "each class; a per-class logit adjustment tuned on the validation split, before and after."
)
AUDITED_MODEL = "the shipped model (no test-time augmentation)"
PER_CLASS_METRICS = {
    "recall": Fairness.RECALL,
    "precision": Fairness.PRECISION,
    "false_positive_rate": Fairness.FALSE_POSITIVE_RATE,
}


def subgroup_attributes(
    test_images: np.ndarray, test_paths: tuple[str, ...] | list[str] | None, cfg: FairnessConfig
) -> tuple[dict[str, np.ndarray], str]:
    """Group labels of the test images per attribute (derived from pixels, plus `cfg.metadata`
    joined on image paths), and where they came from, in words."""
    attributes = derived_attributes(test_images, cfg.derived_attributes, cfg.attribute_bins)
    source = f"derived from pixels ({', '.join(cfg.derived_attributes)}; {cfg.attribute_bins} quantile groups)"
    if cfg.metadata:
        if test_paths is None:
            raise ConfigError(
                f"fairness.metadata={cfg.metadata!r} joins on image paths, but this data source has none "
                "(torchvision CIFAR-10); use an image folder or archive"
            )
        attributes |= read_metadata(cfg.metadata, list(test_paths))
        source += f" and from {cfg.metadata}"
    return attributes, source


def _ci(low_name: str, high_name: str, ci: tuple[float, float] | None) -> dict[str, float]:
    return {low_name: ci[0], high_name: ci[1]} if ci else {}


def _settle_note(n: int | None, support: int, interval: tuple[float, float], policy: str, higher: bool) -> str:
    """How an inconclusive check could be decided: the policy value at which it passes on this
    test split, then the test size that would settle it at the current value (when feasible)."""
    at = decidable_policy(interval, higher_is_better=higher)
    text = f"; passes on this test split at {policy}={at:g} or {'lower' if higher else 'more'}"
    if n:
        text += f"; at the current threshold about {n:,} test images per class would settle it"
        text += f" (this split has {support:,})"
    return text


def _metrics(
    result: FairnessResult, groups: SubgroupResult, mitigation: MitigationResult | None
) -> tuple[dict[str, float], dict[str, float]]:
    """(headline, every metric): `fairness/...` names; undefined rates are left out."""
    headline = {Fairness.WORST_CLASS_RECALL: result.worst_recall, Fairness.RECALL_GAP: result.recall_gap}
    headline |= _ci(Fairness.WORST_CLASS_RECALL_CI_LOW, Fairness.WORST_CLASS_RECALL_CI_HIGH, result.worst_recall_ci)
    headline |= _ci(Fairness.RECALL_GAP_CI_LOW, Fairness.RECALL_GAP_CI_HIGH, result.recall_gap_ci)
    metrics = dict(headline)
    for row in result.per_class:
        for field, name in PER_CLASS_METRICS.items():
            if row[field] is not None:  # undefined (a class never predicted has no precision): not logged
                metrics[per_class(name, str(row["class"]))] = float(row[field])  # type: ignore[arg-type]
    if groups.worst is not None:
        metrics |= {
            Fairness.SUBGROUP_MAX_TPR_GAP: float(groups.worst["gap"]),  # type: ignore[arg-type]
            Fairness.SUBGROUP_MAX_TPR_GAP_CI_LOW: float(groups.worst["ci_low"]),  # type: ignore[arg-type]
            Fairness.SUBGROUP_MAX_TPR_GAP_CI_HIGH: float(groups.worst["ci_high"]),  # type: ignore[arg-type]
        }
    if mitigation is not None:
        metrics |= {
            Fairness.MITIGATION_ACCURACY_BEFORE: mitigation.accuracy_before,
            Fairness.MITIGATION_ACCURACY_AFTER: mitigation.accuracy_after,
            Fairness.MITIGATION_WORST_CLASS_RECALL_BEFORE: mitigation.worst_recall_before,
            Fairness.MITIGATION_WORST_CLASS_RECALL_AFTER: mitigation.worst_recall_after,
            Fairness.MITIGATION_RECALL_GAP_BEFORE: mitigation.recall_gap_before,
            Fairness.MITIGATION_RECALL_GAP_AFTER: mitigation.recall_gap_after,
        }
    return headline, metrics


def _worst_condition(cfg: FairnessConfig) -> str:
    """The worst-class recall policy in words, for the plain and the adjusted model alike."""
    level = f"{cfg.confidence:.0%} simultaneous Wilson interval"
    return condition_text("every class's recall", cfg.min_class_recall, higher_is_better=True) + f", on its {level}"


def _gap_condition(cfg: FairnessConfig) -> str:
    """The recall-gap policy in words, for the plain and the adjusted model alike."""
    level = f"{cfg.confidence:.0%} simultaneous Wilson intervals"
    return (
        condition_text("best minus worst class recall", cfg.max_recall_gap, higher_is_better=False)
        + f", on the {level}"
    )


def _checks(result: FairnessResult, groups: SubgroupResult, cfg: FairnessConfig) -> tuple[Check, ...]:
    """Worst-class recall and the recall gap (on simultaneous intervals), and the largest
    within-class recall gap between attribute groups."""
    w = groups.worst
    support = min(int(row["support"]) for row in result.per_class)  # type: ignore[call-overload]
    return (
        Check(
            key=Fairness.WORST_CLASS_RECALL,
            verdict=Verdict.FAIRNESS,
            title="Worst-class recall",
            condition=_worst_condition(cfg),
            stage=Stage.FAIRNESS,
            metric=Fairness.WORST_CLASS_RECALL,
            value=result.worst_recall,
            threshold=cfg.min_class_recall,
            status=result.worst_status,
            evidence="#fairness",
            note=f"worst class: {result.worst_class}"
            + (
                _settle_note(
                    result.settle_n.get("worst_class_recall"),
                    support,
                    result.worst_recall_ci,
                    "fairness.min_class_recall",
                    True,
                )
                if result.worst_status == "inconclusive"
                else ""
            ),
            interval=result.worst_recall_ci,
        ),
        Check(
            key=Fairness.RECALL_GAP,
            verdict=Verdict.FAIRNESS,
            title="Recall gap between classes",
            condition=_gap_condition(cfg),
            stage=Stage.FAIRNESS,
            metric=Fairness.RECALL_GAP,
            value=result.recall_gap,
            threshold=cfg.max_recall_gap,
            status=result.gap_status,
            evidence="#fairness",
            note=_settle_note(
                result.settle_n.get("recall_gap"), support, result.recall_gap_ci, "fairness.max_recall_gap", False
            ).removeprefix("; ")
            if result.gap_status == "inconclusive"
            else "",
            interval=result.recall_gap_ci,
        ),
        Check(
            key=Fairness.SUBGROUP_TPR_GAP,
            verdict=Verdict.FAIRNESS_SUBGROUPS,
            title="Recall gap between image-attribute groups within a class",
            condition=condition_text("largest within-class recall gap", cfg.max_subgroup_gap, higher_is_better=False)
            + f", groups with at least {cfg.min_group_count} images",
            stage=Stage.FAIRNESS,
            metric=Fairness.SUBGROUP_MAX_TPR_GAP if w is not None else "",
            value=float(w["gap"]) if w is not None else None,  # type: ignore[arg-type]
            threshold=cfg.max_subgroup_gap,
            status=groups.status,
            evidence="#subgroups-within-classes",
            note=(
                f"largest: {w['attribute']} in class {w['class']}"
                + (
                    f"; passes on this test split at fairness.max_subgroup_gap="
                    f"{decidable_policy((float(w['ci_low']), float(w['ci_high'])), higher_is_better=False):g} or more"
                    if groups.status == "inconclusive"
                    else ""
                )
            )
            if w is not None
            else "no class has two groups large enough to compare",
            interval=(float(w["ci_low"]), float(w["ci_high"])) if w is not None else None,  # type: ignore[arg-type]
        ),
    )


def _adjusted_checks(m: MitigationResult, cfg: FairnessConfig) -> tuple[Check, ...]:
    """The logit-adjusted model's worst-class recall and recall gap, judged as the plain model's
    are (advisory: group `fairness_adjusted`, which ships only as the optional ONNX variant)."""
    what = "logit-adjusted variant (model.adjusted.onnx; advisory)"
    return (
        Check(
            key=Fairness.MITIGATION_WORST_CLASS_RECALL_AFTER,
            verdict=Verdict.FAIRNESS_ADJUSTED,
            title=f"Worst-class recall of the {what}",
            condition=_worst_condition(cfg),
            stage=Stage.FAIRNESS,
            metric=Fairness.MITIGATION_WORST_CLASS_RECALL_AFTER,
            value=m.worst_recall_after,
            threshold=cfg.min_class_recall,
            status=m.worst_status_after,
            evidence="#mitigation-per-class-logit-adjustment",
            note=f"worst class: {m.worst_class_after} (plain model: {m.worst_status_before})",
            interval=m.worst_recall_ci_after,
        ),
        Check(
            key=Fairness.MITIGATION_RECALL_GAP_AFTER,
            verdict=Verdict.FAIRNESS_ADJUSTED,
            title=f"Recall gap between classes of the {what}",
            condition=_gap_condition(cfg),
            stage=Stage.FAIRNESS,
            metric=Fairness.MITIGATION_RECALL_GAP_AFTER,
            value=m.recall_gap_after,
            threshold=cfg.max_recall_gap,
            status=m.gap_status_after,
            evidence="#mitigation-per-class-logit-adjustment",
            note=f"plain model: {m.gap_status_before}, gap {m.recall_gap_before:.3f}",
            interval=m.recall_gap_ci_after,
        ),
    )


def fairness_stage(
    predictions: Predictions,
    *,
    attributes: dict[str, np.ndarray],
    attribute_source: str,
    classes: tuple[str, ...],
    cfg: FairnessConfig,
) -> AuditOutcome:
    """Audit the shipped model's test predictions (no TTA) for per-class quality of service,
    subgroups within classes (`attributes`: group label of each test image per attribute, from
    `subgroup_attributes`) and, with `cfg.mitigation`, a logit adjustment tuned on validation.

    The outcome's status is the worse of the worst-class-recall and recall-gap verdicts; its
    headline the worst-class recall (0..1, higher is better)."""
    labels, shipped = predictions.test_labels, predictions.test_logits_no_tta
    preds = shipped.argmax(1)
    result = audit_fairness(labels, preds, classes, cfg=cfg)
    groups = audit_subgroups(labels, preds, attributes, classes=classes, cfg=cfg)
    mitigation = None
    if cfg.mitigation == "logit_adjustment" and len(predictions.val_labels):
        offsets = fit_logit_offsets(predictions.val_logits, predictions.val_labels, len(classes))
        mitigation = mitigation_effect(offsets, shipped, labels, classes=classes, cfg=cfg)
    exported = mitigation is not None and worth_exporting(mitigation)
    headline, metrics = _metrics(result, groups, mitigation)
    report = StageReport(
        stage=Stage.FAIRNESS,
        metrics=metrics,
        headline=headline,
        params={f"fairness.{k}": v for k, v in cfg.model_dump().items()},
        checks=_checks(result, groups, cfg) + (_adjusted_checks(mitigation, cfg) if exported else ()),
        tables={
            Fairness.PER_CLASS_JSON: result.per_class,
            Fairness.SUBGROUP_CELLS_JSON: groups.cells,
            Fairness.SUBGROUP_GAPS_JSON: groups.gaps,
        },
        figures={Fairness.RECALL_BY_CLASS_PNG: recall_figure(result.per_class, cfg.min_class_recall)},
        summary=asdict(result)
        | {
            "audited_model": AUDITED_MODEL,
            "subgroups": asdict(groups) | {"source": attribute_source},
            "mitigation": asdict(mitigation) | {"exported": exported} if mitigation is not None else None,
        },
    )
    status = worst([result.worst_status, result.gap_status])
    return AuditOutcome(report, status, result.reasons, result.worst_recall)


def offsets_to_export(summary: Mapping[str, Any] | None) -> tuple[float, ...] | None:
    """The logit offsets the export stage folds into `model.adjusted.onnx`, from the fairness
    stage's summary (this run's report, or a past run's record); None when the adjusted model is
    not worth exporting (`worth_exporting`)."""
    mitigation = (summary or {}).get("mitigation")
    return tuple(mitigation["offsets"]) if mitigation and mitigation.get("exported") else None
