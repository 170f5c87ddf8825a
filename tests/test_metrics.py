"""Evaluation, fairness and privacy metrics against brute-force recomputation."""

from __future__ import annotations

import numpy as np
import pytest

from auditflow.models.evaluation.metrics import evaluate, expected_calibration_error

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
