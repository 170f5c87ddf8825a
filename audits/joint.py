"""The per-class fairness x privacy view: are the classes the model serves worst also the ones
whose training images are most exposed to membership inference?

One row per class puts quality of service (recall with its simultaneous interval, precision,
calibration error) next to membership exposure (the attack's AUC and TPR at the verdict FPR for
that class, and the mean loss of members and non-members). `exposure_correlation` answers the
question with a Spearman rank correlation between per-class error rate and per-class attack AUC,
with a percentile-bootstrap interval over images resampled within each class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import softmax
from scipy.stats import rankdata

from auditflow.audits.fairness import class_counts
from auditflow.core.stats import bonferroni_level, wilson_interval


def class_ece(logits: np.ndarray, labels: np.ndarray, n_classes: int, *, n_bins: int = 15) -> np.ndarray:
    """Expected calibration error among the images of each true class, (K,), 0..1, 0 ideal.

    Top-label confidence vs correctness in equal-width bins ((b/B, (b+1)/B], as the model-level
    ECE), weighted by the bin's share of the class's images. NaN for a class without images.
    Note that within one true class this mostly measures over- or under-confidence on that
    class's images, not calibration of the probability given to the class."""
    probs = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    labels = np.asarray(labels)
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    key = labels * n_bins + bins
    size = n_classes * n_bins
    n = np.bincount(labels, minlength=n_classes).astype(float)
    gap = np.abs(np.bincount(key, correct, size) - np.bincount(key, confidence, size)).reshape(n_classes, n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, gap.sum(1) / n, np.nan)


def _plain(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


@dataclass(frozen=True)
class JointRow:
    """One class of the fairness x privacy view. Quality of service: recall (+ simultaneous
    interval; higher is better, 1 ideal), precision, ece (0..1, lower is better, 0 ideal).
    Exposure: attack_auc (0.5 ideal), attack_tpr at the verdict FPR (+ interval; equal to that
    FPR is ideal), whether it is stated and why not, and the mean loss of members and of
    non-members (nats; a member loss far below the non-member loss is what the attack exploits).
    None where undefined (a class without test images, members or an attack row)."""

    class_name: str
    support: int
    recall: float | None
    recall_ci_low: float
    recall_ci_high: float
    precision: float | None
    ece: float | None
    attack_auc: float | None
    attack_tpr: float | None
    attack_tpr_ci_low: float | None
    attack_tpr_ci_high: float | None
    attack_stated: bool | None
    attack_reason: str | None
    n_members: int
    n_nonmembers: int
    member_loss_mean: float | None
    nonmember_loss_mean: float | None

    def as_dict(self) -> dict[str, object]:
        """The JSON-ready row (`class` first), as logged in `privacy/per_class_joint.json`."""
        row = asdict(self)
        return {"class": row.pop("class_name")} | row


def joint_rows(table: tuple[JointRow, ...]) -> list[dict[str, object]]:
    """The rows of `joint_table` as JSON-ready dicts (an MLflow table, the stage summary)."""
    return [r.as_dict() for r in table]


def joint_table(
    *,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    classes: tuple[str, ...],
    attack_per_class: list[dict],
    member_loss: np.ndarray,
    member_labels: np.ndarray,
    nonmember_loss: np.ndarray,
    nonmember_labels: np.ndarray,
    confidence: float,
    n_bins: int = 15,
) -> tuple[JointRow, ...]:
    """One `JointRow` per class, in class order (`joint_rows` makes them JSON-ready).

    `attack_per_class` rows (keys class, auc, tpr, tpr_ci_low, tpr_ci_high, stated, reason) are
    matched by class name; a class without a row gets None."""
    logits, labels = np.asarray(test_logits), np.asarray(test_labels)
    k_classes = len(classes)
    counts = class_counts(labels, logits.argmax(1), k_classes)
    low, high = wilson_interval(counts["tp"], counts["support"], bonferroni_level(confidence, k_classes))
    ece = class_ece(logits, labels, k_classes, n_bins=n_bins)
    attack = {str(r["class"]): r for r in attack_per_class}
    member_loss, nonmember_loss = np.asarray(member_loss, float), np.asarray(nonmember_loss, float)
    member_labels, nonmember_labels = np.asarray(member_labels), np.asarray(nonmember_labels)
    rows = []
    for k, cls in enumerate(classes):
        a = attack.get(str(cls), {})
        m, u = member_loss[member_labels == k], nonmember_loss[nonmember_labels == k]
        support, predicted = int(counts["support"][k]), int(counts["predicted"][k])
        rows.append(
            JointRow(
                class_name=cls,
                support=support,
                recall=_plain(counts["tp"][k] / support) if support else None,
                recall_ci_low=float(low[k]),
                recall_ci_high=float(high[k]),
                precision=_plain(counts["tp"][k] / predicted) if predicted else None,
                ece=_plain(ece[k]),
                attack_auc=_plain(a.get("auc")),
                attack_tpr=_plain(a.get("tpr")),
                attack_tpr_ci_low=_plain(a.get("tpr_ci_low")),
                attack_tpr_ci_high=_plain(a.get("tpr_ci_high")),
                attack_stated=a.get("stated"),
                attack_reason=a.get("reason"),
                n_members=len(m),
                n_nonmembers=len(u),
                member_loss_mean=float(m.mean()) if len(m) else None,
                nonmember_loss_mean=float(u.mean()) if len(u) else None,
            )
        )
    return tuple(rows)


def rank_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUC, P(pos > neg) + 0.5 P(tie), from mid-ranks; NaN if a side is empty."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _resample_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """(n_boot, n) multiplicity of each item in n_boot resamples of size n with replacement."""
    draws = rng.integers(0, n, (n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)


def weighted_auc(pos: np.ndarray, neg: np.ndarray, *, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """AUCs of resamples given as multiplicities: w (B, n_pos) of pos, v (B, n_neg) of neg.

    AUC = sum_i w_i (#{neg below pos_i} + 0.5 #{neg tied}) / (sum w * sum v), the neg counts
    being prefix sums of v over the sorted negatives looked up at each positive's rank, so no
    resample is sorted again: O(B (n_pos + n_neg)) instead of O(B n log n)."""
    order = np.argsort(neg, kind="stable")
    neg, v = neg[order], np.asarray(v, np.float64)[:, order]
    below = np.searchsorted(neg, pos, side="left")  # (n_pos,) negatives strictly below pos_i
    upto = np.searchsorted(neg, pos, side="right")  # ... below or tied
    cum = np.zeros((len(v), len(neg) + 1))
    np.cumsum(v, axis=1, out=cum[:, 1:])
    score = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])  # (B, n_pos)
    w = np.asarray(w, np.float64)
    return np.einsum("bi,bi->b", w, score) / (w.sum(1) * v.sum(1))


def _bootstrap_auc(pos: np.ndarray, neg: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) AUCs of resamples (with replacement, same sizes) of pos and of neg."""
    return weighted_auc(pos, neg, w=_resample_counts(rng, len(pos), n_boot), v=_resample_counts(rng, len(neg), n_boot))


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row pair of (B, K) arrays; NaN where a row is constant."""
    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    denom = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (rx * ry).sum(1) / denom, np.nan)


def exposure_correlation(
    *,
    test_labels: np.ndarray,
    test_preds: np.ndarray,
    member_scores: np.ndarray,
    member_labels: np.ndarray,
    nonmember_scores: np.ndarray,
    nonmember_labels: np.ndarray,
    n_classes: int,
    n_boot: int,
    seed: int,
    confidence: float,
) -> dict[str, object]:
    """Spearman rank correlation, over classes, of error rate (1 - recall on the test split) and
    membership-attack AUC (attack scores: higher = "member"), with a percentile-bootstrap interval.

    Each resample redraws, within every class, the test images (so the class's correct count is
    Binomial(n_k, recall_k), which is exactly what resampling 0/1 outcomes gives), the members and
    the non-members. rho in -1..1: positive means the worse-served classes are also the more
    exposed. Classes without test images, members or non-members are left out (`n_classes`)."""
    test_labels, test_preds = np.asarray(test_labels), np.asarray(test_preds)
    member_scores, nonmember_scores = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    member_labels, nonmember_labels = np.asarray(member_labels), np.asarray(nonmember_labels)
    counts = class_counts(test_labels, test_preds, n_classes)
    pos = [member_scores[member_labels == k] for k in range(n_classes)]
    neg = [nonmember_scores[nonmember_labels == k] for k in range(n_classes)]
    used = [k for k in range(n_classes) if counts["support"][k] and len(pos[k]) and len(neg[k])]
    error = np.array([1 - counts["tp"][k] / counts["support"][k] for k in used])
    auc = np.array([rank_auc(pos[k], neg[k]) for k in used])
    result: dict[str, object] = {
        "classes": used,
        "error_rate": [float(e) for e in error],
        "attack_auc": [float(a) for a in auc],
        "n_classes": len(used),
        "n_boot": n_boot,
        "confidence": confidence,
    }
    if len(used) < 3:
        return result | {
            "rho": None,
            "ci": (None, None),
            "answer": "inconclusive",
            "reading": f"only {len(used)} class(es) have test images, members and non-members; "
            "a rank correlation needs at least 3.",
        }
    rho = float(_spearman_rows(error[None], auc[None])[0])
    rng = np.random.default_rng(seed)
    support, tp = counts["support"][used], counts["tp"][used]
    boot_error = 1 - rng.binomial(support, tp / support, size=(n_boot, len(used))) / support
    boot_auc = np.stack([_bootstrap_auc(pos[k], neg[k], n_boot, rng) for k in used], axis=1)
    boot_rho = _spearman_rows(boot_error, boot_auc)
    alpha = (1 - confidence) / 2
    valid = boot_rho[np.isfinite(boot_rho)]
    low, high = (float(q) for q in np.quantile(valid, [alpha, 1 - alpha])) if len(valid) else (np.nan, np.nan)
    pct = f"{confidence:.0%}"
    if not np.isfinite(rho) or not len(valid):
        answer, reading = "inconclusive", "error rates or attack AUCs are equal across classes, so ranks say nothing."
    elif low > 0:
        answer = "yes"
        reading = (
            f"yes: classes the model serves worse are also more exposed to membership inference "
            f"(Spearman rho {rho:.2f}, {pct} interval [{low:.2f}, {high:.2f}])."
        )
    elif high < 0:
        answer = "no"
        reading = (
            f"no, the opposite: the better-served classes are the more exposed "
            f"(Spearman rho {rho:.2f}, {pct} interval [{low:.2f}, {high:.2f}])."
        )
    else:
        answer = "inconclusive"
        reading = (
            f"inconclusive: the {pct} interval of Spearman rho [{low:.2f}, {high:.2f}] includes 0 "
            f"(rho {rho:.2f} over {len(used)} classes)."
        )
    return result | {"rho": _plain(rho), "ci": (_plain(low), _plain(high)), "answer": answer, "reading": reading}
