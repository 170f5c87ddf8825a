"""ONNX export with a dynamic batch axis, checked with `onnx.checker` and against torch.

The exported graph takes float32 N x 3 x H x W pixels in [0, 1] (`models.presets.to_input`)
and returns logits; normalisation is inside the graph. Test-time augmentation is not part
of the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from auditflow.models.presets import to_input

log = logging.getLogger(__name__)
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float  # largest |torch - onnxruntime| logit difference; 0 ideal
    top1_agreement: float  # share of images whose argmax agrees, 0..1; 1 ideal
    n_samples: int


def export_onnx(model: nn.Module, image_shape: tuple[int, int, int], path: str | Path, opset: int = 18) -> Path:
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


def inference_providers() -> list[str]:
    """ONNX Runtime providers that can really run here: CUDA only with a visible GPU.

    onnxruntime-gpu lists CUDAExecutionProvider even on machines without a driver, and then
    fails noisily when a session asks for it.
    """
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def onnx_session(path: str | Path, providers: list[str] | None = None, threads: int | None = None) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # keep provider fallback chatter out of the logs
    return ort.InferenceSession(str(path), opts, providers=providers or ["CPUExecutionProvider"])


def check_parity(model: nn.Module, onnx_path: str | Path, images: np.ndarray, batch_size: int = 256) -> ParityResult:
    """Compare torch (CPU, fp32) and ONNX Runtime (CPU) logits on uint8 NHWC `images`."""
    model = model.to("cpu").float().eval()
    session = onnx_session(onnx_path)
    diffs, agree = [], 0
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size])
        with torch.no_grad():
            ref = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        diffs.append(np.abs(ref - got).max())
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
    return ParityResult(max_abs_diff=float(max(diffs)), top1_agreement=agree / len(images), n_samples=len(images))
