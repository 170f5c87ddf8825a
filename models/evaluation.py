"""Classification metrics from logits: accuracy, per-class P/R/F1, confusion matrix, ECE.

`evaluate` returns metrics; `models.training.predict` returns the logits they come from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax, softmax
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


def load_predictions(path: str) -> dict[str, np.ndarray]:
    """The arrays of an evaluation's `predictions.npz` (test and member logits and labels)."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |accuracy - confidence|
    weighted by bin share. 0 is ideal, lower is better, range 0..1.

    Hand-written: scikit-learn has no multi-class ECE and torchmetrics would be a new
    dependency for ten lines.
    """
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # top-1, 0..1, higher is better
    nll: float  # mean negative log-likelihood, nats, lower is better
    ece: float  # expected calibration error, 0..1, 0 ideal
    precision: tuple[float, ...]  # per class, 0..1
    recall: tuple[float, ...]  # per class, 0..1
    f1: tuple[float, ...]  # per class, 0..1
    support: tuple[int, ...]  # true images per class
    confusion: tuple[tuple[int, ...], ...]  # rows = true class, columns = predicted class
    classes: tuple[str, ...]

    @property
    def macro_f1(self) -> float:
        return float(np.mean(self.f1))

    def per_class_rows(self) -> list[dict[str, object]]:
        return [
            {"class": c, "precision": p, "recall": r, "f1": f, "support": s}
            for c, p, r, f, s in zip(self.classes, self.precision, self.recall, self.f1, self.support)
        ]


def evaluate(logits: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], ece_bins: int = 15) -> EvalResult:
    """Metrics of `logits` (N x C) against integer `labels` (N)."""
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need equal, non-zero numbers of logits and labels, got {len(logits)} and {len(labels)}")
    k = len(classes)
    preds = logits.argmax(1)
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=range(k), zero_division=0)
    nll = float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())
    return EvalResult(
        accuracy=float((preds == labels).mean()),
        nll=nll,
        ece=expected_calibration_error(softmax(logits, axis=1), labels, ece_bins),
        precision=tuple(map(float, p)),
        recall=tuple(map(float, r)),
        f1=tuple(map(float, f)),
        support=tuple(map(int, s)),
        confusion=tuple(tuple(map(int, row)) for row in confusion_matrix(labels, preds, labels=range(k))),
        classes=tuple(classes),
    )
