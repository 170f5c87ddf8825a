"""The one-run privacy audit (audits/canaries.py): its p-value against brute force, its bound's
coverage and power in simulation on randomised response (whose epsilon is known), and the
canaries' way through training and the audit set."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, logit

from auditflow.audits.canaries import epsilon_bound, one_run_audit, p_value
from auditflow.audits.privacy import choose_audit_set
from auditflow.models.training.canaries import choose_canaries, hold_out_canaries, kept_for_training


def brute_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The paper's p-value written out term by term with exact binomial coefficients."""
    q = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(r + 1)]
    tail = sum(pmf[v:])
    alpha = max((sum(pmf[v - i : v]) / i for i in range(1, v + 1)), default=0.0)
    return min(tail + 2 * m * delta * alpha, 1.0)


@pytest.mark.parametrize(
    ("m", "r", "v", "eps", "delta"),
    [(10, 10, 10, 0.5, 0.0), (50, 20, 14, 1.0, 1e-3), (30, 12, 3, 0.2, 1e-2), (40, 16, 16, 2.0, 1e-4)],
)
def test_p_value_matches_brute_force(m: int, r: int, v: int, eps: float, delta: float) -> None:
    assert p_value(m, r, v, epsilon=eps, delta=delta) == pytest.approx(
        brute_p_value(m, r, v, eps, delta), rel=1e-9, abs=1e-12
    )


def test_all_of_ten_right_bounds_epsilon_in_closed_form() -> None:
    # P[10 of 10] = q^10 = 0.05  =>  q = 0.05^(1/10), epsilon = logit(q)
    assert epsilon_bound(10, 10, 10, delta=0.0, level=0.05) == pytest.approx(logit(0.05**0.1), abs=1e-6)


def test_delta_weakens_the_bound_and_more_correct_guesses_strengthen_it() -> None:
    assert epsilon_bound(1000, 200, 150, delta=1e-3, level=0.05) < epsilon_bound(1000, 200, 150, delta=0.0, level=0.05)
    assert epsilon_bound(1000, 200, 120, delta=0.0, level=0.05) < epsilon_bound(1000, 200, 150, delta=0.0, level=0.05)
    assert epsilon_bound(1000, 200, 100, delta=0.0, level=0.05) == 0.0  # a coin's score rules nothing out


def randomised_response(eps: float, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Canaries in with probability 1/2; a score that tells the truth with probability e^eps / (1 + e^eps):
    exactly eps-DP per canary, the worst case the bound must not overshoot."""
    included = rng.random(m) < 0.5
    truthful = rng.random(m) < expit(eps)
    return np.where(truthful, included, ~included) + 0.01 * rng.random(m), included


def test_the_bound_stays_below_the_true_epsilon_and_finds_most_of_it() -> None:
    rng = np.random.default_rng(0)
    eps, trials = 1.0, 200
    bounds = np.array(
        [
            one_run_audit(*randomised_response(eps, 1000, rng), delta=0.0, confidence=0.95).epsilon_lower_bound
            for _ in range(trials)
        ]
    )
    assert np.mean(bounds > eps) <= 0.05  # a 95% lower bound
    assert np.median(bounds) > 0.5 * eps  # and not a vacuous one


def test_no_signal_rules_out_nothing() -> None:
    rng = np.random.default_rng(1)
    bounds = []
    for _ in range(200):
        included = rng.random(500) < 0.5
        bounds.append(one_run_audit(rng.random(500), included, delta=1e-5, confidence=0.95).epsilon_lower_bound)
    assert np.mean(np.array(bounds) > 0) <= 0.05


def test_canaries_are_seeded_distinct_and_the_excluded_ones_leave_training() -> None:
    a, b = choose_canaries(1000, 200, seed=3), choose_canaries(1000, 200, seed=3)
    assert np.array_equal(a.index, b.index) and np.array_equal(a.included, b.included)
    assert len(np.unique(a.index)) == 200 and 60 < a.included.sum() < 140
    kept = kept_for_training(1000, a)
    assert len(kept) == 1000 - len(a.excluded)
    assert not np.isin(a.excluded, kept).any() and np.isin(a.index[a.included], kept).all()
    assert len(choose_canaries(1000, 0, seed=3).index) == 0
    with pytest.raises(ValueError, match=r"half the 100 training images, got 51"):
        choose_canaries(100, 51, seed=0)


def test_members_of_the_audit_are_never_canaries() -> None:
    rng = np.random.default_rng(2)
    train_y, test_y = rng.integers(0, 3, 600), rng.integers(0, 3, 100)
    canaries = choose_canaries(600, 250, seed=0)
    members = choose_audit_set(train_y, test_y, n=100, seed=0, exclude=canaries.index).members
    assert len(members) == 100 and not np.isin(members, canaries.index).any()


def test_canaries_need_single_process_training() -> None:
    from auditflow.core.config import load_config
    from auditflow.core.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"privacy.canaries=100 needs single-process training, but train.world_size=2"
    ):
        load_config("quick", ["privacy.canaries=100", "train.world_size=2"])
    assert load_config("quick", ["privacy.canaries=100"]).privacy.canaries == 100


def test_training_drops_the_excluded_canaries_and_refuses_too_many() -> None:
    from auditflow.core.data import Splits
    from auditflow.core.errors import ConfigError

    x = np.arange(40, dtype=np.uint8).reshape(40, 1, 1, 1)
    splits = Splits(x, np.arange(40) % 2, x[:2], np.zeros(2, int), x[:2], np.zeros(2, int), ("a", "b"))
    chosen = choose_canaries(40, 20, seed=5)
    trained, drawn = hold_out_canaries(splits, 20, 5)
    assert np.array_equal(drawn.index, chosen.index) and np.array_equal(drawn.included, chosen.included)
    assert sorted(trained.train_x.ravel()) == sorted(set(range(40)) - set(chosen.excluded.tolist()))
    with pytest.raises(ConfigError, match=r"privacy.canaries=21 needs at least 42 training images, this run has 40"):
        hold_out_canaries(splits, 21, 5)


def test_the_training_key_of_a_run_without_canaries_is_what_it_was() -> None:
    """Finished trainings are found again by this key: runs without canaries must keep theirs."""
    import hashlib
    import json

    from auditflow.core.config import load_config
    from auditflow.models.training.stage import resume_key

    cfg = load_config("quick", [])
    before = json.dumps(["digest", cfg.data.model_dump(mode="json"), cfg.train.model_dump(mode="json")], sort_keys=True)
    assert resume_key("digest", cfg.data, cfg.train) == hashlib.sha256(before.encode()).hexdigest()[:16]
    assert resume_key("digest", cfg.data, cfg.train, canaries=(0, 7)) == resume_key("digest", cfg.data, cfg.train)
    assert resume_key("digest", cfg.data, cfg.train, canaries=(100, 0)) != resume_key("digest", cfg.data, cfg.train)


def test_too_few_canaries_are_refused_in_one_line() -> None:
    from auditflow.core.config import load_config
    from auditflow.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"canaries=3 is too few to guess from: use 0 \(off\) or at least 100"):
        load_config("quick", ["privacy.canaries=3"])
