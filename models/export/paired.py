"""A variant against the FP32 model on the same test images: paired exact intervals of the
accuracy it loses, overall and per class, and the verdict they support.

Both models answer the same n images, so only the discordant images say anything about the
difference: `lost` (b) images the reference gets right and the variant wrong, `gained` (c) the
other way round. The accuracy the variant loses is D = p_b - p_c, estimated by (b - c) / n and
reported in percentage points (100 D; <= 0 ideal).

The interval. Write D = p_d (2 pi - 1), with p_d = p_b + p_c the discordance rate and
pi = p_b / p_d the share of discordant images that go against the variant. Then b + c ~ Bin(n, p_d)
and, given b + c, b ~ Bin(b + c, pi): the exact conditional model of McNemar's test. A
Clopper-Pearson interval for each, at level 1 - alpha/2, holds together with probability at
least 1 - alpha (Bonferroni), and D lies between the least and greatest values of p_d (2 pi - 1)
over that box; so the interval covers D with probability at least 1 - alpha whatever p_b and p_c
are (`tests/test_paired.py` checks this by enumerating every outcome on small test sets). The
shortcut of plugging in (b + c) / n for p_d treats the discordance rate as known and covers far
less than it claims when discordance is rare and one-sided (45% at p_b = 0.2%, p_c = 0.1% on 200
images, by the same enumeration), which is where a variant with a few disagreements is judged.

A verdict on an interval (`auditflow.core.checks.judge_interval`): pass when the whole interval is
within the limit, fail when the whole interval is beyond it, inconclusive when it straddles it.
Per class, recall is the share of the class's images answered right, so the same construction on
each class's images gives the recall points lost; the K class intervals hold together at the
configured confidence (each at 1 - (1 - confidence) / K, Bonferroni).

References: McNemar (1947), Psychometrika 12:153; Clopper & Pearson (1934), Biometrika 26:404;
Fagerland, Lydersen & Laake (2013), BMC Medical Research Methodology 13:91 (the conditional model
and its exact test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, binomtest

from auditflow.core.checks import judge_interval, worst
from auditflow.core.stats import bonferroni_level


def clopper_pearson(successes: np.ndarray | int, n: np.ndarray | int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson ("exact") interval of the proportion successes / n at two-sided `level`,
    vectorised; fractions 0..1. Where n == 0 nothing is known: [0, 1]."""
    x = np.asarray(successes, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    if np.any(x < 0) or np.any(x > n_arr):
        raise ValueError(f"need 0 <= successes <= n, got successes {successes} and n {n}")
    tail = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        low = np.where(x > 0, beta.ppf(tail, x, n_arr - x + 1), 0.0)
        high = np.where(x < n_arr, beta.ppf(1 - tail, x + 1, n_arr - x), 1.0)
    return np.nan_to_num(low, nan=0.0), np.nan_to_num(high, nan=1.0)


def loss_interval(lost: int, gained: int, n: int, *, level: float) -> tuple[float, float]:
    """Interval (percentage points) of the accuracy lost, p_b - p_c, from `lost` (b) and `gained`
    (c) discordant images among `n` paired images, covering with probability >= `level`."""
    if min(lost, gained) < 0 or lost + gained > n:
        raise ValueError(f"need lost, gained >= 0 and lost + gained <= n, got {lost}, {gained} and {n}")
    if n == 0:
        return -100.0, 100.0
    half = 1 - (1 - level) / 2  # each of the two intervals at 1 - alpha/2
    d_low, d_high = (float(v) for v in clopper_pearson(lost + gained, n, half))
    pi_low, pi_high = (float(v) for v in clopper_pearson(lost, lost + gained, half))
    # p_d (2 pi - 1) over the box: each end is at a corner, p_d's end chosen by the sign of 2 pi - 1
    lo, hi = 2 * pi_low - 1, 2 * pi_high - 1
    low = (d_low if lo > 0 else d_high) * lo
    high = (d_high if hi > 0 else d_low) * hi
    return 100 * low, 100 * high


@dataclass(frozen=True)
class PairedLoss:
    """Accuracy (or one class's recall) a variant loses against the reference on the same images."""

    n: int  # paired images
    lost: int  # right by the reference, wrong by the variant
    gained: int  # wrong by the reference, right by the variant
    points: float  # 100 (lost - gained) / n: percentage points lost, <= 0 ideal
    low: float  # interval in points, at `level`
    high: float
    level: float
    mcnemar_p: float  # exact two-sided McNemar p-value of "no difference" (lost of lost + gained at 1/2)


def paired_loss(reference_correct: np.ndarray, variant_correct: np.ndarray, *, level: float) -> PairedLoss:
    """`PairedLoss` of two boolean (n,) arrays: which images each model answers right."""
    ref, var = np.asarray(reference_correct, bool), np.asarray(variant_correct, bool)
    if ref.shape != var.shape:
        raise ValueError(f"need two answers per image, got {ref.shape} and {var.shape}")
    n, lost, gained = len(ref), int((ref & ~var).sum()), int((~ref & var).sum())
    low, high = loss_interval(lost, gained, n, level=level)
    p = binomtest(lost, lost + gained, 0.5).pvalue if lost + gained else 1.0
    return PairedLoss(n, lost, gained, 100 * (lost - gained) / n if n else 0.0, low, high, level, float(p))


@dataclass(frozen=True)
class ClassLoss:
    """One class's recall points lost, on its simultaneous interval."""

    name: str
    loss: PairedLoss
    status: str  # pass | fail | inconclusive against the per-class limit


@dataclass(frozen=True)
class PairedJudgement:
    """A variant judged against the reference on paired intervals."""

    accuracy: PairedLoss  # at `confidence`
    accuracy_status: str  # pass | fail | inconclusive against max_accuracy_drop
    per_class: tuple[ClassLoss, ...]  # classes with test images, each at `per_class_level`
    class_status: str  # the worst class's status against max_class_recall_drop
    per_class_level: float  # Bonferroni level of each class interval
    verdict: str  # the worse of the two: only `pass` is recommended
    accuracy_reason: str  # why the accuracy did not pass, in one sentence; "" when it passed
    class_reason: str  # why the per-class recalls did not pass; "" when they passed

    @property
    def reasons(self) -> tuple[str, ...]:
        """Why the variant is not recommended; empty when it passed."""
        return tuple(r for r in (self.accuracy_reason, self.class_reason) if r)


def _points(loss: PairedLoss, what: str = "recall") -> str:
    return f"{loss.points:.2f} {what} points [{loss.low:.2f}, {loss.high:.2f}]"


def judge_paired(
    reference_pred: np.ndarray,
    variant_pred: np.ndarray,
    labels: np.ndarray,
    *,
    classes: Sequence[str],
    max_accuracy_drop: float,
    max_class_recall_drop: float,
    confidence: float,
    accuracy_policy: str = "export.max_accuracy_drop",
) -> PairedJudgement:
    """Judge a variant's predicted classes against the reference's on the same images (all (n,)
    int arrays, `labels` the truth): accuracy points lost on its paired exact interval against
    `max_accuracy_drop` (the policy setting named `accuracy_policy` in the reasons), and each
    class's recall points lost on simultaneous intervals against `max_class_recall_drop`."""
    ref_ok, var_ok = np.asarray(reference_pred) == labels, np.asarray(variant_pred) == labels
    overall = paired_loss(ref_ok, var_ok, level=confidence)
    accuracy_status = judge_interval(overall.low, overall.high, max_accuracy_drop, higher_is_better=False)
    present = [k for k in range(len(classes)) if (labels == k).any()]
    level = bonferroni_level(confidence, len(present))
    per_class = []
    for k in present:
        mask = labels == k
        loss = paired_loss(ref_ok[mask], var_ok[mask], level=level)
        status = judge_interval(loss.low, loss.high, max_class_recall_drop, higher_is_better=False)
        per_class.append(ClassLoss(str(classes[k]), loss, status))
    class_status = worst(c.status for c in per_class)
    counts = f"{overall.lost} images lost, {overall.gained} gained of {overall.n}"
    accuracy_reason = ""
    if accuracy_status == "fail":
        accuracy_reason = (
            f"loses {_points(overall, 'accuracy')} ({confidence:.0%} paired exact interval; {counts}): the whole "
            f"interval is beyond {accuracy_policy}={max_accuracy_drop}"
        )
    elif accuracy_status == "inconclusive":
        accuracy_reason = (
            f"loses {_points(overall, 'accuracy')} ({confidence:.0%} paired exact interval; {counts}): the interval "
            f"straddles {accuracy_policy}={max_accuracy_drop}, so these test images cannot show it keeps "
            "the accuracy"
        )
    failing = [c for c in per_class if c.status == "fail"]
    straddling = [c for c in per_class if c.status == "inconclusive"]
    limit = f"export.max_class_recall_drop={max_class_recall_drop}"
    class_reason = ""
    if failing:
        listed = ", ".join(f"{c.name} {_points(c.loss)}" for c in failing)
        class_reason = f"recall lost beyond {limit} (simultaneous {confidence:.0%} intervals): {listed}"
    elif straddling:
        widest = max(straddling, key=lambda c: c.loss.high)
        class_reason = (
            f"{len(straddling)} class(es) have recall-loss intervals straddling {limit} (simultaneous "
            f"{confidence:.0%}; widest: {widest.name} {_points(widest.loss)})"
        )
    return PairedJudgement(
        accuracy=overall,
        accuracy_status=accuracy_status,
        per_class=tuple(per_class),
        class_status=class_status,
        per_class_level=level,
        verdict=worst((accuracy_status, class_status)),
        accuracy_reason=accuracy_reason,
        class_reason=class_reason,
    )
