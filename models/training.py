"""The training loop: `fit` = `train_one_epoch` + validation + checkpoints; `predict` for logits.

Checkpoints are plain dicts (weights, config, epoch, optimiser state) written atomically, so
a killed run can continue from its last epoch. Every epoch's shuffling and augmentation are
seeded from (seed, epoch), which makes a resumed run follow the same path as an uninterrupted
one.
"""

from __future__ import annotations

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
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from auditflow.config import TrainConfig
from auditflow.data import Splits
from auditflow.errors import ModelError
from models.presets import augment, to_input
from models.registry import build_model, prepare_from_data
from models.runtime import Runtime

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

    def cosine(step: int) -> float:
        if step < warmup and cfg.warmup_fraction > 0:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, step / total_steps)))

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
    train_loss: float  # mean cross-entropy (with smoothing) over the epoch
    train_accuracy: float  # on augmented batches, 0..1
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
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise ModelError(f"cannot read checkpoint {checkpoint}: {err}") from err
    cfg = TrainConfig.model_validate(payload["config"])
    model = build_model(cfg.model, len(payload["classes"]), cfg.width, cfg.dropout)
    try:
        model.load_state_dict(payload.get("ema_state_dict") or payload["state_dict"])
    except RuntimeError as err:
        raise ModelError(f"checkpoint {checkpoint} does not fit model {cfg.model!r}: {err}") from err
    return model.to(device).eval(), payload


@torch.no_grad()
def predict(
    model: nn.Module, images: np.ndarray, runtime: Runtime, batch_size: int = 1000, tta: bool = False
) -> np.ndarray:
    """Logits (float32, N x classes) of uint8 N x H x W x 3 images; `tta` averages with the flip."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size], runtime.device)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            logits = model(x).float()
            if tta:
                logits = 0.5 * (logits + model(x.flip(3)).float())
        out.append(logits.cpu())  # sync point
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


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
) -> tuple[float, float, float]:
    """One pass over uint8 `images` (N x H x W x 3, on the device). Returns (loss, accuracy, seconds)."""
    model.train()
    n = len(images)
    order = torch.randperm(n, generator=generator).to(images.device)
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device)
    start = time.perf_counter()
    for first in range(0, n, cfg.batch_size):
        idx = order[first : first + cfg.batch_size]
        x = augment(to_input(images[idx], runtime.device), flip=cfg.flip, crop_padding=cfg.crop_padding,
                    generator=generator)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        with runtime.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        # Accumulate on the device; reading .item() per step would sync every batch.
        loss_sum += loss.detach() * len(idx)
        correct += (logits.argmax(1) == y).sum()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return loss_sum.item() / n, correct.item() / n, seconds


def fit(
    splits: Splits,
    cfg: TrainConfig,
    runtime: Runtime,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> FitResult:
    """Train `cfg.model` on `splits.train_*`, validating on `splits.val_*` after each epoch.

    Writes `checkpoint_dir/last.pt` every `cfg.checkpoint_every` epochs and at the end; when
    `last.pt` already holds an unfinished run of the same config, training continues from it.
    """
    checkpoint = Path(checkpoint_dir) / "last.pt"
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, len(splits.classes), cfg.width, cfg.dropout)
    if len(splits.train_y) == 0:
        raise ModelError("the training split is empty")
    prepare_from_data(model, to_input(splits.train_x[:5000]))
    model = runtime.prepare(model)
    optimizer = OPTIMIZERS[cfg.optimizer](_param_groups(model, cfg.weight_decay), cfg)
    steps_per_epoch = math.ceil(len(splits.train_y) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, steps_per_epoch * cfg.epochs))
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay
        else None
    )

    history: list[EpochStats] = []
    start_epoch = 0
    if checkpoint.is_file():
        state = torch.load(checkpoint, map_location=runtime.device, weights_only=False)
        if state.get("config") == cfg.model_dump(mode="json") and state.get("epoch", 0) < cfg.epochs:
            model.load_state_dict(state["state_dict"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None and state.get("ema_state_dict"):
                ema.module.load_state_dict(state["ema_state_dict"])
                ema.n_averaged.fill_(state["ema_n_averaged"])
            start_epoch = state["epoch"]
            history = [EpochStats(**h) for h in state.get("history", [])]
            log.info("resuming from %s at epoch %d/%d", checkpoint, start_epoch, cfg.epochs)

    train_x = torch.as_tensor(np.asarray(splits.train_x)).to(runtime.device)
    train_y = torch.as_tensor(splits.train_y).to(runtime.device)
    val_y = torch.as_tensor(splits.val_y)
    eval_model = ema.module if ema is not None else model
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout, per epoch: resumable
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        loss, acc, seconds = train_one_epoch(
            model, train_x, train_y, optimizer, scheduler, cfg, runtime, generator, ema
        )
        if len(val_y):
            logits = torch.as_tensor(predict(eval_model, splits.val_x, runtime, tta=cfg.tta))
            val_loss = F.cross_entropy(logits, val_y).item()
            val_acc = (logits.argmax(1) == val_y).float().mean().item()
        else:
            val_loss = val_acc = float("nan")
        stats = EpochStats(
            epoch=epoch, train_loss=loss, train_accuracy=acc, val_loss=val_loss, val_accuracy=val_acc,
            lr=scheduler.get_last_lr()[0], seconds=seconds, images_per_second=len(train_y) / seconds,
        )
        history.append(stats)
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
            save_checkpoint(checkpoint_payload(model, cfg, splits.classes, epoch, **extra), checkpoint)

    return FitResult(
        checkpoint=checkpoint,
        history=tuple(history),
        train_seconds=sum(h.seconds for h in history),
        images_per_second=len(train_y) * len(history) / max(sum(h.seconds for h in history), 1e-9),
        parameters=sum(p.numel() for p in model.parameters()),
        resumed_from_epoch=start_epoch,
    )
