"""Reduced-precision ONNX variants: INT8 static quantization (CPU) and FP16 (GPU providers).

Both are built with ONNX Runtime's own tools from the FP32 export:
- INT8: `quant_pre_process` (shape inference + basic graph optimisation), then
  `quantize_static` in QDQ format, uint8 activations and int8 per-channel weights, with
  activation ranges calibrated on a seeded sample of training images. ONNX Runtime turns the
  QDQ pairs into integer kernels (QLinearConv, ...) when a CPU session loads the file. The
  calibration head (logits / T, softmax) stays float: quantized, the `probabilities` output
  would move in steps of 1/256.
- FP16: `onnxruntime.transformers.float16.convert_float_to_float16`, float32 inputs and
  outputs kept, so callers feed the same pixels to every variant. ONNX Runtime's CPU provider
  runs it through inserted casts; it is meant for CUDA and TensorRT.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from auditflow.models.export.onnx import INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME
from auditflow.models.training.presets import to_input

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
    "distribution": CalibrationMethod.Distribution,
}
CALIBRATION_BATCH = 64  # images per calibration call; ranges do not depend on it


@dataclass(frozen=True)
class CalibrationInfo:
    """How the INT8 activation ranges were chosen, stored with the variant."""

    method: str  # minmax, entropy, percentile or distribution
    n_images: int  # training images run through the model
    seed: int  # seed of their sample
    reduce_range: bool  # 7-bit weights: no int16 saturation in AVX2/AVX-512 (non-VNNI) u8s8 kernels
    gelu: str = "float"  # "integer": GELU as uint8 QLinearSigmoid x QLinearMul (`gelu_as_int8_ops`)


class _ImageReader(CalibrationDataReader):
    """Feeds uint8 NHWC images to the calibrator as the model's float input, in batches."""

    def __init__(self, images: np.ndarray) -> None:
        self._starts = iter(range(0, len(images), CALIBRATION_BATCH))
        self._images = images

    def get_next(self) -> dict[str, np.ndarray] | None:
        start = next(self._starts, None)
        if start is None:
            return None
        return {INPUT_NAME: to_input(np.asarray(self._images[start : start + CALIBRATION_BATCH])).numpy()}


def calibration_sample(n_available: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of `n` (at most all) of `n_available` images. Sorted for
    memory-mapped reads; the order does not affect min/max or histogram calibration."""
    return np.sort(np.random.default_rng(seed).permutation(n_available)[:n])


def _calibration_head(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes between the `logits` and the `probabilities` outputs (the division by
    T and the softmax), naming any unnamed node on the way (in place)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    head, todo = [], [PROBABILITIES_NAME]
    while todo:
        node = producer.get(todo.pop())
        if node is None or OUTPUT_NAME in node.output or node in head:
            continue
        head.append(node)
        todo += list(node.input)
    for i, node in enumerate(head):
        node.name = node.name or f"calibration_head_{node.op_type}_{i}"
    return [node.name for node in head]


def quantize_int8(
    fp32_path: str | Path,
    dst: str | Path,
    calibration_images: np.ndarray,
    *,
    method: str = "minmax",
    seed: int = 0,
    reduce_range: bool = True,
) -> CalibrationInfo:
    """Write the static INT8 (QDQ, per-channel weights) model of `fp32_path` to `dst`,
    calibrated on uint8 NHWC `calibration_images` (already the seeded sample)."""
    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # symbolic shape inference cannot follow the exporter's dynamic Reshape; ONNX's own can
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        proto = onnx.load(str(prepared))
        head = _calibration_head(proto)
        onnx.save(proto, str(prepared))
        quantize_static(
            str(prepared),
            str(dst),
            _ImageReader(calibration_images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method],
            nodes_to_exclude=head,
        )
    onnx.checker.check_model(str(dst))
    log.info("quantized %s -> %s (%s calibration on %d images)", fp32_path, dst, method, len(calibration_images))
    return CalibrationInfo(method=method, n_images=len(calibration_images), seed=seed, reduce_range=reduce_range)


def convert_fp16(fp32_path: str | Path, dst: str | Path) -> Path:
    """Write the FP16 model of `fp32_path` to `dst`, float32 inputs and outputs kept."""
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True))
    model.graph.sort()  # the converter appends the input casts after the nodes that read them
    onnx_ir.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    return Path(dst)


GELU_SIGMOID_SLOPE = 1.702  # GELU(x) ~ x * sigmoid(1.702 x) (Hendrycks & Gimpel 2016), |error| < 0.02


def gelu_as_int8_ops(model: onnx.ModelProto) -> int:
    """Replace each DequantizeLinear -> Gelu -> QuantizeLinear chain of a QDQ model, in place,
    with ONNX Runtime's integer QLinearSigmoid and QLinearMul (com.microsoft):
    GELU(x) ~ x * sigmoid(1.702 x), computed on the uint8 tensor without leaving it.

    ONNX Runtime has no integer GELU, so without this every GELU dequantizes its input, runs
    erf in float and quantizes again, which costs about as much as the convolutions around it.
    The sigmoid form is an approximation (largest error 0.02 in GELU's output); the variant's
    accuracy check on the whole test split measures what it costs. 1.702 x is the same uint8
    tensor read with scale 1.702 s, so the sigmoid needs no rescaling op. Returns how many
    chains were replaced."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        producer.update(dict.fromkeys(node.output, node))
    inits = {i.name: i for i in graph.initializer}
    replaced, drop, added = 0, set(), {}
    for gelu in graph.node:
        if gelu.op_type != "Gelu" or any(a.name == "approximate" and a.s == b"tanh" for a in gelu.attribute):
            continue
        dq = producer.get(gelu.input[0])
        users = consumers.get(gelu.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        q = users[0]
        if min(len(dq.input), len(q.input)) < 3 or len(consumers[dq.output[0]]) != 1 or dq.input[1] not in inits:
            continue  # zero points are needed for the integer ops; a shared or dynamic input stays float
        x_q, x_scale, x_zero = dq.input[0], dq.input[1], dq.input[2]
        scale = float(onnx.numpy_helper.to_array(inits[x_scale]))
        tag = gelu.name or f"gelu{replaced}"
        sig_in_scale = onnx.numpy_helper.from_array(np.array(scale * GELU_SIGMOID_SLOPE, np.float32), f"{tag}_sig_in_s")
        sig_scale = onnx.numpy_helper.from_array(np.array(1 / 255, np.float32), f"{tag}_sig_s")
        sig_zero = onnx.numpy_helper.from_array(np.array(0, np.uint8), f"{tag}_sig_z")
        graph.initializer.extend([sig_in_scale, sig_scale, sig_zero])
        sig = onnx.helper.make_node(
            "QLinearSigmoid",
            [x_q, sig_in_scale.name, x_zero, sig_scale.name, sig_zero.name],
            [f"{tag}_sig"],
            name=f"{tag}_QLinearSigmoid",
            domain="com.microsoft",
        )
        mul = onnx.helper.make_node(
            "QLinearMul",
            [x_q, x_scale, x_zero, sig.output[0], sig_scale.name, sig_zero.name, q.input[1], q.input[2]],
            [q.output[0]],
            name=f"{tag}_QLinearMul",
            domain="com.microsoft",
        )
        drop |= {id(dq), id(gelu), id(q)}
        added[id(q)] = [sig, mul]  # where the chain's output was produced, to keep the order topological
        replaced += 1
    if replaced:
        nodes = []
        for node in graph.node:
            nodes += added.get(id(node), [])
            if id(node) not in drop:
                nodes.append(node)
        del graph.node[:]
        graph.node.extend(nodes)
        if not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return replaced
