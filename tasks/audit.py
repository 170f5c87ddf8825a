"""Stages 4 and 5: the per-class fairness audit and the membership-inference privacy audit.

Both audit the logits `evaluate` saved (with test-time augmentation when the profile uses it;
the report says so). Each stage logs `stage/...` metrics, its checks and verdict, and copies
its headline numbers and verdict to the parent run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.fairness import Disparity, audit_fairness
from auditflow.audits.plots import loss_histogram_figure, recall_figure, roc_figure
from auditflow.audits.privacy import audit_membership, per_example_loss, sample_equal
from auditflow.core.checks import Check, condition_text, judge
from auditflow.core.config import FairnessConfig, PrivacyConfig
from auditflow.core.tracking import Tracker, TrackingRef, metric_key
from auditflow.models.evaluation import load_predictions

FAIRNESS_DESCRIPTION = (
    "Fairness (per-class quality of service): one-vs-rest recall, precision and false-positive rate per class "
    "(fairlearn MetricFrame), their spread with bootstrap intervals, and the checks on worst-class recall and "
    "the recall gap."
)
PRIVACY_DESCRIPTION = (
    "Privacy: loss-threshold membership inference (Yeom et al. 2018) on training members vs test non-members; "
    "AUC with interval, TPR at low FPR, per-class AUC, ROC and member/non-member loss histograms."
)
HIGHER_IS_BETTER = {"recall": True, "precision": True, "false_positive_rate": False}
HISTOGRAM_BINS = 40


@dataclass(frozen=True)
class VerdictResult:
    passed: bool
    reasons: tuple[str, ...]
    headline: float  # worst-class recall (fairness) or attack AUC (privacy)


def worst_and_best(d: Disparity, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst and best class of one per-class metric, by its direction: for a rate where
    lower is better (false positives) the worst class has the highest rate."""
    higher = HIGHER_IS_BETTER[d.metric]
    ordered = sorted(rows, key=lambda r: r[d.metric], reverse=not higher)  # worst first
    return {
        "higher_is_better": higher,
        "worst": d.group_min if higher else d.group_max,
        "worst_ci": d.group_min_ci if higher else d.group_max_ci,
        "worst_class": ordered[0]["class"],
        "best": d.group_max if higher else d.group_min,
        "best_ci": d.group_max_ci if higher else d.group_min_ci,
        "best_class": ordered[-1]["class"],
    }


@task(name="fairness-audit", cache_policy=NO_CACHE)
def fairness_audit(ref: TrackingRef, predictions: str, classes: tuple[str, ...], cfg: FairnessConfig) -> VerdictResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "fairness", FAIRNESS_DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("test",))
        run.log_params({f"fairness.{k}": v for k, v in cfg.model_dump().items()})
        data = load_predictions(predictions)
        result = audit_fairness(data["test_labels"], data["test_logits"].argmax(1), classes, cfg)
        rows = result.per_class
        extremes = {name: worst_and_best(d, rows) for name, d in result.disparities.items()}
        metrics: dict[str, float] = {}
        for name, d in result.disparities.items():
            e = extremes[name]
            metrics |= {
                f"fairness/{name}/worst": e["worst"],
                f"fairness/{name}/best": e["best"],
                f"fairness/{name}/difference": d.difference,
                f"fairness/{name}/ratio": d.ratio,
            }
            for label, ci in (("difference", d.difference_ci), ("worst", e["worst_ci"])):
                if ci:
                    metrics |= {f"fairness/{name}/{label}_ci_low": ci[0], f"fairness/{name}/{label}_ci_high": ci[1]}
        recall = result.disparities["recall"]
        headline = {"fairness/worst_class_recall": recall.group_min, "fairness/recall_gap": recall.difference}
        run.log_metrics(
            metrics
            | headline
            | {
                metric_key("fairness", name, "class", str(r["class"])): float(r[name])
                for r in rows
                for name in HIGHER_IS_BETTER
            }
        )
        run.log_rows(rows, "fairness/per_class.json")
        run.log_figure(recall_figure(rows, cfg.min_class_recall), "fairness/recall_by_class.png")
        checks = [
            Check(
                key="fairness/worst_class_recall",
                verdict="fairness",
                title="Worst-class recall",
                condition=condition_text("lowest per-class recall", cfg.min_class_recall, True),
                stage="fairness",
                metric="fairness/worst_class_recall",
                value=recall.group_min,
                threshold=cfg.min_class_recall,
                status=judge(recall.group_min, cfg.min_class_recall, True),
                evidence="#fairness",
                note=f"worst class: {extremes['recall']['worst_class']}",
            ),
            Check(
                key="fairness/recall_gap",
                verdict="fairness",
                title="Recall gap between classes",
                condition=condition_text("best minus worst per-class recall", cfg.max_recall_gap, False),
                stage="fairness",
                metric="fairness/recall_gap",
                value=recall.difference,
                threshold=cfg.max_recall_gap,
                status=judge(recall.difference, cfg.max_recall_gap, False),
                evidence="#fairness",
                note=f"{extremes['recall']['best_class']} best, {extremes['recall']['worst_class']} worst",
            ),
        ]
        tracker.publish(ref, run, "fairness", checks, headline)
        run.log_summary("fairness", asdict(result) | {"extremes": extremes})
    return VerdictResult(result.passed, result.reasons, recall.group_min)


def loss_histogram(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> dict[str, list[float]]:
    """Counts of both samples on shared, log-spaced loss bins (nats)."""
    top = max(float(np.max(member_loss, initial=0)), float(np.max(nonmember_loss, initial=0)), 1e-3)
    edges = np.concatenate([[0.0], np.logspace(-4, np.log10(top * 1.0001), HISTOGRAM_BINS)])
    return {
        "edges": edges.tolist(),
        "members": np.histogram(member_loss, edges)[0].tolist(),
        "nonmembers": np.histogram(nonmember_loss, edges)[0].tolist(),
    }


@task(name="privacy-audit", cache_policy=NO_CACHE)
def privacy_audit(ref: TrackingRef, predictions: str, classes: tuple[str, ...], cfg: PrivacyConfig) -> VerdictResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "privacy", PRIVACY_DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "test"))
        run.log_params({f"privacy.{k}": v for k, v in cfg.model_dump().items()})
        data = load_predictions(predictions)
        mem, non = sample_equal(len(data["member_labels"]), len(data["test_labels"]), cfg.n_samples, cfg.seed)
        members = (data["member_logits"][mem], data["member_labels"][mem])
        nonmembers = (data["test_logits"][non], data["test_labels"][non])
        result = audit_membership(*members, *nonmembers, classes, cfg)
        histogram = loss_histogram(per_example_loss(*members), per_example_loss(*nonmembers))
        headline = {"privacy/loss/auc": result.auc, "privacy/loss/tpr_at_1pct_fpr": result.tpr_at_1pct_fpr}
        metrics = headline | {
            "privacy/loss/advantage": result.advantage,
            "privacy/loss/tpr_at_0.1pct_fpr": result.tpr_at_01pct_fpr,
            "privacy/loss/mean_loss_members": result.mean_loss_members,
            "privacy/loss/mean_loss_nonmembers": result.mean_loss_nonmembers,
            "privacy/loss/n_members": result.n_members,
            "privacy/loss/n_nonmembers": result.n_nonmembers,
        }
        if result.auc_ci:
            metrics |= {"privacy/loss/auc_ci_low": result.auc_ci[0], "privacy/loss/auc_ci_high": result.auc_ci[1]}
        per_class = {metric_key("privacy", "loss", "auc", "class", str(r["class"])): r["auc"] for r in result.per_class}
        run.log_metrics(metrics | {k: float(v) for k, v in per_class.items() if v == v})  # type: ignore[arg-type]
        run.log_rows(result.per_class, "privacy/per_class.json")
        run.log_figure(roc_figure(result.roc_fpr, result.roc_tpr, result.auc), "privacy/roc_loglog.png")
        run.log_figure(loss_histogram_figure(**histogram), "privacy/loss_histogram.png")
        flagged = [r for r in result.per_class if r["auc"] == r["auc"] and r["auc"] > cfg.max_auc]  # type: ignore[operator]
        highest = max((r for r in result.per_class if r["auc"] == r["auc"]), key=lambda r: r["auc"], default=None)  # type: ignore[arg-type, return-value]
        checks = [
            Check(
                key="privacy/loss_auc",
                verdict="privacy",
                title="Membership attack AUC (loss threshold)",
                condition=condition_text("attack AUC (0.5 = chance)", cfg.max_auc, False),
                stage="privacy",
                metric="privacy/loss/auc",
                value=result.auc,
                threshold=cfg.max_auc,
                status=judge(result.auc, cfg.max_auc, False),
                evidence="#privacy",
            ),
            Check(
                key="privacy/per_class_auc",
                verdict="privacy_per_class",
                title="Membership attack AUC, most exposed class",
                condition=condition_text("highest per-class attack AUC", cfg.max_auc, False)
                + " (warn only: small per-class samples)",
                stage="privacy",
                metric=metric_key("privacy", "loss", "auc", "class", str(highest["class"])) if highest else "",
                value=float(highest["auc"]) if highest else None,  # type: ignore[arg-type]
                threshold=cfg.max_auc,
                status="warn" if flagged else ("pass" if highest else "inconclusive"),
                evidence="#privacy-per-class",
                note="beyond the threshold: " + ", ".join(f"{r['class']} ({r['auc']:.3f})" for r in flagged)
                if flagged
                else "no class beyond the threshold",
            ),
        ]
        tracker.publish(ref, run, "privacy", checks, headline)
        run.log_summary(
            "privacy",
            asdict(result) | {"loss_histogram": histogram, "flagged_classes": [r["class"] for r in flagged]},
        )
    return VerdictResult(result.passed, result.reasons, result.auc)
