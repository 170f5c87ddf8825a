"""The privacy stage as one pure function: the shipped model's logits of the audited points and
the reference models' logits in, a `StageReport` out.

It scores every configured attack (`attacks.py`; each augmented view on its own, averaged over
the views), assesses each one (`privacy.py`: AUC, TPR at low FPR with exact intervals, per-class
rates), picks the strongest, builds the per-class fairness x privacy view (`joint.py`) and the
one-run canary bound (`canaries.py`), and decides the four checks. Every name comes from
`auditflow.core.names`. No Prefect, no MLflow, no files: the privacy task reads the predictions
and the cached reference logits and publishes the report.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from auditflow.audits.attacks import lira_scores, logit_margin, loss_scores, rmia_scores, true_class_log_prob
from auditflow.audits.canaries import one_run_audit
from auditflow.audits.compare import AttackScores
from auditflow.audits.fairness import Settleability
from auditflow.audits.joint import exposure_correlation, joint_rows, joint_table
from auditflow.audits.plots import exposure_figure, loss_histogram_figure, roc_figure
from auditflow.audits.privacy import (
    AttackResult,
    assess_attack,
    balance,
    choose_audit_set,
    clopper_pearson,
    format_share,
    gains_over_baseline,
    per_example_loss,
    privacy_verdict,
    strongest,
)
from auditflow.core.checks import Check, condition_text
from auditflow.core.config import FairnessConfig, PrivacyConfig
from auditflow.core.names import Privacy, Stage, Verdict, per_class
from auditflow.core.predictions import CanaryScores, Predictions
from auditflow.core.stage import AuditOutcome, StageReport

DESCRIPTION = (
    "Privacy: membership inference against the shipped model (no TTA), training members vs test non-members "
    "with the same class counts. Loss threshold (Yeom et al. 2018), and with reference models RMIA "
    "(Zarifzadeh et al. 2024) and LiRA (Carlini et al. 2022): AUC with DeLong interval, TPR at low FPR with "
    "exact intervals, per-class rates, log-log ROC, and the per-class fairness x privacy view."
)
AUDITED_MODEL = "the shipped model (no test-time augmentation), as exported to ONNX"
HISTOGRAM_BINS = 40
ECE_BINS = 15  # as evaluate's default
BASELINE = "loss"  # the attack every other one is compared with (AUC gain)


@dataclass(frozen=True)
class ReferenceInputs:
    """What the attacks need of the reference models (`auditflow.models.references.References`,
    with their cached logits read): the tier that runs and why, and the models' logits."""

    tier: str  # "reference" (RMIA/LiRA run) or "loss" (the loss attack alone)
    reason: str
    logits: np.ndarray | None  # (Q, R, n, K): each model's logits of the audited points, members first
    member_in: np.ndarray  # (R, n_members) bool: audited member i was in reference model r's training set
    nonmember_in: np.ndarray  # (R, n_nonmembers) bool
    seconds: float  # wall time of the reference step, cached models included
    models: tuple[dict[str, Any], ...] = ()  # one per model: key, cached, train_seconds, epochs, images...

    @property
    def count(self) -> int:
        """Reference models used (0 for the loss tier)."""
        return len(self.member_in)


@dataclass(frozen=True)
class AuditedPoints:
    """The membership audit's points as the attacks see them: members first, then non-members."""

    logits: np.ndarray  # (Q, n, K): the shipped model's logits under each query view (view 0 the plain image)
    labels: np.ndarray  # (n,)
    is_member: np.ndarray  # (n,) bool
    n_members: int

    @classmethod
    def of(cls, predictions: Predictions) -> AuditedPoints:
        audit = predictions.audit
        member_labels, nonmember_labels = audit.member_labels, predictions.nonmember_labels()
        if audit.member_query_logits is not None and audit.nonmember_query_logits is not None:
            logits = np.concatenate([audit.member_query_logits, audit.nonmember_query_logits], axis=1)
        else:
            logits = np.concatenate([audit.member_logits, predictions.nonmember_logits()])[None]
        is_member = np.concatenate([np.ones(len(member_labels), bool), np.zeros(len(nonmember_labels), bool)])
        return cls(logits, np.concatenate([member_labels, nonmember_labels]), is_member, len(member_labels))


def fpr_name(fpr: float) -> str:
    """0.01 -> "1pct", 0.001 -> "0.1pct": the FPR level in metric names."""
    return f"{100 * fpr:g}pct"


def tpr_name(fpr: float) -> str:
    """The name of an attack's TPR at FPR level `fpr`: "tpr_at_1pct_fpr"."""
    return f"tpr_at_{fpr_name(fpr)}_fpr"


def attack_label(name: str, refs: ReferenceInputs, mode: str, *, queries: int = 1) -> str:
    """How an attack is named in the report: "RMIA offline, 2 reference models, 18 queries"."""
    views = f", {queries} queries per image" if queries > 1 else ""
    if name == "loss":
        return f"loss threshold (Yeom et al. 2018){views}"
    paper = {"rmia": "RMIA (Zarifzadeh et al. 2024)", "lira": "LiRA (Carlini et al. 2022)"}[name]
    return f"{paper}, {mode}, {refs.count} reference model(s){views}"


def run_attacks(
    target_logits: np.ndarray,
    labels: np.ndarray,
    *,
    n_members: int,
    ref_logits: np.ndarray | None,
    ref_in: np.ndarray,
    cfg: PrivacyConfig,
) -> dict[str, np.ndarray]:
    """Attack name -> member-ness scores of the audited points (members first, then non-members).

    `target_logits` is (queries, n, K): the target's logits of each audited point under each
    augmented view (`privacy.queries`); `ref_logits` (queries, R, n, K) the reference models'
    (None: the loss tier). Every attack scores each view on its own, with the reference models'
    logits of the same view, and the scores are averaged over the views."""
    scores: dict[str, np.ndarray] = {}
    if "loss" in cfg.attacks:
        scores["loss"] = np.mean([loss_scores(view, labels) for view in target_logits], axis=0)
    if ref_logits is None:
        return scores
    population = np.arange(n_members, len(labels))  # the non-members stand for the population
    views = list(zip(target_logits, ref_logits, strict=True))
    if "rmia" in cfg.attacks:
        scores["rmia"] = np.mean(
            [
                rmia_scores(
                    np.exp(true_class_log_prob(view, labels)),
                    np.stack([np.exp(true_class_log_prob(r, labels)) for r in ref_view]),
                    ref_in,
                    population=population,
                    a=cfg.rmia_offline_a,
                    gamma=cfg.rmia_gamma,
                )
                for view, ref_view in views
            ],
            axis=0,
        )
    if "lira" in cfg.attacks:
        scores["lira"] = np.mean(
            [
                lira_scores(logit_margin(view, labels), np.stack([logit_margin(r, labels) for r in ref_view]), ref_in)
                for view, ref_view in views
            ],
            axis=0,
        )
    return scores


def canary_audit(
    canaries: CanaryScores | None, delta: float | None, confidence: float, *, accountant_epsilon: float | None
) -> dict | None:
    """The one-run audit of the canaries (None when the run had none): each canary's score is
    the shipped model's negative loss; the bound is taken at the accountant's delta (0 without
    DP: then it bounds pure epsilon-DP)."""
    if canaries is None:
        return None
    scores = -per_example_loss(canaries.logits, canaries.labels)
    audit = one_run_audit(scores, canaries.included, delta=delta or 0.0, confidence=confidence)
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


def attack_metrics(result: AttackResult) -> dict[str, float]:
    """`privacy/<attack>/...` metrics of one attack; rates that are not stated are not logged."""
    a = result.attack

    def name(what: str) -> str:
        return Privacy.ATTACK.format(attack=a, name=what)

    out = {
        name("auc"): result.auc,
        name("auc_ci_low"): result.auc_ci[0],
        name("auc_ci_high"): result.auc_ci[1],
        name("advantage"): result.advantage,
    }
    for rate in result.rates:
        if rate.stated and rate.tpr is not None and rate.tpr_ci is not None:
            key = name(tpr_name(rate.fpr))
            out |= {key: rate.tpr, f"{key}_ci_low": rate.tpr_ci[0], f"{key}_ci_high": rate.tpr_ci[1]}
    if result.epsilon_lower_bound is not None:
        out[name("epsilon_lower_bound")] = result.epsilon_lower_bound
    base = Privacy.ATTACK_BASE.format(attack=a)
    for row in result.per_class:
        if row.get("auc") is not None:
            out[per_class(base, str(row["class"]), "auc")] = float(row["auc"])
        if row.get("stated"):
            out[per_class(base, str(row["class"]), tpr_name(result.verdict_fpr))] = float(row["tpr"])
    return out


def _headline(best: AttackResult, results: list[AttackResult], one_run: dict | None, cfg: PrivacyConfig) -> dict:
    """The strongest attack's AUC and TPR at the verdict FPR, the loss attack's AUC, the canary bound."""
    headline: dict[str, float] = {
        Privacy.STRONGEST_AUC: best.auc,
        Privacy.STRONGEST_AUC_CI_LOW: best.auc_ci[0],
        Privacy.STRONGEST_AUC_CI_HIGH: best.auc_ci[1],
    }
    rate = best.rate(cfg.verdict_fpr)
    if rate.stated and rate.tpr is not None and rate.tpr_ci is not None:
        headline |= {
            Privacy.STRONGEST_TPR_AT_VERDICT_FPR: rate.tpr,
            Privacy.STRONGEST_TPR_AT_VERDICT_FPR_CI_LOW: rate.tpr_ci[0],
            Privacy.STRONGEST_TPR_AT_VERDICT_FPR_CI_HIGH: rate.tpr_ci[1],
        }
    for r in results:
        if r.attack == BASELINE:
            headline[Privacy.LOSS_AUC] = r.auc
    if one_run is not None:  # beside train/dp_epsilon on the parent run
        headline[Privacy.CANARIES_EPSILON_LOWER_BOUND] = one_run["epsilon_lower_bound"]
    return headline


def _checks(
    best: AttackResult, verdict: tuple[str, str], refs: ReferenceInputs, balanced: dict, cfg: PrivacyConfig
) -> tuple[Check, ...]:
    """The strongest attack's TPR at the verdict FPR (gating), the strength of the attacks run,
    the audit set's balance, and the most exposed class (advisory)."""
    status, why = verdict
    rate = best.rate(cfg.verdict_fpr)
    at = fpr_name(cfg.verdict_fpr).replace("pct", "%")
    limit = cfg.max_tpr_at_fpr
    stated = [r for r in best.per_class if r.get("stated")]
    exposed = [r for r in stated if r.get("tpr_ci_low") is not None and r["tpr_ci_low"] > limit]
    n_members, n_nonmembers = balanced["n_members"], balanced["n_nonmembers"]
    return (
        Check(
            key=Privacy.STRONGEST_TPR,
            verdict=Verdict.PRIVACY,
            title=f"Membership attack TPR at {at} FPR (strongest attack)",
            condition=condition_text(f"{best.attack} attack TPR at {at} FPR", limit, higher_is_better=False)
            + ", decided on its exact interval",
            stage=Stage.PRIVACY,
            metric=Privacy.STRONGEST_TPR_AT_VERDICT_FPR,
            value=rate.tpr,
            threshold=limit,
            status=status,
            evidence="#privacy",
            note=why,
            interval=rate.tpr_ci,
        ),
        Check(
            key=Privacy.ATTACK_STRENGTH,
            verdict=Verdict.PRIVACY_STRENGTH,
            title="Strength of the attacks run",
            condition="reference-model attacks (RMIA, LiRA) ran; the loss attack alone is the weakest baseline",
            stage=Stage.PRIVACY,
            metric=Privacy.REFERENCES_COUNT,
            value=float(refs.count),
            threshold=1.0,
            status="pass" if refs.tier == "reference" else "warn",
            evidence="#privacy",
            note=refs.reason,
        ),
        Check(
            key=Privacy.AUDIT_BALANCE,
            verdict=Verdict.PRIVACY_DESIGN,
            title="Members and non-members alike apart from membership",
            condition="equal sizes and class shares within 0.01",
            stage=Stage.PRIVACY,
            metric=Privacy.N_MEMBERS,
            value=float(n_members),
            threshold=float(n_nonmembers),
            status="pass" if balanced["alike"] else "fail",
            evidence="#privacy",
            note=f"{n_members} training members vs {n_nonmembers} test non-members; "
            f"largest class-share difference {balanced['max_share_difference']:.4f}",
        ),
        Check(
            key=Privacy.PER_CLASS_TPR,
            verdict=Verdict.PRIVACY_PER_CLASS,
            title=f"Most exposed class (TPR at {at} FPR within the class)",
            condition=f"no class's interval lies above {limit:g} (warn only: per-class samples are small)",
            stage=Stage.PRIVACY,
            metric="",
            value=max((float(r["tpr"]) for r in stated), default=None),
            threshold=limit,
            # no class large enough to state a rate: nothing was measured, so nothing passes
            status="warn" if exposed else ("pass" if stated else "inconclusive"),
            evidence="#privacy-per-class",
            note="above the limit: " + ", ".join(f"{r['class']} ({r['tpr']:.3f})" for r in exposed)
            if exposed
            else "no class's interval lies above the limit",
        ),
    )


@dataclass(frozen=True)
class _Attacks:
    """Every attack's scores and assessment, and the strongest one."""

    scores: dict[str, np.ndarray]
    results: list[AttackResult]
    best: AttackResult
    gains: list[dict]


def _attack(points: AuditedPoints, refs: ReferenceInputs, classes: tuple[str, ...], cfg: PrivacyConfig) -> _Attacks:
    n_refs = refs.count
    ref_in = np.concatenate(
        [
            np.asarray(refs.member_in, dtype=bool).reshape(n_refs, points.n_members),
            np.asarray(refs.nonmember_in, dtype=bool).reshape(n_refs, len(points.labels) - points.n_members),
        ],
        axis=1,
    )
    logits = refs.logits if refs.tier == "reference" else None
    scores = run_attacks(
        points.logits, points.labels, n_members=points.n_members, ref_logits=logits, ref_in=ref_in, cfg=cfg
    )
    results = [
        assess_attack(
            name,
            s,
            points.is_member,
            labels=points.labels,
            classes=classes,
            fpr_levels=cfg.fpr_levels,
            verdict_fpr=cfg.verdict_fpr,
            confidence=cfg.confidence,
            min_expected_false_positives=cfg.min_expected_false_positives,
        )
        for name, s in scores.items()
    ]
    gains = gains_over_baseline(points.is_member, scores, baseline=BASELINE, confidence=cfg.confidence)
    return _Attacks(scores, results, strongest(results, cfg.verdict_fpr), gains)


def _scores(predictions: Predictions, attacks: _Attacks, cfg: PrivacyConfig) -> AttackScores:
    """Every attack's score of each audited point, for paired comparisons of two runs
    (`auditflow compare`, the release gate)."""
    return AttackScores(
        member_index=predictions.audit.member_index,
        nonmember_index=predictions.audit.nonmember_index,
        scores=attacks.scores,
        verdict_fpr=cfg.verdict_fpr,
        min_expected_false_positives=cfg.min_expected_false_positives,
    )


def _joint(
    predictions: Predictions,
    points: AuditedPoints,
    attacks: _Attacks,
    losses: tuple[np.ndarray, np.ndarray],
    classes: tuple[str, ...],
    cfg: FairnessConfig,
) -> tuple[list[dict], dict]:
    """The per-class fairness x privacy table and the rank correlation, on the strongest attack
    (`losses`: per-example loss of the members and of the non-members, nats)."""
    audit, nonmember_labels = predictions.audit, predictions.nonmember_labels()
    shipped, test_labels = predictions.test_logits_no_tta, predictions.test_labels
    joint = joint_table(
        test_logits=shipped,
        test_labels=test_labels,
        classes=classes,
        attack_per_class=attacks.best.per_class,
        member_loss=losses[0],
        member_labels=audit.member_labels,
        nonmember_loss=losses[1],
        nonmember_labels=nonmember_labels,
        confidence=cfg.confidence,
        n_bins=ECE_BINS,
    )
    best_scores = attacks.scores[attacks.best.attack]
    exposure = exposure_correlation(
        test_labels=test_labels,
        test_preds=shipped.argmax(1),
        member_scores=best_scores[points.is_member],
        member_labels=audit.member_labels,
        nonmember_scores=best_scores[~points.is_member],
        nonmember_labels=nonmember_labels,
        n_classes=len(classes),
        n_boot=cfg.n_bootstrap,
        seed=cfg.seed,
        confidence=cfg.confidence,
    )
    exposure["class_names"] = [classes[k] for k in exposure["classes"]]  # type: ignore[union-attr]
    return joint_rows(joint), exposure


def _metrics(
    refs: ReferenceInputs,
    attacks: _Attacks,
    losses: tuple[np.ndarray, np.ndarray],
    exposure: dict,
    one_run: dict | None,
    elapsed: float,
    target_train_s: float,
) -> dict[str, float]:
    """The stage run's `privacy/...` metrics beside the headline: the audit set, the reference
    models' cost, every attack's figures and gain over the loss attack, the joint view, canaries."""
    member_loss, nonmember_loss = losses
    metrics = {
        Privacy.N_MEMBERS: len(member_loss),
        Privacy.N_NONMEMBERS: len(nonmember_loss),
        Privacy.MEAN_LOSS_MEMBERS: float(member_loss.mean()),
        Privacy.MEAN_LOSS_NONMEMBERS: float(nonmember_loss.mean()),
        Privacy.REFERENCES_COUNT: refs.count,
        Privacy.REFERENCES_CACHED: sum(m["cached"] for m in refs.models),
        Privacy.REFERENCES_TRAIN_S: sum(m["train_seconds"] for m in refs.models if not m["cached"]),
        Privacy.REFERENCES_WALL_S: refs.seconds,
        Privacy.AUDIT_S: elapsed,
        Privacy.AUDIT_COST_VS_TRAINING: elapsed / target_train_s if target_train_s > 0 else float("nan"),
        Privacy.JOINT_SPEARMAN: exposure["rho"],
    }
    if one_run is not None:
        metrics |= {
            Privacy.CANARIES_COUNT: one_run["canaries"],
            Privacy.CANARIES_GUESSES: one_run["guesses"],
            Privacy.CANARIES_CORRECT: one_run["correct"],
        }
    if exposure.get("ci"):
        metrics |= {Privacy.JOINT_SPEARMAN_CI_LOW: exposure["ci"][0], Privacy.JOINT_SPEARMAN_CI_HIGH: exposure["ci"][1]}
    for r in attacks.results:
        metrics |= attack_metrics(r)
    for g in attacks.gains:
        key = Privacy.ATTACK.format(attack=g["attack"], name=f"auc_gain_over_{BASELINE}")
        metrics |= {key: g["gain"], f"{key}_ci_low": g["ci_low"], f"{key}_ci_high": g["ci_high"]}
    return metrics


def privacy_stage(
    predictions: Predictions,
    *,
    references: ReferenceInputs,
    target_train_s: float,
    classes: tuple[str, ...],
    cfg: PrivacyConfig,
    fairness_cfg: FairnessConfig,
    dp_epsilon: float | None = None,
    dp_delta: float | None = None,
) -> AuditOutcome:
    """Membership inference against the shipped model: every attack in `cfg.attacks` the tier
    allows, assessed on intervals; the verdict is the strongest attack's TPR at `cfg.verdict_fpr`
    against `cfg.max_tpr_at_fpr` (pass: its upper bound is at most the limit; fail: its lower
    bound exceeds it). `dp_epsilon`/`dp_delta`: what DP-SGD's accountant says the training spent
    (None without DP); the one-run canary bound is computed at that delta.

    The outcome's headline is that TPR (0..1, lower is better, chance = the FPR; NaN when not
    stated), its `attack` the strongest attack."""
    start = time.perf_counter()
    refs, audit, nonmember_labels = references, predictions.audit, predictions.nonmember_labels()
    points = AuditedPoints.of(predictions)
    balanced = balance(audit.member_labels, nonmember_labels, len(classes), wanted=audit.nonmember_wanted)
    for row in balanced["matched_down"]:  # names for the report
        row["name"] = classes[row["class"]]
    attacks = _attack(points, refs, classes, cfg)
    best = attacks.best
    status, why = privacy_verdict(best, cfg.verdict_fpr, cfg.max_tpr_at_fpr)
    labels = {r.attack: attack_label(r.attack, refs, cfg.reference_mode, queries=cfg.queries) for r in attacks.results}
    losses = (
        per_example_loss(audit.member_logits, audit.member_labels),
        per_example_loss(predictions.nonmember_logits(), nonmember_labels),
    )
    joint, exposure = _joint(predictions, points, attacks, losses, classes, fairness_cfg)
    one_run = canary_audit(predictions.canaries, dp_delta, cfg.confidence, accountant_epsilon=dp_epsilon)
    headline = _headline(best, attacks.results, one_run, cfg)
    elapsed = time.perf_counter() - start + refs.seconds
    histogram = loss_histogram(*losses)
    curves = {labels[r.attack]: (r.roc_fpr, r.roc_tpr, r.auc) for r in attacks.results}
    report = StageReport(
        stage=Stage.PRIVACY,
        metrics=headline | _metrics(refs, attacks, losses, exposure, one_run, elapsed, target_train_s),
        headline=headline,
        params={f"privacy.{k}": v for k, v in cfg.model_dump().items()},
        tags={
            Privacy.TIER: refs.tier,
            Privacy.STRONGEST_ATTACK: best.attack,
            Privacy.ATTACKED_MODEL: AUDITED_MODEL,
            Privacy.JOINT_ANSWER: exposure["answer"],
        },
        parent_tags={Privacy.TIER: refs.tier, Privacy.STRONGEST_ATTACK: best.attack},
        checks=_checks(best, (status, why), refs, balanced, cfg),
        texts={Privacy.ATTACK_SCORES_JSON: _scores(predictions, attacks, cfg).as_json()},
        tables={Privacy.PER_CLASS_JOINT_JSON: joint}
        | {Privacy.ATTACK_PER_CLASS_JSON.format(attack=r.attack): r.per_class for r in attacks.results},
        figures={
            Privacy.ROC_LOGLOG_PNG: roc_figure(curves),
            Privacy.LOSS_HISTOGRAM_PNG: loss_histogram_figure(**histogram),
            Privacy.EXPOSURE_BY_CLASS_PNG: exposure_figure(exposure, best.attack),
        },
        summary={
            "attacks": [asdict(r) | {"label": labels[r.attack]} for r in attacks.results],
            "strongest": best.attack,
            "gains_over_loss": attacks.gains,
            "verdict": status,
            "verdict_reason": why,
            "verdict_fpr": cfg.verdict_fpr,
            "max_tpr_at_fpr": cfg.max_tpr_at_fpr,
            "confidence": cfg.confidence,
            "tier": refs.tier,
            "tier_reason": refs.reason,
            "reference_mode": cfg.reference_mode,
            "queries": cfg.queries,
            "references": list(refs.models),
            "audited_model": AUDITED_MODEL,
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
    tpr = best.rate(cfg.verdict_fpr).tpr
    reasons = (why,) if status != "pass" else ()
    return AuditOutcome(report, status, reasons, tpr if tpr is not None else float("nan"), best.attack)


def settleability(train_labels: np.ndarray, test_labels: np.ndarray, cfg: PrivacyConfig) -> tuple[Settleability, ...]:
    """Before any training: whether the privacy verdict (the strongest attack's TPR at
    `cfg.verdict_fpr` ≤ `cfg.max_tpr_at_fpr`) can be reached on these splits, whatever the model
    and the attack. It is stated only when `verdict_fpr` x the audited non-members reaches
    `min_expected_false_positives`, and it can pass only when the exact upper bound of an attack
    that finds no member at all is within the limit. Counted on the audit set the evaluate stage
    will draw (`choose_audit_set`; its canaries, when on, take a few members more)."""
    audit = choose_audit_set(train_labels, test_labels, n=cfg.n_samples, seed=cfg.seed)
    n_non, n_mem = len(audit.nonmembers), len(audit.members)
    fpr, need = cfg.verdict_fpr, cfg.min_expected_false_positives
    at = f"TPR at {format_share(fpr)} FPR"
    expected = fpr * n_non
    best_high = clopper_pearson(0, n_mem, cfg.confidence)[1] if n_mem else 1.0
    if expected < need:
        text = (
            f"membership attack {at} cannot be stated on this test split: {n_non:,} audited non-members give "
            f"{expected:.3g} expected false positives, fewer than privacy.min_expected_false_positives={need}; "
            f"it is decidable with {math.ceil(need / fpr):,} test images or more, or at privacy.verdict_fpr="
            f"{need / max(n_non, 1):.3g} or more (one of privacy.fpr_levels)"
        )
    elif best_high > cfg.max_tpr_at_fpr:
        text = (
            f"membership attack {at} ≤ {cfg.max_tpr_at_fpr:g} cannot pass on this split: even an attack that finds "
            f"no member has an exact upper bound of {best_high:.3f} on {n_mem:,} members; it is decidable at "
            f"privacy.max_tpr_at_fpr={math.ceil(best_high * 1000) / 1000:.3f} or more, or with more test images"
        )
    else:
        text = f"membership attack {at} can be judged: {n_non:,} non-members, {n_mem:,} members"
    can_pass = expected >= need and best_high <= cfg.max_tpr_at_fpr
    return (Settleability(Privacy.STRONGEST_TPR_AT_VERDICT_FPR, "privacy.max_tpr_at_fpr", cfg.max_tpr_at_fpr,
                          best_high, can_pass, text),)  # fmt: skip
