"""Calibration: temperature scaling (Guo et al. 2017) and the reliability diagram's bins.

Temperature scaling divides the logits by one scalar T > 0 fitted to minimise the negative
log-likelihood on held-out data (the validation split, never the test split). T > 1 softens
overconfident predictions. Argmax, and so accuracy, is unchanged; only the confidences move.
The export stage folds T into the ONNX graph (its `probabilities` output) and judges the
calibration check on what that file computes; the figures here are the same computation in
torch, shown beside the raw (T = 1) ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from auditflow.models.evaluation.metrics import expected_calibration_error

LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20]: wider is never the NLL optimum for a trained net


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `logits / temperature`, nats, lower is better."""
    scaled = logits.astype(np.float64) / temperature
    return float(-log_softmax(scaled, axis=1)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of `logits / T` on (`logits`, `labels`); 1.0 when
    there is nothing to fit on."""
    if len(labels) == 0:
        return 1.0
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=LOG_T_BOUNDS, method="bounded"
    )
    return float(np.exp(found.x))


@dataclass(frozen=True)
class Reliability:
    """Equal-width confidence bins: where a model's confidence matches its accuracy (the
    diagonal is ideal). Empty bins hold nan accuracy and confidence."""

    edges: list[float]  # n_bins + 1 bin edges on [0, 1]
    accuracy: list[float]  # share correct per bin, 0..1
    confidence: list[float]  # mean top-1 probability per bin, 0..1
    count: list[int]  # images per bin
    ece: float  # expected calibration error of these bins, 0..1, 0 ideal


def reliability(logits: np.ndarray, labels: np.ndarray, *, n_bins: int = 15, temperature: float = 1.0) -> Reliability:
    """Reliability-diagram bins of `softmax(logits / temperature)` against `labels`."""
    probs = softmax(logits.astype(np.float64) / temperature, axis=1)
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    acc, conf, count = [], [], []
    for b in range(n_bins):
        mask = bins == b
        count.append(int(mask.sum()))
        acc.append(float(correct[mask].mean()) if mask.any() else float("nan"))
        conf.append(float(confidence[mask].mean()) if mask.any() else float("nan"))
    return Reliability(edges.tolist(), acc, conf, count, expected_calibration_error(probs, labels, n_bins))


def fit_description(fitted_on: str, n_fit: int) -> str:
    """Where T was fitted, in words, from `CalibrationResult.fitted_on` and `.n_fit`."""
    if fitted_on == "validation":
        return f"the validation split ({n_fit} images)"
    return "nothing (no validation split), so T = 1"


@dataclass(frozen=True)
class CalibrationResult:
    """Temperature scaling of the shipped (no-TTA) model, fitted on validation, judged on test."""

    temperature: float  # T; divide the logits by it before the softmax
    fitted_on: str  # "validation" or "not fitted (no validation split)"
    n_fit: int  # validation images used
    ece_before: float  # test ECE at T = 1, 0..1
    ece_after: float  # test ECE at the fitted T, 0..1
    nll_before: float  # test NLL at T = 1, nats
    nll_after: float  # test NLL at the fitted T, nats
    before: Reliability
    after: Reliability


def calibrate(
    val_logits: np.ndarray, val_labels: np.ndarray, *, test_logits: np.ndarray, test_labels: np.ndarray, n_bins: int
) -> CalibrationResult:
    """Fit T on the validation logits; ECE and NLL on the test logits before and after."""
    t = fit_temperature(val_logits, val_labels)
    before = reliability(test_logits, test_labels, n_bins=n_bins)
    after = reliability(test_logits, test_labels, n_bins=n_bins, temperature=t)
    return CalibrationResult(
        temperature=t,
        fitted_on="validation" if len(val_labels) else "not fitted (no validation split)",
        n_fit=len(val_labels),
        ece_before=before.ece,
        ece_after=after.ece,
        nll_before=nll(test_logits, test_labels),
        nll_after=nll(test_logits, test_labels, t),
        before=before,
        after=after,
    )
