"""The export and benchmark stages as pure functions: arrays, a model and configs in, a frozen
result with the stage's `StageReport` out. No Prefect, no MLflow: the tasks in `tasks/export.py`
publish the report and log the ONNX model (which needs the tracking store).

- `export_stage`: build the ONNX variants (`variants.build_variants`) with the calibration
  temperature folded into their `probabilities` output, check FP32 parity with torch (logits and
  probabilities) on a seeded test sample and every variant on the whole test split, judge the
  calibration on the shipped file's own `probabilities` output, write the manifest;
  `export_report` turns those findings into metrics, tags, the variants table and the checks
  (`onnx_parity`, `calibration`, and one `onnx_<variant>` group per variant, of which only the
  shipped FP32 file's gates the run).
- `benchmark_stage`: time the backends (`benchmark.benchmark`); `benchmark_report` turns the
  result into metrics, the latency table, hardware tags and the shipping recommendation tags
  (on the parent run, with the throughput at the largest batch as headline metrics).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from torch import nn

from auditflow.core.checks import Check, condition_text, judge
from auditflow.core.config import BenchmarkConfig, EvalConfig, ExportConfig
from auditflow.core.data import Splits
from auditflow.core.names import Benchmark, Export, Stage, Verdict
from auditflow.core.stage import StageReport
from auditflow.models.export.benchmark import BenchResult, benchmark, describe_device, recommend
from auditflow.models.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    OUTPUT_NAMES,
    PROBABILITIES_NAME,
    ParityResult,
    check_parity,
    onnx_session,
    output_docs,
    torch_logits,
)
from auditflow.models.export.quantize import CalibrationInfo, calibration_sample
from auditflow.models.export.variants import (
    ADJUSTED,
    MANIFEST,
    SHIPPED,
    VariantCheck,
    build_variants,
    check_variant,
    write_manifest,
)
from auditflow.models.training.presets import to_input

ARTIFACT_FOLDER = "onnx"  # the stage run's folder of ONNX files and their manifest
PER_VARIANT = (  # metric name under export/<variant>/ -> VariantCheck field (index into a pair)
    ("accuracy", "accuracy", None),
    ("accuracy_drop_points", "accuracy_drop", None),
    ("accuracy_drop_points_ci_low", "accuracy_drop_ci", 0),
    ("accuracy_drop_points_ci_high", "accuracy_drop_ci", 1),
    ("images_lost", "images_lost", None),
    ("images_gained", "images_gained", None),
    ("worst_class_recall_drop_points", "worst_class_recall_drop", None),
    ("worst_class_recall_drop_points_ci_high", "worst_class_recall_drop_ci", 1),
    ("top1_agreement", "top1_agreement", None),
    ("max_abs_diff", "max_abs_diff", None),
    ("probabilities_max_abs_diff", "probabilities_max_abs_diff", None),
    ("probabilities_ece", "probabilities_ece", None),
    ("size_mb", "size_mb", None),
)
HEADLINE_VARIANT = ("accuracy_drop_points", "accuracy_drop_points_ci_low", "accuracy_drop_points_ci_high")
PER_RESULT = (  # metric name under benchmark/<backend>/bs<batch>/, a BenchRow field
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "images_per_second",
    "speedup_vs_eager",
    "latency_speedup_vs_eager",
    "fraction_of_peak",
)
PARENT_RESULTS = ("images_per_second", "speedup_vs_eager", "latency_speedup_vs_eager")  # largest batch: headline


# ---------------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ShippedCalibration:
    """The temperature folded into the exported graph and the calibration check's policy."""

    temperature: float  # T of softmax(logits / T), fitted by the evaluate stage
    fitted_on: str  # where T was fitted: "validation split (N images)", or why it is 1
    max_ece: float  # fail above, 0..1 (evaluate.max_ece)
    warn_ece: float  # warn above, 0..1 (evaluate.warn_ece)
    ece_bins: int  # equal-width confidence bins (evaluate.ece_bins)

    @classmethod
    def of(cls, temperature: float, fitted_on: str, cfg: EvalConfig) -> ShippedCalibration:
        return cls(temperature, fitted_on, cfg.max_ece, cfg.warn_ece, cfg.ece_bins)


@dataclass(frozen=True)
class ExportStage:
    """What the export stage found, and what its task logs beside the report."""

    report: StageReport  # summary["model_uri"] is None until the task logged the ONNX model
    onnx_path: str  # the shipped FP32 file; variants.json beside it lists the others
    parity: ParityResult  # FP32 file against torch on the seeded test sample
    passed: bool  # FP32 parity within export.max_abs_diff and export.max_probability_diff
    failing: tuple[str, ...]  # variants that did not pass their checks (not recommended)
    example: np.ndarray  # float32 2 x 3 x H x W model input: the ONNX model's signature example
    example_outputs: dict[str, np.ndarray]  # the FP32 file's output name -> its outputs on it
    # the logit-adjusted variant's file and its outputs on `example`, when one was built
    adjusted_path: str | None = None
    adjusted_outputs: dict[str, np.ndarray] | None = None

    def with_model_uri(self, model_uri: str, adjusted_uri: str | None = None) -> StageReport:
        """The report with the logged ONNX models' URIs in its summary (the adjusted variant's
        as `adjusted_model_uri`, which `auditflow promote --variant adjusted` registers)."""
        uris = {"model_uri": model_uri} | ({"adjusted_model_uri": adjusted_uri} if adjusted_uri else {})
        return replace(self.report, summary={**(self.report.summary or {}), **uris})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _interval(pair: tuple[float, float]) -> tuple[float, float] | None:
    return (pair[0], pair[1]) if all(math.isfinite(v) for v in pair) else None


def _parity_passed(parity: ParityResult, cfg: ExportConfig) -> bool:
    return parity.max_abs_diff <= cfg.max_abs_diff and parity.probabilities_max_abs_diff <= cfg.max_probability_diff


def _variant_checks(c: VariantCheck, *, max_abs_diff: float) -> list[Check]:
    """The shipped FP32 file: one parity check (it gates the run). Any other variant: its
    accuracy and its per-class recall on paired exact intervals (recommendation only)."""
    metric = {name: Export.VARIANT.format(variant=c.variant, name=name) for name, _, _ in PER_VARIANT}
    broken = not c.measured_on or any(s != "ok" for s in c.providers.values())
    evidence = f"{ARTIFACT_FOLDER}/{MANIFEST}"
    if c.variant == SHIPPED:
        return [
            Check(
                key=f"onnx/{c.variant}/parity",
                verdict=Verdict.onnx(c.variant),
                title=f"ONNX {c.variant} (the shipped file): loads everywhere, answers as torch on every test image",
                condition=condition_text("largest logit difference with torch", max_abs_diff, higher_is_better=False)
                + " and largest probabilities difference ≤ export.max_probability_diff on the whole test split, "
                "and it loads and answers in every provider",
                stage=Stage.EXPORT,
                metric=metric["max_abs_diff"],
                value=_finite(c.max_abs_diff),
                threshold=max_abs_diff,
                status=c.verdict,
                evidence=evidence,
                note="; ".join(c.reasons) or f"accuracy {c.accuracy:.2%}, top-1 agreement {c.top1_agreement:.2%}",
            )
        ]
    advisory = "recommendation only: does not change verdict/overall"
    if c.variant == ADJUSTED:
        parity_note = "; ".join(r for r in c.reasons if "fairness.mitigation_max_accuracy_drop" not in r)
        return [
            Check(
                key=f"onnx/{c.variant}/parity",
                verdict=Verdict.onnx(c.variant),
                title=f"ONNX {c.variant} variant: answers as torch plus its logit offsets on every test image "
                "(advisory)",
                condition=condition_text(
                    "largest logit difference with torch + offsets", max_abs_diff, higher_is_better=False
                )
                + " and largest probabilities difference ≤ export.max_probability_diff, and it loads and answers "
                "in every provider",
                stage=Stage.EXPORT,
                metric=metric["max_abs_diff"],
                value=_finite(c.max_abs_diff),
                threshold=max_abs_diff,
                status="fail" if broken or parity_note else "pass",
                evidence=evidence,
                note=parity_note or f"top-1 agreement with torch + offsets {c.top1_agreement:.2%}",
            ),
            Check(
                key=f"onnx/{c.variant}/accuracy_drop",
                verdict=Verdict.onnx(c.variant),
                title=f"ONNX {c.variant} variant: accuracy it costs against the plain model (advisory)",
                condition=f"whole {c.confidence:.0%} paired exact interval of accuracy points lost against the plain "
                f"model ≤ fairness.mitigation_max_accuracy_drop={c.max_accuracy_drop:g} (fail when wholly above)",
                stage=Stage.EXPORT,
                metric=metric["accuracy_drop_points"],
                value=_finite(c.accuracy_drop),
                threshold=c.max_accuracy_drop,
                status="fail" if broken else c.accuracy_status,
                evidence=evidence,
                note=f"{c.images_lost} images lost, {c.images_gained} gained of {c.n_images}; "
                f"McNemar p = {c.mcnemar_p:.3g}",
                interval=_interval(c.accuracy_drop_ci),
            ),
        ]
    return [
        Check(
            key=f"onnx/{c.variant}/accuracy_drop",
            verdict=Verdict.onnx(c.variant),
            title=f"ONNX {c.variant} variant: accuracy kept ({advisory})",
            condition=f"whole {c.confidence:.0%} paired exact interval of accuracy points lost against FP32 "
            f"≤ {c.max_accuracy_drop:g} (fail when wholly above), and it loads and answers in every provider",
            stage=Stage.EXPORT,
            metric=metric["accuracy_drop_points"],
            value=_finite(c.accuracy_drop),
            threshold=c.max_accuracy_drop,
            status="fail" if broken else c.accuracy_status,
            evidence=evidence,
            note="; ".join(r for r in c.reasons if r != c.class_note)
            or f"{c.images_lost} images lost, {c.images_gained} gained of {c.n_images}; McNemar p = {c.mcnemar_p:.3g}",
            interval=_interval(c.accuracy_drop_ci),
        ),
        Check(
            key=f"onnx/{c.variant}/class_recall_drop",
            verdict=Verdict.onnx(c.variant),
            title=f"ONNX {c.variant} variant: every class's recall kept ({advisory})",
            condition=f"each class's recall points lost against FP32 ≤ {c.max_class_recall_drop:g} on paired exact "
            f"intervals simultaneous at {c.confidence:.0%} (fail when one lies wholly above)",
            stage=Stage.EXPORT,
            metric=metric["worst_class_recall_drop_points"],
            value=_finite(c.worst_class_recall_drop),
            threshold=c.max_class_recall_drop,
            status=c.class_status if c.measured_on else "fail",
            evidence=evidence,
            note=c.class_note or (f"nearest the limit: {c.worst_class}" if c.worst_class else "no class measured"),
            interval=_interval(c.worst_class_recall_drop_ci),
        ),
    ]


def export_checks(
    parity: ParityResult,
    variants: list[VariantCheck],
    *,
    cfg: ExportConfig,
    calibration: ShippedCalibration,
) -> tuple[Check, ...]:
    """FP32 parity with torch on the seeded sample (`onnx_parity`: logits, then the
    `probabilities` output), the calibration of the shipped file's own `probabilities` output on
    the whole test split (`calibration`), and each variant's checks (`onnx_<variant>`)."""
    where = f" on {parity.n_samples} test images"
    logits = Check(
        key="onnx/parity",
        verdict=Verdict.ONNX_PARITY,
        title="ONNX parity with torch (FP32, shipped file): logits",
        condition=condition_text("largest logit difference", cfg.max_abs_diff, higher_is_better=False) + where,
        stage=Stage.EXPORT,
        metric=Export.PARITY_MAX_ABS_DIFF,
        value=parity.max_abs_diff,
        threshold=cfg.max_abs_diff,
        status="pass" if parity.max_abs_diff <= cfg.max_abs_diff else "fail",
        evidence="#onnx-export",
        note=f"top-1 agreement {parity.top1_agreement:.2%}",
    )
    probabilities = Check(
        key="onnx/parity_probabilities",
        verdict=Verdict.ONNX_PARITY,
        title="ONNX parity with torch (FP32, shipped file): calibrated probabilities",
        condition=condition_text(
            f"largest difference of the `{PROBABILITIES_NAME}` output from softmax(torch logits / T)",
            cfg.max_probability_diff,
            higher_is_better=False,
        )
        + where,
        stage=Stage.EXPORT,
        metric=Export.PARITY_PROBABILITIES_MAX_ABS_DIFF,
        value=_finite(parity.probabilities_max_abs_diff),
        threshold=cfg.max_probability_diff,
        status=judge(_finite(parity.probabilities_max_abs_diff), cfg.max_probability_diff, higher_is_better=False),
        evidence="#onnx-export",
        note=f"T = {calibration.temperature:.4g} folded into the graph",
    )
    shipped = next(c for c in variants if c.variant == SHIPPED)
    ece = _finite(shipped.probabilities_ece)
    calibrated = Check(
        key="calibration/ece",
        verdict=Verdict.CALIBRATION,
        title="Calibration of the shipped model (its ONNX `probabilities` output)",
        condition=condition_text(
            f"test ECE of the shipped file's `{PROBABILITIES_NAME}` output",
            calibration.max_ece,
            higher_is_better=False,
            warn=calibration.warn_ece,
            fmt=".3f",
        ),
        stage=Stage.EXPORT,
        metric=Export.SHIPPED_PROBABILITIES_ECE,
        value=ece,
        threshold=calibration.max_ece,
        warn_threshold=calibration.warn_ece,
        status=judge(ece, calibration.max_ece, higher_is_better=False, warn=calibration.warn_ece),
        evidence="#calibration",
        note=f"calibrated: softmax(logits / T), T = {calibration.temperature:.3f} ({calibration.fitted_on}), "
        f"computed by {Path(shipped.path).name} itself on {shipped.n_images} test images (the raw logits' ECE "
        "is the evaluate stage's)",
    )
    per_variant = [check for c in variants for check in _variant_checks(c, max_abs_diff=cfg.max_abs_diff)]
    return (logits, probabilities, calibrated, *per_variant)


def _judged(c: VariantCheck) -> str:
    loads = sum(s == "ok" for s in c.providers.values())
    low, high = c.accuracy_drop_ci
    return (
        f"{c.verdict}: accuracy drop {c.accuracy_drop:.2f} points [{low:.2f}, {high:.2f}] (limit "
        f"{c.max_accuracy_drop}); loads in {loads}/{len(c.providers)} providers; judged by {c.judged_by}"
    )


def _table_row(c: VariantCheck) -> dict:
    """One variant as a flat row of the variants table (intervals as two columns)."""
    pairs = ("per_class", "accuracy_drop_ci", "worst_class_recall_drop_ci")
    row = {k: v for k, v in asdict(c).items() if k not in pairs}
    return {
        **row,
        "accuracy_drop_ci_low": c.accuracy_drop_ci[0],
        "accuracy_drop_ci_high": c.accuracy_drop_ci[1],
        "worst_class_recall_drop_ci_low": c.worst_class_recall_drop_ci[0],
        "worst_class_recall_drop_ci_high": c.worst_class_recall_drop_ci[1],
        "providers": "; ".join(f"{p}: {s}" for p, s in c.providers.items()),
        "reasons": "; ".join(c.reasons),
    }


def export_report(
    *,
    parity: ParityResult,
    variants: list[VariantCheck],
    calibration: CalibrationInfo | None,
    shipped_calibration: ShippedCalibration,
    cfg: ExportConfig,
    manifest: str | Path,
) -> StageReport:
    """The export stage's report from its findings: per-variant metrics (`export/<variant>/...`:
    accuracy 0..1, points lost with the paired exact interval, images lost and gained, the worst
    class's recall points lost, top-1 agreement 0..1, largest logit and probabilities differences,
    the ECE of its `probabilities` output, size in MB), parity metrics, the temperature folded in,
    the variants table, a `judged` tag per variant, the checks and the summary (whose `model_uri`
    the task fills in). Headline: parity, the shipped file's ECE and T, each variant's points lost
    with their interval. `variants` starts with fp32, the shipped file."""

    def value(c: VariantCheck, field: str, index: int | None) -> float:
        v = getattr(c, field)
        return float(v if index is None else v[index])

    per_variant = {
        Export.VARIANT.format(variant=c.variant, name=name): value(c, field, index)
        for c in variants
        for name, field, index in PER_VARIANT
    }
    parity_metrics = {
        Export.PARITY_MAX_ABS_DIFF: parity.max_abs_diff,
        Export.PARITY_PROBABILITIES_MAX_ABS_DIFF: parity.probabilities_max_abs_diff,
        Export.PARITY_TOP1_AGREEMENT: parity.top1_agreement,
    }
    calibrated = {
        Export.TEMPERATURE: shipped_calibration.temperature,
        Export.SHIPPED_PROBABILITIES_ECE: per_variant[Export.SHIPPED_PROBABILITIES_ECE],
    }
    headline = (
        {k: v for k, v in per_variant.items() if k.endswith((*HEADLINE_VARIANT, "top1_agreement"))}
        | parity_metrics
        | calibrated
    )
    fp32 = next(c for c in variants if c.variant == SHIPPED)
    summary = {
        **asdict(parity),
        "opset": cfg.opset,
        "passed": _parity_passed(parity, cfg),
        "model_uri": None,
        "size_mb": fp32.size_mb,
        "max_abs_diff_limit": cfg.max_abs_diff,
        "max_probability_diff_limit": cfg.max_probability_diff,
        "variants": [asdict(c) for c in variants],
        "recommendable": [c.variant for c in variants if c.verdict == "pass"],
        "calibration": calibration and asdict(calibration),
        "shipped_calibration": asdict(shipped_calibration) | {"ece": fp32.probabilities_ece},
        "reference_accuracy": variants[0].reference_accuracy,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "output_names": list(OUTPUT_NAMES),
        "outputs": output_docs(shipped_calibration.temperature, shipped_calibration.fitted_on),
        "files": {c.variant: f"{ARTIFACT_FOLDER}/{Path(c.path).name}" for c in variants},
    }
    return StageReport(
        stage=Stage.EXPORT,
        metrics=parity_metrics | per_variant | calibrated,
        headline=headline,
        params={f"export.{k}": v for k, v in cfg.model_dump().items()},
        tags={Export.VARIANT.format(variant=c.variant, name="judged"): _judged(c) for c in variants},
        checks=export_checks(parity, variants, cfg=cfg, calibration=shipped_calibration),
        tables={Export.VARIANTS_JSON: [_table_row(c) for c in variants]},
        files=(*((Path(c.path), ARTIFACT_FOLDER) for c in variants), (Path(manifest), ARTIFACT_FOLDER)),
        summary=summary,
    )


def export_stage(
    model: nn.Module,
    splits: Splits,
    *,
    image_shape: tuple[int, int, int],
    cfg: ExportConfig,
    calibration: ShippedCalibration,
    seed: int,
    out_dir: Path,
    offsets: tuple[float, ...] | None = None,
    max_adjusted_drop: float = 1.0,
) -> ExportStage:
    """Build the ONNX variants of `model` in `out_dir`, with `calibration.temperature` folded into
    their `probabilities` output, and judge them: FP32 parity with torch (logits and
    probabilities) on `cfg.parity_samples` test images (a `seed`ed sample across classes), the
    shipped file's calibration and every variant on the whole test split, INT8 calibrated on a
    seeded sample of the training split. With `offsets` (the fairness stage's, when worth
    exporting), also the adjusted variant, judged by parity with torch + offsets and by its
    accuracy cost against the plain model (`max_adjusted_drop` points)."""
    calibration_x = splits.train_x[
        calibration_sample(len(splits.train_x), cfg.calibration_samples, cfg.calibration_seed)
    ]
    t = calibration.temperature
    paths, int8_calibration = build_variants(
        model,
        image_shape=image_shape,
        out_dir=out_dir,
        calibration_images=calibration_x,
        cfg=cfg,
        temperature=t,
        fitted_on=calibration.fitted_on,
        offsets=offsets,
    )
    fp32 = paths[SHIPPED]
    # a seeded sample across classes (snapshots are stored class by class)
    pick = np.sort(np.random.default_rng(seed).permutation(len(splits.test_x))[: cfg.parity_samples])
    parity = check_parity(model, fp32, splits.test_x[pick], temperature=t)
    reference = torch_logits(model, splits.test_x)
    variants = [
        check_variant(
            name,
            p,
            test_x=splits.test_x,
            test_y=splits.test_y,
            classes=splits.classes,
            reference_logits=reference,
            cfg=cfg,
            temperature=t,
            ece_bins=calibration.ece_bins,
            offsets=offsets if name == ADJUSTED else None,
            max_adjusted_drop=max_adjusted_drop,
        )
        for name, p in paths.items()
    ]
    manifest = write_manifest(out_dir, variants, int8_calibration)
    example = to_input(splits.test_x[pick][:2]).numpy()
    outputs = onnx_session(fp32).run(list(OUTPUT_NAMES), {INPUT_NAME: example})
    report = export_report(
        parity=parity,
        variants=variants,
        calibration=int8_calibration,
        shipped_calibration=calibration,
        cfg=cfg,
        manifest=manifest,
    )
    adjusted = paths.get(ADJUSTED)
    adjusted_outputs = onnx_session(adjusted).run(list(OUTPUT_NAMES), {INPUT_NAME: example}) if adjusted else None
    return ExportStage(
        report=report,
        onnx_path=str(fp32),
        parity=parity,
        passed=_parity_passed(parity, cfg),
        failing=tuple(c.variant for c in variants if c.verdict != "pass"),
        example=example,
        example_outputs=dict(zip(OUTPUT_NAMES, outputs, strict=True)),
        adjusted_path=str(adjusted) if adjusted else None,
        adjusted_outputs=dict(zip(OUTPUT_NAMES, adjusted_outputs, strict=True)) if adjusted_outputs else None,
    )


# ------------------------------------------------------------------------------- benchmark
def benchmark_report(result: BenchResult, *, cfg: BenchmarkConfig) -> StageReport:
    """The benchmark stage's report: per backend and batch size p50/p95/p99 latency (ms), images/s,
    speed-ups over torch eager (>1 = faster) and share of the device peak (0..1); threads and
    FLOPs per image; the latency table; CPU tags; on the parent, the shipping recommendation per
    device and target (`benchmark/recommended/<device>/<target>` = backend) and, as headline,
    images/s and speed-up at the largest batch size. (The throughput figure is the task's: plots
    live in `audits`.)"""
    metrics = {
        Benchmark.RESULT.format(backend=r.backend, batch_size=r.batch_size, name=name): getattr(r, name)
        for r in result.rows
        for name in PER_RESULT
    }
    largest = max(cfg.batch_sizes)
    headline = {
        Benchmark.RESULT.format(backend=r.backend, batch_size=r.batch_size, name=name): getattr(r, name)
        for r in result.rows
        if r.batch_size == largest
        for name in PARENT_RESULTS
    }
    table = [asdict(r) for r in result.rows]
    recommendation = recommend(result.rows)
    hardware = result.hardware
    summary = {
        "rows": table,
        "device": describe_device(hardware),
        "hardware": hardware,
        "threads": result.threads,
        "flops_per_image": result.flops_per_image,
        "peaks": result.peaks,
        "skipped": result.skipped,
        "recommendation": recommendation,
        "method": {
            "warmup": cfg.warmup,
            "min_repeats": cfg.iterations,
            "min_seconds": cfg.min_seconds,
            "max_seconds": cfg.max_seconds,
            "throughput": "batch size / mean latency",
        },
    }
    return StageReport(
        stage=Stage.BENCHMARK,
        metrics=metrics | {Benchmark.THREADS: result.threads, Benchmark.FLOPS_PER_IMAGE: result.flops_per_image},
        headline=headline,
        params={f"benchmark.{k}": v for k, v in cfg.model_dump().items()},
        tags={
            Benchmark.CPU: hardware["cpu"],
            Benchmark.CPU_FLAGS: " ".join(hardware["cpu_flags"]),
            **{Benchmark.PEAK_SOURCE.format(device=d): p["source"] for d, p in result.peaks.items()},
        },
        parent_tags={
            Benchmark.RECOMMENDED.format(device=device, target=target): choice["backend"]
            for device, targets in recommendation.items()
            for target, choice in targets.items()
        },
        tables={Benchmark.LATENCY_JSON: table},
        summary=summary,
    )


def benchmark_stage(
    model: nn.Module, variants: dict[str, tuple[Path, str]], images: np.ndarray, *, cfg: BenchmarkConfig
) -> StageReport:
    """Time torch and the ONNX `variants` (variant -> (file, export verdict), as
    `variants.read_manifest` returns) on uint8 NHWC `images`, as `cfg` says; the report."""
    result = benchmark(
        model,
        variants,
        images,
        batch_sizes=cfg.batch_sizes,
        backends=cfg.backends,
        warmup=cfg.warmup,
        min_repeats=cfg.iterations,
        min_seconds=cfg.min_seconds,
        max_seconds=cfg.max_seconds,
        threads=cfg.num_threads,
    )
    return benchmark_report(result, cfg=cfg)
