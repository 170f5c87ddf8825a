"""ONNX export with a dynamic batch axis, offline graph optimisation, sessions and parity checks.

The exported graph takes float32 N x 3 x H x W pixels in [0, 1] (`models.training.presets.to_input`)
and returns two outputs: `logits` (N x K, raw, first so that callers fetching one output keep
working) and `probabilities` (N x K, softmax(logits / T) with the calibration temperature T that
the evaluate stage fitted on the validation split folded into the graph). Normalisation is inside
the graph; test-time augmentation is not. The outputs, T and where it was fitted are written into
the file (`doc_string` of the model and of each output, and metadata `auditflow.temperature`,
`auditflow.outputs`), so the file says what it ships.

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
OUTPUT_NAME = "logits"  # raw logits, N x K
PROBABILITIES_NAME = "probabilities"  # calibrated: softmax(logits / T), N x K, rows sum to 1
OUTPUT_NAMES = (OUTPUT_NAME, PROBABILITIES_NAME)
TEMPERATURE_KEY = "auditflow.temperature"  # ONNX metadata: T as text
OUTPUTS_KEY = "auditflow.outputs"  # ONNX metadata: what each output holds
OFFSETS_KEY = "auditflow.logit_offsets"  # ONNX metadata of the adjusted variant: its per-class offsets
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
    probabilities_max_abs_diff: float = float("nan")  # largest |difference| of the probabilities output, 0..1


class Calibrated(nn.Module):
    """`net` with the calibration folded in: returns (logits, softmax(logits / T)); T is a buffer,
    so it travels with the exported graph as a constant."""

    def __init__(self, net: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.net = net
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, torch.softmax(logits / self.temperature, dim=1)


class Adjusted(nn.Module):
    """`net` with per-class logit offsets added (the fairness audit's logit adjustment, tuned on
    the validation split): `net(x) + offsets`. The offsets are a buffer, so they travel with the
    exported graph as a constant."""

    def __init__(self, net: nn.Module, offsets: np.ndarray | list[float] | tuple[float, ...]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("offsets", torch.as_tensor(np.asarray(offsets, dtype=np.float32)).reshape(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.offsets


def output_docs(temperature: float, fitted_on: str, offsets: tuple[float, ...] | None = None) -> dict[str, str]:
    """What each graph output holds, in words (also the model card's); `offsets` for a file with
    the logit adjustment folded in."""
    logits = "raw logits, N x K (float32); argmax is the predicted class"
    if offsets is not None:
        shown = ", ".join(f"{o:+.4g}" for o in offsets)
        logits = (
            f"the model's logits plus per-class offsets ({shown}; logit adjustment tuned on the validation split "
            "to raise the worst class's recall), N x K (float32); argmax is the predicted class"
        )
    return {
        OUTPUT_NAME: logits,
        PROBABILITIES_NAME: f"calibrated class probabilities, N x K (float32, rows sum to 1): "
        f"softmax(logits / T) with T = {temperature:.6g} (temperature scaling fitted on {fitted_on}); "
        "the same argmax as the logits",
    }


def export_onnx(
    model: nn.Module,
    image_shape: tuple[int, int, int],
    path: str | Path,
    *,
    temperature: float = 1.0,
    opset: int = 20,
) -> Path:
    """Export `model` (CPU, fp32, eval) with its calibration (`Calibrated`) to `path`: outputs
    `logits` and `probabilities`, batch dimension dynamic. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, c = image_shape
    model = model.to("cpu", memory_format=torch.contiguous_format).float().eval()
    example = torch.rand(2, c, h, w)
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.onnx.export(
        Calibrated(model, temperature).eval(),
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        verbose=False,
    )
    program.save(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    log.info("exported %s (opset %d)", path, opset)
    return path


def document_outputs(
    path: str | Path, *, temperature: float, fitted_on: str, offsets: tuple[float, ...] | None = None
) -> Path:
    """Write what the outputs hold into the ONNX file at `path` (in place): the model's and each
    output's `doc_string`, and metadata `auditflow.temperature`, `auditflow.outputs` and, for a
    file with the logit adjustment folded in, `auditflow.logit_offsets`."""
    proto = onnx.load(str(path))
    docs = output_docs(temperature, fitted_on, offsets)
    names = [o.name for o in proto.graph.output]
    if names != list(OUTPUT_NAMES):
        raise ModelError(f"{path} has outputs {names}; expected {list(OUTPUT_NAMES)}")
    for output in proto.graph.output:
        output.doc_string = docs[output.name]
    proto.doc_string = "; ".join(f"{name}: {text}" for name, text in docs.items())
    props = {p.key: p.value for p in proto.metadata_props} | {
        TEMPERATURE_KEY: repr(float(temperature)),
        OUTPUTS_KEY: ", ".join(OUTPUT_NAMES),
    }
    if offsets is not None:
        props[OFFSETS_KEY] = ", ".join(repr(float(o)) for o in offsets)
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))
    return Path(path)


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


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """float32 softmax(logits / T) computed as the graph's `Calibrated` head computes it (torch,
    float32), for comparing with the `probabilities` output."""
    with torch.inference_mode():
        return torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)) / float(temperature), dim=1).numpy()


def onnx_outputs(
    session: ort.InferenceSession, images: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """float32 N x K (logits, probabilities) of an ONNX session on uint8 NHWC `images`."""
    outs = [session.run(list(OUTPUT_NAMES), {INPUT_NAME: to_input(b).numpy()}) for b in _batches(images, batch_size)]
    logits = np.concatenate([o[0] for o in outs]).astype(np.float32)
    return logits, np.concatenate([o[1] for o in outs]).astype(np.float32)


def onnx_logits(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float32 N x K logits (the first output) of an ONNX session on uint8 NHWC `images`."""
    outs = [session.run([OUTPUT_NAME], {INPUT_NAME: to_input(b).numpy()})[0] for b in _batches(images, batch_size)]
    return np.concatenate(outs).astype(np.float32)


def compare_logits(
    ref: np.ndarray,
    got: np.ndarray,
    *,
    ref_probabilities: np.ndarray | None = None,
    got_probabilities: np.ndarray | None = None,
) -> ParityResult:
    """Largest absolute logit difference and top-1 agreement of two N x K arrays, and the
    largest absolute difference of their probabilities when both are given."""
    probabilities = float("nan")
    if ref_probabilities is not None and got_probabilities is not None:
        probabilities = float(np.abs(ref_probabilities - got_probabilities).max())
    return ParityResult(
        max_abs_diff=float(np.abs(ref - got).max()),
        top1_agreement=float((ref.argmax(1) == got.argmax(1)).mean()),
        n_samples=len(ref),
        probabilities_max_abs_diff=probabilities,
    )


def check_parity(
    model: nn.Module, onnx_path: str | Path, images: np.ndarray, *, temperature: float = 1.0, batch_size: int = 256
) -> ParityResult:
    """Compare torch (CPU, fp32) and ONNX Runtime (CPU) on uint8 NHWC `images`: the logits, and
    the file's `probabilities` output with softmax(torch logits / `temperature`)."""
    session = onnx_session(onnx_path)
    ref = torch_logits(model, images, batch_size)
    logits, probabilities = onnx_outputs(session, images, batch_size)
    return compare_logits(
        ref, logits, ref_probabilities=calibrated_probabilities(ref, temperature), got_probabilities=probabilities
    )
