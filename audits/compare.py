"""Two runs compared on the same images: paired tests of B - A, pure functions over arrays.

`auditflow compare RUN_A RUN_B` and the release gate's "vs champion" criteria read this module.
What it decides, and how:

- Accuracy of the shipped model (no TTA): each test image is a pair (right under A?, right
  under B?). Only the discordant pairs carry information: `fixed` (wrong under A, right under B)
  and `broken` (right under A, wrong under B). The test of "no difference" is McNemar's exact
  test: `fixed` ~ Binomial(fixed + broken, 1/2) under the null (scipy's `binomtest`, two-sided).
- Its interval (`paired_interval`) is exact-conservative: the difference is
  Δ = π_d (2ψ - 1), with π_d the share of discordant pairs and ψ the share of them that B fixed.
  Clopper-Pearson intervals (Clopper & Pearson 1934) of π_d (over all n pairs) and of ψ (over
  the d discordant pairs, the parameter McNemar's exact test is about), each at level
  1 - α/2, hold together with probability at least 1 - α (Bonferroni), and Δ is monotone in
  each, so the range of Δ over the two intervals covers it with probability at least 1 - α
  whatever the true shares. tests/test_compare.py checks that coverage by enumerating every
  outcome of small samples. It is wider than the asymptotic intervals (Wald, Tango's score):
  about 1.2x near Δ = 0 with hundreds of discordant pairs, more with a few.
- Per-class recall: the same test and interval on the images of each class, the intervals at
  the Bonferroni level over the K classes (`auditflow.core.stats.bonferroni_level`), so all K
  hold together at the stated confidence; p-values are per class, not adjusted.
- Each membership attack's AUC (`auditflow.audits.privacy`, DeLong): paired DeLong
  (`auc_difference`) when both runs audited the same points (same training and test split,
  same member and non-member indices); otherwise the two AUCs come from independent samples
  and the difference's variance is the sum of the two DeLong variances ("not paired"). An
  attack that only one run ran, or a run that logged no scores, is listed with the reason.
- Each attack's TPR at the verdict FPR (each run's own threshold, set on its non-members as the
  privacy stage sets it): on the same members, the paired interval above (the thresholds are
  taken as given; their own noise is not in the interval). Only when paired and stated.
- Every verdict (`verdict/<group>` tags): A's, B's and whether B is better, the same or worse.

Runs tested on different test splits are refused (`ComparisonRefused`): a paired test needs
the same images, in the same order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.stats import binomtest, norm

from auditflow.audits.privacy import auc_difference, auc_variance, clopper_pearson, rate_at_fpr
from auditflow.core.checks import SEVERITY
from auditflow.core.errors import DataError
from auditflow.core.predictions import Predictions
from auditflow.core.stats import bonferroni_level

SCORES_SCHEMA = 1  # layout of `privacy/attack_scores.json`


class ComparisonRefused(DataError):
    """Two runs that cannot be compared pair by pair (different test splits)."""


# ---------------------------------------------------------------------------- paired shares
def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided p-value of McNemar's exact test of "no difference": `fixed` of the
    fixed + broken discordant pairs, against Binomial(fixed + broken, 1/2). 1.0 when no pair is
    discordant (nothing tells the runs apart)."""
    if fixed < 0 or broken < 0:
        raise ValueError(f"discordant counts must be >= 0, got fixed={fixed}, broken={broken}")
    if fixed + broken == 0:
        return 1.0
    return float(binomtest(int(fixed), int(fixed + broken), 0.5).pvalue)


def paired_interval(fixed: int, broken: int, n: int, *, confidence: float) -> tuple[float, float]:
    """Exact-conservative interval of the paired difference (fixed - broken) / n, B - A as a
    share (-1..1): Clopper-Pearson intervals of the discordant share and of B's share of the
    discordant pairs, each at 1 - α/2, combined (module docstring). Covers the true difference
    with probability at least `confidence`."""
    if n < 1 or fixed < 0 or broken < 0 or fixed + broken > n:
        raise ValueError(f"need n >= 1 and 0 <= fixed + broken <= n, got fixed={fixed}, broken={broken}, n={n}")
    each = 1 - (1 - confidence) / 2
    d = fixed + broken
    pi_low, pi_high = clopper_pearson(d, n, each)
    psi_low, psi_high = clopper_pearson(fixed, d, each) if d else (0.0, 1.0)
    g_low, g_high = 2 * psi_low - 1, 2 * psi_high - 1  # Δ = π_d (2ψ - 1)
    low = min(pi_low * g_low, pi_high * g_low)
    high = max(pi_low * g_high, pi_high * g_high)
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDifference:
    """B - A of a share measured on the same items (test images, a class's images, members).
    Shares are 0..1; `difference` > 0 means B is right (or finds members) more often."""

    n: int  # items, each seen by both runs
    a: float  # A's share
    b: float  # B's share
    fixed: int  # items B gets and A does not
    broken: int  # items A gets and B does not
    difference: float  # b - a = (fixed - broken) / n
    low: float  # interval of the difference at `level` (exact-conservative)
    high: float
    level: float
    p_value: float  # McNemar's exact test of no difference, two-sided


def paired_difference(hits_a: np.ndarray, hits_b: np.ndarray, *, level: float) -> PairedDifference:
    """The paired difference of two boolean vectors over the same items (`hits_b` - `hits_a`),
    its interval at `level` and McNemar's exact p-value."""
    a, b = np.asarray(hits_a, dtype=bool), np.asarray(hits_b, dtype=bool)
    if a.ndim != 1 or a.shape != b.shape or not len(a):
        raise ValueError(f"need two non-empty vectors of the same length, got shapes {a.shape} and {b.shape}")
    n, fixed, broken = len(a), int((b & ~a).sum()), int((a & ~b).sum())
    low, high = paired_interval(fixed, broken, n, confidence=level)
    return PairedDifference(
        n=n,
        a=float(a.mean()),
        b=float(b.mean()),
        fixed=fixed,
        broken=broken,
        difference=(fixed - broken) / n,
        low=low,
        high=high,
        level=level,
        p_value=mcnemar_exact(fixed, broken),
    )


# ---------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class AttackScores:
    """Every attack's member-ness score of each audited point, as the privacy stage logs it
    (`privacy/attack_scores.json`): members first, then non-members; higher = more member-like."""

    member_index: np.ndarray  # (n_m,) int64, into the training split
    nonmember_index: np.ndarray  # (n_n,) int64, into the test split
    scores: Mapping[str, np.ndarray]  # attack -> (n_m + n_n,)
    verdict_fpr: float  # the privacy verdict's FPR level, a share
    min_expected_false_positives: float  # the refusal rule of TPRs at low FPR (`rate_at_fpr`)

    @property
    def is_member(self) -> np.ndarray:
        return np.arange(len(self.member_index) + len(self.nonmember_index)) < len(self.member_index)

    def as_json(self) -> str:
        """Compact JSON (floats as Python writes them, so they read back exactly)."""
        doc = {
            "schema": SCORES_SCHEMA,
            "member_index": self.member_index.tolist(),
            "nonmember_index": self.nonmember_index.tolist(),
            "verdict_fpr": self.verdict_fpr,
            "min_expected_false_positives": self.min_expected_false_positives,
            "scores": {name: np.asarray(s, dtype=np.float64).tolist() for name, s in self.scores.items()},
        }
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str = "attack scores") -> AttackScores:
        """Read `as_json`'s text; `DataError` naming what is wrong."""
        try:
            doc = json.loads(text)
            if doc.get("schema") != SCORES_SCHEMA:
                raise DataError(f"{where} has schema {doc.get('schema')!r}, this auditflow reads {SCORES_SCHEMA}")
            found = cls(
                member_index=np.asarray(doc["member_index"], dtype=np.int64),
                nonmember_index=np.asarray(doc["nonmember_index"], dtype=np.int64),
                scores={k: np.asarray(v, dtype=np.float64) for k, v in doc["scores"].items()},
                verdict_fpr=float(doc["verdict_fpr"]),
                min_expected_false_positives=float(doc["min_expected_false_positives"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(f"cannot read {where}: {err}") from err
        n = len(found.member_index) + len(found.nonmember_index)
        for name, s in found.scores.items():
            if s.shape != (n,):
                raise DataError(f"{where}: attack {name!r} has {s.shape} scores, expected ({n},)")
        return found


@dataclass(frozen=True)
class RunEvidence:
    """What a comparison reads of one pipeline run (`auditflow.audits.comparison.run_evidence`
    reads it back from MLflow)."""

    run_id: str
    test_split: str  # identity of the test split (`auditflow.audits.gate.split_identity`); "" unknown
    train_split: str  # identity of the training split the audited members index; "" unknown
    classes: tuple[str, ...]
    predictions: Predictions
    verdicts: Mapping[str, str]  # verdict group -> pass | warn | inconclusive | fail
    attack_scores: AttackScores | None = None  # None: the run logged none
    attack_note: str = ""  # why there are no scores, when there are none


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ClassRow:
    """Recall of one class, B - A on that class's test images; None when it has none."""

    name: str
    recall: PairedDifference | None


@dataclass(frozen=True)
class AttackRow:
    """One membership attack in both runs. AUC: 0.5 ideal, higher = more exposed, so a positive
    difference means B leaks more; the same for the TPR (ideal: the FPR itself)."""

    attack: str
    paired: bool  # both runs audited the same points: paired DeLong; else independent samples
    auc_a: float | None
    auc_b: float | None
    auc_difference: float | None  # b - a
    low: float | None  # DeLong interval of the difference at the comparison's confidence
    high: float | None
    p_value: float | None  # of "no difference", two-sided
    tpr: PairedDifference | None  # TPR at `verdict_fpr`, paired on the members; None: see `note`
    verdict_fpr: float
    note: str  # what was not compared and why; "" when everything was


@dataclass(frozen=True)
class VerdictRow:
    group: str  # `verdict/<group>`
    a: str | None  # None: the run has no such verdict
    b: str | None
    change: str  # same | better | worse | new in B | not in B


@dataclass(frozen=True)
class Comparison:
    """Run B against run A on the same test split; every difference is B - A."""

    run_a: str
    run_b: str
    test_split: str
    n_test: int
    confidence: float  # two-sided level of every interval (per class: of all K together)
    accuracy: PairedDifference  # of the shipped model (no TTA)
    classes: tuple[ClassRow, ...]
    class_level: float  # the Bonferroni level of each per-class interval
    attacks: tuple[AttackRow, ...]
    attacks_note: str  # why attacks were not compared (no scores); "" otherwise
    verdicts: tuple[VerdictRow, ...]
    methods: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def worst_class_of_b(self) -> ClassRow | None:
        """The class with B's lowest recall (the class B's worst-class recall names)."""
        rows = [r for r in self.classes if r.recall is not None]
        return min(rows, key=lambda r: r.recall.b) if rows else None  # type: ignore[union-attr]

    def attack(self, name: str) -> AttackRow | None:
        return next((r for r in self.attacks if r.attack == name), None)


METHODS = {
    "accuracy": "McNemar's exact test; exact-conservative interval (Clopper-Pearson of the discordant share "
    "and of B's share of it, Bonferroni-combined)",
    "per-class recall": "the same per class; intervals at the Bonferroni level over the classes (simultaneous), "
    "p-values unadjusted",
    "attack AUC": "DeLong: paired (DeLong, DeLong & Clarke-Pearson 1988) on the same audited points, else the "
    "sum of the two DeLong variances",
    "attack TPR": "each run's threshold at the verdict FPR; the paired interval on the shared members",
}


# ---------------------------------------------------------------------------- the comparison
def _refuse_other_splits(a: RunEvidence, b: RunEvidence) -> None:
    who = f"cannot compare runs {a.run_id} and {b.run_id}"
    if a.run_id == b.run_id:
        raise ComparisonRefused(f"{who}: RUN_A and RUN_B are the same run")
    for run in (a, b):
        if not run.test_split:
            raise ComparisonRefused(f"{who}: run {run.run_id} records no test-split digest")
    if a.test_split != b.test_split:
        raise ComparisonRefused(
            f"{who}: they were tested on different test splits ({a.run_id}: {a.test_split}; {b.run_id}: {b.test_split})"
        )
    la, lb = a.predictions.test_labels, b.predictions.test_labels
    if la.shape != lb.shape or not np.array_equal(la, lb):
        what = f"{len(la)} vs {len(lb)} images"
        if la.shape == lb.shape:
            what = f"{int((la != lb).sum())} of {len(la)} labels differ"
        raise ComparisonRefused(f"{who}: their test splits differ ({what}) although both name {a.test_split}")
    if a.classes != b.classes:
        raise ComparisonRefused(f"{who}: different classes ({', '.join(a.classes)} vs {', '.join(b.classes)})")


def _verdict_rows(a: Mapping[str, str], b: Mapping[str, str]) -> tuple[VerdictRow, ...]:
    rows = []
    for group in sorted(set(a) | set(b)):
        va, vb = a.get(group), b.get(group)
        if va is None:
            change = "new in B"
        elif vb is None:
            change = "not in B"
        else:
            sa, sb = SEVERITY.get(va, SEVERITY["fail"]), SEVERITY.get(vb, SEVERITY["fail"])
            change = "same" if sa == sb else ("better" if sb < sa else "worse")
        rows.append(VerdictRow(group, va, vb, change))
    return tuple(rows)


def _same_points(a: RunEvidence, b: RunEvidence) -> str:
    """ "" when both runs audited the same points, else why not."""
    sa, sb = a.attack_scores, b.attack_scores
    assert sa is not None and sb is not None
    if not a.train_split or a.train_split != b.train_split:
        return "not paired: the runs' training splits differ (or one is not recorded)"
    same = np.array_equal(sa.member_index, sb.member_index) and np.array_equal(sa.nonmember_index, sb.nonmember_index)
    if not same:
        return "not paired: the runs audited different points (privacy.n_samples or privacy.seed differ)"
    return ""


def _tpr(sa: AttackScores, sb: AttackScores, name: str, level: float, fpr: float, min_fp: float) -> PairedDifference:
    hits = []
    for scores in (sa.scores[name], sb.scores[name]):
        rate = rate_at_fpr(
            sa.is_member, scores, fpr=fpr, confidence=level, min_expected_false_positives=min_fp
        )  # the threshold as the privacy stage sets it
        if not rate.stated:
            raise ValueError(f"TPR at {fpr:g} FPR {rate.reason}")
        hits.append(scores[sa.is_member] >= rate.threshold)
    return paired_difference(hits[0], hits[1], level=level)


def _attack_row(name: str, a: RunEvidence, b: RunEvidence, confidence: float) -> AttackRow:
    sa, sb = a.attack_scores, b.attack_scores
    assert sa is not None and sb is not None
    fpr = sb.verdict_fpr
    row = AttackRow(name, False, None, None, None, None, None, None, None, fpr, "")
    if name not in sa.scores or name not in sb.scores:
        return replace(row, note=f"run {(b if name in sa.scores else a).run_id} did not run it")
    why = _same_points(a, b)
    z = norm.ppf(0.5 + confidence / 2)
    if not why:
        diff, low, high, p = auc_difference(sa.is_member, sb.scores[name], sa.scores[name], confidence=confidence)
        auc_a, _ = auc_variance(sa.is_member, sa.scores[name])
        auc_b = auc_a + diff
        try:
            tpr, note = _tpr(sa, sb, name, confidence, fpr, sb.min_expected_false_positives), ""
        except ValueError as err:
            tpr, note = None, str(err)
    else:
        auc_a, var_a = auc_variance(sa.is_member, sa.scores[name])
        auc_b, var_b = auc_variance(sb.is_member, sb.scores[name])
        diff, se = auc_b - auc_a, float(np.sqrt(var_a + var_b))
        low, high = diff - z * se, diff + z * se
        p = float(2 * norm.sf(abs(diff) / se)) if se > 0 else (1.0 if diff == 0 else 0.0)
        tpr, note = None, why
    return AttackRow(name, not why, auc_a, auc_b, diff, low, high, p, tpr, fpr, note)


def compare(a: RunEvidence, b: RunEvidence, *, confidence: float = 0.95) -> Comparison:
    """Run `b` against run `a` on their shared test split (`ComparisonRefused`, one line naming
    both runs and what differs, when they do not share it). Every difference is B - A."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    _refuse_other_splits(a, b)
    labels = a.predictions.test_labels
    right_a = a.predictions.test_logits_no_tta.argmax(1) == labels
    right_b = b.predictions.test_logits_no_tta.argmax(1) == labels
    level = bonferroni_level(confidence, len(a.classes))
    classes = tuple(
        ClassRow(name, paired_difference(right_a[labels == k], right_b[labels == k], level=level))
        if (labels == k).any()
        else ClassRow(name, None)
        for k, name in enumerate(a.classes)
    )
    attacks: tuple[AttackRow, ...] = ()
    note = next((f"run {r.run_id}: {r.attack_note}" for r in (a, b) if r.attack_scores is None), "")
    if not note:
        names = list(dict.fromkeys([*a.attack_scores.scores, *b.attack_scores.scores]))  # type: ignore[union-attr]
        attacks = tuple(_attack_row(name, a, b, confidence) for name in names)
    return Comparison(
        run_a=a.run_id,
        run_b=b.run_id,
        test_split=a.test_split,
        n_test=len(labels),
        confidence=confidence,
        accuracy=paired_difference(right_a, right_b, level=confidence),
        classes=classes,
        class_level=level,
        attacks=attacks,
        attacks_note=note,
        verdicts=_verdict_rows(a.verdicts, b.verdicts),
        methods=dict(METHODS),
    )
