"""Fit training into a time budget: measure, then choose the epoch count before the clock starts.

The LR schedule needs its total step count up front, so the epoch count is fixed before the
first step: throughput is measured on a few throwaway optimiser steps (after the compile
warm-up, on the real batch shape), validation on one pass over the per-epoch subset, and
the epochs that fit are `budget / (one epoch + its share of validation)`, never more than the
configured `epochs`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

SAFETY = 0.95  # the first epochs run slower than the steady steps measured (allocator, caches)


@dataclass(frozen=True)
class EpochPlan:
    epochs: int  # epochs to run
    step_seconds: float  # measured seconds per optimiser step (nan: not measured)
    epoch_seconds: float  # estimated training pass, seconds
    val_seconds: float  # estimated per-epoch validation, seconds
    budget_seconds: float | None  # the configured budget; None = run the configured epochs
    reason: str  # one line for logs and the report
    # progressive resizing (`train.progressive_scale`): the first `low_epochs` train downscaled
    low_size: int | None = None
    low_fraction: float = 0.0  # share of the epochs trained downscaled (rounded down)
    low_epochs: int = 0
    low_step_seconds: float = math.nan  # measured seconds per downscaled step

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def size(self, epoch: int) -> int | None:
        """The side epoch `epoch` (1-based) trains at: `low_size`, or None for full size."""
        return self.low_size if epoch <= self.low_epochs else None


def plan_epochs(
    max_epochs: int,
    budget_seconds: float | None,
    *,
    step_seconds: float,
    steps_per_epoch: int,
    val_seconds: float,
    val_every: int,
    low_size: int | None = None,
    low_fraction: float = 0.0,
    low_step_seconds: float = math.nan,
) -> EpochPlan:
    """Epochs that fit `budget_seconds` of training passes plus per-epoch validation. With
    `low_size`, the first `low_fraction` of the epochs (rounded down) cost `low_step_seconds`
    per step (the full size's when not measured)."""
    fraction = low_fraction if low_size is not None else 0.0
    low_step = low_step_seconds if low_step_seconds == low_step_seconds else step_seconds

    def lows(epochs: int) -> int:
        return math.floor(fraction * epochs)

    def cost(epochs: int) -> float:
        passes = lows(epochs) * low_step + (epochs - lows(epochs)) * step_seconds
        return passes * steps_per_epoch + epochs * val_seconds / val_every

    epoch = step_seconds * steps_per_epoch
    progressive = dict(low_size=low_size, low_fraction=fraction, low_step_seconds=low_step_seconds)
    if budget_seconds is None:
        reason = f"{max_epochs} epochs as configured"
        return EpochPlan(
            max_epochs, step_seconds, epoch, val_seconds, None, reason, low_epochs=lows(max_epochs), **progressive
        )
    if cost(1) > 0:
        fits = next((e for e in range(max_epochs, 0, -1) if cost(e) <= SAFETY * budget_seconds), 0)
    else:
        fits = max_epochs
    epochs = max(1, fits)
    why = (
        f"{steps_per_epoch} steps x {step_seconds * 1e3:.1f} ms = {epoch:.1f} s per epoch + "
        f"{val_seconds:.1f} s validation every {val_every}"
    )
    if lows(epochs):
        why += f"; the first {lows(epochs)} at {low_size} px, {low_step * 1e3:.1f} ms per step"
    if fits >= max_epochs:
        reason = f"{epochs} epochs (the configured maximum) fit the {budget_seconds:.0f} s budget: {why}"
    elif fits >= 1:
        reason = f"{epochs} of {max_epochs} epochs fit the {budget_seconds:.0f} s budget: {why}"
    else:
        reason = (
            f"not even one epoch fits the {budget_seconds:.0f} s budget ({why}); running 1 epoch "
            f"(~{cost(1):.0f} s): lower train.width or raise train.time_budget_s"
        )
    return EpochPlan(
        epochs, step_seconds, epoch, val_seconds, budget_seconds, reason, low_epochs=lows(epochs), **progressive
    )


def replan(
    plan: EpochPlan, max_epochs: int, steps_per_epoch: int, *, epoch_seconds: float, val_seconds: float, val_every: int
) -> EpochPlan:
    """The plan again after the first epoch, from its measured time: a few throwaway steps on a
    busy machine can be off by several times, a whole epoch much less. The LR schedule is then
    rebuilt for the new total (`fit` swaps the scheduler's multiplier function). When the first
    epoch trained downscaled, the full-size step time is scaled by the same measured/estimated
    ratio."""
    if plan.budget_seconds is None:
        return plan
    measured = epoch_seconds / steps_per_epoch
    step, low_step = measured, plan.low_step_seconds
    if plan.size(1) is not None:
        estimated = plan.low_step_seconds if plan.low_step_seconds == plan.low_step_seconds else plan.step_seconds
        step, low_step = plan.step_seconds * measured / estimated, measured
    new = plan_epochs(
        max_epochs,
        plan.budget_seconds,
        step_seconds=step,
        steps_per_epoch=steps_per_epoch,
        val_seconds=val_seconds,
        val_every=val_every,
        low_size=plan.low_size,
        low_fraction=plan.low_fraction,
        low_step_seconds=low_step,
    )
    if new.epochs == plan.epochs:
        return plan
    return replace(new, reason=f"re-planned after epoch 1 (the warm-up estimate gave {plan.epochs}): {new.reason}")
