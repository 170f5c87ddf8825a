"""Weight averaging (EMA) that cannot hurt: the decay warms up with the number of updates.

A fixed decay of 0.99 keeps 0.99**n of the random initialisation after n updates: after the
65 optimiser steps of a small dataset's whole run that is still half the average, and such a
model scores at chance while the raw weights score 98% (issue 7). The decay here follows
TensorFlow's `ExponentialMovingAverage(num_updates=...)`, as timm's `ModelEmaV2/V3` do with
their warm-up: `min(decay, (1 + n) / (10 + n))`, so early averages track the weights closely
and the long horizon only applies once the run is long enough to fill it.

BatchNorm statistics are averaged with the same decay as the weights (`use_buffers=True`), so
the averaged model carries statistics that match its averaged weights. `fit` validates the
raw and the averaged weights at the end and keeps the better one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def warmup_decay(decay: float, updates: int) -> float:
    """Decay applied at update number `updates` (0-based): `min(decay, (1 + n) / (10 + n))`."""
    return min(decay, (1 + updates) / (10 + updates))


class WarmupEMA:
    """The update rule of an `AveragedModel` with a warm-up decay, counting updates on the host.
    `every` > 1 averages every k optimiser steps with the decay raised to the k-th power, so
    the horizon in steps stays the same."""

    def __init__(self, decay: float, every: int = 1, updates: int = 0) -> None:
        self.decay = decay**every
        self.updates = updates  # averages taken so far, restored on resume


def make_ema(model: nn.Module, decay: float, every: int = 1) -> tuple[AveragedModel, WarmupEMA]:
    """An averaged copy of `model` (weights and BatchNorm buffers) and its update rule."""
    return AveragedModel(model, use_buffers=True), WarmupEMA(decay, every)


@torch.no_grad()
def update_ema(ema: AveragedModel, rule: WarmupEMA, model: nn.Module) -> None:
    """Fold `model`'s current weights and BatchNorm buffers into the average (the first call
    copies them); integer buffers (BatchNorm's `num_batches_tracked`) follow the model.

    Written out rather than calling `AveragedModel.update_parameters`, which reads its
    device-side update count (`n_averaged`) twice per call: on a GPU that is two host
    synchronisations per optimiser step, and the host can no longer queue the next step's
    kernels while the GPU runs this one. Here the count lives on the host (`rule.updates`).
    (On an H200 without CUDA graphs this saved nothing measurable: the host, launching ~190
    kernels a step, was never ahead of the GPU; NOTES.md, seventeenth session.)"""
    averaged = [*ema.module.parameters(), *ema.module.buffers()]
    current = [*model.parameters(), *model.buffers()]  # read under no_grad: no detach needed
    if rule.updates == 0:
        torch._foreach_copy_(averaged, current)
    else:
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        counts = [(a, c) for a, c in zip(averaged, current, strict=True) if not a.is_floating_point()]
        weight = 1.0 - warmup_decay(rule.decay, rule.updates)
        torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        if counts:
            torch._foreach_copy_([a for a, _ in counts], [c for _, c in counts])
    ema.n_averaged += 1  # on the device, unread: kept equal to `rule.updates` for AveragedModel's own users
    rule.updates += 1
