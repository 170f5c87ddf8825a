"""Inference benchmark: torch (eager, compiled, CUDA graphs) against the ONNX variants.

Method, per backend and batch size:
- the model or session is built once per backend, the input batch once per case; torch
  inputs start on the backend's device, ONNX Runtime CUDA inputs too (I/O binding), so no case
  times a host-to-device copy;
- at least one untimed warm-up call (torch.compile compiles and CUDA graphs are captured there);
- timed calls, each closed by a device synchronisation, until at least `min_repeats` calls
  and `min_seconds` have run, or `max_seconds` has passed: p99 rests on repeats / 100 calls;
- p50/p95/p99 latency of one batch, and throughput = batch size / mean latency.
torch and ONNX Runtime get the same explicit CPU thread count; torch's is restored afterwards.
Achieved FLOP/s = FLOPs per image (torch's flop counter, multiply-add = 2) x images/s, as a
fraction of the device's peak (`models.training.speed.device_peak`, which names its source).
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from auditflow.core.errors import ModelError
from auditflow.models.export.onnx import INPUT_NAME, OUTPUT_NAMES, onnx_session
from auditflow.models.training.presets import to_input
from auditflow.models.training.runtime import Runtime
from auditflow.models.training.speed import device_peak

log = logging.getLogger(__name__)

Run = Callable[[], object]
CPU_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


class Unavailable(Exception):
    """A backend that cannot run on this machine (no GPU, provider missing, variant not built)."""


@dataclass(frozen=True)
class BenchRow:
    backend: str  # e.g. torch-eager, onnx-int8, onnx-fp16-cuda
    variant: str  # the numbers the model computes in: fp32, int8, fp16, bf16
    device: str  # cpu or cuda
    batch_size: int
    repeats: int  # timed calls; p99 rests on repeats / 100 of them
    p50_ms: float  # median latency of one batch, lower is better
    p95_ms: float
    p99_ms: float
    mean_ms: float
    images_per_second: float  # batch_size / mean latency, higher is better
    speedup_vs_eager: float  # images/s over torch-eager's on the same device and batch; >1 = faster
    latency_speedup_vs_eager: float  # torch-eager's p50 / this p50 at the same batch; >1 = faster
    achieved_flops_per_second: float  # FLOPs per image x images/s
    fraction_of_peak: float  # of the device peak named in the result, 0..1
    verdict: str  # the variant's verdict at export: pass | fail | inconclusive ("pass" for torch fp32)


@dataclass(frozen=True)
class BenchResult:
    rows: list[BenchRow]
    threads: int  # CPU threads given to torch and ONNX Runtime alike
    flops_per_image: float  # forward pass, multiply-add = 2
    peaks: dict[str, dict[str, Any]]  # device -> {"flops_per_second", "source"}
    hardware: dict[str, Any]  # CPU model and flags, GPU, library versions
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it did not run


# ---------------------------------------------------------------------------------- backends
# Each builder returns make(batch) -> (run one batch, synchronise); it raises Unavailable.
Make = Callable[[np.ndarray], tuple[Run, Callable[[], None]]]


def _nothing() -> None:
    return None


def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        raise Unavailable("needs a CUDA device")


def _torch(model: nn.Module, device: str, compile: bool = False) -> Make:
    """torch in fp32 on `device`, eager or compiled."""
    if device == "cuda":
        _needs_cuda()
    net: nn.Module = copy.deepcopy(model).to(device).float().eval()  # .to() is in place: a copy per backend
    if compile:
        # dynamic=False: one specialised graph per batch size, compiled in that case's warm-up
        net = torch.compile(net, dynamic=False)  # type: ignore[assignment]
    sync = torch.cuda.synchronize if device == "cuda" else _nothing

    def make(batch: np.ndarray) -> tuple[Run, Callable[[], None]]:
        x = to_input(batch, device)

        def run() -> object:
            with torch.inference_mode():
                return net(x)

        return run, sync

    return make


def _torch_cudagraph(model: nn.Module, dtype: torch.dtype) -> Make:
    """The model in `dtype`, one CUDA graph per batch size: a replay launches every kernel at once."""
    _needs_cuda()
    net = copy.deepcopy(model).to("cuda", dtype).eval()

    def make(batch: np.ndarray) -> tuple[Run, Callable[[], None]]:
        static_x = to_input(batch, "cuda").to(dtype)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(3):  # cuDNN picks its algorithms before capture
                net(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            net(static_x)  # output stays in the graph's memory pool
        return graph.replay, torch.cuda.synchronize

    return make


def _onnx_cpu(path: Path, threads: int) -> Make:
    session = onnx_session(path, ["CPUExecutionProvider"], threads)

    def make(batch: np.ndarray) -> tuple[Run, Callable[[], None]]:
        feed = {INPUT_NAME: to_input(batch).numpy()}
        outputs = list(OUTPUT_NAMES)  # both, as a caller of the shipped file would fetch them
        return (lambda: session.run(outputs, feed)), _nothing

    return make


def _onnx_gpu(path: Path, providers: list[Any], needed: str) -> Make:
    """A CUDA or TensorRT session fed through I/O binding: input and output stay on the GPU."""
    import onnxruntime as ort

    _needs_cuda()
    if needed not in ort.get_available_providers():
        raise Unavailable(f"this onnxruntime build has no {needed}")
    session = onnx_session(path, providers)
    if needed not in session.get_providers():
        raise Unavailable(
            f"{needed} did not load (libraries missing?); the session fell back to {session.get_providers()}"
        )

    def make(batch: np.ndarray) -> tuple[Run, Callable[[], None]]:
        x = ort.OrtValue.ortvalue_from_numpy(to_input(batch).numpy(), "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, x)
        for name in OUTPUT_NAMES:
            binding.bind_output(name, "cuda")
        return (lambda: session.run_with_iobinding(binding)), _nothing  # returns once outputs are ready

    return make


def _tensorrt_providers(image_shape: tuple[int, int, int], max_batch: int) -> list[Any]:
    h, w, c = image_shape
    options = {
        "trt_fp16_enable": True,
        "trt_profile_min_shapes": f"{INPUT_NAME}:1x{c}x{h}x{w}",
        "trt_profile_opt_shapes": f"{INPUT_NAME}:{max_batch}x{c}x{h}x{w}",
        "trt_profile_max_shapes": f"{INPUT_NAME}:{max_batch}x{c}x{h}x{w}",
    }
    return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]


def _variant(paths: dict[str, Path], name: str) -> Path:
    if name not in paths:
        raise Unavailable(f"no {name} variant was built (export.variants)")
    return paths[name]


# backend -> (variant, device, builder(model, variant paths, threads, image shape, largest batch))
BACKENDS: dict[str, tuple[str, str, Callable[..., Make]]] = {
    "torch-eager": ("fp32", "cpu", lambda m, p, t, s, b: _torch(m, "cpu")),
    "torch-compile": ("fp32", "cpu", lambda m, p, t, s, b: _torch(m, "cpu", compile=True)),
    "onnx-fp32": ("fp32", "cpu", lambda m, p, t, s, b: _onnx_cpu(_variant(p, "fp32"), t)),
    "onnx-int8": ("int8", "cpu", lambda m, p, t, s, b: _onnx_cpu(_variant(p, "int8"), t)),
    "torch-eager-cuda": ("fp32", "cuda", lambda m, p, t, s, b: _torch(m, "cuda")),
    "torch-compile-cuda": ("fp32", "cuda", lambda m, p, t, s, b: _torch(m, "cuda", compile=True)),
    "torch-cudagraph-fp16-cuda": ("fp16", "cuda", lambda m, p, t, s, b: _torch_cudagraph(m, torch.float16)),
    "torch-cudagraph-bf16-cuda": ("bf16", "cuda", lambda m, p, t, s, b: _torch_cudagraph(m, torch.bfloat16)),
    "onnx-fp32-cuda": (
        "fp32",
        "cuda",
        lambda m, p, t, s, b: _onnx_gpu(
            _variant(p, "fp32"), ["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider"
        ),
    ),
    "onnx-fp16-cuda": (
        "fp16",
        "cuda",
        lambda m, p, t, s, b: _onnx_gpu(
            _variant(p, "fp16"), ["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider"
        ),
    ),
    # TensorRT builds its own fp16 engine from the FP32 graph
    "onnx-fp16-tensorrt": (
        "fp16",
        "cuda",
        lambda m, p, t, s, b: _onnx_gpu(_variant(p, "fp32"), _tensorrt_providers(s, b), "TensorrtExecutionProvider"),
    ),
}
EAGER = {"cpu": "torch-eager", "cuda": "torch-eager-cuda"}


# ------------------------------------------------------------------------------ measurement
def time_calls(
    run: Run, sync: Callable[[], None], *, warmup: int, min_repeats: int, min_seconds: float, max_seconds: float
) -> np.ndarray:
    """Latencies (ms) of timed calls of `run`, after at least one untimed warm-up call."""
    for _ in range(max(warmup, 1)):
        run()
    sync()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        run()
        sync()  # sync point: CUDA work is asynchronous
        t1 = time.perf_counter()
        times.append(t1 - t0)
        elapsed = t1 - start
        if elapsed >= max_seconds or (len(times) >= min_repeats and elapsed >= min_seconds):
            return np.asarray(times) * 1e3


def inference_flops_per_image(model: nn.Module, image_shape: tuple[int, int, int]) -> float:
    """FLOPs of one forward pass per image (torch's flop counter: convolutions and matrix products,
    multiply-add = 2), counted on a CPU copy of `model`."""
    probe = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().eval()
    h, w, c = image_shape
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        probe(torch.rand(2, c, h, w))
    return counter.get_total_flops() / 2


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(threads: int) -> dict[str, Any]:
    """What the numbers were measured on: CPU model and vector flags, GPU, library versions."""
    import onnx
    import onnxruntime

    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags", 2)[1].splitlines()[0].split())
    except (OSError, IndexError):
        flags = set()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }
    return info


def describe_device(hardware: dict[str, Any]) -> str:
    """One line for the report's heading."""
    cpu = f"{hardware['cpu']} ({', '.join(hardware['cpu_flags']) or 'no AVX2'}), {hardware['threads']} threads"
    return f"{hardware['gpu']} + {cpu}" if hardware.get("gpu") else cpu


def _peaks(devices: set[str]) -> dict[str, dict[str, Any]]:
    peaks = {}
    for device in sorted(devices):
        # CPU: fp32 matmul measured now, at the benchmark's thread count; GPU: bf16/fp16 datasheet peak
        runtime = Runtime(torch.device(device), torch.bfloat16 if device == "cuda" else None, device == "cuda")
        peak = device_peak(runtime)
        peaks[device] = {"flops_per_second": peak.flops_per_second, "source": peak.source}
    return peaks


def _verdict(backend: str, variant: str, verdicts: dict[str, str]) -> str:
    """torch in fp32 is the reference; torch in half precision was never checked for accuracy;
    ONNX backends carry their variant's export verdict (TensorRT's fp16 engine: the FP16 file's)."""
    if backend.startswith("torch"):
        return "pass" if variant == "fp32" else "unchecked"
    return verdicts.get(variant, "unchecked")


def benchmark(
    model: nn.Module,
    variants: dict[str, tuple[Path, str]],
    images: np.ndarray,
    *,
    batch_sizes: tuple[int, ...],
    backends: tuple[str, ...] | None = None,
    warmup: int = 5,
    min_repeats: int = 200,
    min_seconds: float = 1.0,
    max_seconds: float = 20.0,
    threads: int | None = None,
) -> BenchResult:
    """Time each backend (default: all that can run here) at each batch size on uint8 NHWC
    `images` (tiled when a batch is larger). `variants` maps fp32/int8/fp16 to (ONNX file,
    accuracy verdict), as `models.export.variants.read_manifest` returns."""
    threads = threads or len(os.sched_getaffinity(0))
    image_shape = tuple(images.shape[1:])
    paths = {name: path for name, (path, _) in variants.items()}
    verdicts = {name: verdict for name, (_, verdict) in variants.items()}
    wanted = backends or tuple(BACKENDS)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the same budget for torch as for ONNX Runtime
    try:
        rows: list[dict[str, Any]] = []
        skipped: dict[str, str] = {}
        for name in wanted:
            variant, device, build = BACKENDS[name]
            try:
                make = build(model, paths, threads, image_shape, max(batch_sizes))
                for bs in batch_sizes:
                    batch = np.resize(np.asarray(images), (bs, *image_shape))  # repeats images when bs > len
                    run, sync = make(batch)
                    ms = time_calls(
                        run,
                        sync,
                        warmup=warmup,
                        min_repeats=min_repeats,
                        min_seconds=min_seconds,
                        max_seconds=max_seconds,
                    )
                    rows.append(
                        {
                            "backend": name,
                            "variant": variant,
                            "device": device,
                            "batch_size": bs,
                            "repeats": len(ms),
                            "p50_ms": float(np.percentile(ms, 50)),
                            "p95_ms": float(np.percentile(ms, 95)),
                            "p99_ms": float(np.percentile(ms, 99)),
                            "mean_ms": float(ms.mean()),
                            "verdict": _verdict(name, variant, verdicts),
                        }
                    )
                    log.info(
                        "%-26s batch %4d  p50 %8.2f ms  p99 %8.2f ms  %9.0f img/s  (%d calls)",
                        name,
                        bs,
                        rows[-1]["p50_ms"],
                        rows[-1]["p99_ms"],
                        bs / rows[-1]["mean_ms"] * 1e3,
                        len(ms),
                    )
            except (Unavailable, ModelError) as err:
                skipped[name] = str(err)
                log.info("%s skipped: %s", name, err)
        flops = inference_flops_per_image(model, image_shape)
        peaks = _peaks({r["device"] for r in rows})
        hardware = hardware_info(threads)
    finally:
        torch.set_num_threads(saved_threads)
    return BenchResult(_finish(rows, flops, peaks), threads, flops, peaks, hardware, skipped)


def _finish(rows: list[dict[str, Any]], flops: float, peaks: dict[str, dict[str, Any]]) -> list[BenchRow]:
    """Throughput, speed-ups against torch eager on the same device and batch, share of peak."""
    eager = {(r["device"], r["batch_size"]): r for r in rows if r["backend"] == EAGER[r["device"]]}
    out = []
    for r in rows:
        ips = r["batch_size"] / (r["mean_ms"] / 1e3)
        base = eager.get((r["device"], r["batch_size"]))
        out.append(
            BenchRow(
                **r,
                images_per_second=ips,
                speedup_vs_eager=ips / (base["batch_size"] / (base["mean_ms"] / 1e3)) if base else float("nan"),
                latency_speedup_vs_eager=base["p50_ms"] / r["p50_ms"] if base else float("nan"),
                achieved_flops_per_second=flops * ips,
                fraction_of_peak=flops * ips / peaks[r["device"]]["flops_per_second"],
            )
        )
    return out


def recommend(rows: list[BenchRow]) -> dict[str, dict[str, Any]]:
    """Per device: what to ship for a latency target (lowest p99 at the smallest batch timed) and
    for a throughput target (most images/s at the largest batch timed), among backends whose
    variant passed its checks at export (a variant that failed, or whose paired intervals were
    inconclusive, is not recommended); with the reason in words."""
    out: dict[str, dict[str, Any]] = {}
    for device in sorted({r.device for r in rows}):
        ok = [r for r in rows if r.device == device and r.verdict == "pass"]
        if not ok:
            continue
        small, large = min(r.batch_size for r in ok), max(r.batch_size for r in ok)
        fast = min((r for r in ok if r.batch_size == small), key=lambda r: r.p99_ms)
        wide = max((r for r in ok if r.batch_size == large), key=lambda r: r.images_per_second)
        excluded = sorted({f"{r.backend} ({r.verdict})" for r in rows if r.device == device and r.verdict != "pass"})
        note = (
            f"; not recommended, its export checks did not pass (see the export section for why) or were not run: "
            f"{', '.join(excluded)}"
            if excluded
            else ""
        )
        out[device] = {
            "latency": {
                "backend": fast.backend,
                "batch_size": small,
                "p50_ms": fast.p50_ms,
                "p99_ms": fast.p99_ms,
                "reason": f"lowest p99 latency at batch {small}: {fast.p99_ms:.2f} ms (p50 {fast.p50_ms:.2f} "
                f"ms), {fast.latency_speedup_vs_eager:.2f}x torch eager's p50{note}",
            },
            "throughput": {
                "backend": wide.backend,
                "batch_size": large,
                "images_per_second": wide.images_per_second,
                "reason": f"most images/s at batch {large}: {wide.images_per_second:.0f}, "
                f"{wide.speedup_vs_eager:.2f}x torch eager{note}",
            },
        }
    return out
