"""Metrics and verdict of the membership-inference audit, over the scores of `attacks.py`.

The audited set holds equally many members (training images) and non-members (test images)
with the same class counts (`choose_audit_set`), so an attack cannot win by guessing classes.

Reading the numbers:

- AUC: the chance that a random member scores above a random non-member. 0.5 is ideal (a coin),
  1.0 means membership is fully exposed. Reported with a DeLong interval.
- Advantage: max over thresholds of TPR - FPR; 0 ideal.
- TPR at a low FPR (1%, 0.1%): the share of members an attacker finds while wrongly accusing
  at most that share of non-members. Ideal = the FPR itself (chance). These rates are what
  matter (Carlini et al. 2022, "Membership Inference Attacks From First Principles"): an
  attack that confidently exposes a few members is a privacy failure even when its AUC is near
  0.5, and an average-case AUC hides exactly that.
- Refusal rule: a TPR at FPR f rests on a threshold set by about f x (non-members) false
  positives. Below `min_expected_false_positives` of them (10 by default) the threshold is set
  by a handful of images and the rate is noise, so it is not stated: 0.1% FPR needs 10,000
  non-members. A verdict on a rate that is not stated is "inconclusive".
- Verdicts are decided on intervals: "pass" when the TPR interval lies at or below the policy
  limit, "fail" when it lies above, "inconclusive" when it straddles it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import log_softmax
from scipy.stats import binomtest, norm, rankdata
from sklearn.metrics import roc_auc_score, roc_curve

ROC_POINTS = 400  # most points kept for the plotted ROC curve


def per_example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each example, nats (>= 0; lower = more confident in the true label)."""
    return -log_softmax(logits.astype(np.float64), axis=1)[np.arange(len(labels)), labels]


def _check_sides(is_member: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    is_member = np.asarray(is_member)
    scores = np.asarray(scores, dtype=np.float64)
    if is_member.ndim != 1 or is_member.shape != scores.shape:
        raise ValueError(
            f"is_member and scores must have the same shape (n,), got {is_member.shape} and {scores.shape}"
        )
    if not np.isin(is_member, (0, 1)).all():
        raise ValueError(f"is_member must be boolean (or 0/1), got values {np.unique(is_member)[:5].tolist()}")
    if np.isnan(scores).any():
        raise ValueError(f"scores must not be NaN, got {int(np.isnan(scores).sum())} NaN values")
    return is_member.astype(bool), scores


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def clopper_pearson(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval for a binomial share k/n, as (low, high) in [0, 1].

    Conservative: it covers the true share with probability at least `confidence`."""
    _check_confidence(confidence)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def auc_interval(is_member: np.ndarray, scores: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """ROC AUC with DeLong's normal interval, as (auc, low, high); 0.5 ideal, 1.0 = fully exposed.

    Ties count 1/2. The interval is auc +- z * sqrt(DeLong variance), clipped to [0, 1]; it has
    zero width when the two sides are perfectly separated."""
    _check_confidence(confidence)
    auc, variance = auc_variance(is_member, scores)
    half = norm.ppf(0.5 + confidence / 2) * np.sqrt(variance)
    return float(auc), float(max(auc - half, 0.0)), float(min(auc + half, 1.0))


def auc_variance(is_member: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """ROC AUC and DeLong's estimate of its variance, as (auc, variance); ties count 1/2.

    Two AUCs measured on independent samples (two runs' audits of different images) differ by
    their difference with variance the sum of the two (`auditflow.audits.compare`); on the same
    images use the paired `auc_difference`."""
    # Hand-written: no maintained library among our dependencies (scipy, scikit-learn, fairlearn)
    # ships DeLong's variance. Midrank form of Sun & Xu 2014, O(n log n).
    is_member, scores = _check_sides(is_member, scores)
    x, y = scores[is_member], scores[~is_member]
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"the AUC interval needs at least 2 members and 2 non-members, got {m} and {n}")
    auc, v10, v01 = _structural_components(x, y)  # midranks: ties share the average rank
    return float(auc), float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)


def _structural_components(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """DeLong's placement values: (auc, per-member share of non-members below, per-non-member
    share of members above), ties counting 1/2."""
    m, n = len(x), len(y)
    ranks = rankdata(np.concatenate([x, y]))
    auc = (ranks[:m].sum() - m * (m + 1) / 2) / (m * n)
    return float(auc), (ranks[:m] - rankdata(x)) / n, 1.0 - (ranks[m:] - rankdata(y)) / m


def auc_difference(
    is_member: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, *, confidence: float
) -> tuple[float, float, float, float]:
    """Paired DeLong test of AUC(a) - AUC(b) for two attacks scored on the same images.

    Returns (difference, low, high, two-sided p-value of "no difference"). Paired because both
    attacks see the same members and non-members: their AUCs are correlated, so the interval of
    the difference is much narrower than the two marginal intervals suggest (DeLong, DeLong &
    Clarke-Pearson 1988, the covariance of the two placement-value vectors)."""
    is_member, scores_a = _check_sides(is_member, scores_a)
    _, scores_b = _check_sides(is_member, scores_b)
    _check_confidence(confidence)
    m, n = int(is_member.sum()), int((~is_member).sum())
    if m < 2 or n < 2:
        raise ValueError(f"the AUC difference needs at least 2 members and 2 non-members, got {m} and {n}")
    auc_a, v10_a, v01_a = _structural_components(scores_a[is_member], scores_a[~is_member])
    auc_b, v10_b, v01_b = _structural_components(scores_b[is_member], scores_b[~is_member])
    s10, s01 = np.cov(v10_a, v10_b), np.cov(v01_a, v01_b)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    diff = auc_a - auc_b
    se = float(np.sqrt(max(var, 0.0)))
    half = norm.ppf(0.5 + confidence / 2) * se
    p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
    return float(diff), float(diff - half), float(diff + half), p


@dataclass(frozen=True)
class RateAtFpr:
    """TPR of an attack at a false-positive-rate level; ideal TPR = fpr (chance), higher = more exposed."""

    fpr: float  # the target FPR level, a share (0.01 = 1%)
    tpr: float | None  # share of members at or above the threshold; None when not stated
    tpr_ci: tuple[float, float] | None  # Clopper-Pearson interval of tpr; None when not stated
    false_positives: int  # non-members at or above the threshold (<= fpr x non-members)
    expected_false_positives: float  # fpr x non-members: how many false positives the level rests on
    stated: bool
    reason: str  # "" when stated, else why not
    threshold: float  # a point is called a member when its score >= threshold (inf: none is)
    true_positives: int  # members at or above the threshold
    n_members: int
    n_nonmembers: int


def format_share(share: float) -> str:
    return f"{share * 100:g}%"


def rate_at_fpr(
    is_member: np.ndarray,
    scores: np.ndarray,
    *,
    fpr: float,
    confidence: float,
    min_expected_false_positives: float,
) -> RateAtFpr:
    """TPR at the lowest threshold whose empirical FPR on the non-members is <= fpr.

    A threshold t calls every point with score >= t a member, so tied scores are admitted or
    refused together: t lies just above the (k+1)-th highest non-member score, k = floor(fpr x
    non-members). The rate is refused (stated=False, tpr None) when fpr x non-members is below
    min_expected_false_positives."""
    is_member, scores = _check_sides(is_member, scores)
    _check_confidence(confidence)
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must be in (0, 1), got {fpr}")
    members, nonmembers = scores[is_member], scores[~is_member]
    if len(members) == 0 or len(nonmembers) == 0:
        raise ValueError(f"rate_at_fpr needs members and non-members, got {len(members)} and {len(nonmembers)}")
    n_non = len(nonmembers)
    expected = fpr * n_non
    # The small epsilon keeps e.g. 0.001 x 5000 = 4.999... from losing an allowed false positive.
    allowed = int(np.floor(expected + 1e-9))
    if allowed >= n_non:
        threshold = float(scores.min())
    else:
        # Every point strictly above the (allowed+1)-th highest non-member score is admitted.
        cutoff = np.sort(nonmembers)[::-1][allowed]
        above = scores[scores > cutoff]
        threshold = float(above.min()) if above.size else float("inf")
    true_pos = int((members >= threshold).sum())
    false_pos = int((nonmembers >= threshold).sum())
    stated = expected >= min_expected_false_positives
    reason = (
        ""
        if stated
        else f"not stated: {format_share(fpr)} of {n_non:,} non-members is {expected:g} expected false positives, "
        f"fewer than {min_expected_false_positives:g}"
    )
    return RateAtFpr(
        fpr=fpr,
        tpr=true_pos / len(members) if stated else None,
        tpr_ci=clopper_pearson(true_pos, len(members), confidence) if stated else None,
        false_positives=false_pos,
        expected_false_positives=expected,
        stated=stated,
        reason=reason,
        threshold=threshold,
        true_positives=true_pos,
        n_members=len(members),
        n_nonmembers=n_non,
    )


def epsilon_lower_bound(rate: RateAtFpr, n_nonmembers: int, confidence: float) -> float | None:
    """Empirical differential-privacy lower bound ln(TPR_low / FPR_high), nats; 0 ideal, higher = leakier.

    TPR_low is the lower Clopper-Pearson bound of the TPR, FPR_high the upper bound of the
    false-positive share, each at `confidence` (so both hold together with probability at least
    2 x confidence - 1). delta is ignored (taken as 0), which makes the bound larger than an
    (epsilon, delta) analysis would give. It is an indicator, not a proof: the members were not
    included in training by a coin flip after being chosen, as a formal audit requires. None when
    the rate is not stated or the bound is not positive."""
    if not rate.stated:
        return None
    if n_nonmembers < 1:
        raise ValueError(f"n_nonmembers must be >= 1, got {n_nonmembers}")
    tpr_low = clopper_pearson(rate.true_positives, rate.n_members, confidence)[0]
    fpr_high = clopper_pearson(rate.false_positives, n_nonmembers, confidence)[1]
    if tpr_low <= 0.0:
        return None
    eps = float(np.log(tpr_low / fpr_high))
    return eps if eps > 0.0 else None


@dataclass(frozen=True)
class AttackResult:
    """What one attack achieved on the audited set. Ideal: auc 0.5, advantage 0, each TPR = its FPR."""

    attack: str
    auc: float  # 0.5 ideal, 1.0 = membership fully exposed
    auc_ci: tuple[float, float]  # DeLong interval at `confidence`
    advantage: float  # max(TPR - FPR) over thresholds, 0 ideal
    rates: tuple[RateAtFpr, ...]  # one per FPR level, ascending FPR
    per_class: list[dict]  # class, n_members, n_nonmembers, auc, tpr, tpr_ci_low/high, stated, reason
    roc_fpr: list[float]  # ROC curve thinned on a log-FPR axis, for plotting
    roc_tpr: list[float]
    n_members: int
    n_nonmembers: int
    epsilon_lower_bound: float | None  # nats, at verdict_fpr; None when not stated or not positive
    verdict_fpr: float
    confidence: float

    def rate(self, fpr: float) -> RateAtFpr:
        """The rate at FPR level `fpr` (one of the levels the result was assessed at)."""
        for r in self.rates:
            if np.isclose(r.fpr, fpr, rtol=1e-9, atol=0.0):
                return r
        raise ValueError(f"no rate at fpr={fpr}; this result has fpr levels {[r.fpr for r in self.rates]}")


def _thin(fpr: np.ndarray, tpr: np.ndarray, points: int = ROC_POINTS) -> tuple[list[float], list[float]]:
    if len(fpr) <= points:
        return fpr.tolist(), tpr.tolist()
    # Spread the kept points on a log-FPR axis from the smallest non-zero FPR, since the low-FPR
    # end is the one that matters; at each grid FPR keep the highest TPR reached.
    lowest = fpr[fpr > 0].min()
    grid = np.logspace(np.log10(lowest), 0.0, points - 1)
    idx = np.unique(np.concatenate([[0], np.searchsorted(fpr, grid, side="right") - 1, [len(fpr) - 1]]))
    return fpr[idx].tolist(), tpr[idx].tolist()


def _class_row(
    name: str, scores: np.ndarray, is_member: np.ndarray, verdict_fpr: float, confidence: float, min_fp: float
) -> dict:
    n_mem, n_non = int(is_member.sum()), int((~is_member).sum())
    row: dict = {"class": name, "n_members": n_mem, "n_nonmembers": n_non, "auc": None}
    row |= {"tpr": None, "tpr_ci_low": None, "tpr_ci_high": None, "stated": False}
    if n_mem == 0 or n_non == 0:
        row["reason"] = f"not stated: the class has {n_mem} members and {n_non} non-members"
        return row
    row["auc"] = float(roc_auc_score(is_member, scores))
    rate = rate_at_fpr(is_member, scores, fpr=verdict_fpr, confidence=confidence, min_expected_false_positives=min_fp)
    row |= {"stated": rate.stated, "reason": rate.reason, "tpr": rate.tpr}
    if rate.tpr_ci is not None:
        row |= {"tpr_ci_low": rate.tpr_ci[0], "tpr_ci_high": rate.tpr_ci[1]}
    return row


def assess_attack(
    name: str,
    scores: np.ndarray,
    is_member: np.ndarray,
    *,
    labels: np.ndarray,
    classes: tuple[str, ...],
    fpr_levels: tuple[float, ...] = (0.01, 0.001, 0.0001),
    verdict_fpr: float = 0.01,
    confidence: float = 0.95,
    min_expected_false_positives: float = 10,
) -> AttackResult:
    """AUC, advantage, TPR at each FPR level, per-class TPR and an epsilon bound for one attack's scores.

    Per-class rows set their own threshold within the class (a class-aware attacker can), at
    verdict_fpr, under the same refusal rule; their auc is None when a side is empty."""
    is_member, scores = _check_sides(is_member, scores)
    labels = np.asarray(labels)
    if labels.shape != scores.shape:
        raise ValueError(f"labels must have the same shape as scores, got {labels.shape} and {scores.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"labels must lie in 0..{len(classes) - 1} for {len(classes)} classes, got {labels.max()}")
    if not any(np.isclose(verdict_fpr, f, rtol=1e-9, atol=0.0) for f in fpr_levels):
        raise ValueError(f"verdict_fpr={verdict_fpr} must be one of fpr_levels={list(fpr_levels)}")
    auc, low, high = auc_interval(is_member, scores, confidence)
    fpr, tpr, _ = roc_curve(is_member, scores)
    rates = tuple(
        rate_at_fpr(
            is_member, scores, fpr=f, confidence=confidence, min_expected_false_positives=min_expected_false_positives
        )
        for f in sorted(set(fpr_levels))
    )
    n_non = int((~is_member).sum())
    per_class = [
        _class_row(
            cls, scores[labels == k], is_member[labels == k], verdict_fpr, confidence, min_expected_false_positives
        )
        for k, cls in enumerate(classes)
    ]
    roc_fpr, roc_tpr = _thin(fpr, tpr)
    result = AttackResult(
        attack=name,
        auc=auc,
        auc_ci=(low, high),
        advantage=float(np.max(tpr - fpr)),
        rates=rates,
        per_class=per_class,
        roc_fpr=roc_fpr,
        roc_tpr=roc_tpr,
        n_members=int(is_member.sum()),
        n_nonmembers=n_non,
        epsilon_lower_bound=None,
        verdict_fpr=verdict_fpr,
        confidence=confidence,
    )
    eps = epsilon_lower_bound(result.rate(verdict_fpr), n_non, confidence)
    return replace(result, epsilon_lower_bound=eps)


def gains_over_baseline(
    is_member: np.ndarray, scores: dict[str, np.ndarray], *, baseline: str, confidence: float
) -> list[dict]:
    """Each attack's AUC minus the `baseline` attack's, paired on the same images (`auc_difference`):
    rows of attack, gain, ci_low, ci_high, p_value and `clear` (the interval lies above 0)."""
    if baseline not in scores:
        return []
    rows = []
    for name, s in scores.items():
        if name == baseline:
            continue
        gain, low, high, p = auc_difference(is_member, s, scores[baseline], confidence=confidence)
        rows.append({"attack": name, "gain": gain, "ci_low": low, "ci_high": high, "p_value": p, "clear": low > 0})
    return rows


@dataclass(frozen=True)
class AuditSet:
    """The membership audit's points: members (indices into train) and non-members (into test),
    sorted, with equal class counts. Per class, `wanted` is how many non-members the seeded draw
    gave and `kept` how many each side holds after matching (less where the class has fewer
    training images than that)."""

    members: np.ndarray
    nonmembers: np.ndarray
    wanted: np.ndarray  # per class: non-members drawn before matching
    kept: np.ndarray  # per class: images on each side after matching

    @property
    def matched_down(self) -> dict[int, tuple[int, int]]:
        """{class: (non-members drawn, images kept on each side)} for each class cut to match."""
        return {c: (int(w), int(k)) for c, (w, k) in enumerate(zip(self.wanted, self.kept, strict=True)) if k < w}


def choose_audit_set(
    train_labels: np.ndarray, test_labels: np.ndarray, *, n: int, seed: int, exclude: np.ndarray | None = None
) -> AuditSet:
    """Members and non-members of equal size and class counts, for any class balance.

    Non-members are a seeded random sample of min(n, len(test)) test images; members are drawn
    (seeded) from the training images of each class, as many as the non-members hold of it,
    never from `exclude` (training indices that are not plain members: the one-run audit's
    canaries). A class with fewer such training images than drawn non-members (a rare class) is
    matched at the smaller side: a seeded subset of its non-members is kept, as many as it has
    training images, so the two sides still share every class count and an attack cannot win by
    guessing classes; a class with none leaves the audit. `AuditSet.matched_down` names them."""
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    allowed = np.ones(len(train_labels), dtype=bool)
    if exclude is not None:
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(test_labels) == 0:
        raise ValueError("the audit needs test images as non-members, got 0")
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.choice(len(test_labels), min(n, len(test_labels)), replace=False))
    n_classes = int(max(train_labels.max(initial=-1), test_labels.max(initial=-1))) + 1
    wanted = np.bincount(test_labels[drawn], minlength=n_classes)
    members, nonmembers, kept = [], [], np.zeros(n_classes, np.int64)
    for cls in range(n_classes):
        pool = np.flatnonzero((train_labels == cls) & allowed)
        mine = drawn[test_labels[drawn] == cls]
        kept[cls] = min(len(pool), len(mine))
        members.append(rng.choice(pool, kept[cls], replace=False))
        # the same draw as before where nothing is cut, so audits of balanced data are unchanged
        nonmembers.append(mine if kept[cls] == len(mine) else rng.choice(mine, kept[cls], replace=False))
    as_index = np.int64
    return AuditSet(
        np.sort(np.concatenate(members).astype(as_index)),
        np.sort(np.concatenate(nonmembers).astype(as_index)),
        wanted,
        kept,
    )


def balance(
    member_labels: np.ndarray, nonmember_labels: np.ndarray, n_classes: int, *, wanted: np.ndarray | None = None
) -> dict:
    """Whether members and non-members are alike in size and class mix.

    Keys: n_members, n_nonmembers, member_counts, nonmember_counts (per class), max_share_difference
    (largest absolute difference of a class's share between the sides, 0 ideal), alike (sizes
    equal and every share within 0.01) and matched_down: [{class, drawn, kept}] for each class
    with fewer training images than drawn non-members (`wanted`, per class; `choose_audit_set`),
    audited with `kept` images on each side."""
    member_labels, nonmember_labels = np.asarray(member_labels), np.asarray(nonmember_labels)
    mem = np.bincount(member_labels, minlength=n_classes)
    non = np.bincount(nonmember_labels, minlength=n_classes)
    if len(mem) > n_classes or len(non) > n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got up to {max(len(mem), len(non)) - 1}")
    share_mem = mem / max(len(member_labels), 1)
    share_non = non / max(len(nonmember_labels), 1)
    gap = float(np.abs(share_mem - share_non).max()) if n_classes else 0.0
    return {
        "n_members": len(member_labels),
        "n_nonmembers": len(nonmember_labels),
        "member_counts": mem.tolist(),
        "nonmember_counts": non.tolist(),
        "max_share_difference": gap,
        "alike": len(member_labels) == len(nonmember_labels) and gap <= 0.01,
        "matched_down": []
        if wanted is None
        else [
            {"class": c, "drawn": int(w), "kept": int(k)}
            for c, (w, k) in enumerate(zip(np.asarray(wanted), non, strict=False))
            if k < w
        ],
    }


def strongest(results: list[AttackResult], verdict_fpr: float) -> AttackResult:
    """The attack with the highest stated TPR at verdict_fpr (ties: higher AUC); by AUC if none is stated."""
    if not results:
        raise ValueError("strongest needs at least one attack result, got none")
    stated = [r for r in results if r.rate(verdict_fpr).stated]
    if stated:
        return max(stated, key=lambda r: (r.rate(verdict_fpr).tpr, r.auc))
    return max(results, key=lambda r: r.auc)


def privacy_verdict(result: AttackResult, verdict_fpr: float, max_tpr: float) -> tuple[str, str]:
    """("pass" | "fail" | "inconclusive", one sentence with the numbers), judged on the TPR interval.

    pass: the interval's upper bound <= max_tpr; fail: its lower bound > max_tpr; inconclusive:
    it straddles max_tpr, or the rate is not stated."""
    if not 0.0 <= max_tpr <= 1.0:
        raise ValueError(f"max_tpr must be in [0, 1], got {max_tpr}")
    rate = result.rate(verdict_fpr)
    at = f"The {result.attack} attack's TPR at {format_share(verdict_fpr)} FPR"
    if not rate.stated or rate.tpr is None or rate.tpr_ci is None:
        return "inconclusive", f"{at} is {rate.reason}, so it cannot be judged against the limit {max_tpr:g}."
    low, high = rate.tpr_ci
    shown = f"{at} is {rate.tpr:.4f} ({result.confidence:.0%} interval {low:.4f}-{high:.4f})"
    if high <= max_tpr:
        return "pass", f"{shown}; its upper bound is at most the limit {max_tpr:g}."
    if low > max_tpr:
        return "fail", f"{shown}; its lower bound exceeds the limit {max_tpr:g}."
    return "inconclusive", f"{shown}; the interval straddles the limit {max_tpr:g}."
