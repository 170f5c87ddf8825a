"""One training epoch and its steps: shard, augment, forward, backward, optimiser step, EMA.

`warm_up` runs throwaway steps before the training clock starts (torch.compile, and the
timing that the time budget plans with) and restores every piece of state afterwards.
"""

from __future__ import annotations

import copy
import logging
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from auditflow.core.config import TrainConfig
from auditflow.models.training.averaging import WarmupEMA, update_ema
from auditflow.models.training.presets import augment, downscale, draw_augmentation, to_input
from auditflow.models.training.runtime import Runtime
from auditflow.models.training.transfer import distillation_loss

log = logging.getLogger(__name__)


def epoch_batches(order: torch.Tensor, batch_size: int, drop_last: bool) -> list[torch.Tensor]:
    """This process's batches of one epoch's permutation: every rank gets the same count."""
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_initialized() else (1, 0)
    per_rank = len(order) // world
    mine = order[rank * per_rank : (rank + 1) * per_rank]
    batches = list(mine.split(batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    ema: tuple[AveragedModel, WarmupEMA] | None = None,
    teacher: nn.Module | None = None,
    batches: list[torch.Tensor] | None = None,
    flips: torch.Tensor | None = None,
    size: int | None = None,
) -> tuple[float, float, float, int]:
    """One pass over uint8 `images` (N x H x W x 3, on the device).

    `batches`: index batches to train on instead of this epoch's seeded permutation (DP-SGD's
    Poisson-sampled batches, whose sizes vary and may be zero).
    `flips`: which images this epoch flips (`presets.alternating_flips`); None = as `cfg.flip`.
    `size`: train on batches downscaled to this side (`train.progressive_scale`); None = as stored.

    Returns (mean loss, accuracy on the augmented batches, seconds, images seen by this process).
    """
    model.train()
    if batches is None:
        order = torch.randperm(len(images), generator=generator).to(images.device)
        batches = epoch_batches(order, cfg.batch_size, cfg.drop_last)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device)
    seen = 0
    start = time.perf_counter()
    # Nothing in the loop reads a device value on the host, so the host can queue steps ahead
    # of a GPU (tests/test_gpu.py counts the synchronisations).
    masks, shifts = draw_augmentation(
        [len(idx) for idx in batches],
        flip=cfg.flip and flips is None,
        crop_padding=cfg.crop_padding,
        generator=generator,
        device=images.device,
    )
    for step, idx in enumerate(batches):
        y, n = labels[idx], len(idx)
        if flips is not None:  # alternating flips: a mask per image of the training split
            flip = flips[idx]
        else:
            flip = masks[seen : seen + n] if masks is not None else False
        shift = shifts[seen : seen + n] if shifts is not None else None
        loss, logits = _train_step(
            model, images[idx], y, optimizer, cfg, runtime, teacher=teacher, flip=flip, size=size, shift=shift
        )
        scheduler.step()
        if ema is not None and (step + 1) % cfg.ema_every == 0:
            update_ema(ema[0], ema[1], _unwrap(model))
        loss_sum += loss.detach() * n
        correct += (logits.argmax(1) == y).sum()
        seen += n
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1), seconds, seen


def _train_step(
    model: nn.Module,
    images: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator | None = None,
    teacher: nn.Module | None = None,
    flip: bool | torch.Tensor | None = None,
    size: int | None = None,
    shift: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment, forward, backward, optimiser step; returns (loss, logits) still on the device.
    `flip`: which images of the batch to flip (a mask, or False); None = as `cfg.flip`. `shift`:
    the batch's crop offsets (`draw_augmentation`); None = drawn from `generator`. `size`:
    downscale the augmented batch to this side first (progressive resizing); None = as stored."""
    flip_as = flip if flip is not None else cfg.flip
    x = augment(
        to_input(images, runtime.device), flip=flip_as, crop_padding=cfg.crop_padding, generator=generator, shift=shift
    )
    if size is not None and x.shape[-1] != size:
        x = downscale(x, size)
    if runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with runtime.autocast():
        logits = model(x)
        if len(y):
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        else:  # an empty Poisson batch (DP-SGD): no gradient, but the step still adds its noise
            loss = logits.float().sum() * 0.0
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(x).float()
            kd = distillation_loss(logits.float(), soft, cfg.distill_temperature)
            loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if cfg.l1:
        shrink(optimizer, cfg.l1)
    return loss, logits


@torch.no_grad()
def shrink(optimizer: torch.optim.Optimizer, l1: float) -> None:
    """The proximal step of an L1 penalty `l1 * sum |w|` (ISTA, Beck & Teboulle 2009) on the
    parameter groups marked `l1` (conv/linear weights): w <- sign(w) max(|w| - lr l1, 0), which
    sets weights exactly to zero, where the penalty's subgradient added to the loss would leave
    them oscillating around it. Hand-written: PyTorch's optimisers offer L2 only."""
    for group in optimizer.param_groups:
        if group.get("l1"):
            threshold = group["lr"] * l1
            for p in group["params"]:
                p.copy_(p.sign() * (p.abs() - threshold).clamp_(min=0))


def warm_up(
    model: nn.Module,
    base: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    runtime: Runtime,
    timed_steps: int = 0,
    low_size: int | None = None,
) -> tuple[nn.Module, float, float, float]:
    """Before the training clock starts: `torch.compile` the model when configured (two
    throwaway steps compile it, as the speed records time it; with `cuda_graphs` on a GPU they
    also record the step's CUDA graphs), then time `timed_steps` more
    optimiser steps for the time budget. With `low_size` (progressive resizing) the same
    again on batches downscaled to that side: the compiled graph is specialised to each of
    the two shapes, and the budget plans with both step times. Weights, BatchNorm
    statistics, gradients and the optimiser state are restored afterwards.

    Returns (model to train, compile seconds, seconds per optimiser step, the same at
    `low_size`; nan where not timed). If compilation fails (no C compiler, unsupported op),
    logs why and trains eagerly."""
    initial_model = copy.deepcopy(base.state_dict())
    initial_optim = copy.deepcopy(optimizer.state_dict())
    idx = torch.arange(min(cfg.batch_size, len(images)), device=images.device)
    sizes = (None,) if low_size is None else (None, low_size)
    compile_seconds, step_seconds = 0.0, {size: float("nan") for size in sizes}

    def steps(net: nn.Module, count: int, size: int | None) -> None:
        for _ in range(count):
            _train_step(net, images[idx], labels[idx], optimizer, cfg, runtime, size=size)

    try:
        if cfg.compile:
            compiled = torch.compile(model, **compile_options(cfg, runtime, two_sizes=low_size is not None))
            start = time.perf_counter()
            try:
                for size in sizes:
                    steps(compiled, 2, size)
                model = compiled
            except Exception as err:  # inductor raises many types; eager training still works
                if dist.is_initialized():
                    raise  # a half-run collective would leave the other ranks waiting
                log.warning("torch.compile failed (%s: %s); training eagerly", type(err).__name__, err)
            _sync(runtime)
            compile_seconds = time.perf_counter() - start
        for size in sizes if timed_steps else ():
            steps(model, 1, size)  # eager: first-call costs
            _sync(runtime)
            start = time.perf_counter()
            steps(model, timed_steps, size)
            _sync(runtime)
            step_seconds[size] = (time.perf_counter() - start) / timed_steps
    finally:
        base.load_state_dict(initial_model)
        optimizer.load_state_dict(initial_optim)
        base.zero_grad(set_to_none=True)
    return model, compile_seconds, step_seconds[None], step_seconds.get(low_size, float("nan"))


def compile_options(cfg: TrainConfig, runtime: Runtime, *, two_sizes: bool) -> dict[str, object]:
    """`torch.compile`'s options for training: a graph per input shape when two sizes train
    (progressive resizing: not one graph generic in shape); CUDA graphs recorded in the warm-up
    and replayed each step with `train.cuda_graphs` on a GPU (on an H200 the `full` profile's 16
    epochs trained in 5.5 s instead of 9.4 s, the host's kernel launches gone; NOTES.md)."""
    options: dict[str, object] = {}
    if two_sizes:
        options["dynamic"] = False
    if cfg.cuda_graphs and runtime.device.type == "cuda":
        if dist.is_initialized():
            log.info("train.cuda_graphs: off under DistributedDataParallel (never measured there)")
        else:
            options["mode"] = "reduce-overhead"
    return options


def _sync(runtime: Runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel, torch.compile and Opacus wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        elif hasattr(model, "_module"):  # Opacus' GradSampleModule (DP-SGD); not imported here: slow
            model = model._module  # type: ignore[assignment]
        else:
            return model
