"""Fit training into a time budget: measure, then choose the epoch count before the clock starts.

The LR schedule needs its total step count up front, so the epoch count is fixed before the
first step: throughput is measured on a few throwaway optimiser steps (after the compile
warm-up, on the real batch shape), validation on one pass over the per-epoch subset, and
the epochs that fit are `budget / (one epoch + its share of validation)`, never more than the
configured `epochs`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SAFETY = 0.95  # the first epochs run slower than the steady steps measured (allocator, caches)


@dataclass(frozen=True)
class EpochPlan:
    epochs: int  # epochs to run
    step_seconds: float  # measured seconds per optimiser step (nan: not measured)
    epoch_seconds: float  # estimated training pass, seconds
    val_seconds: float  # estimated per-epoch validation, seconds
    budget_seconds: float | None  # the configured budget; None = run the configured epochs
    reason: str  # one line for logs and the report

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def plan_epochs(
    max_epochs: int,
    budget_seconds: float | None,
    *,
    step_seconds: float,
    steps_per_epoch: int,
    val_seconds: float,
    val_every: int,
) -> EpochPlan:
    """Epochs that fit `budget_seconds` of training passes plus per-epoch validation."""
    epoch = step_seconds * steps_per_epoch
    if budget_seconds is None:
        return EpochPlan(max_epochs, step_seconds, epoch, val_seconds, None, f"{max_epochs} epochs as configured")
    per_epoch = epoch + val_seconds / val_every
    fits = math.floor(SAFETY * budget_seconds / per_epoch) if per_epoch > 0 else max_epochs
    epochs = max(1, min(max_epochs, fits))
    why = (
        f"{steps_per_epoch} steps x {step_seconds * 1e3:.1f} ms = {epoch:.1f} s per epoch + "
        f"{val_seconds:.1f} s validation every {val_every}"
    )
    if fits >= max_epochs:
        reason = f"{epochs} epochs (the configured maximum) fit the {budget_seconds:.0f} s budget: {why}"
    elif fits >= 1:
        reason = f"{epochs} of {max_epochs} epochs fit the {budget_seconds:.0f} s budget: {why}"
    else:
        reason = (
            f"not even one epoch fits the {budget_seconds:.0f} s budget ({why}); running 1 epoch "
            f"(~{per_epoch:.0f} s): lower train.width or raise train.time_budget_s"
        )
    return EpochPlan(epochs, step_seconds, epoch, val_seconds, budget_seconds, reason)


def replan(
    plan: EpochPlan, max_epochs: int, steps_per_epoch: int, *, epoch_seconds: float, val_seconds: float, val_every: int
) -> EpochPlan:
    """The plan again after the first epoch, from its measured time: a few throwaway steps on a
    busy machine can be off by several times, a whole epoch much less. The LR schedule is then
    rebuilt for the new total (`fit` swaps the scheduler's multiplier function)."""
    if plan.budget_seconds is None:
        return plan
    new = plan_epochs(
        max_epochs,
        plan.budget_seconds,
        step_seconds=epoch_seconds / steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        val_seconds=val_seconds,
        val_every=val_every,
    )
    if new.epochs == plan.epochs:
        return plan
    return EpochPlan(
        new.epochs,
        new.step_seconds,
        new.epoch_seconds,
        new.val_seconds,
        new.budget_seconds,
        f"re-planned after epoch 1 (the warm-up estimate gave {plan.epochs}): {new.reason}",
    )
