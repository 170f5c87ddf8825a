"""Inference benchmark: torch eager vs ONNX Runtime (CPU; CUDA where a GPU exists).

Each case runs `warmup` untimed batches, then `iterations` timed ones; latency is per batch
(p50/p95, ms), throughput is images per second at the median latency. Inputs start in host
memory for ONNX Runtime (its CUDA timings include the copy to the GPU) and on the device for
torch.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from auditflow.models.export import INPUT_NAME, OUTPUT_NAME, inference_providers, onnx_session
from auditflow.models.presets import to_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchRow:
    backend: str  # torch-cpu, torch-cuda, onnxruntime-cpu, onnxruntime-cuda
    batch_size: int
    p50_ms: float  # median latency of one batch, lower is better
    p95_ms: float  # 95th percentile latency of one batch
    images_per_second: float  # batch_size / median latency, higher is better
    speedup_vs_torch: float  # torch p50 on the same device kind / this p50; >1 = faster


def describe_device() -> str:
    """What the numbers were measured on, for the report."""
    import platform

    cpu = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"{torch.cuda.get_device_name()} + {cpu}" if torch.cuda.is_available() else cpu


def _time(fn: Callable[[], object], warmup: int, iterations: int, sync: Callable[[], None]) -> np.ndarray:
    for _ in range(warmup):
        fn()
    sync()
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        fn()
        sync()  # sync point: CUDA work is asynchronous
        times[i] = time.perf_counter() - start
    return times * 1e3


def _backends(model: nn.Module, onnx_path: Path, threads: int | None) -> dict[str, tuple[Callable[[np.ndarray], Callable[[], object]], Callable[[], None]]]:
    """backend name -> (make a closure running one batch, synchronise)."""
    def nothing() -> None:
        return None

    def torch_on(device: str) -> Callable[[np.ndarray], Callable[[], object]]:
        net = copy.deepcopy(model).to(device).float().eval()  # .to() is in place: one copy per device

        def make(batch: np.ndarray) -> Callable[[], object]:
            x = to_input(batch, device)

            def run() -> object:
                with torch.inference_mode():
                    return net(x)
            return run
        return make

    def ort_with(providers: list[str]) -> Callable[[np.ndarray], Callable[[], object]]:
        session = onnx_session(onnx_path, providers, threads)

        def make(batch: np.ndarray) -> Callable[[], object]:
            feed = {INPUT_NAME: to_input(batch).numpy()}
            return lambda: session.run([OUTPUT_NAME], feed)
        return make

    backends = {"torch-cpu": (torch_on("cpu"), nothing), "onnxruntime-cpu": (ort_with(["CPUExecutionProvider"]), nothing)}
    if torch.cuda.is_available():
        backends["torch-cuda"] = (torch_on("cuda"), torch.cuda.synchronize)
        if "CUDAExecutionProvider" in inference_providers():
            backends["onnxruntime-cuda"] = (ort_with(["CUDAExecutionProvider", "CPUExecutionProvider"]), nothing)
    return backends


def benchmark(
    model: nn.Module,
    onnx_path: str | Path,
    images: np.ndarray,
    batch_sizes: tuple[int, ...],
    warmup: int = 5,
    iterations: int = 30,
    threads: int | None = None,
) -> list[BenchRow]:
    """Time every available backend at every batch size on uint8 NHWC `images` (tiled if short)."""
    if threads:
        torch.set_num_threads(threads)  # the same budget for torch as for ONNX Runtime
    rows: list[BenchRow] = []
    for name, (make, sync) in _backends(model, Path(onnx_path), threads).items():
        for bs in batch_sizes:
            batch = np.resize(images, (bs, *images.shape[1:]))  # repeats images when bs > len(images)
            ms = _time(make(batch), warmup, iterations, sync)
            p50 = float(np.percentile(ms, 50))
            rows.append(BenchRow(name, bs, p50, float(np.percentile(ms, 95)), bs / (p50 / 1e3), 1.0))
            log.info("%-17s batch %5d  p50 %8.2f ms  p95 %8.2f ms  %9.0f img/s", name, bs, p50, rows[-1].p95_ms, rows[-1].images_per_second)
    base = {(r.backend.rsplit("-", 1)[1], r.batch_size): r.p50_ms for r in rows if r.backend.startswith("torch-")}
    return [
        BenchRow(r.backend, r.batch_size, r.p50_ms, r.p95_ms, r.images_per_second,
                 base[(r.backend.rsplit("-", 1)[1], r.batch_size)] / r.p50_ms)
        for r in rows
    ]
