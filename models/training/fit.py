"""The training loop: `fit` = restore, plan, epoch loop with cheap validation, weight
selection, summary; `predict` for logits.

Checkpoints (see `checkpoints.py`) hold weights, config, epoch and optimiser state, written
atomically, so a killed run continues from its last epoch. Every epoch's shuffling and
augmentation are seeded from (seed, epoch), which makes a resumed run follow the same path as
an uninterrupted one.

With `cfg.dp`, the same loop runs DP-SGD (`private.py`): the GroupNorm model, timed DP steps
for the time budget, a plan that is final (the noise is calibrated to it), Poisson-sampled
batches, and the accountant's history in every checkpoint.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from auditflow.core.config import TrainConfig
from auditflow.core.data import Splits
from auditflow.core.errors import ConfigError, ModelError
from auditflow.models.evaluation.inference import predict
from auditflow.models.training import precision as precisions
from auditflow.models.training.averaging import WarmupEMA, make_ema
from auditflow.models.training.budget import EpochPlan, plan_epochs, replan
from auditflow.models.training.checkpoints import (
    checkpoint_payload,
    load_model,
    read_checkpoint,
    save_checkpoint,
    state_digest,
)
from auditflow.models.training.loop import epoch_batches, train_one_epoch, warm_up
from auditflow.models.training.presets import alternating_flips, to_input
from auditflow.models.training.registry import build_model, identity_init, prepare_from_data
from auditflow.models.training.runtime import Runtime
from auditflow.models.training.speed import train_flops_per_image
from auditflow.models.training.transfer import load_matching

if TYPE_CHECKING:  # private.py imports Opacus, which takes seconds: only DP runs load it
    from auditflow.models.training.private import PrivateTraining

__all__ = ["EpochStats", "FitResult", "fit", "load_model", "predict", "train_one_epoch", "warm_up"]

log = logging.getLogger(__name__)

TIMED_STEPS = 3  # throwaway optimiser steps timed to plan a time budget


def _fused(groups: list[dict[str, Any]]) -> bool | None:
    """One fused kernel per optimiser step where every parameter is on a GPU (on an H200 the
    multi-tensor SGD step took 0.35 ms of GPU time per step of the `full` profile, NOTES.md);
    None = PyTorch's default (multi-tensor) elsewhere."""
    return True if all(p.is_cuda for g in groups for p in g["params"]) else None


OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, c: torch.optim.SGD(
        groups, lr=c.lr, momentum=c.momentum, nesterov=c.nesterov and c.momentum > 0, fused=_fused(groups)
    ),
    "adam": lambda groups, c: torch.optim.Adam(groups, lr=c.lr, fused=_fused(groups)),
    "adamw": lambda groups, c: torch.optim.AdamW(groups, lr=c.lr, fused=_fused(groups)),
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
    """Weight decay (and `train.l1`, `loop.shrink`) on conv/linear weights only, not on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay, "l1": True}, {"params": rest, "weight_decay": 0.0}]


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float  # mean training loss (smoothed CE, plus the distillation term if any); rank 0's shard
    train_accuracy: float  # on augmented batches, 0..1; rank 0's shard under DDP
    val_loss: float  # plain cross-entropy, no TTA, on the per-epoch subset; nan when not validated
    val_accuracy: float  # 0..1, same images; nan when not validated this epoch or no validation split
    lr: float  # learning rate at the end of the epoch
    seconds: float  # wall time of the training pass (validation excluded)
    images_per_second: float  # training throughput
    val_seconds: float = 0.0  # wall time of this epoch's validation


@dataclass(frozen=True)
class WeightChoice:
    """Which weights the run ships: the raw ones or their average, whichever validates better."""

    kept: str  # "raw" or "ema"
    raw_accuracy: float  # on the whole validation split (or a train sample), no TTA, 0..1
    ema_accuracy: float | None  # None without EMA
    scored_on: str  # "validation" or "train sample" (no validation split)


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
    state_digest: str  # sha256 of the raw final weights (equal on every data-parallel rank)
    compile_seconds: float = 0.0  # torch.compile + warm-up, before the training clock starts
    plan: dict[str, Any] = field(default_factory=dict)  # EpochPlan.as_dict(): epochs chosen and why
    choice: dict[str, Any] = field(default_factory=dict)  # WeightChoice as a dict
    final_val_accuracy: float = float("nan")  # kept weights, whole validation split, with the profile's TTA
    final_val_loss: float = float("nan")
    val_seconds: float = 0.0  # sum of per-epoch validations
    privacy: dict[str, Any] = field(default_factory=dict)  # DP runs: PrivateTraining.report(); {} otherwise
    precision: dict[str, Any] = field(default_factory=dict)  # `train.precision: auto` on a CPU: PrecisionChoice


def _val_subset(splits: Splits, cfg: TrainConfig) -> tuple[np.ndarray, torch.Tensor]:
    """The per-epoch validation images: a seeded sample of `val_subset` (all when None or fewer)."""
    n = len(splits.val_y)
    if cfg.val_subset is None or n <= cfg.val_subset:
        return np.asarray(splits.val_x), torch.as_tensor(splits.val_y)
    pick = np.sort(np.random.default_rng(cfg.seed).permutation(n)[: cfg.val_subset])
    return np.asarray(splits.val_x[pick]), torch.as_tensor(splits.val_y[pick])


def _score(
    model: nn.Module, images: np.ndarray, labels: torch.Tensor, runtime: Runtime, tta: bool = False, translate: int = 0
) -> tuple[float, float]:
    """(cross-entropy, accuracy) of `model` on uint8 images."""
    logits = torch.as_tensor(predict(model, images, runtime, tta=tta, translate=translate))
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


@dataclass
class _Trainer:
    """What one `fit` call builds once and its steps share."""

    cfg: TrainConfig
    runtime: Runtime
    base: nn.Module  # the plain module: checkpoints, evaluation
    optimizer: torch.optim.Optimizer
    ema: tuple[AveragedModel, WarmupEMA] | None
    checkpoint: Path
    classes: tuple[str, ...]
    rank: int
    private: PrivateTraining | None = None  # DP-SGD's wrappers and accountant, once the plan is final

    def restore(self) -> tuple[int, list[EpochStats], dict[str, Any] | None, dict[str, Any] | None]:
        """Continue an unfinished run of the same config from `last.pt`: (epoch, history, plan,
        optimiser, scheduler and, for DP, accountant states, to load once those exist). A
        checkpoint that cannot be read is discarded with a warning."""
        if not self.checkpoint.is_file():
            return 0, [], None, None
        try:
            state = read_checkpoint(self.checkpoint, self.runtime.device)
        except ModelError as err:
            log.warning("discarding unreadable checkpoint and starting over: %s", err)
            self.checkpoint.unlink(missing_ok=True)
            return 0, [], None, None
        if state.get("config") != self.cfg.model_dump(mode="json") or "plan" not in state:
            return 0, [], None, None
        if self.cfg.dp is not None and "privacy" not in state:  # its spent epsilon would be unknown
            log.warning("starting over: DP checkpoint %s has no accountant history", self.checkpoint)
            return 0, [], None, None
        self.base.load_state_dict(state["state_dict"])
        if self.ema is not None and state.get("ema_state_dict"):
            self.ema[0].module.load_state_dict(state["ema_state_dict"])
            self.ema[0].n_averaged.fill_(state["ema_n_averaged"])
            self.ema[1].updates = int(state["ema_n_averaged"])
        history = [EpochStats(**h) for h in state.get("history", [])]
        log.info("resuming from %s at epoch %d/%d", self.checkpoint, state["epoch"], state["plan"]["epochs"])
        return state["epoch"], history, state["plan"], {k: state.get(k) for k in ("optimizer", "scheduler", "privacy")}

    def validate(self, images: np.ndarray, labels: torch.Tensor) -> tuple[float, float, float]:
        """(loss, accuracy, seconds) of the weights being averaged (or the raw ones), no TTA."""
        if not len(labels):
            return float("nan"), float("nan"), 0.0
        start = time.perf_counter()
        loss, acc = _score(self.ema[0].module if self.ema else self.base, images, labels, self.runtime)
        return loss, acc, time.perf_counter() - start

    def save(
        self,
        epoch: int,
        history: list[EpochStats],
        plan: EpochPlan,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        **extra: Any,
    ) -> None:
        if self.rank != 0:
            return
        state: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": [h.__dict__ for h in history],
            "plan": plan.as_dict(),
            **extra,
        }
        if self.ema is not None:
            state["ema_state_dict"] = self.ema[0].module.state_dict()
            state["ema_n_averaged"] = self.ema[1].updates
        if self.private is not None:
            state["privacy"] = self.private.state_dict()
        save_checkpoint(checkpoint_payload(self.base, self.cfg, self.classes, epoch=epoch, **state), self.checkpoint)

    def choose_weights(self, splits: Splits) -> WeightChoice:
        """Score the raw and the averaged weights on the whole validation split (no TTA; a
        seeded train sample when there is no validation split) and keep the better one; the
        raw weights win ties: the average must earn its place, so a run with EMA is never
        worse on validation than the same run without it (its raw weights are that run's).
        Under DDP, rank 0's choice holds everywhere."""
        if len(splits.val_y):
            images, labels, where = np.asarray(splits.val_x), torch.as_tensor(splits.val_y), "validation"
        else:
            pick = np.sort(np.random.default_rng(self.cfg.seed).permutation(len(splits.train_y))[:2000])
            images, labels, where = (
                np.asarray(splits.train_x[pick]),
                torch.as_tensor(splits.train_y[pick]),
                "train sample",
            )
        raw = _score(self.base, images, labels, self.runtime)[1]
        if self.ema is None:
            return WeightChoice("raw", raw, None, where)
        averaged = _score(self.ema[0].module, images, labels, self.runtime)[1]
        keep_ema = torch.tensor(int(averaged > raw))
        if dist.is_initialized():
            dist.broadcast(keep_ema, 0)
        return WeightChoice("ema" if keep_ema.item() else "raw", raw, averaged, where)


def check_batch_size(batch_size: int, n_train: int, world_size: int = 1) -> None:
    """`ConfigError` when `batch_size` exceeds the training images each process gets: every
    epoch would then be one partial step, and the run would "train" (an epoch of 0.0 s) and
    learn next to nothing, noticed only by the did-not-learn check."""
    per_process = n_train // max(world_size, 1)
    if batch_size > per_process:
        shown = f"{per_process} images" + (f" per process, {world_size} processes" if world_size > 1 else "")
        raise ConfigError(
            f"train.batch_size={batch_size} is larger than the training split ({shown}): each epoch would be "
            f"one partial step; use train.batch_size={max(1, per_process // 8)} or so (several steps per epoch)"
        )


MIN_PROGRESSIVE_SIDE = 8  # below this, fastnet's three poolings leave nothing of an image


def progressive_side(scale: float | None, side: int) -> int | None:
    """The side `train.progressive_scale` downscales `side`-pixel images to, or None (off, or
    images too small to gain from it, which is logged)."""
    if scale is None:
        return None
    low = round(scale * side)
    if low < MIN_PROGRESSIVE_SIDE or low >= side:
        log.info(
            "train.progressive_scale=%s: %d px images would train at %d px; every epoch trains at full size",
            scale, side, low,
        )  # fmt: skip
        return None
    return low


def fit(
    splits: Splits,
    cfg: TrainConfig,
    runtime: Runtime,
    *,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[EpochStats], None] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    teacher: nn.Module | None = None,
) -> FitResult:
    """Train `cfg.model` on `splits.train_*`, validating cheaply on `splits.val_*` as it goes.

    Steps: build and initialise the model; restore an unfinished run of the same config from
    `checkpoint_dir/last.pt`; warm up (compile) and plan the epoch count for
    `cfg.time_budget_s`; the epoch loop (checkpoint every `cfg.checkpoint_every` epochs);
    choose the raw or averaged weights; score them with TTA on the whole validation split.

    - `init_state`: weights to fine-tune from (tensors whose shapes differ start fresh).
    - `teacher`: a model on the same classes whose softened logits are distilled.
    - Under `torch.distributed` (torchrun), wraps the model in DistributedDataParallel and
      gives each process its shard of every epoch; only rank 0 writes checkpoints and calls
      `on_epoch`.
    - `cfg.dp`: DP-SGD (`private.py`); `FitResult.privacy` then reports the epsilon spent.
    """
    if len(splits.train_y) == 0:
        raise ModelError(f"the training split is empty; nothing to train {cfg.model!r} on")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    base, flops = _build(splits, cfg, runtime, init_state)
    optimizer = OPTIMIZERS[cfg.optimizer](_param_groups(base, cfg.weight_decay), cfg)
    precision: dict[str, Any] = {}
    if cfg.precision == "auto" and runtime.device.type == "cpu" and cfg.dp is None and world == 1:
        batch = torch.as_tensor(np.asarray(splits.train_x[: cfg.batch_size]))
        seconds = precisions.time_precisions(
            base, optimizer, images=batch, labels=torch.as_tensor(splits.train_y[: cfg.batch_size]), cfg=cfg,
            runtime=runtime,
        )  # fmt: skip
        picked = precisions.choose_precision(seconds, batch_size=len(batch))
        runtime, precision = picked.runtime(runtime), picked.as_dict()
        log.info("precision %s", picked.reason)
    trainer = _Trainer(
        cfg,
        runtime,
        base,
        optimizer,
        make_ema(base, cfg.ema_decay, cfg.ema_every) if cfg.ema_decay else None,
        Path(checkpoint_dir) / "last.pt",
        splits.classes,
        rank,
    )
    start_epoch, history, saved_plan, saved_states = trainer.restore()

    model: nn.Module = base
    if world > 1:
        model = DistributedDataParallel(
            base, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None
        )
    if teacher is not None:
        teacher = runtime.prepare(teacher).eval()
    train_x = torch.as_tensor(np.asarray(splits.train_x)).to(runtime.device)
    train_y = torch.as_tensor(splits.train_y).to(runtime.device)
    val_x, val_y = _val_subset(splits, cfg)
    if cfg.dp is None:
        steps_per_epoch = len(epoch_batches(torch.arange(len(splits.train_y)), cfg.batch_size, cfg.drop_last))
    else:
        from auditflow.models.training import private as dp_sgd  # imports Opacus (seconds): DP runs only

        steps_per_epoch = dp_sgd.steps_per_epoch(len(splits.train_y), cfg.batch_size)

    timed = TIMED_STEPS if cfg.time_budget_s is not None and saved_plan is None else 0
    low_size = progressive_side(cfg.progressive_scale, train_x.shape[1])
    low_step_seconds = math.nan  # the downscaled step's seconds, timed below
    if cfg.dp is not None and timed:  # plan with DP steps: per-example gradients cost ~2 plain ones
        timing = dp_sgd.timing_steps(base, optimizer, max_grad_norm=cfg.dp.max_grad_norm, batch_size=cfg.batch_size)
        with timing as (dp_model, dp_optimizer):
            _, compile_seconds, step_seconds, _ = warm_up(
                dp_model,
                base,
                dp_optimizer,
                images=train_x,
                labels=train_y,
                cfg=cfg,
                runtime=runtime,
                timed_steps=timed,
            )
    else:
        model, compile_seconds, step_seconds, low_step_seconds = warm_up(
            model,
            base,
            optimizer,
            images=train_x,
            labels=train_y,
            cfg=cfg,
            runtime=runtime,
            timed_steps=timed,
            low_size=low_size,
        )
    if compile_seconds:
        log.info("compiled in %.1f s (not counted as training time)", compile_seconds)
    if saved_plan is not None:
        plan = EpochPlan(**saved_plan)
    else:
        val_cost = trainer.validate(val_x, val_y)[2] if cfg.time_budget_s is not None else 0.0
        plan = _agree(
            plan_epochs(
                cfg.epochs,
                cfg.time_budget_s,
                step_seconds=step_seconds,
                steps_per_epoch=steps_per_epoch,
                val_seconds=val_cost,
                val_every=cfg.val_every,
                low_size=low_size,
                low_fraction=cfg.progressive_fraction,
                low_step_seconds=low_step_seconds,
            )
        )
        if cfg.dp is not None:
            plan = dataclasses.replace(plan, reason=f"{plan.reason}; final: DP-SGD's noise is calibrated to it")
    log.info("plan: %s", plan.reason)
    if cfg.dp is not None:
        trainer.private = dp_sgd.make_private(
            base, optimizer, cfg.dp, n=len(splits.train_y), batch_size=cfg.batch_size, epochs=plan.epochs
        )
        model, optimizer = trainer.private.model, trainer.private.optimizer
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, steps_per_epoch * plan.epochs))
    if saved_states is not None:  # after the scheduler: its constructor resets the learning rate
        optimizer.load_state_dict(saved_states["optimizer"])
        scheduler.load_state_dict(saved_states["scheduler"])
        if trainer.private is not None:
            trainer.private.load_state_dict(saved_states["privacy"])

    epoch = start_epoch
    while epoch < plan.epochs:  # the plan may change once, after the first epoch (not for DP)
        epoch += 1
        torch.manual_seed(cfg.seed * 100_003 + epoch + 7919 * rank)  # dropout, per epoch: resumable
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)  # same permutation on every rank
        batches = trainer.private.epoch_batches(cfg.seed * 100_003 + epoch, runtime.device) if trainer.private else None
        alternate = cfg.flip and cfg.flip_mode == "alternate"
        flips = alternating_flips(len(train_y), seed=cfg.seed, epoch=epoch).to(train_y.device) if alternate else None
        loss, acc, seconds, seen = train_one_epoch(
            model,
            train_x,
            train_y,
            optimizer=optimizer,
            scheduler=scheduler,
            cfg=cfg,
            runtime=runtime,
            generator=generator,
            ema=trainer.ema,
            teacher=teacher,
            batches=batches,
            flips=flips,
            size=plan.size(epoch),
        )
        if world > 1:  # BN running stats stay local after the last step: take rank 0's everywhere
            for buffer in base.buffers():
                dist.broadcast(buffer, 0)
        due = epoch % cfg.val_every == 0 or epoch == plan.epochs
        val_loss, val_acc, val_seconds = trainer.validate(val_x, val_y) if due else (float("nan"),) * 2 + (0.0,)
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss,
            train_accuracy=acc,
            val_loss=val_loss,
            val_accuracy=val_acc,
            lr=scheduler.get_last_lr()[0],
            seconds=seconds,
            images_per_second=seen * world / seconds,
            val_seconds=val_seconds,
        )
        if not math.isfinite(loss):
            raise ModelError(
                f"training diverged at epoch {epoch}: mean loss {loss}; lower train.lr (now {cfg.lr}) or check the data"
            )
        history.append(stats)
        # Not for DP: the noise is calibrated to the planned epochs; more would spend more than
        # dp.epsilon, fewer would have trained with more noise than needed.
        if epoch == 1 and saved_plan is None and cfg.time_budget_s is not None and cfg.dp is None:
            plan = _agree(
                replan(
                    plan,
                    cfg.epochs,
                    steps_per_epoch,
                    epoch_seconds=seconds,
                    val_seconds=val_seconds,
                    val_every=cfg.val_every,
                )
            )
            scheduler.lr_lambdas[0] = _schedule(cfg, steps_per_epoch * plan.epochs)  # type: ignore[attr-defined]
            if plan.reason.startswith("re-planned"):
                log.info("plan: %s", plan.reason)
        if rank == 0:
            log.info(
                "epoch %d/%d  loss %.4f  train acc %.4f  val acc %.4f  %.1fs (%.0f img/s) + val %.1fs",
                epoch,
                plan.epochs,
                loss,
                acc,
                val_acc,
                seconds,
                stats.images_per_second,
                val_seconds,
            )
            if on_epoch is not None:
                on_epoch(stats)
        if epoch % cfg.checkpoint_every == 0 and epoch < plan.epochs:
            trainer.save(epoch, history, plan, scheduler=scheduler)

    choice = trainer.choose_weights(splits)
    log.info(
        "kept the %s weights (%s accuracy: raw %.4f, averaged %s)",
        choice.kept,
        choice.scored_on,
        choice.raw_accuracy,
        "-" if choice.ema_accuracy is None else f"{choice.ema_accuracy:.4f}",
    )
    kept = trainer.ema[0].module if choice.kept == "ema" and trainer.ema else base  # never Opacus' wrapper
    final_loss, final_acc = (
        _score(kept, np.asarray(splits.val_x), torch.as_tensor(splits.val_y), runtime, cfg.tta, cfg.tta_translate)
        if len(splits.val_y)
        else (float("nan"),) * 2
    )
    trainer.save(plan.epochs, history, plan, scheduler=scheduler, kept=choice.kept, choice=choice.__dict__)
    result = _summary(trainer, history, plan, choice, start_epoch, flops, compile_seconds, final_acc, final_loss)
    return dataclasses.replace(result, precision=precision)


def _build(
    splits: Splits, cfg: TrainConfig, runtime: Runtime, init_state: dict[str, torch.Tensor] | None
) -> tuple[nn.Module, float]:
    """The model on its device, initialised (fine-tuned weights, whitening from the data),
    and its training FLOPs per image."""
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model, len(splits.classes), width=cfg.width, dropout=cfg.dropout, dp_compatible=cfg.dp is not None
    )
    if cfg.identity_init:
        identity_init(model)
    fresh = load_matching(model, init_state) if init_state is not None else list(model.state_dict())
    if any("whiten" in name for name in fresh):
        # a seeded random sample: snapshots are stored class by class
        sample = np.sort(np.random.default_rng(cfg.seed).permutation(len(splits.train_y))[:5000])
        prepare_from_data(model, to_input(splits.train_x[sample]))
    elif init_state is not None:
        log.info("fine-tuning: %d tensors start fresh: %s", len(fresh), fresh)
    flops = train_flops_per_image(model, splits.train_x.shape[1:], len(splits.classes))
    return runtime.prepare(model), flops


def _agree(plan: EpochPlan) -> EpochPlan:
    """Under DDP every rank must run the same epochs: rank 0's plan holds."""
    if not dist.is_initialized():
        return plan
    epochs = torch.tensor(plan.epochs)
    dist.broadcast(epochs, 0)
    return EpochPlan(**plan.as_dict() | {"epochs": int(epochs)})


def _summary(
    trainer: _Trainer,
    history: list[EpochStats],
    plan: EpochPlan,
    choice: WeightChoice,
    start_epoch: int,
    flops: float,
    compile_seconds: float,
    final_acc: float,
    final_loss: float,
) -> FitResult:
    cfg = trainer.cfg
    train_seconds = sum(h.seconds for h in history)
    images = sum(h.images_per_second * h.seconds for h in history)
    elapsed = itertools.accumulate(h.seconds for h in history)  # training seconds at each epoch's end
    time_to_target = next(
        (
            t
            for t, h in zip(elapsed, history, strict=True)
            if cfg.target_accuracy and h.val_accuracy >= cfg.target_accuracy
        ),
        None,
    )
    return FitResult(
        checkpoint=trainer.checkpoint,
        history=tuple(history),
        train_seconds=train_seconds,
        images_per_second=images / max(train_seconds, 1e-9),
        parameters=sum(p.numel() for p in trainer.base.parameters()),
        resumed_from_epoch=start_epoch,
        flops_per_image=flops,
        time_to_target=time_to_target,
        state_digest=state_digest(trainer.base.state_dict()),
        compile_seconds=compile_seconds,
        plan=plan.as_dict(),
        choice=choice.__dict__,
        final_val_accuracy=final_acc,
        final_val_loss=final_loss,
        val_seconds=sum(h.val_seconds for h in history),
        privacy=trainer.private.report() if trainer.private is not None else {},
    )
