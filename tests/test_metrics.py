"""Evaluation, fairness and privacy metrics against brute-force recomputation."""

from __future__ import annotations

import numpy as np
import pytest

from auditflow.audits.fairness import audit_fairness
from auditflow.audits.privacy import audit_membership, per_example_loss, sample_equal, tpr_at_fpr
from auditflow.core.config import FairnessConfig, PrivacyConfig
from auditflow.models.evaluation import evaluate, expected_calibration_error

CLASSES = ("a", "b", "c")


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), labels] += np.array([2.5, 1.0, 0.2])[labels]  # class a easy, c hard
    return logits, labels


def test_evaluate_matches_brute_force(predictions) -> None:
    logits, labels = predictions
    result = evaluate(logits, labels, CLASSES)
    preds = logits.argmax(1)
    assert result.accuracy == pytest.approx(np.mean(preds == labels))
    for k in range(3):
        tp = np.sum((preds == k) & (labels == k))
        assert result.recall[k] == pytest.approx(tp / np.sum(labels == k))
        assert result.precision[k] == pytest.approx(tp / np.sum(preds == k))
        assert result.support[k] == np.sum(labels == k)
        for j in range(3):
            assert result.confusion[k][j] == np.sum((labels == k) & (preds == j))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert result.nll == pytest.approx(-np.mean(np.log(p[np.arange(300), labels])))


def test_ece_brute_force() -> None:
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45], [0.2, 0.8]])
    labels = np.array([0, 1, 0, 1])
    # two bins [0, .5], (.5, 1]: every confidence falls in the upper bin
    conf = probs.max(1)
    expected = abs(np.mean(probs.argmax(1) == labels) - conf.mean())
    assert expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(expected)
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == 0.0


def test_evaluate_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="need equal, non-zero numbers of logits and labels, got 2 and 3"):
        evaluate(np.zeros((2, 3)), np.zeros(3, int), CLASSES)


def test_fairness_per_class_one_vs_rest(predictions) -> None:
    logits, labels = predictions
    preds = logits.argmax(1)
    result = audit_fairness(
        labels, preds, CLASSES, FairnessConfig(n_bootstrap=50, min_class_recall=0.0, max_recall_gap=1.0)
    )
    recalls = []
    for k, row in enumerate(result.per_class):
        tp = np.sum((preds == k) & (labels == k))
        fp = np.sum((preds == k) & (labels != k))
        assert row["class"] == CLASSES[k]
        assert row["recall"] == pytest.approx(tp / np.sum(labels == k))
        assert row["precision"] == pytest.approx(tp / (tp + fp))
        assert row["false_positive_rate"] == pytest.approx(fp / np.sum(labels != k))
        assert row["support"] == np.sum(labels == k)
        recalls.append(row["recall"])
    d = result.disparities["recall"]
    assert d.difference == pytest.approx(max(recalls) - min(recalls))
    assert d.ratio == pytest.approx(min(recalls) / max(recalls))
    assert d.group_min == pytest.approx(min(recalls))
    assert result.passed and result.reasons == ()


def test_fairness_verdict_fails_with_reasons(predictions) -> None:
    logits, labels = predictions
    preds = logits.argmax(1)
    result = audit_fairness(
        labels, preds, CLASSES, FairnessConfig(n_bootstrap=0, min_class_recall=0.99, max_recall_gap=0.01)
    )
    worst = min(result.per_class, key=lambda r: r["recall"])
    assert not result.passed
    assert (
        result.reasons[0] == f"worst-class recall {worst['recall']:.3f} ({worst['class']}) is below the threshold 0.99"
    )
    assert result.reasons[1].startswith("recall gap ") and result.reasons[1].endswith("exceeds the threshold 0.01")
    assert "recall_ci_low" not in result.per_class[0]


def _auc_brute(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney: P(score_pos > score_neg) + 0.5 P(tie)."""
    diff = pos[:, None] - neg[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def test_membership_auc_matches_brute_force() -> None:
    rng = np.random.default_rng(1)
    member_logits, non_logits = rng.normal(size=(200, 3)), rng.normal(size=(200, 3))
    member_labels, non_labels = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    member_logits[np.arange(200), member_labels] += 1.0  # members fit better: lower loss
    result = audit_membership(
        member_logits, member_labels, non_logits, non_labels, CLASSES, PrivacyConfig(n_bootstrap=50)
    )
    pos = -per_example_loss(member_logits, member_labels)
    neg = -per_example_loss(non_logits, non_labels)
    assert result.auc == pytest.approx(_auc_brute(pos, neg))
    assert result.auc > 0.6
    for k, row in enumerate(result.per_class):
        assert row["auc"] == pytest.approx(_auc_brute(pos[member_labels == k], neg[non_labels == k]))
        assert row["n"] == np.sum(member_labels == k) + np.sum(non_labels == k)
    thresholds = np.unique(np.concatenate([pos, neg]))
    best = max(np.mean(pos >= t) - np.mean(neg >= t) for t in thresholds)
    assert result.advantage == pytest.approx(best)
    assert not result.passed and "exceeds the threshold 0.6" in result.reasons[0]


def test_membership_on_identical_distributions_is_near_chance() -> None:
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(size=(4000, 3)), rng.integers(0, 3, 4000)
    result = audit_membership(
        logits[:2000], labels[:2000], logits[2000:], labels[2000:], CLASSES, PrivacyConfig(n_bootstrap=0)
    )
    assert abs(result.auc - 0.5) < 0.04
    assert result.passed and result.auc_ci is None


def test_tpr_at_fpr() -> None:
    fpr = np.array([0.0, 0.0005, 0.005, 0.02, 1.0])
    tpr = np.array([0.0, 0.1, 0.3, 0.5, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.3
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.1


def test_sample_equal_sizes_and_seed() -> None:
    a, b = sample_equal(100, 40, 1000, seed=0)
    assert len(a) == len(b) == 40 and len(set(a)) == 40 and a.max() < 100
    a2, _ = sample_equal(100, 40, 1000, seed=0)
    assert np.array_equal(a, a2)
    small, _ = sample_equal(100, 40, 10, seed=0)
    assert len(small) == 10


def test_class_with_one_side_only_gives_nan_not_a_crash() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(40, 3))
    member_labels = np.array([0, 1, 2] * 6 + [2, 2])  # class 2 among members only below
    non_labels = np.array([0, 1] * 10)
    result = audit_membership(
        logits[:20], member_labels, logits[20:], non_labels, CLASSES, PrivacyConfig(n_bootstrap=20)
    )
    by_class = {r["class"]: r["auc"] for r in result.per_class}
    assert np.isnan(by_class["c"]) and not np.isnan(by_class["a"])


def test_fairness_recall_interval_covers_the_truth_at_its_level() -> None:
    """Coverage by simulation: draw test sets from a classifier whose per-class recall is known,
    and count how often the bootstrap interval of the worst class holds its true recall. A 95%
    interval should hold it about 95% of the time (binomial sd over 200 draws is 1.5 points)."""
    true_recall = np.array([0.6, 0.8, 0.9])
    cfg = FairnessConfig(n_bootstrap=300, min_class_recall=0.0, max_recall_gap=1.0)
    hits, draws = 0, 200
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 3, 300)
        right = rng.random(300) < true_recall[labels]
        preds = np.where(right, labels, (labels + rng.integers(1, 3, 300)) % 3)
        row = audit_fairness(labels, preds, CLASSES, cfg.model_copy(update={"seed": seed})).per_class[0]
        hits += row["recall_ci_low"] <= true_recall[0] <= row["recall_ci_high"]
    assert 0.90 <= hits / draws <= 0.99, hits / draws


def test_membership_auc_interval_covers_the_truth_at_its_level() -> None:
    """Member scores N(d, 1) against non-members N(0, 1): the true AUC is Phi(d / sqrt 2).
    Only 40 draws (each bootstraps through fairlearn, ~1 s): the test catches intervals that
    are too narrow (a 95% interval holding the truth in fewer than 80% of draws), not too wide."""
    from scipy.stats import norm

    d, n, draws = 0.5, 200, 40
    truth = norm.cdf(d / np.sqrt(2))
    hits = 0
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        labels = np.zeros(n, int)
        # a two-class logit whose per-example loss is a monotone function of the score
        members, non = rng.normal(d, 1, n), rng.normal(0, 1, n)
        to_logits = lambda z: np.stack([z, np.zeros_like(z)], 1)  # noqa: E731
        result = audit_membership(
            to_logits(members), labels, to_logits(non), labels, CLASSES[:2], PrivacyConfig(n_bootstrap=50, seed=seed)
        )
        hits += result.auc_ci[0] <= truth <= result.auc_ci[1]
    assert hits / draws >= 0.8, hits / draws
