"""Per-class quality of service: one-vs-rest recall, precision and FPR of each class.

This is *not* group fairness over people: the "groups" are the true classes, and the question
is whether the classifier serves every class about equally well. Each class k is scored
one-vs-rest with fairlearn's `MetricFrame` (grouped by the class of each one-vs-rest copy):
recall (true-positive rate) is the share of class-k images found, higher is better, 1 ideal;
precision is the share of "predicted k" that really are k, higher is better, 1 ideal; the
false-positive rate is the share of other classes' images wrongly called k, lower is better,
0 ideal. All are fractions 0..1.

Intervals are Wilson score intervals per class at level 1 - (1 - confidence) / K (Bonferroni
over the K classes), so all K hold together at `confidence`: a claim about the worst class or
about the gap (best minus worst) read off them holds at `confidence` too. Verdicts are
three-valued (`pass`, `fail`, `inconclusive`) and decided on those intervals, never on the
point estimates alone; an inconclusive check comes with `settle_n`, the per-class test-set size
that would settle it if the rates stayed where they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame, false_positive_rate
from sklearn.metrics import precision_score, recall_score

from auditflow.core.config import FairnessConfig
from auditflow.core.names import Fairness
from auditflow.core.stats import bonferroni_level, wilson_interval

Verdict = Literal["pass", "fail", "inconclusive"]
SETTLE_N_CAP = 10**9  # beyond this many images per class "no realistic test set settles it"


def _recall(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return recall_score(y_true, y_pred, sample_weight=sample_weight, zero_division=0)


def _precision(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return precision_score(y_true, y_pred, sample_weight=sample_weight, zero_division=0)


def _fpr(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return false_positive_rate(y_true, y_pred, sample_weight=sample_weight, pos_label=1)


def _support(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.sum(sample_weight[y_true == 1]))


METRICS = {"recall": _recall, "precision": _precision, "false_positive_rate": _fpr, "support": _support}


def one_vs_rest_table(
    labels: np.ndarray, preds: np.ndarray, classes: tuple[str, ...], *, groups: np.ndarray | None = None
) -> pd.DataFrame:
    """The one-vs-rest stacked table (K copies of the test set: y_true = "is class k", y_pred =
    "predicted k", class = k, optional group), with identical rows merged into one row and a
    `weight` column counting them.

    MetricFrame gives the same numbers on this table with `sample_weight` as on the N x K raw
    rows, but fairlearn stacks every row in Python for every metric: on CIFAR-10's test set
    (100k raw rows) that took ~4 s per attribute; the merged table has at most 4 x K x groups."""
    k_classes = len(classes)
    labels, preds = np.asarray(labels), np.asarray(preds)
    if groups is None:
        names, codes = np.array(["all"]), np.zeros(len(labels), dtype=np.int64)
    else:
        names, codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    n_groups = len(names)
    ks = np.arange(k_classes)[:, None]  # (K, 1) against (N,): one row per one-vs-rest copy
    key = ((ks * n_groups + codes) * 2 + (labels == ks)) * 2 + (preds == ks)
    weight = np.bincount(key.ravel(), minlength=k_classes * n_groups * 4)
    present = np.flatnonzero(weight)
    k, rest = np.divmod(present, n_groups * 4)
    g, rest = np.divmod(rest, 4)
    table = pd.DataFrame(
        {
            "y_true": rest // 2,
            "y_pred": rest % 2,
            "class": np.asarray(classes, dtype=object)[k],
            "group": names[g],
            "weight": weight[present].astype(float),
        }
    )
    return table if groups is not None else table.drop(columns="group")


# --- interval helpers, shared with subgroups, mitigation and joint -------------------------------


def decide(low: float, high: float, threshold: float, *, higher_is_better: bool) -> Verdict:
    """Three-valued verdict of an interval [low, high] against a policy threshold.

    `pass` when the whole interval is on the good side (reaching the threshold counts as good),
    `fail` when the whole interval is beyond it, `inconclusive` when it straddles."""
    if not low <= high:
        raise ValueError(f"need low <= high, got low {low} and high {high}")
    if higher_is_better:
        return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"
    return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"


def gap_interval(low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """Interval of max - min over groups from simultaneous per-group intervals.

    If every group's rate lies in its interval, the gap lies in
    [max(0, max low - min high), max high - min low]."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    return float(max(0.0, low.max() - high.min())), float(high.max() - low.min())


def smallest_settling_n(settles: Callable[[int], bool], start: int = 1, cap: int = SETTLE_N_CAP) -> int | None:
    """Smallest n >= start with settles(n), for a monotone predicate; None when not even `cap` does.

    Wilson intervals at a fixed proportion are nested (they shrink as n grows), so "the verdict
    is no longer inconclusive" is monotone in n and a doubling + bisection search is exact."""
    start = max(int(start), 1)
    if not settles(cap):
        return None
    lo, hi = start - 1, start  # invariant: settles(hi) once found, not settles(lo) (lo = start - 1 untested)
    while not settles(hi):
        lo, hi = hi, min(hi * 2, cap)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if settles(mid) else (mid, hi)
    return hi


def _proportion_interval_at(p: np.ndarray, n: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson interval of observed proportions `p` as if seen on `n` images each."""
    return wilson_interval(np.asarray(p, float) * n, np.full(np.shape(p), n), level)


def class_counts(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """One-vs-rest counts per class from one confusion matrix: tp, support (true k),
    predicted (predicted k), fp, negatives (not k). Integer arrays of length K."""
    labels, preds = _check_labels(labels, preds, n_classes)
    cm = np.bincount(labels * n_classes + preds, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    tp, support, predicted = np.diag(cm), cm.sum(1), cm.sum(0)
    return {
        "tp": tp,
        "support": support,
        "predicted": predicted,
        "fp": predicted - tp,
        "negatives": len(labels) - support,
    }


def _check_labels(labels: np.ndarray, preds: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.ndim != 1 or labels.shape != preds.shape or len(labels) == 0:
        raise ValueError(
            f"need equal, non-zero numbers of labels and predictions, got {labels.shape} and {preds.shape}"
        )
    for name, a in (("labels", labels), ("predictions", preds)):
        if not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() >= n_classes:
            raise ValueError(f"{name} must be integers in 0..{n_classes - 1}, got values {np.unique(a)[:10]}")
    return labels.astype(np.int64), preds.astype(np.int64)


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


# --- result and main function ---------------------------------------------------------------------


@dataclass(frozen=True)
class FairnessResult:
    """Per-class quality of service. Rates are fractions 0..1; intervals are simultaneous over
    the classes at `confidence` (each one at `per_class_level`)."""

    per_class: list[dict[str, object]]  # class, support, recall(+ci), precision(+ci), false_positive_rate(+ci)
    worst_class: str  # class with the lowest recall (point estimate)
    worst_recall: float  # lowest class recall; higher is better, 1 ideal
    worst_recall_ci: tuple[float, float]  # (min_k low_k, min_k high_k): simultaneous interval of the minimum
    recall_gap: float  # best minus worst class recall; lower is better, 0 ideal
    recall_gap_ci: tuple[float, float]
    worst_status: Verdict  # every class's recall >= min_class_recall?
    gap_status: Verdict  # recall gap <= max_recall_gap?
    settle_n: dict[str, int | None]  # per inconclusive check: test images per class that would settle it
    reasons: tuple[str, ...]  # one sentence per failing or inconclusive check; empty when both pass
    confidence: float  # simultaneous level of the per-class intervals
    per_class_level: float  # level of each per-class interval (Bonferroni)
    thresholds: dict[str, float]


def _fmt_ci(low: float, high: float) -> str:
    return f"[{low:.3f}, {high:.3f}]"


def audit_fairness(
    labels: np.ndarray, preds: np.ndarray, classes: tuple[str, ...], *, cfg: FairnessConfig
) -> FairnessResult:
    """Per-class quality of service (one-vs-rest recall, precision, FPR) with simultaneous
    Wilson intervals and three-valued verdicts on worst-class recall and the recall gap."""
    k_classes = len(classes)
    counts = class_counts(labels, preds, k_classes)
    table = one_vs_rest_table(labels, preds, classes)
    weight = {"sample_weight": table["weight"].to_numpy()}
    mf = MetricFrame(
        metrics=METRICS,
        y_true=table["y_true"].to_numpy(),
        y_pred=table["y_pred"].to_numpy(),
        sensitive_features=table["class"],
        sample_params={m: weight for m in METRICS},
    )
    by_group = mf.by_group.reindex(list(classes))

    level = bonferroni_level(cfg.confidence, k_classes)
    r_lo, r_hi = wilson_interval(counts["tp"], counts["support"], level)
    p_lo, p_hi = wilson_interval(counts["tp"], counts["predicted"], level)
    f_lo, f_hi = wilson_interval(counts["fp"], counts["negatives"], level)
    recall = np.where(counts["support"] > 0, by_group["recall"].to_numpy(float), np.nan)
    precision = np.where(counts["predicted"] > 0, by_group["precision"].to_numpy(float), np.nan)
    rows: list[dict[str, object]] = []
    for k, cls in enumerate(classes):
        rows.append(
            {
                "class": cls,
                "support": int(counts["support"][k]),
                "recall": _none_if_nan(recall[k]),
                "recall_ci_low": float(r_lo[k]),
                "recall_ci_high": float(r_hi[k]),
                "precision": _none_if_nan(precision[k]),
                "precision_ci_low": float(p_lo[k]),
                "precision_ci_high": float(p_hi[k]),
                "false_positive_rate": float(by_group.loc[cls, "false_positive_rate"]),
                "false_positive_rate_ci_low": float(f_lo[k]),
                "false_positive_rate_ci_high": float(f_hi[k]),
            }
        )

    t_min, t_gap = cfg.min_class_recall, cfg.max_recall_gap
    defined = ~np.isnan(recall)
    worst = int(np.nanargmin(recall)) if defined.any() else 0
    worst_ci = (float(r_lo.min()), float(r_hi.min()))
    gap = float(np.nanmax(recall) - np.nanmin(recall)) if defined.any() else float("nan")
    gap_ci = gap_interval(r_lo, r_hi)
    worst_status = decide(*worst_ci, t_min, higher_is_better=True)
    gap_status = decide(*gap_ci, t_gap, higher_is_better=False)

    conf_pct = f"{cfg.confidence:.0%}"
    reasons: list[str] = []
    settle: dict[str, int | None] = {}
    if worst_status == "fail":
        failing = [k for k in range(k_classes) if r_hi[k] < t_min]
        listed = ", ".join(f"{classes[k]} {recall[k]:.3f} {_fmt_ci(r_lo[k], r_hi[k])}" for k in failing)
        reasons.append(
            f"worst-class recall fails: {len(failing)} class(es) are below the threshold {t_min} "
            f"with simultaneous {conf_pct} confidence: {listed}."
        )
    elif worst_status == "inconclusive":
        straddling = [k for k in range(k_classes) if r_lo[k] < t_min]
        ns = []
        for k in straddling:
            p = recall[k]
            if np.isnan(p) or p == t_min:
                ns.append(None)
                continue
            start = int(counts["support"][k]) + 1

            def settles(n: int, p: float = p) -> bool:
                lo, hi = _proportion_interval_at(np.array([p]), n, level)
                return decide(float(lo[0]), float(hi[0]), t_min, higher_is_better=True) != "inconclusive"

            ns.append(smallest_settling_n(settles, start))
        settle["worst_class_recall"] = None if None in ns else max(ns)  # type: ignore[type-var]
        listed = ", ".join(f"{classes[k]} {recall[k]:.3f} {_fmt_ci(r_lo[k], r_hi[k])}" for k in straddling)
        reasons.append(
            f"worst-class recall is inconclusive: the simultaneous {conf_pct} intervals of {listed} "
            f"straddle the threshold {t_min}; {_settle_text(settle['worst_class_recall'])}."
        )
    if gap_status != "pass":
        best = int(np.nanargmax(recall)) if defined.any() else 0
        what = (
            f"recall gap {gap:.3f} (best {classes[best]} {recall[best]:.3f} minus worst "
            f"{classes[worst]} {recall[worst]:.3f}), simultaneous {conf_pct} interval {_fmt_ci(*gap_ci)},"
        )
        if gap_status == "fail":
            reasons.append(f"{what} exceeds the threshold {t_gap} with simultaneous {conf_pct} confidence.")
        else:
            settle["recall_gap"] = _gap_settle_n(recall, counts["support"], level, t_gap)
            reasons.append(f"{what} straddles the threshold {t_gap}; {_settle_text(settle['recall_gap'])}.")

    return FairnessResult(
        per_class=rows,
        worst_class=str(classes[worst]),
        worst_recall=float(recall[worst]),
        worst_recall_ci=worst_ci,
        recall_gap=gap,
        recall_gap_ci=gap_ci,
        worst_status=worst_status,
        gap_status=gap_status,
        settle_n=settle,
        reasons=tuple(reasons),
        confidence=cfg.confidence,
        per_class_level=level,
        thresholds={"min_class_recall": t_min, "max_recall_gap": t_gap},
    )


def _gap_settle_n(recall: np.ndarray, support: np.ndarray, level: float, threshold: float) -> int | None:
    """Test images per class that would settle the gap check if every class's recall stayed put."""
    if np.isnan(recall).any():
        return None

    def settles(n: int) -> bool:
        lo, hi = _proportion_interval_at(recall, n, level)
        return decide(*gap_interval(lo, hi), threshold, higher_is_better=False) != "inconclusive"

    # at n = the smallest current support every interval is at least as wide as now: still open
    return smallest_settling_n(settles, int(support.min()) + 1)


def _settle_text(n: int | None) -> str:
    if n is None:
        return "no realistic test-set size would settle it, as the recall sits at the threshold"
    return f"about {n} test images per class would settle it if recall stayed where it is"


# --- can this test split settle the checks at all? ------------------------------------------------


@dataclass(frozen=True)
class Settleability:
    """Whether a class-level check can pass on a test split of these sizes, whatever the model:
    the best case is a class whose every test image is right, whose simultaneous Wilson interval
    is then [n / (n + z²), 1]."""

    check: str  # the check's key: Fairness.WORST_CLASS_RECALL, RECALL_GAP, SUBGROUP_TPR_GAP, a privacy one
    policy: str  # the config field holding the threshold
    threshold: float
    best_bound: float  # the best any model can reach here (a recall's low, a gap's high, a group's size)
    can_pass: bool
    text: str  # one line, naming the policy value that would make the check decidable


def settleability(
    test_support: list[int] | np.ndarray, classes: tuple[str, ...], cfg: FairnessConfig
) -> tuple[Settleability, ...]:
    """Before any audit: the worst-class recall (≥ `min_class_recall`) and recall gap (≤
    `max_recall_gap`) checks, judged on the best case the test split allows (every image of its
    smallest class right). A check that cannot pass even then will come out `inconclusive` or
    `fail` whatever the model does; its `text` says which policy value would make it decidable."""
    support = np.asarray(test_support, dtype=int)
    level = bonferroni_level(cfg.confidence, len(classes))
    k = int(np.argmin(support))
    n = int(support[k])
    best_low = float(wilson_interval(n, n, level)[0][()]) if n > 0 else 0.0
    worst_ok = best_low >= cfg.min_class_recall
    gap_high = 1.0 - best_low  # all classes perfect: [max(0, 1 - 1), 1 - lowest low]
    gap_ok = gap_high <= cfg.max_recall_gap
    where = f"{n} test images of class {classes[k]!r} at the {cfg.confidence:.0%} simultaneous level"
    floor = np.floor(best_low * 1000) / 1000
    ceil = np.ceil(gap_high * 1000) / 1000
    return (
        Settleability(
            Fairness.WORST_CLASS_RECALL,
            "fairness.min_class_recall",
            cfg.min_class_recall,
            best_low,
            worst_ok,
            f"worst-class recall ≥ {cfg.min_class_recall:g} can pass: a class with every one of its {where} right "
            f"reaches an interval low of {best_low:.3f}"
            if worst_ok
            else f"worst-class recall ≥ {cfg.min_class_recall:g} cannot pass on this test split: even with all {where} "
            f"right, the interval starts at {best_low:.3f}; it is decidable at fairness.min_class_recall={floor:.3f} "
            f"or lower, or with more test images of that class",
        ),
        Settleability(
            Fairness.RECALL_GAP,
            "fairness.max_recall_gap",
            cfg.max_recall_gap,
            gap_high,
            gap_ok,
            f"recall gap ≤ {cfg.max_recall_gap:g} can pass: with every class perfect, the gap's interval ends at "
            f"{gap_high:.3f} ({where})"
            if gap_ok
            else f"recall gap ≤ {cfg.max_recall_gap:g} cannot pass on this test split: even with every class "
            f"perfect the gap's interval reaches {gap_high:.3f} ({where}); it is decidable at "
            f"fairness.max_recall_gap={ceil:.3f} or more, or with more test images per class",
        ),
        *_subgroup_settleability(support, classes, cfg),
    )


def _subgroup_settleability(
    support: np.ndarray, classes: tuple[str, ...], cfg: FairnessConfig
) -> tuple[Settleability, ...]:
    """The within-class subgroup check over derived attributes (quantile groups of equal size):
    judged only where a class has two groups of `min_group_count` test images, so on a split
    whose largest class cuts into smaller groups it stays `inconclusive` whatever the model. A
    metadata CSV's groups are not known before it is read: no pre-check then."""
    if cfg.metadata is not None or not cfg.derived_attributes:
        return ()
    k = int(np.argmax(support))
    group = int(support[k]) // cfg.attribute_bins
    ok = group >= cfg.min_group_count
    where = f"the largest class, {classes[k]!r}, has {int(support[k])} test images: about {group} per group"
    text = (
        f"subgroup gaps can be judged: {where}"
        if ok
        else f"within-class subgroup gaps cannot be judged on this test split: {where} of {cfg.attribute_bins}, "
        f"fewer than fairness.min_group_count={cfg.min_group_count}; it is decidable at fairness.min_group_count="
        f"{max(group, 1)} or fewer (noisier), fairness.attribute_bins=2, or with more test images"
    )
    return (Settleability(Fairness.SUBGROUP_TPR_GAP, "fairness.min_group_count", cfg.min_group_count, group, ok, text),)


def decidable_policy(interval: tuple[float, float], *, higher_is_better: bool) -> float:
    """The threshold nearest to the current one at which an inconclusive interval would pass:
    its low end for a check that must stay above its threshold, its high end for one that must
    stay below (rounded outwards to 3 decimals)."""
    low, high = interval
    return float(np.floor(low * 1000) / 1000) if higher_is_better else float(np.ceil(high * 1000) / 1000)
