"""Membership inference by loss threshold (Yeom et al. 2018, "Privacy Risk in Machine Learning").

The attacker scores each image by its negative cross-entropy loss under the model: training
members tend to have lower loss. Sweeping the threshold over equal-size samples of members
(training split) and non-members (never trained on) gives the ROC curve.

Reading the numbers: AUC 0.5 means the attack is no better than a coin (ideal); 1.0 means
membership is fully exposed. Attacker advantage = max(TPR - FPR), 0 ideal. TPR at a low FPR
(1%, 0.1%) is what matters for a confident attacker (Carlini et al. 2022); equal to that FPR
is ideal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame
from scipy.special import log_softmax
from sklearn.metrics import roc_auc_score, roc_curve

from auditflow.core.config import PrivacyConfig


def per_example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each example, nats."""
    return -log_softmax(logits.astype(np.float64), axis=1)[np.arange(len(labels)), labels]


def safe_auc(is_member: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, or nan where a group (or a bootstrap resample of it) holds one side only."""
    if len(np.unique(is_member)) < 2:
        return float("nan")
    return float(roc_auc_score(is_member, scores))


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """Highest TPR reachable with FPR <= target on a ROC curve."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0


@dataclass(frozen=True)
class PrivacyResult:
    auc: float  # 0.5 ideal, 1.0 = membership fully exposed
    auc_ci: tuple[float, float] | None
    advantage: float  # max(TPR - FPR), 0 ideal
    tpr_at_1pct_fpr: float  # ideal 0.01
    tpr_at_01pct_fpr: float  # ideal 0.001
    n_members: int
    n_nonmembers: int
    mean_loss_members: float  # nats
    mean_loss_nonmembers: float  # nats
    per_class: list[dict[str, object]]  # class, auc, auc_ci_low/high, n
    roc_fpr: list[float]  # ROC curve, thinned for plotting
    roc_tpr: list[float]
    passed: bool
    reasons: tuple[str, ...]
    max_auc: float
    confidence: float


def sample_equal(n_members: int, n_nonmembers: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of equal-size random samples of members and non-members (size min of all three)."""
    size = min(n, n_members, n_nonmembers)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_members, size, replace=False)), np.sort(rng.choice(n_nonmembers, size, replace=False))


def _thin(fpr: np.ndarray, tpr: np.ndarray, points: int = 400) -> tuple[list[float], list[float]]:
    if len(fpr) <= points:
        return fpr.tolist(), tpr.tolist()
    # keep points spread on a log FPR axis, since the low-FPR end is the interesting one
    grid = np.unique(np.concatenate([[0.0], np.logspace(-5, 0, points)]))
    idx = np.unique(np.searchsorted(fpr, grid, side="right") - 1).clip(0, len(fpr) - 1)
    return fpr[idx].tolist(), tpr[idx].tolist()


def audit_membership(
    member_logits: np.ndarray,
    member_labels: np.ndarray,
    nonmember_logits: np.ndarray,
    nonmember_labels: np.ndarray,
    classes: tuple[str, ...],
    cfg: PrivacyConfig,
) -> PrivacyResult:
    """Loss-threshold attack on the given (already equal-size) member / non-member samples."""
    if len(member_labels) == 0 or len(nonmember_labels) == 0:
        raise ValueError(
            f"the privacy audit needs members and non-members, got {len(member_labels)} and {len(nonmember_labels)}"
        )
    scores = -np.concatenate(
        [per_example_loss(member_logits, member_labels), per_example_loss(nonmember_logits, nonmember_labels)]
    )
    is_member = np.concatenate([np.ones(len(member_labels), int), np.zeros(len(nonmember_labels), int)])
    labels = np.concatenate([member_labels, nonmember_labels])

    fpr, tpr, _ = roc_curve(is_member, scores)
    alpha = (1 - cfg.confidence) / 2
    boot = (
        {"n_boot": cfg.n_bootstrap, "ci_quantiles": [alpha, 1 - alpha], "random_state": cfg.seed}
        if cfg.n_bootstrap
        else {}
    )
    mf = MetricFrame(
        metrics={"auc": safe_auc},
        y_true=is_member,
        y_pred=scores,
        sensitive_features=pd.Series(np.asarray(classes, dtype=object)[labels], name="class"),
        **boot,
    )
    auc = float(mf.overall["auc"])
    auc_ci = (float(mf.overall_ci[0]["auc"]), float(mf.overall_ci[1]["auc"])) if cfg.n_bootstrap else None
    by_group = mf.by_group.reindex(list(classes))
    per_class: list[dict[str, object]] = []
    for k, cls in enumerate(classes):
        row: dict[str, object] = {"class": cls, "auc": float(by_group.loc[cls, "auc"]), "n": int((labels == k).sum())}
        if cfg.n_bootstrap:
            row["auc_ci_low"] = float(mf.by_group_ci[0].reindex(list(classes)).loc[cls, "auc"])
            row["auc_ci_high"] = float(mf.by_group_ci[1].reindex(list(classes)).loc[cls, "auc"])
        per_class.append(row)

    reasons = ()
    if auc > cfg.max_auc:
        reasons = (f"membership attack AUC {auc:.3f} exceeds the threshold {cfg.max_auc}",)
    thin_fpr, thin_tpr = _thin(fpr, tpr)
    return PrivacyResult(
        auc=auc,
        auc_ci=auc_ci,
        advantage=float(np.max(tpr - fpr)),
        tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, 0.01),
        tpr_at_01pct_fpr=tpr_at_fpr(fpr, tpr, 0.001),
        n_members=len(member_labels),
        n_nonmembers=len(nonmember_labels),
        mean_loss_members=float(-scores[is_member == 1].mean()),
        mean_loss_nonmembers=float(-scores[is_member == 0].mean()),
        per_class=per_class,
        roc_fpr=thin_fpr,
        roc_tpr=thin_tpr,
        passed=not reasons,
        reasons=reasons,
        max_auc=cfg.max_auc,
        confidence=cfg.confidence,
    )
