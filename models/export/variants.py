"""The ONNX variants a run may ship, and the two checks each must pass before it is called shippable.

1. It loads in every ONNX Runtime provider present here and answers sample queries.
2. Its top-1 accuracy and agreement with the torch model are measured on the whole test
   split; losing more than `max_accuracy_drop` percentage points marks it failing.

The variants and their verdicts are written to `variants.json` beside the shipped FP32 file,
so the benchmark (and `auditflow bench` on a past run) reads which files exist and which may
be recommended.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from auditflow.core.config import ExportConfig
from auditflow.core.errors import ModelError
from auditflow.models.export.fusion import fold_for_inference
from auditflow.models.export.onnx import export_onnx, inference_providers, onnx_logits, onnx_session, optimize_onnx
from auditflow.models.export.quantize import CalibrationInfo, convert_fp16, gelu_as_int8_ops, quantize_int8

log = logging.getLogger(__name__)

VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
MANIFEST = "variants.json"
# Where each variant's accuracy is measured: where it is meant to run, when that provider loaded.
MEASURE_ON = {
    "fp32": ("CPUExecutionProvider",),
    "int8": ("CPUExecutionProvider",),
    "fp16": ("CUDAExecutionProvider", "CPUExecutionProvider"),
}


@dataclass(frozen=True)
class VariantCheck:
    """One variant's verdict and the values it was judged on."""

    variant: str  # fp32, int8, fp16
    path: str
    size_mb: float
    providers: dict[str, str]  # provider -> "ok" or why it failed to load or answer
    measured_on: str  # provider whose test-set logits are judged ("" when none loaded)
    accuracy: float  # top-1 on the whole test split, 0..1, higher is better
    reference_accuracy: float  # the torch model's on the same images (fp32, no TTA)
    accuracy_drop: float  # percentage points below the torch model; <= 0 ideal
    top1_agreement: float  # share of test images whose argmax matches torch's, 0..1; 1 ideal
    max_abs_diff: float  # largest |logit difference| with torch over the test split; 0 ideal
    max_accuracy_drop: float  # the limit judged against, percentage points
    verdict: str  # "pass" or "fail"
    reasons: tuple[str, ...]  # why it failed; empty when it passed


def build_variants(
    model: nn.Module,
    *,
    image_shape: tuple[int, int, int],
    out_dir: str | Path,
    calibration_images: np.ndarray,
    cfg: ExportConfig,
) -> tuple[dict[str, Path], CalibrationInfo | None]:
    """Export, optimise and convert: variant name -> file in `out_dir`, and the INT8 calibration.

    Every variant is exported from `fold_for_inference(model)` (exact folds; the parity check
    compares it with `model` itself). INT8 is quantized from the unoptimised export (its
    pre-processing optimises it the way the quantizer expects), then, with
    `int8_gelu: integer`, its GELUs are moved onto uint8 (`gelu_as_int8_ops`); FP16 is converted
    from the optimised FP32 file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = export_onnx(fold_for_inference(model), image_shape, out / "model.raw.onnx", opset=cfg.opset)
    paths = {"fp32": optimize_onnx(raw, out / VARIANT_FILES["fp32"])}
    calibration = None
    if "int8" in cfg.variants:
        paths["int8"] = out / VARIANT_FILES["int8"]
        calibration = quantize_int8(
            raw,
            paths["int8"],
            calibration_images,
            method=cfg.calibration_method,
            seed=cfg.calibration_seed,
            reduce_range=cfg.int8_reduce_range,
        )
        if cfg.int8_gelu == "integer":
            proto = onnx.load(str(paths["int8"]))
            log.info("INT8: %d GELU(s) computed on uint8", gelu_as_int8_ops(proto))
            onnx.save(proto, str(paths["int8"]))
            onnx.checker.check_model(str(paths["int8"]))
            calibration = replace(calibration, gelu="integer")
    if "fp16" in cfg.variants:
        paths["fp16"] = convert_fp16(paths["fp32"], out / VARIANT_FILES["fp16"])
    raw.unlink()
    return paths, calibration


def _provider_list(provider: str) -> list[object]:
    if provider == "TensorrtExecutionProvider":
        # engines for the sample batch only; no engine cache between checks
        return [(provider, {"trt_engine_cache_enable": False}), "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]


def check_variant(
    variant: str,
    path: str | Path,
    *,
    test_x: np.ndarray,
    test_y: np.ndarray,
    reference_logits: np.ndarray,
    max_accuracy_drop: float,
    check_samples: int = 8,
    providers: list[str] | None = None,
) -> VariantCheck:
    """Load `path` in every provider (default: those present) and answer `check_samples` queries;
    then judge its logits on the whole test split (uint8 NHWC `test_x`, labels `test_y`) against
    the torch model's `reference_logits` on the same images."""
    providers = providers or inference_providers()
    loads: dict[str, str] = {}
    sessions = {}
    sample = np.asarray(test_x[:check_samples])
    for provider in providers:
        try:
            session = onnx_session(path, _provider_list(provider))  # type: ignore[arg-type]
            if provider not in session.get_providers():
                raise ModelError(f"{provider} did not load; the session runs on {session.get_providers()}")
            out = onnx_logits(session, sample)
            if out.shape != reference_logits[: len(sample)].shape or not np.isfinite(out).all():
                raise ModelError(
                    f"sample queries gave logits of shape {out.shape} with non-finite values "
                    f"or the wrong shape (expected {reference_logits[: len(sample)].shape})"
                )
            loads[provider], sessions[provider] = "ok", session
        except ModelError as err:
            loads[provider] = str(err)
    reasons = [f"{p}: {why}" for p, why in loads.items() if why != "ok"]
    reference_accuracy = float((reference_logits.argmax(1) == test_y).mean())
    measured_on = next((p for p in MEASURE_ON.get(variant, ()) if p in sessions), next(iter(sessions), ""))
    if measured_on:
        logits = onnx_logits(sessions[measured_on], test_x)
        accuracy = float((logits.argmax(1) == test_y).mean())
        agreement = float((logits.argmax(1) == reference_logits.argmax(1)).mean())
        max_abs_diff = float(np.abs(logits - reference_logits).max())
    else:
        accuracy = agreement = max_abs_diff = float("nan")
        reasons.append("no provider could run it, so its accuracy is unknown")
    drop = 100 * (reference_accuracy - accuracy)
    if drop > max_accuracy_drop:
        reasons.append(
            f"loses {drop:.2f} accuracy points on {len(test_y)} test images "
            f"(limit export.max_accuracy_drop={max_accuracy_drop})"
        )
    check = VariantCheck(
        variant=variant,
        path=str(path),
        size_mb=Path(path).stat().st_size / 1e6,
        providers=loads,
        measured_on=measured_on,
        accuracy=accuracy,
        reference_accuracy=reference_accuracy,
        accuracy_drop=drop,
        top1_agreement=agreement,
        max_abs_diff=max_abs_diff,
        max_accuracy_drop=max_accuracy_drop,
        verdict="fail" if reasons else "pass",
        reasons=tuple(reasons),
    )
    log.info(
        "variant %s: %s (accuracy %.2f%%, %+.2f points vs torch, agreement %.2f%%)",
        variant,
        check.verdict,
        100 * accuracy,
        -drop,
        100 * agreement,
    )
    return check


def write_manifest(out_dir: str | Path, checks: list[VariantCheck], calibration: CalibrationInfo | None) -> Path:
    """`variants.json`: each variant's file (relative to the folder) and verdict."""
    path = Path(out_dir) / MANIFEST
    entries = {c.variant: {**asdict(c), "path": Path(c.path).name} for c in checks}
    path.write_text(json.dumps({"variants": entries, "calibration": calibration and asdict(calibration)}, indent=2))
    return path


def read_manifest(fp32_path: str | Path) -> dict[str, tuple[Path, str]]:
    """variant -> (file, verdict) from the `variants.json` beside the shipped FP32 file; only
    the FP32 file, verdict "pass" (its parity was checked at export), when there is none."""
    fp32_path = Path(fp32_path)
    manifest = fp32_path.parent / MANIFEST
    if not manifest.is_file():
        return {"fp32": (fp32_path, "pass")}
    try:
        entries = json.loads(manifest.read_text())["variants"]
        return {name: (fp32_path.parent / e["path"], e["verdict"]) for name, e in entries.items()}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"{manifest} is not a variants manifest: {err}") from err
