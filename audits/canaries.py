"""The one-run privacy audit (Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training
Run", NeurIPS 2023): an empirical lower bound on epsilon from a single training run.

`m` training images are set aside as canaries and each is trained on with probability 1/2
(independent, seeded coins, drawn once by the train stage: `models/training/canaries.py`); the
rest of the training split is trained on as usual. After training, the auditor ranks the
canaries by a membership score (here the shipped model's negative loss), guesses "in" for the
k highest and "out" for the k lowest, and counts its correct guesses. For an (epsilon,
delta)-DP training run the number of correct guesses among r is at most
Binomial(r, e^eps / (1 + e^eps)) plus a delta term (the paper's Theorem 3.1 / Algorithm 2, as
in the authors' code); so an epsilon whose p-value for the observed count falls below
1 - confidence is ruled out, and the largest such epsilon is the lower bound.

Hand-written (no maintained library computes it; `jax_privacy.auditing` needs JAX): the
binomial tail and the delta term follow the paper, the search is a bisection. Several guess
counts k are tried and the level is split among them (Bonferroni), so trying them is allowed.

A lower bound, not an estimate: black-box canaries drawn from the data give small bounds even
for large epsilon (the paper's own black-box CIFAR-10 figures are well below the accountant's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.special import expit

GUESS_SHARES = (0.02, 0.05, 0.1, 0.2, 0.5)  # k as a share of m / 2: from a confident few to half the canaries


def p_value(m: int, r: int, v: int, *, epsilon: float, delta: float) -> float:
    """Probability of >= v correct guesses out of r (m canaries) if training were (epsilon, delta)-DP."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    q = float(expit(epsilon))  # accuracy of epsilon-DP randomised response
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    # alpha = max over i of P[v - i <= Binomial(r, q) < v] / i
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2 * m * delta * alpha, 1.0)


def epsilon_bound(m: int, r: int, v: int, *, delta: float, level: float) -> float:
    """The largest epsilon whose p-value for v correct of r guesses is below `level` (0 if none)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if p_value(m, r, v, epsilon=0.0, delta=delta) >= level:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, epsilon=high, delta=delta) < level:
        low, high = high, 2 * high
        if high > 1e3:  # a guard only: expit(epsilon) rounds to 1 long before, making the p-value 1
            return float("inf")
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, epsilon=mid, delta=delta) < level else (low, mid)
    return low


@dataclass(frozen=True)
class OneRunAudit:
    canaries: int  # m
    included: int  # how many of them the model trained on
    guesses: int  # r = 2k of the best k
    correct: int  # v
    epsilon_lower_bound: float  # nats; 0 when nothing is ruled out
    delta: float
    confidence: float  # one-sided: the bound holds with this probability
    level: float  # the level each guess count is judged at: (1 - confidence) / len(shares)
    tried: tuple[dict, ...]  # every k: guesses, correct, bound (each at the Bonferroni level)


def one_run_audit(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    delta: float,
    confidence: float,
    shares: tuple[float, ...] = GUESS_SHARES,
) -> OneRunAudit:
    """Guess "in" for the k highest `scores` and "out" for the k lowest, for k = share x m / 2 over
    `shares`; the bound is the best k's, each k judged at level (1 - confidence) / len(shares)."""
    scores, included = np.asarray(scores, dtype=float), np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1:
        raise ValueError(f"scores and included must be 1-D and alike, got {scores.shape} and {included.shape}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    m = len(scores)
    level = (1 - confidence) / len(shares)
    order = np.argsort(scores, kind="stable")  # lowest first
    tried = []
    for share in shares:
        k = int(share * m / 2)
        if k < 1:
            continue
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        tried.append(
            {
                "k": k,
                "guesses": 2 * k,
                "correct": correct,
                "bound": epsilon_bound(m, 2 * k, correct, delta=delta, level=level),
            }
        )
    best = max(tried, key=lambda t: t["bound"], default={"guesses": 0, "correct": 0, "bound": 0.0})
    return OneRunAudit(
        canaries=m,
        included=int(included.sum()),
        guesses=best["guesses"],
        correct=best["correct"],
        epsilon_lower_bound=best["bound"],
        delta=delta,
        confidence=confidence,
        level=level,
        tried=tuple(tried),
    )
