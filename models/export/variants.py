"""The ONNX variants a run may ship, and the checks each must pass before it is recommended.

1. It loads in every ONNX Runtime provider present here and answers sample queries with both
   outputs (`logits`, and `probabilities` with the calibration temperature folded in).
2. Its answers on the whole test split are compared with the torch model's on the same images.
   The shipped FP32 file is the same function as torch, so it is judged by parity: its logits and
   probabilities within `export.max_abs_diff` and `export.max_probability_diff` of torch's on every
   test image. Every other variant (INT8, FP16) is a different function, judged on paired exact
   intervals (`paired.judge_paired`): the accuracy points it loses, and each class's recall points
   lost (simultaneous intervals). It is `pass` (recommendable) only when every interval clears its
   limit; `fail` when one lies wholly beyond it; `inconclusive` when the test split cannot tell.
   Each variant's ECE is measured on its own `probabilities` output and reported.
3. The adjusted variant (FP32 with the fairness audit's per-class logit offsets folded in, built
   only when the fairness stage finds it worth exporting) is the function torch logits + offsets:
   judged by parity with that on every test image, and by its accuracy cost against the plain
   model on a paired exact interval (`fairness.mitigation_max_accuracy_drop`). Its per-class
   recalls are deliberately moved: the fairness stage judges them (group `fairness_adjusted`).

The variants and their verdicts are written to `variants.json` beside the shipped FP32 file,
so the benchmark (and `auditflow bench` on a past run) reads which files exist and which may
be recommended. A variant's verdict never changes the run's `verdict/overall`
(`auditflow.core.names.Verdict.gates`): a variant that is not `pass` is simply not recommended.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from auditflow.core.config import ExportConfig
from auditflow.core.errors import ModelError
from auditflow.core.names import Export, Verdict
from auditflow.models.evaluation.metrics import expected_calibration_error
from auditflow.models.export.fusion import fold_for_inference
from auditflow.models.export.onnx import (
    OUTPUT_NAMES,
    Adjusted,
    calibrated_probabilities,
    document_outputs,
    export_onnx,
    inference_providers,
    onnx_outputs,
    onnx_session,
    optimize_onnx,
)
from auditflow.models.export.paired import ClassLoss, judge_paired
from auditflow.models.export.quantize import CalibrationInfo, convert_fp16, gelu_as_int8_ops, quantize_int8

log = logging.getLogger(__name__)

SHIPPED = Verdict.SHIPPED_VARIANT  # fp32: the file that ships, judged by parity with torch
ADJUSTED = Verdict.ADJUSTED_VARIANT  # fp32 + the fairness audit's logit offsets, judged by parity with that
VARIANT_FILES = {
    "fp32": "model.onnx",
    "int8": "model.int8.onnx",
    "fp16": "model.fp16.onnx",
    ADJUSTED: Export.ADJUSTED_FILE,
}
MANIFEST = "variants.json"
# Where each variant's accuracy is measured: where it is meant to run, when that provider loaded.
MEASURE_ON = {
    "fp32": ("CPUExecutionProvider",),
    "int8": ("CPUExecutionProvider",),
    "fp16": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    ADJUSTED: ("CPUExecutionProvider",),
}
JUDGED_BY = {
    SHIPPED: "parity with torch on every test image (the shipped file)",
    ADJUSTED: "parity with torch plus its logit offsets on every test image, and its accuracy cost against the "
    "plain FP32 model on a paired exact interval (its fairness: checks fairness_adjusted)",
}
PAIRED = "paired exact intervals against the FP32 model on the same test images"


@dataclass(frozen=True)
class VariantCheck:
    """One variant's verdict and the values it was judged on. Points are percentage points of
    the torch FP32 model's accuracy (or of one class's recall) lost; <= 0 ideal."""

    variant: str  # fp32, int8, fp16
    path: str
    size_mb: float
    providers: dict[str, str]  # provider -> "ok" or why it failed to load or answer
    measured_on: str  # provider whose test-set outputs are judged ("" when none loaded)
    accuracy: float  # top-1 on the whole test split, 0..1, higher is better
    reference_accuracy: float  # the torch model's on the same images (fp32, no TTA)
    accuracy_drop: float  # points below the torch model: (lost - gained) / n
    accuracy_drop_ci: tuple[float, float]  # points, paired exact interval at `confidence`
    images_lost: int  # right by torch, wrong by the variant
    images_gained: int  # wrong by torch, right by the variant
    n_images: int  # test images both answered
    mcnemar_p: float  # exact McNemar p-value of "no difference in accuracy"
    accuracy_status: str  # pass | fail | inconclusive: the interval against max_accuracy_drop
    worst_class: str  # the class whose recall-loss interval reaches highest
    worst_class_recall_drop: float  # its recall points lost
    worst_class_recall_drop_ci: tuple[float, float]  # simultaneous over the classes at `confidence`
    class_status: str  # pass | fail | inconclusive: every class against max_class_recall_drop
    per_class: tuple[ClassLoss, ...]
    top1_agreement: float  # share of test images whose argmax matches torch's, 0..1; 1 ideal
    max_abs_diff: float  # largest |logit difference| with torch over the test split; 0 ideal
    probabilities_max_abs_diff: float  # largest |difference| of the probabilities output, 0..1; 0 ideal
    probabilities_ece: float  # ECE of its own probabilities output on the test split, 0..1; 0 ideal
    max_accuracy_drop: float  # the limits judged against, points
    max_class_recall_drop: float
    confidence: float  # level of the accuracy interval; of the class intervals together
    judged_by: str  # parity (the shipped file) or paired exact intervals (every other variant)
    accuracy_note: str  # why the accuracy (or, for fp32, parity) did not pass; "" when it did
    class_note: str  # why the per-class recalls did not pass; "" when they did (or for fp32)
    verdict: str  # pass | fail | inconclusive; only a variant that passes is recommended
    reasons: tuple[str, ...]  # why it did not pass; empty when it passed


def build_variants(
    model: nn.Module,
    *,
    image_shape: tuple[int, int, int],
    out_dir: str | Path,
    calibration_images: np.ndarray,
    cfg: ExportConfig,
    temperature: float = 1.0,
    fitted_on: str = "nothing (T = 1)",
    offsets: tuple[float, ...] | None = None,
) -> tuple[dict[str, Path], CalibrationInfo | None]:
    """Export, optimise and convert: variant name -> file in `out_dir`, and the INT8 calibration.

    Every variant is exported from `fold_for_inference(model)` (exact folds; the parity check
    compares it with `model` itself) with the calibration temperature `temperature` (fitted on
    `fitted_on`) folded into its `probabilities` output. INT8 is quantized from the unoptimised
    export (its pre-processing optimises it the way the quantizer expects), then, with
    `int8_gelu: integer`, its GELUs are moved onto uint8 (`gelu_as_int8_ops`); FP16 is converted
    from the optimised FP32 file. With `offsets`, the adjusted variant is the same FP32 export with
    the per-class logit offsets added to its logits (`Adjusted`), before the calibration head.
    Every file says what its outputs hold (`document_outputs`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    raw = export_onnx(
        fold_for_inference(model), image_shape, out / "model.raw.onnx", temperature=temperature, opset=cfg.opset
    )
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
    if offsets is not None:
        adjusted_raw = export_onnx(
            Adjusted(fold_for_inference(model), offsets),
            image_shape,
            out / VARIANT_FILES[ADJUSTED].replace(".onnx", ".raw.onnx"),
            temperature=temperature,
            opset=cfg.opset,
        )
        paths[ADJUSTED] = optimize_onnx(adjusted_raw, out / VARIANT_FILES[ADJUSTED])
        adjusted_raw.unlink()
    for name, path in paths.items():
        document_outputs(
            path, temperature=temperature, fitted_on=fitted_on, offsets=offsets if name == ADJUSTED else None
        )
    return paths, calibration


def _provider_list(provider: str) -> list[object]:
    if provider == "TensorrtExecutionProvider":
        # engines for the sample batch only; no engine cache between checks
        return [(provider, {"trt_engine_cache_enable": False}), "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]


def _load_everywhere(path: str | Path, sample: np.ndarray, n_classes: int, providers: list[str]) -> tuple[dict, dict]:
    """(provider -> "ok" or why not, provider -> session) after `sample` queries in each provider."""
    loads: dict[str, str] = {}
    sessions = {}
    expected = (len(sample), n_classes)
    for provider in providers:
        try:
            session = onnx_session(path, _provider_list(provider))  # type: ignore[arg-type]
            if provider not in session.get_providers():
                raise ModelError(f"{provider} did not load; the session runs on {session.get_providers()}")
            names = [o.name for o in session.get_outputs()]
            if names != list(OUTPUT_NAMES):
                raise ModelError(f"outputs {names}; expected {list(OUTPUT_NAMES)}")
            for name, out in zip(OUTPUT_NAMES, onnx_outputs(session, sample), strict=True):
                if out.shape != expected or not np.isfinite(out).all():
                    raise ModelError(
                        f"sample queries gave {name} of shape {out.shape} with non-finite values "
                        f"or the wrong shape (expected {expected})"
                    )
            loads[provider], sessions[provider] = "ok", session
        except ModelError as err:
            loads[provider] = str(err)
    return loads, sessions


def _parity_reasons(max_abs_diff: float, probabilities_diff: float, cfg: ExportConfig, n: int) -> list[str]:
    reasons = []
    if not max_abs_diff <= cfg.max_abs_diff:
        reasons.append(
            f"largest logit difference with torch {max_abs_diff:.3g} on {n} test images "
            f"(limit export.max_abs_diff={cfg.max_abs_diff})"
        )
    if not probabilities_diff <= cfg.max_probability_diff:
        reasons.append(
            f"largest probabilities difference with torch {probabilities_diff:.3g} on {n} test images "
            f"(limit export.max_probability_diff={cfg.max_probability_diff})"
        )
    return reasons


@dataclass(frozen=True)
class Outputs:
    """A variant's answers on the whole test split, where they were computed, and how it loaded."""

    providers: dict[str, str]  # provider -> "ok" or why it failed to load or answer
    measured_on: str  # provider that computed the arrays below; "" when none could
    logits: np.ndarray | None  # float32 N x K, None when not measured
    probabilities: np.ndarray | None  # float32 N x K, its `probabilities` output


def assess_variant(
    variant: str,
    path: str | Path,
    outputs: Outputs,
    *,
    test_y: np.ndarray,
    classes: tuple[str, ...],
    reference_logits: np.ndarray,
    cfg: ExportConfig,
    temperature: float = 1.0,
    ece_bins: int = 15,
    size_mb: float | None = None,
    offsets: tuple[float, ...] | None = None,
    max_adjusted_drop: float = 1.0,
) -> VariantCheck:
    """Judge a variant's `outputs` on the test split (labels `test_y` over `classes`) against the
    torch model's `reference_logits` on the same images (and softmax(reference_logits /
    `temperature`) for the probabilities), as the module says: the shipped FP32 file by parity,
    every other variant on paired exact intervals. The adjusted variant (`offsets`) by parity
    with reference_logits + offsets, and its accuracy cost against the plain model's predictions
    on a paired exact interval against `max_adjusted_drop` points (its per-class recalls are the
    fairness audit's to judge). Pure: arrays in, `VariantCheck` out."""
    reasons = [f"{p}: {why}" for p, why in outputs.providers.items() if why != "ok"]
    reference_pred = reference_logits.argmax(1)
    adjusted = variant == ADJUSTED
    if adjusted:
        if offsets is None:
            raise ValueError("the adjusted variant is judged against reference_logits + offsets: pass the offsets")
        target = reference_logits + np.asarray(offsets, dtype=reference_logits.dtype)
    else:
        target = reference_logits  # the function the file should compute
    measured = bool(outputs.measured_on) and outputs.logits is not None and outputs.probabilities is not None
    nan = float("nan")
    if measured:
        logits, probabilities = outputs.logits, outputs.probabilities
        predicted = logits.argmax(1)
        agreement = float((predicted == target.argmax(1)).mean())
        max_abs_diff = float(np.abs(logits - target).max())
        reference_probabilities = calibrated_probabilities(target, temperature)
        probabilities_diff = float(np.abs(probabilities - reference_probabilities).max())
        ece = expected_calibration_error(probabilities, test_y, ece_bins)
    else:
        predicted = np.full_like(test_y, -1)  # no answer counts as wrong
        agreement = max_abs_diff = probabilities_diff = ece = nan
        reasons.append("no provider could run it, so its accuracy is unknown")
    judged = judge_paired(
        reference_pred,
        predicted,
        test_y,
        classes=classes,
        max_accuracy_drop=max_adjusted_drop if adjusted else cfg.max_accuracy_drop,
        max_class_recall_drop=math.inf if adjusted else cfg.max_class_recall_drop,
        confidence=cfg.confidence,
        accuracy_policy="fairness.mitigation_max_accuracy_drop" if adjusted else "export.max_accuracy_drop",
    )
    shipped = variant == SHIPPED
    broken = bool(reasons)  # a provider failed, or none could run it
    accuracy_note = class_note = ""
    if measured and (shipped or adjusted):
        accuracy_note = "; ".join(_parity_reasons(max_abs_diff, probabilities_diff, cfg, len(test_y)))
    elif measured:
        accuracy_note, class_note = judged.accuracy_reason, judged.class_reason
    if measured and adjusted:
        accuracy_note = "; ".join(r for r in (accuracy_note, judged.accuracy_reason) if r)
    reasons += [r for r in (accuracy_note, class_note) if r]
    if shipped or broken:
        verdict = "fail" if reasons else "pass"
    elif adjusted:
        parity_failed = bool(_parity_reasons(max_abs_diff, probabilities_diff, cfg, len(test_y)))
        verdict = "fail" if parity_failed else judged.accuracy_status
    else:
        verdict = judged.verdict
    worst = max(judged.per_class, key=lambda c: c.loss.high, default=None) if measured else None
    acc = judged.accuracy
    return VariantCheck(
        variant=variant,
        path=str(path),
        size_mb=Path(path).stat().st_size / 1e6 if size_mb is None else size_mb,
        providers=dict(outputs.providers),
        measured_on=outputs.measured_on if measured else "",
        accuracy=float((predicted == test_y).mean()) if measured else nan,
        reference_accuracy=float((reference_pred == test_y).mean()),
        accuracy_drop=acc.points if measured else nan,
        accuracy_drop_ci=(acc.low, acc.high) if measured else (nan, nan),
        images_lost=acc.lost if measured else 0,
        images_gained=acc.gained if measured else 0,
        n_images=len(test_y),
        mcnemar_p=acc.mcnemar_p if measured else nan,
        accuracy_status=judged.accuracy_status if measured else "fail",
        worst_class=worst.name if worst else "",
        worst_class_recall_drop=worst.loss.points if worst else nan,
        worst_class_recall_drop_ci=(worst.loss.low, worst.loss.high) if worst else (nan, nan),
        class_status=judged.class_status if measured else "fail",
        per_class=judged.per_class if measured else (),
        top1_agreement=agreement,
        max_abs_diff=max_abs_diff,
        probabilities_max_abs_diff=probabilities_diff,
        probabilities_ece=ece,
        max_accuracy_drop=max_adjusted_drop if adjusted else cfg.max_accuracy_drop,
        max_class_recall_drop=math.inf if adjusted else cfg.max_class_recall_drop,
        confidence=cfg.confidence,
        judged_by=JUDGED_BY.get(variant, PAIRED),
        accuracy_note=accuracy_note,
        class_note=class_note,
        verdict=verdict,
        reasons=tuple(reasons),
    )


def check_variant(
    variant: str,
    path: str | Path,
    *,
    test_x: np.ndarray,
    test_y: np.ndarray,
    classes: tuple[str, ...],
    reference_logits: np.ndarray,
    cfg: ExportConfig,
    temperature: float = 1.0,
    ece_bins: int = 15,
    providers: list[str] | None = None,
    offsets: tuple[float, ...] | None = None,
    max_adjusted_drop: float = 1.0,
) -> VariantCheck:
    """Load `path` in every provider (default: those present) and answer `cfg.check_samples`
    queries; then compute its outputs on the whole test split (uint8 NHWC `test_x`) where it is
    meant to run and judge them (`assess_variant`; `offsets` and `max_adjusted_drop` for the
    adjusted variant)."""
    providers = providers or inference_providers()
    sample = np.asarray(test_x[: cfg.check_samples])
    loads, sessions = _load_everywhere(path, sample, reference_logits.shape[1], providers)
    measured_on = next((p for p in MEASURE_ON.get(variant, ()) if p in sessions), next(iter(sessions), ""))
    logits, probabilities = onnx_outputs(sessions[measured_on], test_x) if measured_on else (None, None)
    check = assess_variant(
        variant,
        path,
        Outputs(loads, measured_on, logits, probabilities),
        test_y=test_y,
        classes=classes,
        reference_logits=reference_logits,
        cfg=cfg,
        temperature=temperature,
        ece_bins=ece_bins,
        offsets=offsets,
        max_adjusted_drop=max_adjusted_drop,
    )
    log.info(
        "variant %s: %s (accuracy %.2f%%, %.2f points lost [%.2f, %.2f], agreement %.2f%%)",
        variant,
        check.verdict,
        100 * check.accuracy,
        check.accuracy_drop,
        *check.accuracy_drop_ci,
        100 * check.top1_agreement,
    )
    return check


def write_manifest(out_dir: str | Path, checks: list[VariantCheck], calibration: CalibrationInfo | None) -> Path:
    """`variants.json`: each variant's file (relative to the folder) and verdict."""
    path = Path(out_dir) / MANIFEST
    entries = {c.variant: {**asdict(c), "path": Path(c.path).name} for c in checks}
    path.write_text(json.dumps({"variants": entries, "calibration": calibration and asdict(calibration)}, indent=2))
    return path


def read_manifest(fp32_path: str | Path) -> dict[str, tuple[Path, str]]:
    """variant -> (file, verdict: pass | fail | inconclusive) from the `variants.json` beside the
    shipped FP32 file; only the FP32 file, verdict "pass" (its parity was checked at export), when
    there is none."""
    fp32_path = Path(fp32_path)
    manifest = fp32_path.parent / MANIFEST
    if not manifest.is_file():
        return {"fp32": (fp32_path, "pass")}
    try:
        entries = json.loads(manifest.read_text())["variants"]
        return {name: (fp32_path.parent / e["path"], e["verdict"]) for name, e in entries.items()}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelError(f"{manifest} is not a variants manifest: {err}") from err
