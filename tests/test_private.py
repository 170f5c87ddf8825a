"""DP-SGD through `fit`: privacy spent, noise calibration, the final plan, checkpoints, resume."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auditflow.core.config import DPConfig, TrainConfig
from auditflow.core.data import Splits
from auditflow.core.errors import ModelError
from auditflow.models.evaluation.inference import predict
from auditflow.models.training import fit as training
from auditflow.models.training import loop
from auditflow.models.training.checkpoints import load_model, read_checkpoint, state_digest
from auditflow.models.training.fit import fit
from auditflow.models.training.presets import to_input
from auditflow.models.training.private import make_compatible, make_private, steps_per_epoch
from auditflow.models.training.registry import build_model, prepare_from_data
from auditflow.models.training.runtime import resolve_runtime

CPU = resolve_runtime("cpu", "fp32")


def dp_cfg(**kw) -> TrainConfig:
    # 32x32 images: at 16x16 fastnet's last group is 1x1, where GroupNorm outputs its bias only.
    # The gdp accountant calibrates in ~0.1 s here; prv (the default) and rdp take seconds.
    base = dict(
        model="fastnet",
        width=4,
        epochs=2,
        batch_size=12,
        lr=0.05,
        precision="fp32",
        device="cpu",
        val_subset=None,
        dp=DPConfig(epsilon=8.0, accountant="gdp"),
    )
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def splits() -> Splits:
    rng = np.random.default_rng(0)

    def part(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 3, n)
        images = rng.integers(0, 80, (n, 32, 32, 3)).astype(np.uint8)
        for i, label in enumerate(labels):  # a bright square whose corner depends on the class
            images[i, 8 * label : 8 * label + 12, 8 * label : 8 * label + 12] = 230
        return images, labels

    (tx, ty), (vx, vy), (sx, sy) = part(40), part(12), part(12)
    return Splits(tx, ty, vx, vy, sx, sy, ("a", "b", "c"))


@pytest.fixture(scope="module")
def dp_run(splits: Splits, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, training.FitResult]:
    cfg = dp_cfg()
    return cfg, fit(splits, cfg, CPU, checkpoint_dir=tmp_path_factory.mktemp("dp"))


@pytest.mark.slow
def test_dp_training_spends_at_most_its_epsilon(splits: Splits, dp_run) -> None:
    cfg, result = dp_run
    privacy = result.privacy
    assert 0 < privacy["epsilon"] <= privacy["epsilon_target"] == 8.0
    assert privacy["noise_multiplier"] > 0
    assert privacy["delta"] == pytest.approx(1 / (10 * len(splits.train_y)))
    n_steps = steps_per_epoch(len(splits.train_y), cfg.batch_size)
    assert n_steps == 4  # ceil(40 / 12): Opacus samples at rate 1/4
    assert privacy["sample_rate"] == pytest.approx(1 / n_steps)
    assert privacy["steps"] == n_steps * cfg.epochs == n_steps * len(result.history)
    assert (privacy["accountant"], privacy["max_grad_norm"]) == ("gdp", 1.0)
    assert privacy["epsilon"] > 0.5 * privacy["epsilon_target"]  # the run spends what it was calibrated to


def test_non_dp_runs_report_no_privacy(splits: Splits, tmp_path: Path) -> None:
    result = fit(splits, dp_cfg(dp=None, epochs=1), CPU, checkpoint_dir=tmp_path)
    assert result.privacy == {}
    model, _ = load_model(result.checkpoint)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.slow
def test_dp_checkpoint_loads_back_as_the_trained_groupnorm_model(splits: Splits, dp_run) -> None:
    cfg, result = dp_run
    payload = read_checkpoint(result.checkpoint)
    assert not any(key.startswith("_module.") for key in payload["state_dict"])
    assert payload["privacy"]["history"]  # the accountant, for a resume
    model, _ = load_model(result.checkpoint)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 6
    assert result.choice["kept"] == "raw" and state_digest(model.state_dict()) == result.state_digest
    # the trained module's final score: its logits, with the profile's TTA, on the validation split
    logits = torch.as_tensor(predict(model, splits.val_x, CPU, tta=cfg.tta, translate=cfg.tta_translate))
    loss = F.cross_entropy(logits, torch.as_tensor(splits.val_y)).item()
    assert loss == pytest.approx(result.final_val_loss, abs=1e-6)
    assert logits.std(0).max() > 0  # the logits depend on the image (a collapsed GroupNorm would not)


def test_a_larger_epsilon_needs_less_noise() -> None:
    noise = {}
    for epsilon in (2.0, 8.0):
        model = make_compatible(build_model("fastnet", 3, width=4))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        private = make_private(
            model, optimizer, DPConfig(epsilon=epsilon, accountant="gdp"), n=40, batch_size=12, epochs=2
        )
        assert private.report()["steps"] == 0 and private.report()["epsilon"] == 0.0
        noise[epsilon] = private.optimizer.noise_multiplier
    assert noise[2.0] > noise[8.0] > 0


@pytest.mark.slow
def test_the_plan_is_timed_with_dp_steps_and_never_replanned(splits: Splits, tmp_path: Path, monkeypatch) -> None:
    timed_with = []
    real_warm_up = training.warm_up

    def spy(model, base, optimizer, **kwargs):
        timed_with.append((type(model).__name__, type(optimizer).__name__, kwargs["timed_steps"]))
        return real_warm_up(model, base, optimizer, **kwargs)

    def no_replan(*args, **kwargs):
        raise AssertionError("a DP run re-planned: its noise was calibrated to the first plan")

    monkeypatch.setattr(training, "warm_up", spy)
    monkeypatch.setattr(training, "replan", no_replan)
    result = fit(splits, dp_cfg(epochs=2, time_budget_s=600.0), CPU, checkpoint_dir=tmp_path)
    assert timed_with == [("GradSampleModule", "DPOptimizer", training.TIMED_STEPS)]
    assert result.plan["epochs"] == 2 == len(result.history) and result.plan["step_seconds"] > 0
    assert result.plan["reason"].endswith("; final: DP-SGD's noise is calibrated to it")
    assert 0 < result.privacy["epsilon"] <= 8.0


@pytest.mark.slow
def test_an_interrupted_dp_run_resumes_with_its_accountant(splits: Splits, dp_run, tmp_path: Path) -> None:
    cfg, full = dp_run

    class Killed(Exception):
        pass

    def die_at_two(stats) -> None:
        if stats.epoch == 2:
            raise Killed

    with pytest.raises(Killed):  # dies before the epoch-2 save: resumes from epoch 1
        fit(splits, cfg, CPU, checkpoint_dir=tmp_path / "cut", on_epoch=die_at_two)
    resumed = fit(splits, cfg, CPU, checkpoint_dir=tmp_path / "cut")
    assert resumed.resumed_from_epoch == 1
    assert resumed.privacy == full.privacy  # every step counted once: same steps, same epsilon
    a, b = read_checkpoint(full.checkpoint), read_checkpoint(resumed.checkpoint)
    for key in a["state_dict"]:  # same Poisson batches and noise per epoch: the same run
        assert torch.allclose(a["state_dict"][key], b["state_dict"][key], atol=1e-6), key


def test_an_empty_poisson_batch_still_takes_a_noisy_step(splits: Splits) -> None:
    model = make_compatible(build_model("fastnet", 3, width=4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    private = make_private(model, optimizer, DPConfig(accountant="gdp"), n=40, batch_size=12, epochs=2)
    before = copy.deepcopy(model.state_dict())
    images = torch.as_tensor(splits.train_x)
    empty = torch.zeros(0, dtype=torch.long)
    loss, logits = loop._train_step(private.model, images[empty], empty, private.optimizer, dp_cfg(), CPU)
    assert loss.item() == 0.0 and logits.shape == (0, 3)
    assert private.report()["steps"] == 1  # the accountant counts it
    assert not torch.equal(model.state_dict()["1.head.weight"], before["1.head.weight"])  # noise only


def test_per_example_gradients_are_right_for_channels_last_activations(splits: Splits) -> None:
    """Opacus 1.6's Conv2d grad sampler reads channels_last activations wrongly (relative error
    ~1); `private` registers a fix. The uint8 -> float input is channels_last (a permute)."""
    from opacus import GradSampleModule

    model = make_compatible(build_model("fastnet", 3, width=4))
    x = to_input(splits.train_x[:6])
    prepare_from_data(model, x)
    assert not x.is_contiguous()
    y = torch.as_tensor(splits.train_y[:6])
    wrapped = GradSampleModule(copy.deepcopy(model))
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(wrapped(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), wrapped._module.parameters(), strict=True):
        if p.requires_grad:
            assert torch.allclose(q.grad_sample.mean(0), p.grad, atol=1e-6, rtol=1e-4), name


class Scaled(nn.Module):  # a trainable layer with a buffer, which per-example gradients cannot cover
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.register_buffer("count", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def test_a_layer_dp_sgd_cannot_train_is_named() -> None:
    with pytest.raises(ModelError) as err:
        make_compatible(nn.Sequential(nn.Conv2d(3, 4, 3), Scaled()))
    assert str(err.value) == (
        "the model cannot be trained with DP-SGD even after Opacus' fixes: "
        "1 (Scaled): a trainable layer with buffers, which per-example gradients leave out"
    )
