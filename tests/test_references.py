"""Reference models of the privacy audit: which images each one sees, and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditflow.core.config import TrainConfig
from auditflow.core.data import Splits
from auditflow.models.references import estimate_seconds, plan_references, reference_recipe, train_reference
from auditflow.models.runtime import resolve_runtime

RECIPE = TrainConfig(
    model="fastnet", width=8, epochs=1, batch_size=16, lr=0.05, compile=False, precision="fp32", val_subset=None
)


def _plan(mode: str = "offline", count: int = 4, seed: int = 0, recipe: TrainConfig = RECIPE):
    members = np.arange(0, 400, 4)  # 100 of 1000 training images
    nonmembers = np.arange(0, 200, 2)  # 100 of 200 test images
    return plan_references(1000, members, nonmembers, count, mode, seed, "digest", recipe), members, nonmembers


def test_offline_references_never_see_an_audited_image() -> None:
    plan, members, _ = _plan("offline")
    assert not plan.member_in.any() and not plan.nonmember_in.any()
    for spec in plan.specs:
        assert not set(spec.train_index) & set(members.tolist())
        assert spec.test_index == ()
        assert 0.4 * 900 < len(spec.train_index) < 0.6 * 900  # a random half of the 900-image pool
    assert len({s.key for s in plan.specs}) == 4 and len({s.seed for s in plan.specs}) == 4


def test_online_references_see_about_half_of_the_audited_images() -> None:
    plan, members, nonmembers = _plan("online", count=8)
    # each audited image is IN for exactly half of the models
    assert (np.concatenate([plan.member_in, plan.nonmember_in], axis=1).sum(0) == 4).all()
    for r, spec in enumerate(plan.specs):  # the inclusion matrix says what each model trained on
        assert np.array_equal(plan.member_in[r], np.isin(members, spec.train_index))
        assert np.array_equal(plan.nonmember_in[r], np.isin(nonmembers, spec.test_index))


def test_cache_keys_follow_data_recipe_and_seed_only() -> None:
    a, _, _ = _plan()
    assert [s.key for s in a.specs] == [s.key for s in _plan()[0].specs]  # deterministic
    assert a.specs[0].key != _plan(seed=1)[0].specs[0].key
    assert a.specs[0].key != _plan(recipe=RECIPE.model_copy(update={"epochs": 2}))[0].specs[0].key
    # the target's time budget and seed are not part of a reference model's recipe
    other = RECIPE.model_copy(update={"time_budget_s": 60.0, "seed": 5})
    assert reference_recipe(other, 1, 7) == reference_recipe(RECIPE, 1, 7)


def test_estimate_counts_only_uncached_models(tmp_path: Path) -> None:
    plan, _, _ = _plan(count=2)
    full = estimate_seconds(plan, tmp_path, target_train_seconds=90.0, target_images=900, overhead_seconds=10.0)
    expected = sum(0.1 * len(s.train_index) + 10.0 for s in plan.specs)
    assert full == pytest.approx(expected)
    (tmp_path / plan.specs[0].key).mkdir()
    (tmp_path / plan.specs[0].key / "reference.json").write_text("{}")
    assert estimate_seconds(plan, tmp_path, 90.0, 900, 10.0) == pytest.approx(0.1 * len(plan.specs[1].train_index) + 10)


def test_a_reference_model_is_trained_once_then_read_from_the_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(160, 16, 16, 3), dtype=np.uint8)
    y = np.arange(160) % 2
    x[y == 1] //= 4  # dark images are class 1: learnable
    splits = Splits(x[:120], y[:120], x[120:140], y[120:140], x[140:], y[140:], ("light", "dark"))
    members, nonmembers = np.arange(0, 40), np.arange(0, 20)
    plan = plan_references(120, members, nonmembers, 1, "offline", 0, "digest", RECIPE)
    runtime = resolve_runtime("cpu", "fp32")
    first = train_reference(splits, plan.specs[0], RECIPE, runtime, members, nonmembers, tmp_path)
    assert not first.cached and first.epochs == 1 and first.images == len(plan.specs[0].train_index)
    second = train_reference(splits, plan.specs[0], RECIPE, runtime, members, nonmembers, tmp_path)
    assert second.cached and second.wall_seconds == 0.0
    with np.load(first.logits) as a, np.load(second.logits) as b:
        assert a["member_logits"].shape == (40, 2) and a["nonmember_logits"].shape == (20, 2)
        assert np.array_equal(a["member_logits"], b["member_logits"])
