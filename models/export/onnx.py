"""ONNX export with a dynamic batch axis, offline graph optimisation, sessions and parity checks.

The exported graph takes float32 N x 3 x H x W pixels in [0, 1] (`models.training.presets.to_input`)
and returns logits; normalisation is inside the graph. Test-time augmentation is not part
of the graph.

The shipped FP32 file is the exporter's graph after ONNX Runtime's offline optimiser at the
"extended" level (constant folding, Conv+BatchNorm and GELU fusions). The "all" level would
also bake in layout transforms for this CPU's vector width (NCHWc), which ONNX Runtime warns
are valid only on the machine that wrote them; sessions apply those at load time anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from torch import nn

from auditflow.core.errors import ModelError
from auditflow.models.training.presets import to_input

log = logging.getLogger(__name__)
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
# What a missing, truncated or foreign file raises while ONNX Runtime loads it.
_LOAD_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.NoSuchFile,
    ort_state.NoModel,
    ort_state.InvalidProtobuf,
    ort_state.InvalidGraph,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    ort_state.EPFail,
    RuntimeError,
    OSError,
)


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float  # largest |torch - onnxruntime| logit difference; 0 ideal
    top1_agreement: float  # share of images whose argmax agrees, 0..1; 1 ideal
    n_samples: int


def export_onnx(model: nn.Module, image_shape: tuple[int, int, int], path: str | Path, *, opset: int = 20) -> Path:
    """Export `model` (CPU, fp32, eval) to `path`; batch dimension dynamic. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, c = image_shape
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    example = torch.rand(2, c, h, w)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        verbose=False,
    )
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    log.info("exported %s (opset %d)", path, opset)
    return path


def optimize_onnx(src: str | Path, dst: str | Path) -> Path:
    """Run ONNX Runtime's graph optimiser (extended level, CPU provider) on `src`, write `dst`."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    _load(src, opts, ["CPUExecutionProvider"])
    onnx.checker.check_model(str(dst))
    return Path(dst)


def inference_providers() -> list[str]:
    """ONNX Runtime providers that can really run here, fastest first: TensorRT and CUDA only
    with a visible GPU. onnxruntime-gpu lists them even on machines without a driver, and then
    fails noisily when a session asks for them."""
    available = ort.get_available_providers()
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    return ([*gpu] if torch.cuda.is_available() else []) + ["CPUExecutionProvider"]


def _load(path: str | Path, opts: ort.SessionOptions, providers: list[Any]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except _LOAD_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load ONNX model {path}: {first}") from err


def onnx_session(
    path: str | Path, providers: list[Any] | None = None, threads: int | None = None
) -> ort.InferenceSession:
    """An inference session; `ModelError` naming the file when it is missing, truncated or not ONNX.
    `threads` sets the intra-op pool (None = ONNX Runtime's default: one per physical core)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # keep provider fallback chatter out of the logs
    return _load(path, opts, providers or ["CPUExecutionProvider"])


def _batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(images), batch_size):
        yield np.asarray(images[start : start + batch_size])


def torch_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float32 N x K logits of `model` (CPU, fp32, eval) on uint8 NHWC `images`."""
    model = model.to("cpu").float().eval()
    with torch.inference_mode():
        return np.concatenate([model(to_input(b)).numpy() for b in _batches(images, batch_size)])


def onnx_logits(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float32 N x K logits of an ONNX session on uint8 NHWC `images`."""
    outs = [session.run([OUTPUT_NAME], {INPUT_NAME: to_input(b).numpy()})[0] for b in _batches(images, batch_size)]
    return np.concatenate(outs).astype(np.float32)


def compare_logits(ref: np.ndarray, got: np.ndarray) -> ParityResult:
    """Largest absolute logit difference and top-1 agreement of two N x K arrays."""
    return ParityResult(
        max_abs_diff=float(np.abs(ref - got).max()),
        top1_agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
        n_samples=len(ref),
    )


def check_parity(model: nn.Module, onnx_path: str | Path, images: np.ndarray, *, batch_size: int = 256) -> ParityResult:
    """Compare torch (CPU, fp32) and ONNX Runtime (CPU) logits on uint8 NHWC `images`."""
    session = onnx_session(onnx_path)
    return compare_logits(torch_logits(model, images, batch_size), onnx_logits(session, images, batch_size))
