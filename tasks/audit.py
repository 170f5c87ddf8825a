"""Stages 4 and 5: the per-class fairness audit and the membership-inference privacy audit."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.fairness import audit_fairness
from auditflow.audits.plots import recall_figure, roc_figure
from auditflow.audits.privacy import audit_membership, sample_equal
from auditflow.core.config import FairnessConfig, PrivacyConfig
from auditflow.core.tracking import Tracker, TrackingRef
from auditflow.models.evaluation import load_predictions


@dataclass(frozen=True)
class VerdictResult:
    passed: bool
    reasons: tuple[str, ...]
    headline: float  # worst-class recall (fairness) or attack AUC (privacy)


@task(name="fairness-audit", cache_policy=NO_CACHE)
def fairness_audit(ref: TrackingRef, predictions: str, classes: tuple[str, ...], cfg: FairnessConfig) -> VerdictResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "fairness") as run:
        run.log_params({f"fairness.{k}": v for k, v in cfg.model_dump().items()})
        data = load_predictions(predictions)
        result = audit_fairness(data["test_labels"], data["test_logits"].argmax(1), classes, cfg)
        metrics: dict[str, float] = {}
        for name, d in result.disparities.items():
            metrics |= {f"{name}_difference": d.difference, f"{name}_ratio": d.ratio, f"{name}_group_min": d.group_min}
            if d.difference_ci:
                metrics |= {
                    f"{name}_difference_ci_low": d.difference_ci[0],
                    f"{name}_difference_ci_high": d.difference_ci[1],
                }
        run.log_metrics(metrics | {"passed": float(result.passed)})
        rows = result.per_class
        run.log_rows(rows, "fairness/per_class.json")
        run.log_figure(recall_figure(rows, cfg.min_class_recall), "fairness/recall_by_class.png")
        verdict = "pass" if result.passed else "fail"
        run.set_tags({"auditflow.verdict": verdict})
        tracker.parent(ref).set_tags({"auditflow.fairness_verdict": verdict})
        run.log_summary("fairness", asdict(result))
    return VerdictResult(result.passed, result.reasons, result.disparities["recall"].group_min)


@task(name="privacy-audit", cache_policy=NO_CACHE)
def privacy_audit(ref: TrackingRef, predictions: str, classes: tuple[str, ...], cfg: PrivacyConfig) -> VerdictResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "privacy") as run:
        run.log_params({f"privacy.{k}": v for k, v in cfg.model_dump().items()})
        data = load_predictions(predictions)
        mem, non = sample_equal(len(data["member_labels"]), len(data["test_labels"]), cfg.n_samples, cfg.seed)
        result = audit_membership(
            data["member_logits"][mem],
            data["member_labels"][mem],
            data["test_logits"][non],
            data["test_labels"][non],
            classes,
            cfg,
        )
        metrics = {
            "attack_auc": result.auc,
            "attacker_advantage": result.advantage,
            "tpr_at_1pct_fpr": result.tpr_at_1pct_fpr,
            "tpr_at_0.1pct_fpr": result.tpr_at_01pct_fpr,
            "mean_loss_members": result.mean_loss_members,
            "mean_loss_nonmembers": result.mean_loss_nonmembers,
            "passed": float(result.passed),
        }
        if result.auc_ci:
            metrics |= {"attack_auc_ci_low": result.auc_ci[0], "attack_auc_ci_high": result.auc_ci[1]}
        run.log_metrics(metrics | {f"attack_auc.{r['class']}": r["auc"] for r in result.per_class})  # type: ignore[misc]
        rows = result.per_class
        run.log_rows(rows, "privacy/per_class.json")
        run.log_figure(roc_figure(result.roc_fpr, result.roc_tpr, result.auc), "privacy/roc_loglog.png")
        verdict = "pass" if result.passed else "fail"
        run.set_tags({"auditflow.verdict": verdict})
        tracker.parent(ref).set_tags({"auditflow.privacy_verdict": verdict})
        run.log_summary("privacy", asdict(result))
    return VerdictResult(result.passed, result.reasons, result.auc)
