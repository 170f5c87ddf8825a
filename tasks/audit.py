"""Stages 4 and 5: the fairness audit (per-class quality of service, subgroups within classes, a
mitigation) and the privacy audit (membership inference, per-class fairness x privacy view).

Both audit the model as it ships: the logits `evaluate` saved without test-time augmentation.
Each stage logs `stage/...` metrics, its checks and verdicts (decided on intervals), and copies
its headline numbers and verdict to the parent run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.attacks import lira_scores, logit_margin, loss_scores, rmia_scores, true_class_log_prob
from auditflow.audits.canaries import one_run_audit
from auditflow.audits.fairness import audit_fairness
from auditflow.audits.joint import exposure_correlation, joint_table
from auditflow.audits.mitigation import fit_logit_offsets, mitigation_effect
from auditflow.audits.plots import exposure_figure, loss_histogram_figure, recall_figure, roc_figure
from auditflow.audits.privacy import (
    AttackResult,
    assess_attack,
    balance,
    gains_over_baseline,
    per_example_loss,
    privacy_verdict,
    strongest,
)
from auditflow.audits.subgroups import audit_subgroups, derived_attributes, read_metadata
from auditflow.core.checks import Check, condition_text, worst
from auditflow.core.config import DataConfig, FairnessConfig, PrivacyConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.errors import ConfigError
from auditflow.core.tracking import Tracker, TrackingRef, metric_key
from auditflow.models.evaluation.metrics import load_predictions
from auditflow.models.references import ReferenceOutcome
from auditflow.tasks.references import References

FAIRNESS_DESCRIPTION = (
    "Fairness: per-class quality of service of the shipped model (one-vs-rest recall, precision and "
    "false-positive rate per class, fairlearn MetricFrame) with simultaneous Wilson intervals; three-valued "
    "verdicts on those intervals; recall and false-positive-rate gaps between image-attribute groups within "
    "each class; a per-class logit adjustment tuned on the validation split, before and after."
)
PRIVACY_DESCRIPTION = (
    "Privacy: membership inference against the shipped model (no TTA), training members vs test non-members "
    "with the same class counts. Loss threshold (Yeom et al. 2018), and with reference models RMIA "
    "(Zarifzadeh et al. 2024) and LiRA (Carlini et al. 2022): AUC with DeLong interval, TPR at low FPR with "
    "exact intervals, per-class rates, log-log ROC, and the per-class fairness x privacy view."
)
HISTOGRAM_BINS = 40
ECE_BINS = 15  # as evaluate's default


@dataclass(frozen=True)
class VerdictResult:
    status: str  # pass | fail | inconclusive, decided on intervals
    reasons: tuple[str, ...]  # why it is not a pass, one sentence each
    headline: float  # worst-class recall (fairness) or the strongest attack's TPR at the verdict FPR (privacy)
    attack: str = ""  # privacy: the strongest attack


def _ci_metrics(name: str, ci: tuple[float, float] | None) -> dict[str, float]:
    return {f"{name}_ci_low": ci[0], f"{name}_ci_high": ci[1]} if ci else {}


def _settle_note(n: int | None) -> str:
    return f"; about {n:,} test images per class would settle it" if n else ""


def subgroup_attributes(
    snapshot_path: str, data_cfg: DataConfig, cfg: FairnessConfig
) -> tuple[dict[str, np.ndarray], str]:
    """Group labels of the test images per attribute, and where they came from (in words)."""
    splits = make_splits(Snapshot.open(snapshot_path), data_cfg)
    attributes = derived_attributes(splits.test_x, cfg.derived_attributes, cfg.attribute_bins)
    source = f"derived from pixels ({', '.join(cfg.derived_attributes)}; {cfg.attribute_bins} quantile groups)"
    if cfg.metadata:
        if splits.test_paths is None:
            raise ConfigError(
                f"fairness.metadata={cfg.metadata!r} joins on image paths, but this data source has none "
                "(torchvision CIFAR-10); use an image folder or archive"
            )
        attributes |= read_metadata(cfg.metadata, list(splits.test_paths))
        source += f" and from {cfg.metadata}"
    return attributes, source


@task(name="fairness-audit", cache_policy=NO_CACHE)
def fairness_audit(
    ref: TrackingRef,
    predictions: str,
    snapshot_path: str,
    data_cfg: DataConfig,
    classes: tuple[str, ...],
    cfg: FairnessConfig,
) -> VerdictResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "fairness", FAIRNESS_DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("validation", "test"))
        run.log_params({f"fairness.{k}": v for k, v in cfg.model_dump().items()})
        data = load_predictions(predictions)
        labels, shipped = data["test_labels"], data["test_logits_no_tta"]
        result = audit_fairness(labels, shipped.argmax(1), classes, cfg)
        attributes, attribute_source = subgroup_attributes(snapshot_path, data_cfg, cfg)
        groups = audit_subgroups(labels, shipped.argmax(1), attributes, classes, cfg)
        mitigation = None
        if cfg.mitigation == "logit_adjustment" and len(data["val_labels"]):
            offsets = fit_logit_offsets(data["val_logits"], data["val_labels"], len(classes))
            mitigation = mitigation_effect(offsets, shipped, labels, classes, cfg)

        headline = {
            "fairness/worst_class_recall": result.worst_recall,
            "fairness/recall_gap": result.recall_gap,
        } | _ci_metrics("fairness/worst_class_recall", result.worst_recall_ci)
        headline |= _ci_metrics("fairness/recall_gap", result.recall_gap_ci)
        metrics = dict(headline)
        for r in result.per_class:
            for name in ("recall", "precision", "false_positive_rate"):
                if r[name] is not None:  # undefined (a class never predicted has no precision): not logged
                    metrics[metric_key("fairness", name, "class", str(r["class"]))] = float(r[name])  # type: ignore[arg-type]
        if groups.worst is not None:
            metrics |= {
                "fairness/subgroup/max_tpr_gap": float(groups.worst["gap"]),  # type: ignore[arg-type]
                "fairness/subgroup/max_tpr_gap_ci_low": float(groups.worst["ci_low"]),  # type: ignore[arg-type]
                "fairness/subgroup/max_tpr_gap_ci_high": float(groups.worst["ci_high"]),  # type: ignore[arg-type]
            }
        if mitigation is not None:
            metrics |= {
                "fairness/mitigation/accuracy_before": mitigation.accuracy_before,
                "fairness/mitigation/accuracy_after": mitigation.accuracy_after,
                "fairness/mitigation/worst_class_recall_before": mitigation.worst_recall_before,
                "fairness/mitigation/worst_class_recall_after": mitigation.worst_recall_after,
                "fairness/mitigation/recall_gap_before": mitigation.recall_gap_before,
                "fairness/mitigation/recall_gap_after": mitigation.recall_gap_after,
            }
        run.log_metrics(metrics)
        run.log_rows(result.per_class, "fairness/per_class.json")
        run.log_rows(groups.cells, "fairness/subgroup_cells.json")
        run.log_rows(groups.gaps, "fairness/subgroup_gaps.json")
        run.log_figure(recall_figure(result.per_class, cfg.min_class_recall), "fairness/recall_by_class.png")
        level = f"{cfg.confidence:.0%} simultaneous Wilson interval"
        checks = [
            Check(
                key="fairness/worst_class_recall",
                verdict="fairness",
                title="Worst-class recall",
                condition=condition_text("every class's recall", cfg.min_class_recall, True) + f", on its {level}",
                stage="fairness",
                metric="fairness/worst_class_recall",
                value=result.worst_recall,
                threshold=cfg.min_class_recall,
                status=result.worst_status,
                evidence="#fairness",
                note=f"worst class: {result.worst_class}" + _settle_note(result.settle_n.get("worst_class_recall")),
                interval=result.worst_recall_ci,
            ),
            Check(
                key="fairness/recall_gap",
                verdict="fairness",
                title="Recall gap between classes",
                condition=condition_text("best minus worst class recall", cfg.max_recall_gap, False)
                + f", on the {level}s",
                stage="fairness",
                metric="fairness/recall_gap",
                value=result.recall_gap,
                threshold=cfg.max_recall_gap,
                status=result.gap_status,
                evidence="#fairness",
                note=_settle_note(result.settle_n.get("recall_gap")).removeprefix("; "),
                interval=result.recall_gap_ci,
            ),
            Check(
                key="fairness/subgroup_tpr_gap",
                verdict="fairness_subgroups",
                title="Recall gap between image-attribute groups within a class",
                condition=condition_text("largest within-class recall gap", cfg.max_subgroup_gap, False)
                + f", groups with at least {cfg.min_group_count} images",
                stage="fairness",
                metric="fairness/subgroup/max_tpr_gap" if groups.worst is not None else "",
                value=float(groups.worst["gap"]) if groups.worst is not None else None,  # type: ignore[arg-type]
                threshold=cfg.max_subgroup_gap,
                status=groups.status,
                evidence="#subgroups-within-classes",
                note=(
                    f"largest: {groups.worst['attribute']} in class {groups.worst['class']}"
                    if groups.worst is not None
                    else "no class has two groups large enough to compare"
                ),
                interval=(float(groups.worst["ci_low"]), float(groups.worst["ci_high"]))  # type: ignore[arg-type]
                if groups.worst is not None
                else None,
            ),
        ]
        tracker.publish_checks(ref, run, "fairness", checks, headline)
        run.log_summary(
            "fairness",
            asdict(result)
            | {
                "audited_model": "the shipped model (no test-time augmentation)",
                "subgroups": asdict(groups) | {"source": attribute_source},
                "mitigation": asdict(mitigation) if mitigation is not None else None,
            },
        )
    return VerdictResult(worst([result.worst_status, result.gap_status]), result.reasons, result.worst_recall)


def canary_audit(
    data: dict[str, np.ndarray], delta: float | None, confidence: float, accountant_epsilon: float | None
) -> dict | None:
    """The one-run audit of the canaries in `data` (None when the run had none): each canary's
    score is the shipped model's negative loss; the bound is taken at the accountant's delta
    (0 without DP: then it bounds pure epsilon-DP)."""
    if "canary_logits" not in data:
        return None
    scores = -per_example_loss(data["canary_logits"], data["canary_labels"])
    audit = one_run_audit(scores, data["canary_included"], delta or 0.0, confidence)
    return asdict(audit) | {"accountant_epsilon": accountant_epsilon, "score": "negative loss of the shipped model"}


def loss_histogram(member_loss: np.ndarray, nonmember_loss: np.ndarray) -> dict[str, list[float]]:
    """Counts of both samples on shared, log-spaced loss bins (nats)."""
    top = max(float(np.max(member_loss, initial=0)), float(np.max(nonmember_loss, initial=0)), 1e-3)
    edges = np.concatenate([[0.0], np.logspace(-4, np.log10(top * 1.0001), HISTOGRAM_BINS)])
    return {
        "edges": edges.tolist(),
        "members": np.histogram(member_loss, edges)[0].tolist(),
        "nonmembers": np.histogram(nonmember_loss, edges)[0].tolist(),
    }


def fpr_name(fpr: float) -> str:
    """0.01 -> "1pct", 0.001 -> "0.1pct": the FPR level in metric names."""
    return f"{100 * fpr:g}pct"


def attack_label(name: str, refs: References, mode: str, queries: int = 1) -> str:
    """How an attack is named in the report: "RMIA offline, 2 reference models, 18 queries"."""
    views = f", {queries} queries per image" if queries > 1 else ""
    if name == "loss":
        return f"loss threshold (Yeom et al. 2018){views}"
    paper = {"rmia": "RMIA (Zarifzadeh et al. 2024)", "lira": "LiRA (Carlini et al. 2022)"}[name]
    return f"{paper}, {mode}, {len(refs.outcomes)} reference model(s){views}"


def run_attacks(
    target_logits: np.ndarray,
    labels: np.ndarray,
    n_members: int,
    refs: References,
    ref_in: np.ndarray,
    cfg: PrivacyConfig,
) -> dict[str, np.ndarray]:
    """Attack name -> member-ness scores of the audited points (members first, then non-members).

    `target_logits` is (queries, n, K): the target's logits of each audited point under each
    augmented view (`privacy.queries`); every attack scores each view on its own, with the
    reference models' logits of the same view, and the scores are averaged over the views."""
    scores: dict[str, np.ndarray] = {}
    if "loss" in cfg.attacks:
        scores["loss"] = np.mean([loss_scores(view, labels) for view in target_logits], axis=0)
    if refs.decision.tier != "reference":
        return scores
    ref_logits = np.stack([_reference_logits(o, len(target_logits)) for o in refs.outcomes], axis=1)  # (Q, R, n, K)
    population = np.arange(n_members, len(labels))  # the non-members stand for the population
    if "rmia" in cfg.attacks:
        scores["rmia"] = np.mean(
            [
                rmia_scores(
                    np.exp(true_class_log_prob(view, labels)),
                    np.stack([np.exp(true_class_log_prob(r, labels)) for r in ref_view]),
                    ref_in,
                    population,
                    cfg.rmia_offline_a,
                    cfg.rmia_gamma,
                )
                for view, ref_view in zip(target_logits, ref_logits, strict=True)
            ],
            axis=0,
        )
    if "lira" in cfg.attacks:
        scores["lira"] = np.mean(
            [
                lira_scores(logit_margin(view, labels), np.stack([logit_margin(r, labels) for r in ref_view]), ref_in)
                for view, ref_view in zip(target_logits, ref_logits, strict=True)
            ],
            axis=0,
        )
    return scores


def _reference_logits(outcome: ReferenceOutcome, queries: int) -> np.ndarray:
    """One reference model's logits of the audited points, (queries, n, K), members first."""
    if queries == 1:
        with np.load(outcome.logits) as cached:
            return np.concatenate([cached["member_logits"], cached["nonmember_logits"]])[None]
    if outcome.query_logits is None:
        raise ValueError(f"reference model {outcome.key} has no logits for {queries} queries")
    with np.load(outcome.query_logits) as cached:
        return np.concatenate([cached["member_query_logits"], cached["nonmember_query_logits"]], axis=1)


def audited_logits(data: dict[str, np.ndarray], member_logits: np.ndarray, nonmember_logits: np.ndarray) -> np.ndarray:
    """The target's logits of the audited points, (queries, n, K), members first: the augmented
    views when the evaluate stage stored them, else the plain image only."""
    if "member_query_logits" in data:
        return np.concatenate([data["member_query_logits"], data["nonmember_query_logits"]], axis=1)
    return np.concatenate([member_logits, nonmember_logits])[None]


def attack_metrics(result: AttackResult, classes: tuple[str, ...]) -> dict[str, float]:
    """`privacy/<attack>/...` metrics of one attack; rates that are not stated are not logged."""
    a = result.attack
    out = {
        f"privacy/{a}/auc": result.auc,
        f"privacy/{a}/auc_ci_low": result.auc_ci[0],
        f"privacy/{a}/auc_ci_high": result.auc_ci[1],
        f"privacy/{a}/advantage": result.advantage,
    }
    for rate in result.rates:
        if rate.stated and rate.tpr is not None and rate.tpr_ci is not None:
            key = f"privacy/{a}/tpr_at_{fpr_name(rate.fpr)}_fpr"
            out |= {key: rate.tpr, f"{key}_ci_low": rate.tpr_ci[0], f"{key}_ci_high": rate.tpr_ci[1]}
    if result.epsilon_lower_bound is not None:
        out[f"privacy/{a}/epsilon_lower_bound"] = result.epsilon_lower_bound
    for row in result.per_class:
        if row.get("auc") is not None:
            out[metric_key("privacy", a, "class", str(row["class"]), "auc")] = float(row["auc"])
        if row.get("stated"):
            out[metric_key("privacy", a, "class", str(row["class"]), f"tpr_at_{fpr_name(result.verdict_fpr)}_fpr")] = (
                float(row["tpr"])
            )
    return out


def _as_dict(result: AttackResult, label: str) -> dict[str, Any]:
    return asdict(result) | {"label": label}


@task(name="privacy-audit", cache_policy=NO_CACHE)
def privacy_audit(
    ref: TrackingRef,
    predictions: str,
    refs: References,
    target_train_s: float,
    classes: tuple[str, ...],
    cfg: PrivacyConfig,
    fairness_cfg: FairnessConfig,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
) -> VerdictResult:
    """`dp_epsilon`/`dp_delta`: what DP-SGD's accountant says the training spent (None without DP);
    the one-run canary bound is computed at that delta and shown beside that epsilon."""
    tracker = Tracker(ref.uri)
    start = time.perf_counter()
    with tracker.stage(ref, "privacy", PRIVACY_DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "test"))
        run.log_params({f"privacy.{k}": v for k, v in cfg.model_dump().items()})
        data = load_predictions(predictions)
        member_logits, member_labels = data["member_logits"], data["member_labels"]
        nonmember_logits = data["test_logits_no_tta"][data["nonmember_index"]]
        nonmember_labels = data["test_labels"][data["nonmember_index"]]
        balanced = balance(member_labels, nonmember_labels, len(classes), data.get("nonmember_wanted"))
        for row in balanced["matched_down"]:  # names for the report
            row["name"] = classes[row["class"]]
        n_refs = len(refs.outcomes)
        member_in = np.asarray(refs.member_in, dtype=bool).reshape(n_refs, len(member_labels))
        nonmember_in = np.asarray(refs.nonmember_in, dtype=bool).reshape(n_refs, len(nonmember_labels))
        labels = np.concatenate([member_labels, nonmember_labels])
        scores = run_attacks(
            audited_logits(data, member_logits, nonmember_logits),
            labels,
            len(member_labels),
            refs,
            np.concatenate([member_in, nonmember_in], axis=1),
            cfg,
        )
        is_member = np.concatenate([np.ones(len(member_labels), bool), np.zeros(len(nonmember_labels), bool)])
        results = [
            assess_attack(
                name,
                s,
                is_member,
                labels,
                classes,
                cfg.fpr_levels,
                cfg.verdict_fpr,
                cfg.confidence,
                cfg.min_expected_false_positives,
            )
            for name, s in scores.items()
        ]
        best = strongest(results, cfg.verdict_fpr)
        gains = gains_over_baseline(is_member, scores, "loss", cfg.confidence)
        status, why = privacy_verdict(best, cfg.verdict_fpr, cfg.max_tpr_at_fpr)
        labels_by_attack = {r.attack: attack_label(r.attack, refs, cfg.reference_mode, cfg.queries) for r in results}

        # the per-class fairness x privacy view, on the strongest attack's scores
        member_loss = per_example_loss(member_logits, member_labels)
        nonmember_loss = per_example_loss(nonmember_logits, nonmember_labels)
        shipped, test_labels = data["test_logits_no_tta"], data["test_labels"]
        joint = joint_table(
            shipped,
            test_labels,
            classes,
            best.per_class,
            member_loss,
            member_labels,
            nonmember_loss,
            nonmember_labels,
            fairness_cfg.confidence,
            ECE_BINS,
        )
        best_scores = scores[best.attack]
        exposure = exposure_correlation(
            test_labels,
            shipped.argmax(1),
            best_scores[is_member],
            member_labels,
            best_scores[~is_member],
            nonmember_labels,
            len(classes),
            fairness_cfg.n_bootstrap,
            fairness_cfg.seed,
            fairness_cfg.confidence,
        )

        exposure["class_names"] = [classes[k] for k in exposure["classes"]]
        one_run = canary_audit(data, dp_delta, cfg.confidence, dp_epsilon)
        verdict_rate = best.rate(cfg.verdict_fpr)
        headline: dict[str, float] = {
            "privacy/strongest/auc": best.auc,
            "privacy/strongest/auc_ci_low": best.auc_ci[0],
            "privacy/strongest/auc_ci_high": best.auc_ci[1],
        }
        if verdict_rate.stated and verdict_rate.tpr is not None and verdict_rate.tpr_ci is not None:
            headline |= {
                "privacy/strongest/tpr_at_verdict_fpr": verdict_rate.tpr,
                "privacy/strongest/tpr_at_verdict_fpr_ci_low": verdict_rate.tpr_ci[0],
                "privacy/strongest/tpr_at_verdict_fpr_ci_high": verdict_rate.tpr_ci[1],
            }
        if "loss" in scores:
            headline["privacy/loss/auc"] = next(r.auc for r in results if r.attack == "loss")
        if one_run is not None:  # beside train/dp_epsilon on the parent run
            headline["privacy/canaries/epsilon_lower_bound"] = one_run["epsilon_lower_bound"]
        elapsed = time.perf_counter() - start + refs.seconds
        metrics = headline | {
            "privacy/n_members": len(member_labels),
            "privacy/n_nonmembers": len(nonmember_labels),
            "privacy/mean_loss_members": float(member_loss.mean()),
            "privacy/mean_loss_nonmembers": float(nonmember_loss.mean()),
            "privacy/references/count": n_refs,
            "privacy/references/cached": sum(o.cached for o in refs.outcomes),
            "privacy/references/train_s": sum(o.train_seconds for o in refs.outcomes if not o.cached),
            "privacy/references/wall_s": refs.seconds,
            "privacy/audit_s": elapsed,
            "privacy/audit_cost_vs_training": elapsed / target_train_s if target_train_s > 0 else float("nan"),
            "privacy/joint/spearman": exposure["rho"],
        }
        if one_run is not None:
            metrics |= {
                "privacy/canaries/count": one_run["canaries"],
                "privacy/canaries/guesses": one_run["guesses"],
                "privacy/canaries/correct": one_run["correct"],
            }
        if exposure.get("ci"):
            metrics |= {
                "privacy/joint/spearman_ci_low": exposure["ci"][0],
                "privacy/joint/spearman_ci_high": exposure["ci"][1],
            }
        for r in results:
            metrics |= attack_metrics(r, classes)
        for g in gains:
            key = f"privacy/{g['attack']}/auc_gain_over_loss"
            metrics |= {key: g["gain"], f"{key}_ci_low": g["ci_low"], f"{key}_ci_high": g["ci_high"]}
        run.log_metrics({k: float(v) for k, v in metrics.items() if v is not None and v == v})
        run.set_tags(
            {
                "privacy/tier": refs.decision.tier,
                "privacy/strongest_attack": best.attack,
                "privacy/attacked_model": "the shipped model (no test-time augmentation), as exported to ONNX",
                "privacy/joint_answer": exposure["answer"],
            }
        )
        tracker.parent(ref).set_tags({"privacy/tier": refs.decision.tier, "privacy/strongest_attack": best.attack})
        run.log_rows(joint, "privacy/per_class_joint.json")
        for r in results:
            run.log_rows(r.per_class, f"privacy/{r.attack}/per_class.json")
        curves = {labels_by_attack[r.attack]: (r.roc_fpr, r.roc_tpr, r.auc) for r in results}
        run.log_figure(roc_figure(curves), "privacy/roc_loglog.png")
        histogram = loss_histogram(member_loss, nonmember_loss)
        run.log_figure(loss_histogram_figure(**histogram), "privacy/loss_histogram.png")
        run.log_figure(exposure_figure(exposure, best.attack), "privacy/exposure_by_class.png")
        exposed = [
            row
            for row in best.per_class
            if row.get("stated") and row.get("tpr_ci_low") is not None and row["tpr_ci_low"] > cfg.max_tpr_at_fpr
        ]
        at = fpr_name(cfg.verdict_fpr)
        checks = [
            Check(
                key="privacy/strongest_tpr",
                verdict="privacy",
                title=f"Membership attack TPR at {at.replace('pct', '%')} FPR (strongest attack)",
                condition=condition_text(
                    f"{best.attack} attack TPR at {at.replace('pct', '%')} FPR", cfg.max_tpr_at_fpr, False
                )
                + ", decided on its exact interval",
                stage="privacy",
                metric="privacy/strongest/tpr_at_verdict_fpr",
                value=verdict_rate.tpr,
                threshold=cfg.max_tpr_at_fpr,
                status=status,
                evidence="#privacy",
                note=why,
                interval=verdict_rate.tpr_ci,
            ),
            Check(
                key="privacy/attack_strength",
                verdict="privacy_strength",
                title="Strength of the attacks run",
                condition="reference-model attacks (RMIA, LiRA) ran; the loss attack alone is the weakest baseline",
                stage="privacy",
                metric="privacy/references/count",
                value=float(n_refs),
                threshold=1.0,
                status="pass" if refs.decision.tier == "reference" else "warn",
                evidence="#privacy",
                note=refs.decision.reason,
            ),
            Check(
                key="privacy/audit_balance",
                verdict="privacy_design",
                title="Members and non-members alike apart from membership",
                condition="equal sizes and class shares within 0.01",
                stage="privacy",
                metric="privacy/n_members",
                value=float(len(member_labels)),
                threshold=float(len(nonmember_labels)),
                status="pass" if balanced["alike"] else "fail",
                evidence="#privacy",
                note=f"{len(member_labels)} training members vs {len(nonmember_labels)} test non-members; "
                f"largest class-share difference {balanced['max_share_difference']:.4f}",
            ),
            Check(
                key="privacy/per_class_tpr",
                verdict="privacy_per_class",
                title=f"Most exposed class (TPR at {at.replace('pct', '%')} FPR within the class)",
                condition=f"no class's interval lies above {cfg.max_tpr_at_fpr:g} "
                "(warn only: per-class samples are small)",
                stage="privacy",
                metric="",
                value=max((float(r["tpr"]) for r in best.per_class if r.get("stated")), default=None),
                threshold=cfg.max_tpr_at_fpr,
                # no class large enough to state a rate: nothing was measured, so nothing passes
                status="warn"
                if exposed
                else ("pass" if any(r.get("stated") for r in best.per_class) else "inconclusive"),
                evidence="#privacy-per-class",
                note="above the limit: " + ", ".join(f"{r['class']} ({r['tpr']:.3f})" for r in exposed)
                if exposed
                else "no class's interval lies above the limit",
            ),
        ]
        tracker.publish_checks(ref, run, "privacy", checks, headline)
        run.log_summary(
            "privacy",
            {
                "attacks": [_as_dict(r, labels_by_attack[r.attack]) for r in results],
                "strongest": best.attack,
                "gains_over_loss": gains,
                "verdict": status,
                "verdict_reason": why,
                "verdict_fpr": cfg.verdict_fpr,
                "max_tpr_at_fpr": cfg.max_tpr_at_fpr,
                "confidence": cfg.confidence,
                "tier": refs.decision.tier,
                "tier_reason": refs.decision.reason,
                "reference_mode": cfg.reference_mode,
                "queries": cfg.queries,
                "references": [asdict(o) for o in refs.outcomes],
                "audited_model": "the shipped model (no test-time augmentation), as exported to ONNX",
                "members_from": "the training split the shipped model was trained on",
                "nonmembers_from": "the test split (never trained on)",
                "balance": balanced,
                "loss_histogram": histogram,
                "joint": joint,
                "exposure": exposure,
                "audit_seconds": elapsed,
                "target_train_seconds": target_train_s,
                "min_expected_false_positives": cfg.min_expected_false_positives,
                "one_run": one_run,
            },
        )
    tpr = verdict_rate.tpr if verdict_rate.tpr is not None else float("nan")
    return VerdictResult(status, (why,) if status != "pass" else (), tpr, best.attack)
