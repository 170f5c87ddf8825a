"""Reference models of the privacy audit: which images each one sees, and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditflow.core.config import TrainConfig
from auditflow.core.data import Splits
from auditflow.models.references import estimate_seconds, plan_references, reference_recipe, train_reference
from auditflow.models.training.runtime import resolve_runtime

RECIPE = TrainConfig(
    model="fastnet", width=8, epochs=1, batch_size=16, lr=0.05, compile=False, precision="fp32", val_subset=None
)


def _plan(mode: str = "offline", count: int = 4, seed: int = 0, recipe: TrainConfig = RECIPE):
    members = np.arange(0, 400, 4)  # 100 of 1000 training images
    nonmembers = np.arange(0, 200, 2)  # 100 of 200 test images
    plan = plan_references(
        1000, members, nonmembers, count=count, mode=mode, seed=seed, data_digest="digest", recipe=recipe
    )
    return plan, members, nonmembers


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
    assert estimate_seconds(
        plan, tmp_path, target_train_seconds=90.0, target_images=900, overhead_seconds=10.0
    ) == pytest.approx(0.1 * len(plan.specs[1].train_index) + 10)


def test_a_reference_model_is_trained_once_then_read_from_the_cache(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(160, 16, 16, 3), dtype=np.uint8)
    y = np.arange(160) % 2
    x[y == 1] //= 4  # dark images are class 1: learnable
    splits = Splits(x[:120], y[:120], x[120:140], y[120:140], x[140:], y[140:], ("light", "dark"))
    members, nonmembers = np.arange(0, 40), np.arange(0, 20)
    plan = plan_references(
        120, members, nonmembers, count=1, mode="offline", seed=0, data_digest="digest", recipe=RECIPE
    )
    runtime = resolve_runtime("cpu", "fp32")
    first = train_reference(
        splits, plan.specs[0], RECIPE, runtime=runtime, members=members, nonmembers=nonmembers, cache=tmp_path
    )
    assert not first.cached and first.epochs == 1 and first.images == len(plan.specs[0].train_index)
    second = train_reference(
        splits, plan.specs[0], RECIPE, runtime=runtime, members=members, nonmembers=nonmembers, cache=tmp_path
    )
    assert second.cached and second.wall_seconds == 0.0
    with np.load(first.logits) as a, np.load(second.logits) as b:
        assert a["member_logits"].shape == (40, 2) and a["nonmember_logits"].shape == (20, 2)
        assert np.array_equal(a["member_logits"], b["member_logits"])


# ---------------------------------------------------------------- augmented queries


def test_query_views_are_the_plain_image_its_mirror_and_reflect_padded_shifts() -> None:
    import torch
    import torch.nn.functional as F

    from auditflow.models.evaluation.inference import QUERY_SHIFTS, predict, query_logits
    from auditflow.models.training.presets import to_input
    from auditflow.models.training.registry import build_model

    torch.manual_seed(0)
    model = build_model("fastnet", 3, width=8).eval()
    images = np.random.default_rng(1).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    runtime = resolve_runtime("cpu", "fp32")
    views = query_logits(model, images, runtime, queries=18, batch_size=2)
    assert views.shape == (18, 5, 3) and len(set(QUERY_SHIFTS)) == 9
    np.testing.assert_allclose(views[0], predict(model, images, runtime), atol=1e-5)
    np.testing.assert_allclose(views[1], predict(model, images[:, :, ::-1].copy(), runtime), atol=1e-5)
    padded = F.pad(to_input(images), (2, 2, 2, 2), mode="reflect")
    for i, (dy, dx) in enumerate(QUERY_SHIFTS):  # brute force: crop the padded image by hand
        crop = padded[..., 2 + dy : 34 + dy, 2 + dx : 34 + dx]
        with torch.no_grad():
            np.testing.assert_allclose(views[2 * i], model(crop).numpy(), atol=1e-5)
            np.testing.assert_allclose(views[2 * i + 1], model(crop.flip(3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(query_logits(model, images, runtime, queries=2), views[:2], atol=1e-5)
    assert query_logits(model, images, runtime, queries=1).shape == (1, 5, 3)
    with pytest.raises(ValueError, match=r"^queries must be 1, 2 or 18, got 3$"):
        query_logits(model, images, runtime, queries=3)


def test_attacks_average_their_scores_over_the_query_views(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from auditflow.audits.attacks import lira_scores, logit_margin, loss_scores, rmia_scores, true_class_log_prob
    from auditflow.audits.privacy_stage import run_attacks
    from auditflow.core.config import PrivacyConfig
    from auditflow.models.references import reference_logits

    rng = np.random.default_rng(2)
    q, n, k, refs = 2, 40, 3, 2
    labels = rng.integers(0, k, n)
    target = rng.normal(0, 2, (q, n, k)).astype(np.float32)
    ref = rng.normal(0, 2, (refs, q, n, k)).astype(np.float32)
    outcomes = []
    for r in range(refs):
        path = tmp_path / f"ref{r}.q2.npz"
        np.savez(path, member_query_logits=ref[r][:, :20], nonmember_query_logits=ref[r][:, 20:])
        outcomes.append(SimpleNamespace(key=f"r{r}", logits="", query_logits=str(path)))
    ref_in = np.zeros((refs, n), bool)
    cfg = PrivacyConfig(references=refs, queries=q)
    ref_logits = reference_logits(tuple(outcomes), q)  # type: ignore[arg-type]
    assert ref_logits.shape == (q, refs, n, k)
    scores = run_attacks(target, labels, n_members=20, ref_logits=ref_logits, ref_in=ref_in, cfg=cfg)
    population = np.arange(20, n)
    expect_rmia = np.mean(
        [
            rmia_scores(
                np.exp(true_class_log_prob(target[v], labels)),
                np.stack([np.exp(true_class_log_prob(ref[r, v], labels)) for r in range(refs)]),
                ref_in,
                population=population,
                a=cfg.rmia_offline_a,
                gamma=cfg.rmia_gamma,
            )
            for v in range(q)
        ],
        axis=0,
    )
    expect_lira = np.mean(
        [
            lira_scores(
                logit_margin(target[v], labels),
                np.stack([logit_margin(ref[r, v], labels) for r in range(refs)]),
                ref_in,
            )
            for v in range(q)
        ],
        axis=0,
    )
    np.testing.assert_allclose(scores["loss"], (loss_scores(target[0], labels) + loss_scores(target[1], labels)) / 2)
    np.testing.assert_allclose(scores["rmia"], expect_rmia)
    np.testing.assert_allclose(scores["lira"], expect_lira)
    outcomes[0].query_logits = None
    with pytest.raises(ValueError, match=r"^reference model r0 has no logits for 2 queries$"):
        reference_logits(tuple(outcomes), q)  # type: ignore[arg-type]


def test_cached_reference_models_score_new_query_views_once(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(160, 16, 16, 3), dtype=np.uint8)
    y = np.arange(160) % 2
    splits = Splits(x[:120], y[:120], x[120:140], y[120:140], x[140:], y[140:], ("a", "b"))
    members, nonmembers = np.arange(0, 40), np.arange(0, 20)
    spec = plan_references(
        120, members, nonmembers, count=1, mode="offline", seed=0, data_digest="digest", recipe=RECIPE
    ).specs[0]
    runtime = resolve_runtime("cpu", "fp32")
    first = train_reference(
        splits, spec, RECIPE, runtime=runtime, members=members, nonmembers=nonmembers, cache=tmp_path
    )
    assert first.query_logits is None  # one query: the plain logits only
    again = train_reference(
        splits, spec, RECIPE, runtime=runtime, members=members, nonmembers=nonmembers, cache=tmp_path, queries=2
    )
    assert again.cached and again.query_logits is not None
    with np.load(again.query_logits) as views, np.load(first.logits) as plain:
        assert views["member_query_logits"].shape == (2, 40, 2) and views["nonmember_query_logits"].shape == (2, 20, 2)
        np.testing.assert_allclose(views["member_query_logits"][0], plain["member_logits"], atol=1e-5)
    stamp = Path(again.query_logits).stat().st_mtime_ns
    third = train_reference(
        splits, spec, RECIPE, runtime=runtime, members=members, nonmembers=nonmembers, cache=tmp_path, queries=2
    )
    assert third.query_logits == again.query_logits and Path(third.query_logits).stat().st_mtime_ns == stamp
