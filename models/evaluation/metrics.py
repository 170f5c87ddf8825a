"""Classification metrics from logits: accuracy, per-class P/R/F1, confusion matrix, ECE.

`evaluate` returns metrics; `models.evaluation.inference.predict` returns the logits they come from.
`models.evaluation.stage` builds the evaluate stage's report from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax, softmax
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support


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
            for c, p, r, f, s in zip(self.classes, self.precision, self.recall, self.f1, self.support, strict=True)
        ]


def evaluate(logits: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], *, ece_bins: int = 15) -> EvalResult:
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


@dataclass(frozen=True)
class LearningCheck:
    """Did the model learn? Fails when held-out accuracy cannot be told apart from chance.

    `chance` is what always answering the most frequent class scores (1/K on balanced data);
    the verdict fails when the accuracy's Wilson interval reaches down to it, whatever the
    training accuracy says (a high one there means the weights that were evaluated are not
    the ones that learned, or the model memorised without generalising)."""

    verdict: str  # "pass" or "fail"
    accuracy: float  # held-out top-1, 0..1
    interval: tuple[float, float]  # Wilson interval of `accuracy` at `confidence`
    chance: float  # majority-class share of the held-out labels, 0..1
    train_accuracy: float  # same model on training images, no augmentation, 0..1
    confidence: float
    message: str


def check_learning(
    preds: np.ndarray, labels: np.ndarray, *, train_accuracy: float, confidence: float = 0.99
) -> LearningCheck:
    """Compare held-out accuracy (`preds` vs `labels`) with chance and with `train_accuracy`."""
    from scipy.stats import binomtest

    n = len(labels)
    correct = int((preds == labels).sum())
    chance = float(np.bincount(labels).max() / n)
    ci = binomtest(correct, n).proportion_ci(confidence, method="wilson")
    acc = correct / n
    if ci.low > chance:
        return LearningCheck(
            "pass",
            acc,
            (ci.low, ci.high),
            chance,
            train_accuracy,
            confidence,
            f"held-out accuracy {acc:.1%} is above chance ({chance:.1%})",
        )
    if train_accuracy - chance > 0.2:
        why = (
            f"held-out accuracy {acc:.1%} ({confidence:.0%} CI [{ci.low:.1%}, {ci.high:.1%}]) "
            f"is at chance ({chance:.1%}) "
            f"while training accuracy is {train_accuracy:.1%}: the model did not generalise"
        )
    else:
        why = (
            f"accuracy {acc:.1%} on held-out and {train_accuracy:.1%} on training images is at chance "
            f"({chance:.1%}): the model did not learn"
        )
    return LearningCheck("fail", acc, (ci.low, ci.high), chance, train_accuracy, confidence, why)
