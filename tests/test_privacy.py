"""Membership-inference scores (audits/attacks.py) and audit metrics (audits/privacy.py).

Metrics are checked against brute-force recomputations on small hand-made inputs, intervals
by their coverage in simulation, and attacks on synthetic models whose leak is known."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import binom, norm

from auditflow.audits.attacks import (
    PER_IMAGE_VARIANCE_MIN_MODELS,
    lira_scores,
    logit_margin,
    loss_scores,
    rmia_scores,
    true_class_log_prob,
)
from auditflow.audits.privacy import (
    AttackResult,
    RateAtFpr,
    assess_attack,
    auc_difference,
    auc_interval,
    balance,
    choose_audit_set,
    clopper_pearson,
    epsilon_lower_bound,
    gains_over_baseline,
    per_example_loss,
    privacy_verdict,
    rate_at_fpr,
    strongest,
)


def brute_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in members for y in nonmembers)
    return wins / (len(members) * len(nonmembers))


def brute_delong_se(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """DeLong's standard error from its definition: structural components over all pairs."""
    psi = np.array([[1.0 if x > y else 0.5 if x == y else 0.0 for y in nonmembers] for x in members])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return math.sqrt(v10.var(ddof=1) / len(members) + v01.var(ddof=1) / len(nonmembers))


# ---------------------------------------------------------------- AUC and its interval


def test_auc_and_delong_interval_match_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(1)
    members = rng.integers(0, 6, 23).astype(float) + 1  # integer scores: many ties
    nonmembers = rng.integers(0, 6, 17).astype(float)
    scores = np.concatenate([members, nonmembers])
    is_member = np.r_[np.ones(23, bool), np.zeros(17, bool)]
    auc, low, high = auc_interval(is_member, scores, 0.9)
    assert auc == pytest.approx(brute_auc(members, nonmembers), abs=1e-12)
    half = norm.ppf(0.95) * brute_delong_se(members, nonmembers)
    assert (low, high) == pytest.approx((max(auc - half, 0), min(auc + half, 1)), abs=1e-12)


def test_delong_interval_covers_the_true_auc_in_95_percent_of_simulations():
    rng = np.random.default_rng(2)
    shift, reps, n = 0.8, 300, 150
    true_auc = norm.cdf(shift / math.sqrt(2))  # P(X > Y) for X ~ N(shift, 1), Y ~ N(0, 1)
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    covered = 0
    for _ in range(reps):
        scores = np.r_[rng.normal(shift, 1, n), rng.normal(0, 1, n)]
        _, low, high = auc_interval(is_member, scores, 0.95)
        covered += low <= true_auc <= high
    tolerance = 3 * math.sqrt(0.95 * 0.05 / reps)
    assert abs(covered / reps - 0.95) <= tolerance, covered


def test_auc_interval_needs_two_of_each_side():
    with pytest.raises(ValueError, match=r"^the AUC interval needs at least 2 members and 2 non-members, got 1 and 3$"):
        auc_interval(np.array([1, 0, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]), 0.95)


def test_paired_auc_difference_matches_its_definition_with_ties():
    rng = np.random.default_rng(4)
    is_member = np.r_[np.ones(19, bool), np.zeros(21, bool)]
    a = rng.integers(0, 5, 40).astype(float) + is_member  # ties, and a real signal
    b = a + rng.integers(-1, 2, 40)  # correlated with a
    diff, low, high, p = auc_difference(is_member, a, b, confidence=0.9)
    auc_a = brute_auc(a[is_member], a[~is_member])
    auc_b = brute_auc(b[is_member], b[~is_member])
    assert diff == pytest.approx(auc_a - auc_b, abs=1e-12)

    def psi(s: np.ndarray) -> np.ndarray:
        x, y = s[is_member], s[~is_member]
        return np.array([[1.0 if u > v else 0.5 if u == v else 0.0 for v in y] for u in x])

    # DeLong's variance of the difference, from the pairwise kernel of each attack
    d10 = psi(a).mean(axis=1) - psi(b).mean(axis=1)
    d01 = psi(a).mean(axis=0) - psi(b).mean(axis=0)
    se = math.sqrt(d10.var(ddof=1) / 19 + d01.var(ddof=1) / 21)
    assert (low, high) == pytest.approx((diff - norm.ppf(0.95) * se, diff + norm.ppf(0.95) * se), abs=1e-12)
    assert p == pytest.approx(2 * norm.sf(abs(diff) / se), abs=1e-12)


def test_paired_auc_difference_covers_zero_for_exchangeable_attacks_and_is_narrower_than_the_marginals():
    rng = np.random.default_rng(5)
    reps, n = 300, 200
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    covered, paired_width, marginal_width = 0, [], []
    for _ in range(reps):
        signal = rng.normal(0, 1, 2 * n) + 0.5 * is_member
        a, b = signal + rng.normal(0, 0.3, 2 * n), signal + rng.normal(0, 0.3, 2 * n)  # same law: difference 0
        _, low, high, _ = auc_difference(is_member, a, b, confidence=0.95)
        covered += low <= 0.0 <= high
        paired_width.append(high - low)
        _, a_low, a_high = auc_interval(is_member, a, 0.95)
        marginal_width.append(a_high - a_low)
    assert abs(covered / reps - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / reps), covered
    assert np.mean(paired_width) < 0.6 * np.mean(marginal_width)  # pairing is what makes small gains visible


def test_paired_auc_difference_finds_a_real_gain():
    rng = np.random.default_rng(6)
    is_member = np.r_[np.ones(2000, bool), np.zeros(2000, bool)]
    weak = rng.normal(0, 1, 4000) + 0.05 * is_member
    strong = weak + 0.3 * is_member + rng.normal(0, 0.2, 4000)
    diff, low, high, p = auc_difference(is_member, strong, weak, confidence=0.95)
    assert low > 0 and p < 1e-6 and diff > 0.05
    [row] = gains_over_baseline(is_member, {"loss": weak, "rmia": strong}, baseline="loss", confidence=0.95)
    assert row == {"attack": "rmia", "gain": diff, "ci_low": low, "ci_high": high, "p_value": p, "clear": True}
    # no baseline ran: nothing to compare
    assert gains_over_baseline(is_member, {"rmia": strong}, baseline="loss", confidence=0.95) == []
    with pytest.raises(ValueError, match=r"^the AUC difference needs at least 2 members and 2 non-members, got 1"):
        auc_difference(np.array([1, 0, 0]), np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.2, 0.1]), confidence=0.95)


# ---------------------------------------------------------------- Clopper-Pearson


def test_clopper_pearson_is_conservative_in_simulation_and_exactly():
    rng = np.random.default_rng(3)
    n, reps = 60, 2000
    intervals = {k: clopper_pearson(k, n, 0.95) for k in range(n + 1)}
    for p in (0.02, 0.1, 0.5):
        draws = rng.binomial(n, p, reps)
        simulated = np.mean([intervals[k][0] <= p <= intervals[k][1] for k in draws])
        assert simulated >= 0.95 - 3 * math.sqrt(0.95 * 0.05 / reps), (p, simulated)
        exact = sum(binom.pmf(k, n, p) for k, (lo, hi) in intervals.items() if lo <= p <= hi)
        assert exact >= 0.95 - 1e-9, (p, exact)
    assert intervals[0][0] == 0.0 and intervals[n][1] == 1.0
    # The exact interval at 0 successes has the closed form 1 - (alpha/2)^(1/n).
    assert intervals[0][1] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)


def test_clopper_pearson_rejects_impossible_counts():
    with pytest.raises(ValueError, match=r"^clopper_pearson needs 0 <= k <= n and n >= 1, got k=5, n=3$"):
        clopper_pearson(5, 3, 0.95)


# ---------------------------------------------------------------- score functions


def test_true_class_log_prob_and_logit_margin_match_their_definitions():
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, (20, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 20)
    z = logits.astype(np.float64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    py = p[np.arange(20), labels]
    assert true_class_log_prob(logits, labels).dtype == np.float64
    np.testing.assert_allclose(true_class_log_prob(logits, labels), np.log(py), rtol=1e-10)
    np.testing.assert_allclose(loss_scores(logits, labels), -per_example_loss(logits, labels), rtol=1e-12)
    np.testing.assert_allclose(logit_margin(logits, labels), np.log(py) - np.log1p(-py), rtol=1e-8, atol=1e-10)
    # Where 1 - p rounds to 0 the margin stays finite and exact: z_y - z_other for two classes.
    huge = np.array([[60.0, 0.0], [0.0, 45.0]])
    np.testing.assert_allclose(logit_margin(huge, np.array([0, 1])), [60.0, 45.0])


def test_score_functions_name_bad_shapes():
    with pytest.raises(
        ValueError, match=r"^logits must have shape \(n, K\) and labels \(n,\), got \(4, 3\) and \(5,\)$"
    ):
        loss_scores(np.zeros((4, 3)), np.zeros(5, int))
    with pytest.raises(ValueError, match=r"^label 3 is outside the 3 classes of the logits \(0..2\)$"):
        logit_margin(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(
        ValueError, match=r"^target_prob must have shape \(n,\), ref_prob and ref_in \(R, n\); got \(5,\), \(2, 4\)"
    ):
        rmia_scores(
            np.full(5, 0.5), np.full((2, 4), 0.5), np.zeros((2, 4), bool), population=np.arange(4), a=0.3, gamma=1.0
        )
    with pytest.raises(ValueError, match=r"^target_phi must have shape \(n,\), ref_phi and ref_in \(R, n\); got"):
        lira_scores(np.zeros(3), np.zeros((2, 3)), np.zeros((3, 3), bool))


def slow_rmia(target, refs, ref_in, population, a, gamma):
    """RMIA from its definition, one pair at a time."""
    n = len(target)
    pr = []
    for i in range(n):
        mean = sum(refs[r][i] for r in range(len(refs))) / len(refs)
        pr.append(mean if ref_in.any() else ((1 + a) * mean + (1 - a)) / 2)
    ratio = [target[i] / pr[i] for i in range(n)]
    scores = []
    for i in range(n):
        others = [z for z in population if z != i]
        scores.append(sum(ratio[i] / ratio[z] > gamma for z in others) / len(others))
    return np.array(scores)


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
def test_rmia_equals_the_double_loop_definition(online, gamma):
    rng = np.random.default_rng(5)
    n, r = 30, 3
    target = rng.uniform(0.01, 1.0, n)
    refs = rng.uniform(0.01, 1.0, (r, n))
    target[7], refs[:, 7] = target[3], refs[:, 3]  # an exact tie, for the strict '>' at gamma = 1
    ref_in = rng.random((r, n)) < 0.5 if online else np.zeros((r, n), bool)
    population = np.sort(rng.choice(n, 12, replace=False))
    population = np.union1d(population, [3, 7])
    got = rmia_scores(target, refs, ref_in, population=population, a=0.3, gamma=gamma)
    np.testing.assert_allclose(got, slow_rmia(target, refs, ref_in, population, 0.3, gamma), atol=1e-12)


def test_lira_offline_equals_a_direct_scipy_computation():
    phi = np.array([2.0, -1.0, 0.5, 4.0])
    refs = np.array([[1.0, -2.0, 0.0, 0.5], [0.0, -1.5, 1.0, 1.5]])
    mu = refs.mean(axis=0)
    sd = refs.std()  # one global spread over all OUT values
    got = lira_scores(phi, refs, np.zeros((2, 4), bool))
    np.testing.assert_allclose(got, -norm.logsf((phi - mu) / sd), rtol=1e-12)
    # Same order as the paper's Phi((phi - mu_out) / sigma_out).
    assert np.array_equal(np.argsort(got), np.argsort(norm.cdf((phi - mu) / sd)))


def test_lira_online_equals_a_direct_scipy_computation_with_fallbacks():
    phi = np.array([3.0, -1.0, 0.5, 2.0, 1.0])
    refs = np.array([[4.0, 0.0, 1.0, 2.5, 2.0], [0.5, -2.0, 3.0, 2.0, 0.0], [1.0, -1.0, 0.0, 3.0, 1.5]])
    ref_in = np.array([[1, 0, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 0, 1, 0]], bool)  # column 3: IN only
    sd_in, sd_out = refs[ref_in].std(), refs[~ref_in].std()
    expected = []
    for i in range(5):
        ins, outs = refs[ref_in[:, i], i], refs[~ref_in[:, i], i]
        if len(ins) and len(outs):
            expected.append(norm.logpdf(phi[i], ins.mean(), sd_in) - norm.logpdf(phi[i], outs.mean(), sd_out))
        elif len(outs):
            expected.append(-norm.logsf((phi[i] - outs.mean()) / sd_out))
        else:
            expected.append(norm.logcdf((phi[i] - ins.mean()) / sd_in))
    np.testing.assert_allclose(lira_scores(phi, refs, ref_in), expected, rtol=1e-12)


def test_lira_uses_per_image_variances_with_many_references():
    rng = np.random.default_rng(6)
    k = PER_IMAGE_VARIANCE_MIN_MODELS
    refs = rng.normal(0, 1, (2 * k, 3)) * np.array([1.0, 2.0, 3.0])
    ref_in = np.zeros((2 * k, 3), bool)
    ref_in[:k] = True
    refs[:k] += 2.0
    phi = np.array([1.0, 0.0, 2.5])
    ins, outs = refs[:k], refs[k:]
    expected = norm.logpdf(phi, ins.mean(0), ins.std(0)) - norm.logpdf(phi, outs.mean(0), outs.std(0))
    np.testing.assert_allclose(lira_scores(phi, refs, ref_in), expected, rtol=1e-10)


# ---------------------------------------------------------------- attacks on known leaks


def _synthetic_model(rng, n, k, memorised):
    """Logits of a target and of 4 reference models; with memorised=True members get +25 on the true class."""
    labels = rng.integers(0, k, 2 * n)
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    rows = np.arange(2 * n)
    target = rng.normal(0, 2, (2 * n, k))
    if memorised:
        target[rows[is_member], labels[is_member]] += 25.0
    refs = rng.normal(0, 2, (4, 2 * n, k))
    # Each image trains exactly 2 of the 4 references (the balanced online design): with random
    # halves, an image IN for all 4 gets Pr(x) = p(x) under RMIA and looks like a non-member.
    ref_in = rng.permuted(np.repeat([[True], [True], [False], [False]], 2 * n, axis=1), axis=0)
    for r in range(4):
        refs[r, rows[ref_in[r]], labels[ref_in[r]]] += 25.0  # references memorise their own IN images
    return labels, is_member, target, refs, ref_in


@pytest.mark.parametrize("memorised", [True, False])
def test_attacks_find_memorised_members_and_only_chance_otherwise(memorised):
    rng = np.random.default_rng(7)
    n, k = 1500, 10
    labels, is_member, target, refs, ref_in = _synthetic_model(rng, n, k, memorised)
    offline_in = np.zeros_like(ref_in)
    out_refs = rng.normal(0, 2, refs.shape)  # offline references never saw an audited image
    population = np.flatnonzero(~is_member)
    prob = np.exp(true_class_log_prob(target, labels))
    scores = {
        "loss": loss_scores(target, labels),
        "rmia-offline": rmia_scores(
            prob,
            np.exp([true_class_log_prob(m, labels) for m in out_refs]),
            offline_in,
            population=population,
            a=0.3,
            gamma=1.0,
        ),
        "rmia-online": rmia_scores(
            prob,
            np.exp([true_class_log_prob(m, labels) for m in refs]),
            ref_in,
            population=population,
            a=0.3,
            gamma=1.0,
        ),
        "lira-offline": lira_scores(
            logit_margin(target, labels), np.array([logit_margin(m, labels) for m in out_refs]), offline_in
        ),
        "lira-online": lira_scores(
            logit_margin(target, labels), np.array([logit_margin(m, labels) for m in refs]), ref_in
        ),
    }
    null_sd = math.sqrt((2 * n + 1) / (12 * n * n))  # AUC's standard deviation with no leak
    for name, s in scores.items():
        auc = auc_interval(is_member, s, 0.95)[0]
        if memorised:
            assert auc > 0.99, (name, auc)
        else:
            assert abs(auc - 0.5) < 4 * null_sd, (name, auc)


# ---------------------------------------------------------------- rate at a false-positive rate


def brute_rate(members, nonmembers, fpr):
    """Best TPR over all thresholds t (score >= t is called a member) with FP <= floor(fpr x n)."""
    allowed = math.floor(fpr * len(nonmembers) + 1e-9)
    best = (0, -math.inf)  # (true positives, -threshold); t = inf admits nothing
    for t in sorted(set(members) | set(nonmembers) | {math.inf}):
        if sum(y >= t for y in nonmembers) <= allowed:
            tp = sum(x >= t for x in members)
            best = max(best, (tp, -t))
    return best[0] / len(members), -best[1]


@pytest.mark.parametrize(
    ("fpr", "tpr", "threshold", "false_positives"), [(0.1, 1 / 6, 5.0, 1), (0.2, 1 / 6, 5.0, 1), (0.3, 4 / 6, 4.0, 3)]
)
def test_rate_at_fpr_on_a_hand_made_example_with_ties(fpr, tpr, threshold, false_positives):
    nonmembers = np.array([5, 4, 4, 3, 2, 2, 1, 0, 0, 0], float)
    members = np.array([6, 4, 4, 4, 3, 1], float)
    scores = np.r_[members, nonmembers]
    is_member = np.r_[np.ones(6, bool), np.zeros(10, bool)]
    rate = rate_at_fpr(is_member, scores, fpr=fpr, confidence=0.95, min_expected_false_positives=0)
    assert (rate.tpr, rate.threshold, rate.false_positives) == (pytest.approx(tpr), threshold, false_positives)
    assert (rate.tpr, rate.threshold) == (
        pytest.approx(brute_rate(members, nonmembers, fpr)[0]),
        brute_rate(members, nonmembers, fpr)[1],
    )
    assert rate.stated and rate.reason == "" and rate.tpr_ci == clopper_pearson(round(tpr * 6), 6, 0.95)


def test_rate_at_fpr_matches_brute_force_on_random_tied_scores():
    rng = np.random.default_rng(8)
    for _ in range(20):
        members, nonmembers = rng.integers(0, 8, 15).astype(float), rng.integers(0, 8, 40).astype(float)
        scores, is_member = np.r_[members, nonmembers], np.r_[np.ones(15, bool), np.zeros(40, bool)]
        for fpr in (0.05, 0.1, 0.25):
            rate = rate_at_fpr(is_member, scores, fpr=fpr, confidence=0.95, min_expected_false_positives=0)
            assert (rate.tpr, rate.threshold) == brute_rate(members, nonmembers, fpr)


def test_rate_at_fpr_refuses_below_ten_expected_false_positives():
    rng = np.random.default_rng(9)
    scores, is_member = rng.normal(size=10_000), np.r_[np.ones(5_000, bool), np.zeros(5_000, bool)]
    rate = rate_at_fpr(is_member, scores, fpr=0.001, confidence=0.95, min_expected_false_positives=10)
    assert not rate.stated and rate.tpr is None and rate.tpr_ci is None
    assert rate.expected_false_positives == pytest.approx(5.0)
    assert rate.reason == "not stated: 0.1% of 5,000 non-members is 5 expected false positives, fewer than 10"
    # exactly 10 is enough
    assert rate_at_fpr(is_member, scores, fpr=0.002, confidence=0.95, min_expected_false_positives=10).stated


# ---------------------------------------------------------------- assessment, epsilon, choice


def test_assess_attack_reports_rates_per_class_rows_and_a_thinned_roc():
    rng = np.random.default_rng(10)
    n = 4500  # about 1,500 non-members per class: 15 expected false positives at 1% within a class
    labels = np.r_[rng.integers(0, 3, n), rng.integers(0, 3, n)]
    is_member = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    scores = rng.normal(size=2 * n) + 2.0 * (is_member & (labels == 0))  # only class 0 leaks
    classes = ("a", "b", "c", "empty")
    result = assess_attack(
        "toy",
        scores,
        is_member,
        labels=labels,
        classes=classes,
        fpr_levels=(0.01, 0.001),
        verdict_fpr=0.01,
        confidence=0.95,
        min_expected_false_positives=10,
    )
    assert [r.fpr for r in result.rates] == [0.001, 0.01]
    assert result.rate(0.01).stated and not result.rate(0.001).stated
    assert len(result.roc_fpr) <= 401 and result.roc_fpr[0] == 0.0 and result.roc_fpr[-1] == 1.0
    assert min(f for f in result.roc_fpr if f > 0) == pytest.approx(1 / n)  # the low-FPR end is kept
    rows = {r["class"]: r for r in result.per_class}
    assert sum(r["n_members"] for r in rows.values()) == n
    assert all(rows[c]["stated"] for c in "abc")
    assert rows["empty"]["reason"] == "not stated: the class has 0 members and 0 non-members"
    assert rows["empty"]["auc"] is None and rows["empty"]["tpr"] is None
    assert rows["a"]["tpr"] > 0.2 and rows["b"]["tpr"] < 0.05
    for k, name in enumerate(("a", "b", "c")):
        inside = labels == k
        own = rate_at_fpr(
            is_member[inside], scores[inside], fpr=0.01, confidence=0.95, min_expected_false_positives=10
        )  # the class's own threshold
        assert rows[name]["tpr"] == own.tpr and rows[name]["tpr_ci_low"] == own.tpr_ci[0]
        assert rows[name]["auc"] == pytest.approx(auc_interval(is_member[inside], scores[inside], 0.95)[0])
    assert result.epsilon_lower_bound == epsilon_lower_bound(result.rate(0.01), n, 0.95)
    with pytest.raises(ValueError, match=r"^no rate at fpr=0.05; this result has fpr levels \[0.001, 0.01\]$"):
        result.rate(0.05)


def test_epsilon_lower_bound_uses_the_interval_ends():
    rate = RateAtFpr(0.01, 0.5, (0.4, 0.6), 30, 30.0, True, "", 1.0, 1500, 3000, 3000)
    tpr_low = clopper_pearson(1500, 3000, 0.95)[0]
    fpr_high = clopper_pearson(30, 3000, 0.95)[1]
    assert epsilon_lower_bound(rate, 3000, 0.95) == pytest.approx(math.log(tpr_low / fpr_high))
    assert epsilon_lower_bound(replace(rate, true_positives=30), 3000, 0.95) is None  # no leak: not positive
    assert epsilon_lower_bound(replace(rate, stated=False, tpr=None, tpr_ci=None), 3000, 0.95) is None


def test_choose_audit_set_matches_class_counts_and_is_seeded():
    rng = np.random.default_rng(11)
    train, test = rng.integers(0, 4, 500), rng.integers(0, 4, 200)
    chosen = choose_audit_set(train, test, n=120, seed=3)
    mem, non = chosen.members, chosen.nonmembers
    assert len(mem) == len(non) == 120 and len(set(mem)) == 120 and len(set(non)) == 120
    assert np.array_equal(np.bincount(train[mem], minlength=4), np.bincount(test[non], minlength=4))
    assert np.all(np.diff(mem) > 0) and np.all(np.diff(non) > 0)
    assert chosen.matched_down == {}  # every class has enough training images
    again = choose_audit_set(train, test, n=120, seed=3)
    assert np.array_equal(again.members, mem) and np.array_equal(again.nonmembers, non)
    assert not np.array_equal(choose_audit_set(train, test, n=120, seed=4).nonmembers, non)
    everything = [choose_audit_set(train, test, n=10_000, seed=s) for s in (3, 4)]
    assert len(everything[0].nonmembers) == 200  # capped at the test split
    # Same non-members (all of them) and class counts, yet a different random draw of members.
    assert not np.array_equal(everything[0].members, everything[1].members)
    assert balance(train[mem], test[non], 4)["alike"]


@pytest.mark.parametrize("rare", [0, 1, 2])
def test_a_rare_class_is_matched_at_the_smaller_side(rare: int):
    """Issue 18: a class with fewer training images than test images (1 or 6 against 8 crashed
    the run after training). Both sides keep that class at its training count, seeded; with no
    training image at all, the class leaves the privacy audit and the rest stays matched."""
    train = np.array([0] * 30 + [1] * rare + [2] * 30)
    test = np.array([0] * 8 + [1] * 8 + [2] * 8)
    chosen = choose_audit_set(train, test, n=10_000, seed=0)
    assert chosen.matched_down == {1: (8, rare)}
    assert np.array_equal(np.bincount(train[chosen.members], minlength=3), [8, rare, 8])
    assert np.array_equal(np.bincount(test[chosen.nonmembers], minlength=3), [8, rare, 8])
    again = choose_audit_set(train, test, n=10_000, seed=0)
    assert np.array_equal(again.nonmembers, chosen.nonmembers) and np.array_equal(again.members, chosen.members)
    result = balance(train[chosen.members], test[chosen.nonmembers], 3, wanted=chosen.wanted)
    assert result["alike"] and result["matched_down"] == [{"class": 1, "drawn": 8, "kept": rare}]


def test_canaries_count_against_a_rare_class():
    train = np.array([0] * 10 + [1] * 6)
    test = np.array([0] * 5 + [1] * 5)
    canaries = np.flatnonzero(train == 1)[:3]  # 3 of class 1's 6 training images are canaries
    chosen = choose_audit_set(train, test, n=10, seed=0, exclude=canaries)
    assert chosen.matched_down == {1: (5, 3)} and not np.isin(chosen.members, canaries).any()


def test_balance_reports_the_largest_share_difference():
    got = balance(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert got == {
        "n_members": 4,
        "n_nonmembers": 4,
        "member_counts": [2, 2, 0],
        "nonmember_counts": [1, 3, 0],
        "max_share_difference": 0.25,
        "alike": False,
        "matched_down": [],  # no draw counts given: nothing to compare against
    }


# ---------------------------------------------------------------- verdict and strongest attack


def _result(name="rmia", ci=(0.01, 0.02), auc=0.6, stated=True):
    rate = RateAtFpr(
        fpr=0.01,
        tpr=sum(ci) / 2 if stated else None,
        tpr_ci=ci if stated else None,
        false_positives=10,
        expected_false_positives=10.0 if stated else 5.0,
        stated=stated,
        reason="" if stated else "not stated: 1% of 500 non-members is 5 expected false positives, fewer than 10",
        threshold=0.0,
        true_positives=15,
        n_members=1000,
        n_nonmembers=1000,
    )
    return AttackResult(name, auc, (auc - 0.01, auc + 0.01), 0.1, (rate,), [], [], [], 1000, 1000, None, 0.01, 0.95)


def test_privacy_verdict_at_its_edges():
    assert privacy_verdict(_result(ci=(0.01, 0.05)), 0.01, 0.05)[0] == "pass"  # upper bound exactly at max
    assert privacy_verdict(_result(ci=(0.05 + 1e-9, 0.08)), 0.01, 0.05)[0] == "fail"  # lower bound just above
    assert privacy_verdict(_result(ci=(0.05, 0.08)), 0.01, 0.05)[0] == "inconclusive"  # lower bound at max
    assert privacy_verdict(_result(ci=(0.04, 0.06)), 0.01, 0.05)[0] == "inconclusive"
    status, why = privacy_verdict(_result(stated=False), 0.01, 0.05)
    assert status == "inconclusive"
    assert why == (
        "The rmia attack's TPR at 1% FPR is not stated: 1% of 500 non-members is 5 expected false positives, "
        "fewer than 10, so it cannot be judged against the limit 0.05."
    )
    assert privacy_verdict(_result(ci=(0.01, 0.03)), 0.01, 0.05)[1] == (
        "The rmia attack's TPR at 1% FPR is 0.0200 (95% interval 0.0100-0.0300); its upper bound is at most the "
        "limit 0.05."
    )


def test_strongest_prefers_stated_tpr_then_auc():
    weak, strong, tie_higher_auc = _result("a", (0.01, 0.02)), _result("b", (0.1, 0.2)), _result("c", (0.1, 0.2), 0.9)
    unstated = _result("d", auc=0.99, stated=False)
    assert strongest([weak, strong, unstated], 0.01).attack == "b"
    assert strongest([weak, strong, tie_higher_auc], 0.01).attack == "c"
    assert strongest([unstated, _result("e", auc=0.7, stated=False)], 0.01).attack == "d"
