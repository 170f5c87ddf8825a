"""`train.precision: auto` chosen by measurement: a few eager training steps timed in each
candidate precision, and the faster one kept.

A rule on CPU flags ("bf16 where the CPU reports native bf16") was measured on one AMD Zen 4
machine and failed on an Intel Xeon with AVX512-BF16 but no AMX, where a compiled fastnet step
took 303 ms in bf16 against 255 ms in fp32 (issue 21), so the budget spent its time on the
slower path. On CUDA `auto` stays bf16 (`runtime.resolve_runtime`): no timing needed there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from auditflow.core.config import TrainConfig
from auditflow.models.training.loop import warm_up
from auditflow.models.training.runtime import Runtime

CANDIDATES = ("fp32", "bf16")
TIMED_STEPS = 3  # after one untimed step each: the first call of an eager step pays allocations


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision kept, the seconds per step that chose it, and why, in words."""

    chosen: str  # fp32 | bf16
    seconds: Mapping[str, float]  # per optimiser step, per candidate
    reason: str

    def runtime(self, runtime: Runtime) -> Runtime:
        """`runtime` computing in the chosen precision."""
        return in_precision(runtime, self.chosen)

    def as_dict(self) -> dict[str, object]:
        return {"chosen": self.chosen, "seconds": dict(self.seconds), "reason": self.reason}


def trained_runtime(runtime: Runtime, precision: Mapping[str, object]) -> Runtime:
    """`runtime` in the precision `fit` trained in: `FitResult.precision` names the one `auto`
    kept on a CPU ({} otherwise: `runtime` as it is). What is measured after training against the
    training's precision (the device peak of the utilisation figure) must use this one: the
    first guess was fp32, and bf16 training against an fp32 matmul peak read 110-172%."""
    chosen = precision.get("chosen")
    return runtime if chosen is None else in_precision(runtime, str(chosen))


def in_precision(runtime: Runtime, name: str) -> Runtime:
    """`runtime` computing in precision `name` (fp32: no autocast; bf16: bf16 autocast)."""
    return dataclasses.replace(runtime, autocast_dtype=torch.bfloat16 if name == "bf16" else None)


def choose_precision(seconds: Mapping[str, float], *, steps: int = TIMED_STEPS, batch_size: int) -> PrecisionChoice:
    """The candidate with the fewest seconds per step (fp32 on a tie: it is exact); a candidate
    that could not be timed (nan) loses."""
    timed = {k: v for k, v in seconds.items() if v == v}
    if not timed:
        return PrecisionChoice("fp32", dict(seconds), "fp32: no precision could be timed")
    chosen = min(timed, key=lambda k: (timed[k], k != "fp32"))
    shown = ", ".join(f"{k} {1000 * v:.0f} ms" for k, v in seconds.items())
    return PrecisionChoice(
        chosen,
        dict(seconds),
        f"{chosen}: faster per training step ({shown}; {steps} eager steps of batch {batch_size})",
    )


def time_precisions(
    model: nn.Module, optimizer: torch.optim.Optimizer, *, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig,
    runtime: Runtime,
) -> dict[str, float]:  # fmt: skip
    """Seconds per eager optimiser step of `model` on a batch of `images` (uint8 N x H x W x C)
    in each candidate precision on `runtime`'s device; weights and optimiser state restored."""
    eager = cfg.model_copy(update={"compile": False})
    seconds = {}
    for name in CANDIDATES:
        _, _, seconds[name], _ = warm_up(
            model, model, optimizer, images=images, labels=labels, cfg=eager, runtime=in_precision(runtime, name),
            timed_steps=TIMED_STEPS,
        )  # fmt: skip
    return seconds
