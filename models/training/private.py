"""Differentially private training (DP-SGD with Opacus): the only module that imports Opacus.

`fit` uses it in run order:

1. `make_compatible`: BatchNorm -> GroupNorm (`ModuleValidator.fix`), checked strictly. The
   registry builds every model of a DP config through it, in training and in `load_model`, so a
   DP checkpoint (plain state dict, no `_module.` prefixes) loads into the same architecture.
2. `timing_steps`: the time budget is planned from timed DP steps (per-example gradients cost
   several plain steps), taken with a placeholder noise multiplier; the hooks go afterwards.
3. `make_private`: `PrivacyEngine.make_private_with_epsilon` with the planned epochs. The noise
   is calibrated to the whole run, so that plan is final: `fit` does not re-plan a DP run
   after its first epoch (more epochs would spend more than `dp.epsilon`, fewer would have
   trained with more noise than needed). Our loop keeps its uint8 tensors on the device:
   Opacus gets a loader over the indices 0..N-1, and the Poisson-sampled index batches of the
   DP loader it returns pick the images.
4. `PrivateTraining.report`: epsilon spent, delta, noise multiplier, ... for `FitResult.privacy`.

Resuming: the accountant's history travels in the checkpoint (`state_dict`), and the noise
multiplier is recalibrated from the same config and saved plan (the same value), so a resumed
run counts every step once. Each epoch's Poisson batches come from a generator seeded per
epoch, so a resumed epoch draws the batches the uninterrupted run would have drawn.

The noise and the sampling come from torch's seeded PRNG (Opacus' `secure_mode` off): right for
experiments and privacy audits; a release that must resist floating-point attacks on the noise
needs `secure_mode` (torchcsprng).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.grad_sample import register_grad_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.optimizers import DPOptimizer
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from opacus.validators.errors import UnsupportedModuleError
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from auditflow.core.config import DPConfig
from auditflow.core.errors import ModelError

log = logging.getLogger(__name__)

PLACEHOLDER_NOISE = 1.0  # timing steps only: a step costs the same whatever the noise
SAMPLER_SEED = 1_000_003  # keeps the Poisson draws apart from the augmentation stream of the same epoch seed


@register_grad_sampler(nn.Conv2d)
def _conv2d_grad_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Opacus' Conv2d per-example gradients, on NCHW-contiguous activations. Its `unfold2d`
    builds an `as_strided` view that assumes that layout, and channels_last activations (the
    permuted uint8 -> float input when no random crop copies it, or a channels_last model on
    CUDA) silently give wrong gradients: relative error ~1 in opacus 1.6 with torch 2.14.
    Registered on import, through Opacus' extension point, for every GradSampleModule."""
    return compute_conv_grad_sample(layer, [a.contiguous() for a in activations], backprops)


def _unsupported(model: nn.Module) -> list[str]:
    """'layer (Type): why' for each layer DP-SGD cannot train: Opacus' own checks, with the
    layer names its messages leave out."""
    found = []
    for name, module in trainable_modules(model):
        kind = type(module).__name__
        found += [
            f"{name} ({kind}): {str(err).split('. ')[0]}"
            for err in ModuleValidator.VALIDATORS.get(type(module), lambda _: [])(module)
        ]
        if any(True for _ in module.buffers()):  # GradSampleModule.validate's check
            found.append(f"{name} ({kind}): a trainable layer with buffers, which per-example gradients leave out")
    return found


def make_compatible(model: nn.Module) -> nn.Module:
    """A copy of `model` that DP-SGD can train: BatchNorm becomes GroupNorm (Opacus' fixers);
    `ModelError` naming each layer that still cannot be trained with per-example gradients."""
    fixed = ModuleValidator.fix(model)
    try:
        ModuleValidator.validate(fixed, strict=True)
        GradSampleModule.validate(fixed, strict=True)
    except (UnsupportedModuleError, NotImplementedError) as err:
        problems = "; ".join(_unsupported(fixed)) or str(err)
        raise ModelError(f"the model cannot be trained with DP-SGD even after Opacus' fixes: {problems}") from err
    return fixed


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimiser steps of one DP epoch: Opacus samples at rate 1 / ceil(N / batch_size) and
    takes ceil(N / batch_size) Poisson batches, of `batch_size` images on average."""
    return len(DataLoader(TensorDataset(torch.arange(n)), batch_size=batch_size))


@contextlib.contextmanager
def timing_steps(
    base: nn.Module, optimizer: torch.optim.Optimizer, *, max_grad_norm: float, batch_size: int
) -> Iterator[tuple[nn.Module, torch.optim.Optimizer]]:
    """`base` and `optimizer` taking DP-SGD steps (per-example gradients, clipping, noise with a
    placeholder multiplier) for the timed warm-up that plans the time budget. No accountant:
    `warm_up` restores the weights, so these steps release nothing. Hooks removed on exit."""
    model = GradSampleModule(base)
    try:
        yield (
            model,
            DPOptimizer(
                optimizer,
                noise_multiplier=PLACEHOLDER_NOISE,
                max_grad_norm=max_grad_norm,
                expected_batch_size=batch_size,
            ),
        )
    finally:
        model.cleanup()


@dataclass
class PrivateTraining:
    """What DP-SGD adds to one `fit`: the wrapped model and optimiser, the Poisson sampler over
    image indices, the accountant."""

    model: nn.Module  # GradSampleModule around the plain module (which checkpoints and validation use)
    optimizer: DPOptimizer  # clips per-example gradients, adds the noise, steps the configured optimiser
    engine: PrivacyEngine  # holds the accountant
    loader: DataLoader  # Opacus' DPDataLoader over indices 0..N-1
    generator: torch.Generator  # the loader's sampling generator, reseeded every epoch
    dp: DPConfig
    delta: float  # dp.delta, or 1 / (10 N)

    def epoch_batches(self, seed: int, device: torch.device) -> list[torch.Tensor]:
        """One epoch of Poisson-sampled index batches (int64, on `device`): each image joins a
        batch with probability `sample_rate`, so sizes vary around `batch_size` and a batch may
        be empty (the step then adds noise only). Drawn from `seed`."""
        self.generator.manual_seed(seed + SAMPLER_SEED)
        return [idx.to(device) for (idx,) in self.loader]

    def state_dict(self) -> dict[str, Any]:
        """The accountant's history (noise multiplier, sample rate, steps) for the checkpoint."""
        return dict(self.engine.accountant.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.accountant.load_state_dict(state)

    def report(self) -> dict[str, Any]:
        """The privacy of the steps taken so far:

        - `epsilon`: spent, from the accountant at `delta` (lower = more private; at most
          `epsilon_target` once the planned epochs have run); 0 before the first step
        - `epsilon_target`, `delta`: the (epsilon, delta) the noise was calibrated to
        - `noise_multiplier`: noise std / `max_grad_norm` (the per-example clipping norm, L2)
        - `sample_rate`: probability that an image joins a batch; `steps`: optimiser steps
        - `accountant`: "prv", "rdp" or "gdp"
        """
        history = self.engine.accountant.history
        return {
            "epsilon": float(self.engine.get_epsilon(self.delta)) if history else 0.0,
            "epsilon_target": self.dp.epsilon,
            "delta": self.delta,
            "noise_multiplier": float(self.optimizer.noise_multiplier),
            "sample_rate": float(self.loader.sample_rate),  # type: ignore[attr-defined]
            "steps": sum(steps for *_, steps in history),
            "max_grad_norm": self.dp.max_grad_norm,
            "accountant": self.dp.accountant,
        }


def make_private(
    base: nn.Module, optimizer: torch.optim.Optimizer, dp: DPConfig, *, n: int, batch_size: int, epochs: int
) -> PrivateTraining:
    """Wrap `base` (already `make_compatible`) and `optimizer` for DP-SGD over `n` training
    images, with the noise calibrated so that `epochs` epochs are (dp.epsilon, delta)-DP."""
    delta = dp.delta if dp.delta is not None else 1 / (10 * n)
    base.train()  # Opacus validates the module in training mode; a validation pass left it in eval
    generator = torch.Generator()
    indices = DataLoader(TensorDataset(torch.arange(n)), batch_size=batch_size, generator=generator)
    # Opacus calibrates for int(epochs / sample_rate) steps, which float rounding can put one
    # below the epochs x len(indices) steps that run (3 / (1 / 75) = 224.99...): half a step
    # more makes the count exact.
    planned = epochs + 0.5 / len(indices)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")  # see the module docstring
        engine = PrivacyEngine(accountant=dp.accountant)
    try:
        model, dp_optimizer, loader = engine.make_private_with_epsilon(
            module=base,
            optimizer=optimizer,
            data_loader=indices,
            target_epsilon=dp.epsilon,
            target_delta=delta,
            epochs=planned,  # type: ignore[arg-type]
            max_grad_norm=dp.max_grad_norm,
        )
    except ValueError as err:  # the noise search fails ("privacy budget is too low", gdp's root bracket)
        raise ModelError(
            f"cannot calibrate DP-SGD noise for dp.epsilon={dp.epsilon}, delta={delta:.3g}, "
            f"dp.accountant={dp.accountant!r} over {epochs} epochs of {len(indices)} steps: {err}; "
            "raise dp.epsilon, or use dp.accountant 'prv' or 'rdp'"
        ) from err
    private = PrivateTraining(model, dp_optimizer, engine, loader, generator, dp, delta)
    log.info(
        "DP-SGD: noise multiplier %.3f for epsilon %.2f at delta %.3g over %d epochs x %d steps "
        "(sample rate %.4f, clipping norm %.2f, %s accountant; seeded PRNG, not secure_mode)",
        dp_optimizer.noise_multiplier,
        dp.epsilon,
        delta,
        epochs,
        len(indices),
        1 / len(indices),
        dp.max_grad_norm,
        dp.accountant,
    )
    return private
