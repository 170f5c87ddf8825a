"""The export and benchmark stages as pure functions: arrays, a model and configs in, a frozen
result with the stage's `StageReport` out. No Prefect, no MLflow: the tasks in `tasks/export.py`
publish the report and log the ONNX model (which needs the tracking store).

- `export_stage`: build the ONNX variants (`variants.build_variants`), check FP32 parity with
  torch on a seeded test sample and every variant on the whole test split, write the manifest;
  `export_report` turns those findings into metrics, tags, the variants table and the checks
  (`onnx_parity` and one `onnx_<variant>` group per variant).
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

from auditflow.core.checks import Check, condition_text
from auditflow.core.config import BenchmarkConfig, ExportConfig
from auditflow.core.data import Splits
from auditflow.core.names import Benchmark, Export, Stage, Verdict
from auditflow.core.stage import StageReport
from auditflow.models.export.benchmark import BenchResult, benchmark, describe_device, recommend
from auditflow.models.export.onnx import INPUT_NAME, OUTPUT_NAME, ParityResult, check_parity, onnx_session, torch_logits
from auditflow.models.export.quantize import CalibrationInfo, calibration_sample
from auditflow.models.export.variants import MANIFEST, VariantCheck, build_variants, check_variant, write_manifest
from auditflow.models.training.presets import to_input

ARTIFACT_FOLDER = "onnx"  # the stage run's folder of ONNX files and their manifest
PER_VARIANT = (  # metric name under export/<variant>/ -> VariantCheck field
    ("accuracy", "accuracy"),
    ("accuracy_drop_points", "accuracy_drop"),
    ("top1_agreement", "top1_agreement"),
    ("max_abs_diff", "max_abs_diff"),
    ("size_mb", "size_mb"),
)
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
class ExportStage:
    """What the export stage found, and what its task logs beside the report."""

    report: StageReport  # summary["model_uri"] is None until the task logged the ONNX model
    onnx_path: str  # the shipped FP32 file; variants.json beside it lists the others
    parity: ParityResult  # FP32 file against torch on the seeded test sample
    passed: bool  # FP32 parity within export.max_abs_diff
    failing: tuple[str, ...]  # variants that failed their checks
    example: np.ndarray  # float32 2 x 3 x H x W model input: the ONNX model's signature example
    example_outputs: dict[str, np.ndarray]  # the FP32 file's output name -> its logits on it

    def with_model_uri(self, model_uri: str) -> StageReport:
        """The report with the logged ONNX model's URI in its summary."""
        return replace(self.report, summary={**(self.report.summary or {}), "model_uri": model_uri})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def export_checks(parity: ParityResult, variants: list[VariantCheck], *, max_abs_diff: float) -> tuple[Check, ...]:
    """FP32 parity with torch (`onnx_parity`) and one accuracy-and-loading check per variant
    (`onnx_<variant>`): the drop in accuracy points must not exceed the variant's limit."""
    parity_check = Check(
        key="onnx/parity",
        verdict=Verdict.ONNX_PARITY,
        title="ONNX parity with torch (FP32, shipped file)",
        condition=condition_text("largest logit difference", max_abs_diff, higher_is_better=False)
        + f" on {parity.n_samples} test images",
        stage=Stage.EXPORT,
        metric=Export.PARITY_MAX_ABS_DIFF,
        value=parity.max_abs_diff,
        threshold=max_abs_diff,
        status="pass" if parity.max_abs_diff <= max_abs_diff else "fail",
        evidence="#onnx-export",
        note=f"top-1 agreement {parity.top1_agreement:.2%}",
    )
    per_variant = [
        Check(
            key=f"onnx/{c.variant}/accuracy_drop",
            verdict=Verdict.onnx(c.variant),
            title=f"ONNX {c.variant} variant (loads everywhere, accuracy kept)",
            condition=condition_text("accuracy points lost against torch", c.max_accuracy_drop, higher_is_better=False)
            + ", and it loads and answers in every provider",
            stage=Stage.EXPORT,
            metric=Export.VARIANT.format(variant=c.variant, name="accuracy_drop_points"),
            value=_finite(c.accuracy_drop),
            threshold=c.max_accuracy_drop,
            status="pass" if c.verdict == "pass" else "fail",
            evidence=f"{ARTIFACT_FOLDER}/{MANIFEST}",
            note="; ".join(c.reasons) or f"top-1 agreement {c.top1_agreement:.2%}",
        )
        for c in variants
    ]
    return (parity_check, *per_variant)


def _judged(c: VariantCheck) -> str:
    loads = sum(s == "ok" for s in c.providers.values())
    return (
        f"accuracy drop {c.accuracy_drop:.2f} points (limit {c.max_accuracy_drop}); "
        f"loads in {loads}/{len(c.providers)} providers"
    )


def export_report(
    *,
    parity: ParityResult,
    variants: list[VariantCheck],
    calibration: CalibrationInfo | None,
    cfg: ExportConfig,
    manifest: str | Path,
) -> StageReport:
    """The export stage's report from its findings: per-variant metrics (`export/<variant>/...`:
    accuracy 0..1, accuracy drop in points, top-1 agreement 0..1, largest logit difference,
    size in MB), parity metrics, the variants table, a `judged` tag per variant, the checks and
    the summary (whose `model_uri` the task fills in). Headline: the drops, the agreements and
    parity. `variants` starts with fp32, the shipped file."""
    per_variant = {
        Export.VARIANT.format(variant=c.variant, name=name): getattr(c, field)
        for c in variants
        for name, field in PER_VARIANT
    }
    parity_metrics = {
        Export.PARITY_MAX_ABS_DIFF: parity.max_abs_diff,
        Export.PARITY_TOP1_AGREEMENT: parity.top1_agreement,
    }
    headline = {k: v for k, v in per_variant.items() if k.endswith(("drop_points", "agreement"))} | parity_metrics
    table = [
        {
            **asdict(c),
            "providers": "; ".join(f"{p}: {s}" for p, s in c.providers.items()),
            "reasons": "; ".join(c.reasons),
        }
        for c in variants
    ]
    fp32 = next(c for c in variants if c.variant == "fp32")
    summary = {
        **asdict(parity),
        "opset": cfg.opset,
        "passed": parity.max_abs_diff <= cfg.max_abs_diff,
        "model_uri": None,
        "size_mb": fp32.size_mb,
        "max_abs_diff_limit": cfg.max_abs_diff,
        "variants": [asdict(c) for c in variants],
        "calibration": calibration and asdict(calibration),
        "reference_accuracy": variants[0].reference_accuracy,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "files": {c.variant: f"{ARTIFACT_FOLDER}/{Path(c.path).name}" for c in variants},
    }
    return StageReport(
        stage=Stage.EXPORT,
        metrics=parity_metrics | per_variant,
        headline=headline,
        params={f"export.{k}": v for k, v in cfg.model_dump().items()},
        tags={Export.VARIANT.format(variant=c.variant, name="judged"): _judged(c) for c in variants},
        checks=export_checks(parity, variants, max_abs_diff=cfg.max_abs_diff),
        tables={Export.VARIANTS_JSON: table},
        files=(*((Path(c.path), ARTIFACT_FOLDER) for c in variants), (Path(manifest), ARTIFACT_FOLDER)),
        summary=summary,
    )


def export_stage(
    model: nn.Module, splits: Splits, *, image_shape: tuple[int, int, int], cfg: ExportConfig, seed: int, out_dir: Path
) -> ExportStage:
    """Build the ONNX variants of `model` in `out_dir` and judge them: FP32 parity with torch on
    `cfg.parity_samples` test images (a `seed`ed sample across classes), every variant's accuracy
    on the whole test split, INT8 calibrated on a seeded sample of the training split."""
    calibration_x = splits.train_x[
        calibration_sample(len(splits.train_x), cfg.calibration_samples, cfg.calibration_seed)
    ]
    paths, calibration = build_variants(
        model, image_shape=image_shape, out_dir=out_dir, calibration_images=calibration_x, cfg=cfg
    )
    fp32 = paths["fp32"]
    # a seeded sample across classes (snapshots are stored class by class)
    pick = np.sort(np.random.default_rng(seed).permutation(len(splits.test_x))[: cfg.parity_samples])
    parity = check_parity(model, fp32, splits.test_x[pick])
    reference = torch_logits(model, splits.test_x)
    variants = [
        check_variant(
            name,
            p,
            test_x=splits.test_x,
            test_y=splits.test_y,
            reference_logits=reference,
            max_accuracy_drop=cfg.max_accuracy_drop,
            check_samples=cfg.check_samples,
        )
        for name, p in paths.items()
    ]
    manifest = write_manifest(out_dir, variants, calibration)
    example = to_input(splits.test_x[pick][:2]).numpy()
    return ExportStage(
        report=export_report(parity=parity, variants=variants, calibration=calibration, cfg=cfg, manifest=manifest),
        onnx_path=str(fp32),
        parity=parity,
        passed=parity.max_abs_diff <= cfg.max_abs_diff,
        failing=tuple(c.variant for c in variants if c.verdict != "pass"),
        example=example,
        example_outputs={OUTPUT_NAME: onnx_session(fp32).run([OUTPUT_NAME], {INPUT_NAME: example})[0]},
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
