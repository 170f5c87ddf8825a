"""Interval arithmetic shared by evaluation and the audits: Wilson score intervals of
proportions and the Bonferroni level that makes several intervals hold together.

Hand-written because scipy's `binomtest(...).proportion_ci` is scalar-only and the audits need
it vectorised over classes and subgroups (statsmodels, which has it, is not a dependency); it is
checked against scipy in tests/test_fairness.py.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm


def bonferroni_level(confidence: float, m: int) -> float:
    """Per-interval level that makes `m` two-sided intervals hold together at `confidence`."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    return 1 - (1 - confidence) / max(int(m), 1)


def wilson_interval(successes: np.ndarray | int, n: np.ndarray | int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of the proportion successes / n at two-sided `level`, vectorised.

    Returns (low, high), fractions 0..1. Where n == 0 nothing is known and the interval is
    [0, 1] (which makes any verdict on it inconclusive)."""
    x = np.asarray(successes, dtype=float)
    n_arr = np.asarray(n, dtype=float)
    if np.any(x < 0) or np.any(x > n_arr):
        raise ValueError(f"need 0 <= successes <= n, got successes {successes} and n {n}")
    z = norm.ppf(1 - (1 - level) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = x / n_arr
        denom = 1 + z**2 / n_arr
        centre = (p + z**2 / (2 * n_arr)) / denom
        half = z / denom * np.sqrt(p * (1 - p) / n_arr + z**2 / (4 * n_arr**2))
        low = np.where(n_arr > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
        high = np.where(n_arr > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    return low, high
