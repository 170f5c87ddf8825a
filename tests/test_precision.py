"""`train.precision: auto` on a CPU: chosen by timing a few steps in each precision (issue 21)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import ingest, make_splits
from auditflow.models.training import fit as fit_module
from auditflow.models.training import precision as precisions
from auditflow.models.training.precision import choose_precision
from auditflow.models.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


def test_the_faster_precision_wins_and_a_tie_or_no_timing_keeps_fp32() -> None:
    assert choose_precision({"fp32": 0.255, "bf16": 0.303}, batch_size=256).chosen == "fp32"  # Xeon, no AMX
    picked = choose_precision({"fp32": 0.30, "bf16": 0.18}, batch_size=256)
    assert picked.chosen == "bf16" and "fp32 300 ms, bf16 180 ms" in picked.reason and "batch 256" in picked.reason
    assert choose_precision({"fp32": 0.2, "bf16": 0.2}, batch_size=8).chosen == "fp32"
    assert choose_precision({"fp32": 0.2, "bf16": float("nan")}, batch_size=8).chosen == "fp32"
    assert choose_precision({"fp32": float("nan"), "bf16": 0.3}, batch_size=8).chosen == "bf16"
    runtime = resolve_runtime("cpu", "fp32")
    assert picked.runtime(runtime).autocast_dtype == torch.bfloat16 and picked.runtime(runtime).device == runtime.device


@pytest.fixture(scope="module")
def toy_splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    return make_splits(ingest(str(image_folder), DataConfig(), tmp_path_factory.mktemp("cache")), DataConfig())


def test_the_peak_is_measured_in_the_precision_training_kept() -> None:
    """`auto` starts as fp32 on a CPU and may train in bf16: the utilisation's peak must be a bf16
    one then (against an fp32 matmul, bf16 training read 110-172% of "peak")."""
    from auditflow.models.training.precision import trained_runtime

    first = resolve_runtime("cpu", "auto")
    assert first.autocast_dtype is None
    assert trained_runtime(first, {"chosen": "bf16", "seconds": {}, "reason": ""}).autocast_dtype == torch.bfloat16
    assert trained_runtime(first, {"chosen": "fp32"}) == first
    assert trained_runtime(first, {}) == first  # `precision` fixed by the config: nothing was chosen


@pytest.mark.parametrize(("fp32", "bf16", "chosen"), [(0.255, 0.303, "fp32"), (0.30, 0.18, "bf16")])
def test_auto_trains_in_the_precision_its_timings_chose(
    toy_splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fp32: float, bf16: float, chosen: str
) -> None:
    timed: list[dict] = []

    def fake_timings(model, optimizer, *, images, labels, cfg, runtime):
        timed.append({"batch": len(images), "compile": cfg.compile, "device": runtime.device.type})
        return {"fp32": fp32, "bf16": bf16}

    trained_in: list[torch.dtype | None] = []
    real_epoch = fit_module.train_one_epoch

    def spy(*args, runtime, **kwargs):
        trained_in.append(runtime.autocast_dtype)
        return real_epoch(*args, runtime=runtime, **kwargs)

    monkeypatch.setattr(precisions, "time_precisions", fake_timings)
    monkeypatch.setattr(fit_module, "train_one_epoch", spy)
    cfg = TrainConfig(width=8, epochs=2, batch_size=16, compile=False, precision="auto", device="cpu")
    result = fit_module.fit(toy_splits, cfg, resolve_runtime("cpu", "auto"), checkpoint_dir=tmp_path)
    assert timed == [{"batch": 16, "compile": False, "device": "cpu"}]  # timed once, on one training batch
    assert result.precision["chosen"] == chosen and result.precision["seconds"] == {"fp32": fp32, "bf16": bf16}
    assert trained_in == [torch.bfloat16 if chosen == "bf16" else None] * 2


def test_the_real_timing_restores_the_weights_and_times_both(toy_splits) -> None:
    from auditflow.models.training.registry import build_model

    model = build_model("fastnet", 3, width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(width=8, batch_size=8, compile=True)
    seconds = precisions.time_precisions(
        model,
        optimizer,
        images=torch.as_tensor(toy_splits.train_x[:8]),
        labels=torch.as_tensor(toy_splits.train_y[:8]),
        cfg=cfg,
        runtime=resolve_runtime("cpu", "fp32"),
    )
    assert set(seconds) == {"fp32", "bf16"} and all(0 < s < 30 for s in seconds.values())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert optimizer.state_dict()["state"] == {}


# ---------------------------------------------------------------------------- train.l1 (issue 21)
def _zero_share(model: torch.nn.Module) -> float:
    weights = [p for p in model.parameters() if p.ndim > 1]
    return sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)


def test_l1_zeroes_weights_that_l2_with_the_same_coefficient_only_shrinks(toy_splits, tmp_path: Path) -> None:
    from auditflow.models.training.checkpoints import load_model

    base = {"model": "tutorial_net", "epochs": 3, "batch_size": 16, "lr": 0.05, "compile": False}
    base |= {"precision": "fp32", "ema_decay": None, "schedule": "constant", "optimizer": "sgd"}
    shares = {}
    for name, extra in (("l1", {"l1": 0.2, "weight_decay": 0.0}), ("l2", {"l1": 0.0, "weight_decay": 0.2})):
        cfg = TrainConfig(**base, **extra)
        result = fit_module.fit(toy_splits, cfg, resolve_runtime("cpu", "fp32"), checkpoint_dir=tmp_path / name)
        shares[name] = _zero_share(load_model(result.checkpoint)[0])
    assert shares["l2"] == 0.0  # L2 shrinks every weight by a factor: none reaches zero
    assert shares["l1"] > 0.5, shares  # the proximal step zeroes most of the tutorial Net's weights
    assert TrainConfig().l1 == 0.0  # off by default


# ---------------------------------------------------------------------------- train.flip_mode (issue 21)
def test_alternating_flips_show_each_image_both_ways_every_two_epochs() -> None:
    from auditflow.models.training.presets import alternating_flips

    first, second, third = (alternating_flips(1000, seed=3, epoch=e) for e in (1, 2, 3))
    assert first.dtype == torch.bool and 400 < int(first.sum()) < 600  # a fair draw per image
    assert torch.equal(second, ~first) and torch.equal(third, first)  # inverted every other epoch
    assert torch.equal(alternating_flips(1000, seed=3, epoch=1), first)  # resumable: (seed, epoch) decide
    assert not torch.equal(alternating_flips(1000, seed=4, epoch=1), first)


def test_augment_flips_exactly_the_images_a_mask_names() -> None:
    from auditflow.models.training.presets import augment

    x = torch.rand(6, 3, 4, 4)
    mask = torch.tensor([True, False, False, True, True, False])
    out = augment(x, flip=mask, crop_padding=0)
    assert torch.equal(out[mask], x[mask].flip(3)) and torch.equal(out[~mask], x[~mask])


def test_fit_in_alternate_mode_gives_each_epoch_its_alternating_mask(
    toy_splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from auditflow.models.training.presets import alternating_flips

    seen: list[torch.Tensor | None] = []
    real = fit_module.train_one_epoch

    def spy(*args, **kwargs):
        seen.append(kwargs.get("flips"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_one_epoch", spy)
    base = {"model": "tutorial_net", "epochs": 3, "batch_size": 16, "compile": False, "precision": "fp32"}
    n = len(toy_splits.train_y)
    fit_module.fit(toy_splits, TrainConfig(**base, flip_mode="alternate", seed=5), CPU, checkpoint_dir=tmp_path / "a")
    assert [torch.equal(m, alternating_flips(n, seed=5, epoch=e)) for e, m in enumerate(seen, 1)] == [True] * 3
    seen.clear()
    fit_module.fit(toy_splits, TrainConfig(**base), CPU, checkpoint_dir=tmp_path / "r")
    assert seen == [None] * 3 and TrainConfig().flip_mode == "random"  # the default draws per batch


# ---------------------------------------------------------------------------- bench-train --against (issue 21)
def _bench_row(seed: int, accuracy: float, seconds: float = 100.0, epochs: int = 7, shipped: float | None = None):
    from auditflow.models.training.benchtrain import TrainBench

    return TrainBench(
        profile="quick", seed=seed, test_accuracy=accuracy,
        shipped_accuracy=accuracy - 0.01 if shipped is None else shipped,
        wall_seconds=seconds + 40, train_seconds=seconds,
        images_per_second=1000.0, flops_per_image=1e8, achieved_flops_per_second=1e11, fraction_of_peak=0.1,
        peak_source="test", time_to_target_seconds=None, epochs=epochs, plan="", val_seconds=5.0, kept_weights="ema",
    )  # fmt: skip


def test_the_gain_against_another_recipe_is_paired_by_seed() -> None:
    from auditflow.models.training.benchseeds import paired_gain

    new = (_bench_row(0, 0.84), _bench_row(1, 0.85, epochs=8), _bench_row(2, 0.83, shipped=0.80))
    old = (_bench_row(0, 0.83, 110.0), _bench_row(1, 0.845), _bench_row(2, 0.835, shipped=0.81))
    gain = paired_gain(new, old)
    # without TTA (the shipped file): 0.83, 0.84, 0.80 against 0.82, 0.835, 0.81
    assert gain.shipped_points_by_seed == pytest.approx((1.0, 0.5, -1.0))
    assert gain.shipped_ratio == pytest.approx(0.8233333 / 0.8216666, rel=1e-6)
    assert gain.accuracy_ratio == pytest.approx(0.84 / 0.8366666, rel=1e-6)
    assert gain.points == pytest.approx(0.3333333, rel=1e-5)
    assert gain.points_by_seed == pytest.approx((1.0, 0.5, -0.5))
    assert gain.epochs == pytest.approx((7.3333333, 7.0)) and gain.train_time_ratio == pytest.approx(100 / 103.333333)
    with pytest.raises(ValueError, match="paired seeds differ"):
        paired_gain(new, old[:2])


def test_the_against_recipe_is_the_profile_with_the_runs_and_then_the_against_overrides() -> None:
    from auditflow.models.training.benchseeds import against_config

    overrides = ["train.width=16", "train.flip_mode=alternate", "train.flip_mode=random"]
    cfg = against_config("quick", overrides, "train.flip_mode=random")
    assert cfg.train.width == 16 and cfg.train.flip_mode == "random"
    assert cfg.profile == "quick with train.flip_mode=random"  # its rows say which recipe they are


@pytest.mark.parametrize("equal_epochs", [False, True])
def test_equal_epochs_runs_the_against_recipe_for_each_seeds_epochs_of_the_profile(
    monkeypatch: pytest.MonkeyPatch, equal_epochs: bool
) -> None:
    """`bench-train --against ... --equal-epochs`: the compared recipe trains each seed for the
    epochs the budget gave the profile on that seed, with no budget of its own; without the
    flag it keeps its budget. The summary line says which."""
    from auditflow.core.config import load_config
    from auditflow.models.training import benchseeds

    trained: list[tuple[str, int, int, float | None]] = []
    budget_epochs = {0: 11, 1: 13}  # what the machine's speed gave the profile, seed by seed

    def fake_bench_train(snapshot, cfg, seed):
        trained.append((cfg.profile, seed, cfg.train.epochs, cfg.train.time_budget_s))
        return _bench_row(seed, 0.85, epochs=budget_epochs[seed] if cfg.train.time_budget_s else cfg.train.epochs)

    monkeypatch.setattr(benchseeds, "bench_train", fake_bench_train)
    cfg = load_config("quick")
    other = benchseeds.against_config("quick", ["train.identity_init=true"], "train.identity_init=true")
    result = benchseeds.bench_seeds(None, cfg, seeds=2, against=other, equal_epochs=equal_epochs)
    pinned = [
        ("quick with train.identity_init=true", 0, 11, None),
        ("quick with train.identity_init=true", 1, 13, None),
    ]
    cap = cfg.train.epochs  # the profile's most epochs, which the budget then cuts
    budgeted = [("quick with train.identity_init=true", s, cap, 420.0) for s in (0, 1)]
    assert trained[0::2] == [("quick", 0, cap, 420.0), ("quick", 1, cap, 420.0)]
    assert trained[1::2] == (pinned if equal_epochs else budgeted)
    assert result.vs_against.equal_epochs is equal_epochs
    assert result.vs_against.terms == (
        "same seeds, the profile's epochs" if equal_epochs else "same seeds, same budget"
    )


def test_equal_epochs_without_against_is_refused_before_any_work() -> None:
    from auditflow.core.errors import ConfigError
    from auditflow.models.training.benchseeds import check_seeds

    with pytest.raises(ConfigError, match="--equal-epochs needs --against KEY=VALUE"):
        check_seeds(3, equal_epochs=True, against=False)
    check_seeds(3, equal_epochs=True, against=True)
