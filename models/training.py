"""The training loop: `fit` = `train_one_epoch` + validation + checkpoints; `predict` for logits.

Checkpoints are plain dicts (weights, config, epoch, optimiser state) written atomically, so
a killed run can continue from its last epoch. Every epoch's shuffling and augmentation are
seeded from (seed, epoch), which makes a resumed run follow the same path as an uninterrupted
one.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from auditflow.config import TrainConfig
from auditflow.data import Splits
from auditflow.errors import ModelError
from models.presets import augment, to_input
from models.registry import build_model, prepare_from_data
from models.runtime import Runtime
from models.speed import train_flops_per_image

log = logging.getLogger(__name__)

OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(
        groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0
    ),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr),
    "rmsprop": lambda groups, c: torch.optim.RMSprop(groups, lr=c.lr, momentum=c.momentum),
}


def _schedule(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """LR multiplier per optimiser step."""
    warmup = max(1, int(cfg.warmup_fraction * total_steps))

    def constant(step: int) -> float:
        return 1.0

    def cosine(step: int) -> float:  # linear warm-up, then cosine from the peak down to zero
        if cfg.warmup_fraction == 0:
            return 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    def onecycle(step: int) -> float:  # linear up to the peak, then linearly down to zero
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return {"constant": constant, "cosine": cosine, "onecycle": onecycle}[cfg.schedule]


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only, not on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float  # mean training loss (smoothed CE, plus the distillation term if any); rank 0's shard
    train_accuracy: float  # on augmented batches, 0..1; rank 0's shard under DDP
    val_loss: float  # plain cross-entropy; nan without a validation split
    val_accuracy: float  # 0..1; nan without a validation split
    lr: float  # learning rate at the end of the epoch
    seconds: float  # wall time of the training pass (validation excluded)
    images_per_second: float  # training throughput


@dataclass(frozen=True)
class FitResult:
    checkpoint: Path
    history: tuple[EpochStats, ...]
    train_seconds: float  # sum of training passes (validation and checkpoints excluded)
    images_per_second: float  # training images processed per second of train_seconds
    parameters: int  # trainable and frozen parameters of the model
    resumed_from_epoch: int  # 0 = fresh start
    flops_per_image: float  # forward + backward FLOPs of one training image
    time_to_target: float | None  # training seconds until val accuracy first reached the target
    state_digest: str  # sha256 of the final weights (equal on every data-parallel rank)
    compile_seconds: float = 0.0  # torch.compile + warm-up, before the training clock starts


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_payload(
    model: nn.Module, cfg: TrainConfig, classes: tuple[str, ...], epoch: int, **extra: Any
) -> dict[str, Any]:
    return {
        "format": 1,
        "state_dict": model.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "classes": list(classes),
        "epoch": epoch,
        **extra,
    }


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Model in eval mode from a checkpoint (the EMA weights when they exist), plus the payload."""
    try:
        payload = torch.load(checkpoint, map_location=device, weights_only=False)
        cfg = TrainConfig.model_validate(payload["config"])
        classes = payload["classes"]
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ModelError(f"cannot read checkpoint {checkpoint}: {err}") from err
    except (KeyError, TypeError, ValueError) as err:  # ValidationError is a ValueError
        raise ModelError(f"{checkpoint} is not an auditflow checkpoint (no valid config/classes): {err}") from err
    model = build_model(cfg.model, len(classes), cfg.width, cfg.dropout)
    try:
        model.load_state_dict(payload.get("ema_state_dict") or payload["state_dict"])
    except RuntimeError as err:
        raise ModelError(f"checkpoint {checkpoint} does not fit model {cfg.model!r}: {err}") from err
    return model.to(device).eval(), payload


def _flip_average(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).float() + model(x.flip(3)).float())


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, runtime: Runtime, batch_size: int = 1000, tta: bool = False,
    translate: int = 0,
) -> np.ndarray:
    """Logits (float32, N x classes) of uint8 N x H x W x 3 images.

    `tta` averages each image with its mirror; `translate` > 0 also averages in two shifted
    copies (up-left and down-right by that many pixels, reflect-padded), weighted as in
    airbench: 0.5 original + 0.25 each shift.
    """
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size], runtime.device)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            if not tta:
                logits = model(x).float()
            elif translate == 0:
                logits = _flip_average(model, x)
            else:
                t, (h, w) = translate, x.shape[-2:]
                padded = F.pad(x, (t, t, t, t), mode="reflect")
                shifted = [padded[..., : h, : w], padded[..., 2 * t : 2 * t + h, 2 * t : 2 * t + w]]
                logits = 0.5 * _flip_average(model, x) + 0.25 * sum(_flip_average(model, v) for v in shifted)
        out.append(logits.cpu())  # sync point
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): KL(teacher || student) on temperature-softened logits, scaled by
    T^2 so its gradients keep their size as T changes."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean",
                    log_target=True) * t * t


def _shard(order: torch.Tensor, batch_size: int, drop_last: bool) -> list[torch.Tensor]:
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
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    runtime: Runtime,
    generator: torch.Generator,
    ema: AveragedModel | None = None,
    teacher: nn.Module | None = None,
) -> tuple[float, float, float, int]:
    """One pass over uint8 `images` (N x H x W x 3, on the device).

    Returns (mean loss, accuracy on the augmented batches, seconds, images seen by this process).
    """
    model.train()
    order = torch.randperm(len(images), generator=generator).to(images.device)
    batches = _shard(order, cfg.batch_size, cfg.drop_last)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device)
    seen = 0
    start = time.perf_counter()
    for idx in batches:
        x = augment(to_input(images[idx], runtime.device), flip=cfg.flip, crop_padding=cfg.crop_padding,
                    generator=generator)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        with runtime.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    soft = teacher(x).float()
                kd = distillation_loss(logits.float(), soft, cfg.distill_temperature)
                loss = (1 - cfg.distill_alpha) * loss + cfg.distill_alpha * kd
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(_unwrap(model))
        # Accumulate on the device; reading .item() per step would sync every batch.
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
        seen += len(idx)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1), seconds, seen


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DistributedDataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def compile_with_warmup(
    model: nn.Module, base: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, runtime: Runtime
) -> tuple[nn.Module, float]:
    """torch.compile `model` and run two throwaway training steps so compilation happens
    before the clock starts (as the speed records time it); the weights, BN statistics and
    gradients are restored afterwards. Returns (model to train, compile seconds). If
    compilation fails (no C compiler, unsupported op), logs why and returns the eager model."""
    initial = copy.deepcopy(base.state_dict())
    compiled = torch.compile(model)
    start = time.perf_counter()
    try:
        idx = torch.arange(min(cfg.batch_size, len(images)), device=images.device)
        for _ in range(2):
            x = augment(to_input(images[idx], runtime.device), flip=cfg.flip, crop_padding=cfg.crop_padding)
            if runtime.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                loss = F.cross_entropy(compiled(x).float(), labels[idx])
            loss.backward()
    except Exception as err:  # inductor raises many types; eager training still works
        if dist.is_initialized():
            raise  # a half-run collective would leave the other ranks waiting
        log.warning("torch.compile failed (%s: %s); training eagerly", type(err).__name__, err)
        compiled, start = model, time.perf_counter()
    finally:
        base.load_state_dict(initial)
        base.zero_grad(set_to_none=True)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return compiled, time.perf_counter() - start


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of `state` whose name and shape fit `model`; returns the names left
    at their fresh initialisation (e.g. the classifier when the classes differ)."""
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return sorted(k for k in own if k not in fitting)


def fit(
    splits: Splits,
    cfg: TrainConfig,
    runtime: Runtime,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[EpochStats], None] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
) -> FitResult:
    """Train `cfg.model` on `splits.train_*`, validating on `splits.val_*` after each epoch.

    - `init_state`: weights to fine-tune from (tensors whose shapes differ start fresh).
    - `teacher`: a model on the same classes whose softened logits are distilled.
    - Under `torch.distributed` (torchrun), wraps the model in DistributedDataParallel and
      gives each process its shard of every epoch; only rank 0 writes checkpoints and calls
      `on_epoch`.

    Writes `checkpoint_dir/last.pt` every `cfg.checkpoint_every` epochs and at the end; when
    `last.pt` already holds an unfinished run of the same config, training continues from it.
    """
    checkpoint = Path(checkpoint_dir) / "last.pt"
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(splits.classes), cfg.width, cfg.dropout)
    if len(splits.train_y) == 0:
        raise ModelError(f"the training split is empty; nothing to train {cfg.model!r} on")
    fresh = load_matching(model, init_state) if init_state is not None else list(model.state_dict())
    if any("whiten" in name for name in fresh):
        # a seeded random sample: snapshots are stored class by class
        sample = np.sort(np.random.default_rng(cfg.seed).permutation(len(splits.train_y))[:5000])
        prepare_from_data(model, to_input(splits.train_x[sample]))
    elif init_state is not None:
        log.info("fine-tuning: %d tensors start fresh: %s", len(fresh), fresh)
    flops = train_flops_per_image(model, splits.train_x.shape[1:], len(splits.classes))
    model = runtime.prepare(model)
    base = model
    optimizer = OPTIMIZERS[cfg.optimizer](_param_groups(model, cfg.weight_decay), cfg)
    world = dist.get_world_size() if dist.is_initialized() else 1
    steps_per_epoch = len(_shard(torch.arange(len(splits.train_y)), cfg.batch_size, cfg.drop_last))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, steps_per_epoch * cfg.epochs))
    ema = (
        AveragedModel(base, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay
        else None
    )

    history: list[EpochStats] = []
    start_epoch = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=runtime.device, weights_only=False)
        if state.get("config") == cfg.model_dump(mode="json") and state.get("epoch", 0) <= cfg.epochs:
            base.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None and state.get("ema_state_dict"):
                ema.module.load_state_dict(state["ema_state_dict"])
                ema.n_averaged.fill_(state["ema_n_averaged"])
            start_epoch = state["epoch"]
            history = [EpochStats(**h) for h in state.get("history", [])]
            log.info("resuming from %s at epoch %d/%d", checkpoint, start_epoch, cfg.epochs)  # == epochs: done

    if world > 1:
        model = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    if teacher is not None:
        teacher = runtime.prepare(teacher).eval()
    train_x = torch.as_tensor(np.asarray(splits.train_x)).to(runtime.device)
    train_y = torch.as_tensor(splits.train_y).to(runtime.device)
    compile_seconds = 0.0
    if cfg.compile:
        model, compile_seconds = compile_with_warmup(model, base, train_x, train_y, cfg, runtime)
        log.info("compiled in %.1f s (not counted as training time)", compile_seconds)
    val_y = torch.as_tensor(splits.val_y)
    eval_model = ema.module if ema is not None else base
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        torch.manual_seed(cfg.seed * 100_003 + epoch + 7919 * rank)  # dropout, per epoch: resumable
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # same permutation on every rank
        loss, acc, seconds, seen = train_one_epoch(
            model, train_x, train_y, optimizer, scheduler, cfg, runtime, generator, ema, teacher
        )
        if world > 1:  # BN running stats stay local after the last step: take rank 0's everywhere
            for buffer in base.buffers():
                dist.broadcast(buffer, 0)
        if len(val_y):
            logits = torch.as_tensor(predict(eval_model, splits.val_x, runtime, tta=cfg.tta, translate=cfg.tta_translate))
            val_loss = F.cross_entropy(logits, val_y).item()
            val_acc = (logits.argmax(1) == val_y).float().mean().item()
        else:
            val_loss = val_acc = float("nan")
        stats = EpochStats(
            epoch=epoch, train_loss=loss, train_accuracy=acc, val_loss=val_loss, val_accuracy=val_acc,
            lr=scheduler.get_last_lr()[0], seconds=seconds, images_per_second=seen * world / seconds,
        )
        history.append(stats)
        if rank != 0:
            continue
        log.info(
            "epoch %d/%d  loss %.4f  train acc %.4f  val acc %.4f  %.1fs (%.0f img/s)",
            epoch, cfg.epochs, loss, acc, val_acc, seconds, stats.images_per_second,
        )
        if on_epoch is not None:
            on_epoch(stats)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            extra: dict[str, Any] = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "history": [h.__dict__ for h in history],
            }
            if ema is not None:
                extra["ema_state_dict"] = ema.module.state_dict()
                extra["ema_n_averaged"] = int(ema.n_averaged.item())
            save_checkpoint(checkpoint_payload(base, cfg, splits.classes, epoch, **extra), checkpoint)

    train_seconds = sum(h.seconds for h in history)
    images = sum(h.images_per_second * h.seconds for h in history)
    elapsed = itertools.accumulate(h.seconds for h in history)  # training seconds at each epoch's end
    time_to_target = next((t for t, h in zip(elapsed, history)
                           if cfg.target_accuracy and h.val_accuracy >= cfg.target_accuracy), None)
    return FitResult(
        checkpoint=checkpoint,
        history=tuple(history),
        train_seconds=train_seconds,
        images_per_second=images / max(train_seconds, 1e-9),
        parameters=sum(p.numel() for p in base.parameters()),
        resumed_from_epoch=start_epoch,
        flops_per_image=flops,
        time_to_target=time_to_target,
        state_digest=state_digest(base.state_dict()),
        compile_seconds=compile_seconds,
    )
