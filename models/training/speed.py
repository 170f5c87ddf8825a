"""Training-speed accounting: FLOPs per image (torch's flop counter), device peak, utilisation.

FLOPs count multiply-adds as two operations, for the convolutions and matrix products that
dominate these networks (what `torch.utils.flop_counter` counts); elementwise work is left
out, as in the published speed-run figures.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from auditflow.models.training.runtime import Runtime

# Dense bf16 tensor-core peaks from the vendors' datasheets, FLOP/s (no sparsity).
GPU_BF16_PEAK = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


def train_flops_per_image(model: nn.Module, image_shape: tuple[int, int, int], num_classes: int) -> float:
    """FLOPs of one forward + backward pass per image (a copy of `model`, on the CPU)."""
    probe = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().train()
    h, w, c = image_shape
    x = torch.rand(2, c, h, w)
    y = torch.arange(2) % num_classes
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(probe(x), y).backward()
    return counter.get_total_flops() / 2


@dataclass(frozen=True)
class Peak:
    flops_per_second: float
    source: str  # how the figure was obtained, for the report


def _matmul_probe(device: torch.device, dtype: torch.dtype, n: int = 2048, seconds: float = 0.5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def device_peak(runtime: Runtime) -> Peak:
    """The peak that utilisation is measured against: a datasheet figure for known GPUs,
    else the best of a large matmul in the training dtype measured here and now."""
    dtype = runtime.autocast_dtype or torch.float32
    if runtime.device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(runtime.device)
        for key, peak in GPU_BF16_PEAK.items():
            if key in name:
                return Peak(peak, f"{name} datasheet dense bf16 peak {peak / 1e12:.0f} TFLOP/s")
    measured = _matmul_probe(runtime.device, dtype)
    return Peak(measured, f"measured {dtype} 2048x2048 matmul on {runtime.device.type}: {measured / 1e9:.0f} GFLOP/s")


def speed_metrics(
    flops_per_image: float,
    images_per_second: float,
    train_seconds: float,
    *,
    peak_flops: float,
    time_to_target: float | None = None,
) -> dict[str, float]:
    """Throughput and utilisation: achieved FLOP/s = FLOPs per image x images per second."""
    achieved = flops_per_image * images_per_second
    metrics = {
        "train_seconds": train_seconds,
        "images_per_second": images_per_second,
        "flops_per_image": flops_per_image,
        "achieved_flops_per_second": achieved,
        "peak_flops_per_second": peak_flops,
        "fraction_of_peak": achieved / peak_flops,
    }
    if time_to_target is not None:
        metrics["time_to_target_seconds"] = time_to_target
    return metrics
