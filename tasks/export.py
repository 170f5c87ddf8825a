"""Stages 6 and 7: the ONNX variants with their checks, then the inference benchmark.

`bench_past_run` runs both stages' code again on a finished run's checkpoint and snapshot,
logging new stage runs under that run (`auditflow bench RUN_ID`); no flow, no retraining.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.plots import throughput_figure
from auditflow.core.checks import Check, condition_text
from auditflow.core.config import BenchmarkConfig, DataConfig, ExportConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.errors import DataError, ModelError, TrackingError
from auditflow.core.paths import cache_dir, run_dir
from auditflow.core.tracking import Tracker, TrackingRef
from auditflow.models.export.benchmark import benchmark, describe_device, recommend
from auditflow.models.export.onnx import (
    INPUT_NAME,
    OUTPUT_NAME,
    check_parity,
    inference_providers,
    onnx_session,
    torch_logits,
)
from auditflow.models.export.quantize import calibration_sample
from auditflow.models.export.variants import MANIFEST, build_variants, check_variant, read_manifest, write_manifest
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.presets import to_input

LATENCY_TABLE = "benchmark/latency.json"
EXPORT_DESCRIPTION = (
    "Export: the model as ONNX variants (graph-optimised FP32, which ships, and INT8/FP16 as configured), each "
    "loaded in every ONNX Runtime provider present and judged on the whole test split; FP32 parity with torch."
)
BENCHMARK_DESCRIPTION = (
    "Benchmark: latency percentiles and throughput per backend and batch size (time-boxed), FLOPs and share "
    "of the device's peak, and the variant to ship for a latency or a throughput target."
)


@dataclass(frozen=True)
class ExportResult:
    onnx_path: str  # the shipped FP32 file; variants.json beside it lists the others
    max_abs_diff: float
    passed: bool  # FP32 parity with torch
    failing: tuple[str, ...] = ()  # variants that failed their checks


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if v is not None and math.isfinite(v)}


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_model(
    ref: TrackingRef, checkpoint: str, snapshot_path: str, data_cfg: DataConfig, cfg: ExportConfig, workdir: str
) -> ExportResult:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "export", EXPORT_DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "test"))
        run.log_params({f"export.{k}": v for k, v in cfg.model_dump().items()})
        model, _ = load_model(checkpoint)
        snapshot = Snapshot.open(snapshot_path)
        splits = make_splits(snapshot, data_cfg)
        calibration_x = splits.train_x[
            calibration_sample(len(splits.train_x), cfg.calibration_samples, cfg.calibration_seed)
        ]
        out = run_dir(workdir, ref.run_id) / "onnx"
        paths, calibration = build_variants(model, snapshot.image_shape, out, calibration_x, cfg)
        path = paths["fp32"]
        # a seeded sample across classes (snapshots are stored class by class)
        pick = np.sort(np.random.default_rng(data_cfg.seed).permutation(len(splits.test_x))[: cfg.parity_samples])
        parity = check_parity(model, path, splits.test_x[pick])
        passed = parity.max_abs_diff <= cfg.max_abs_diff
        reference = torch_logits(model, splits.test_x)
        checks = [
            check_variant(name, p, splits.test_x, splits.test_y, reference, cfg.max_accuracy_drop, cfg.check_samples)
            for name, p in paths.items()
        ]
        write_manifest(out, checks, calibration)
        example = to_input(splits.test_x[pick][:2]).numpy()
        outputs = {OUTPUT_NAME: onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: example})[0]}
        model_uri = run.log_onnx_model(path, example, outputs, ref.uri, inference_providers())
        for p in [*paths.values(), out / MANIFEST]:
            run.log_artifact(p, "onnx")
        per_variant = {
            f"export/{c.variant}/{k}": v
            for c in checks
            for k, v in (
                ("accuracy", c.accuracy),
                ("accuracy_drop_points", c.accuracy_drop),
                ("top1_agreement", c.top1_agreement),
                ("max_abs_diff", c.max_abs_diff),
                ("size_mb", c.size_mb),
            )
        }
        parity_metrics = {
            "export/parity/max_abs_diff": parity.max_abs_diff,
            "export/parity/top1_agreement": parity.top1_agreement,
        }
        run.log_metrics(_finite(parity_metrics | per_variant))
        table = [
            {
                **asdict(c),
                "providers": "; ".join(f"{p}: {s}" for p, s in c.providers.items()),
                "reasons": "; ".join(c.reasons),
            }
            for c in checks
        ]
        run.log_rows(table, "export/variants.json")
        run.set_tags(
            {
                f"export/{c.variant}/judged": f"accuracy drop {c.accuracy_drop:.2f} points "
                f"(limit {c.max_accuracy_drop}); loads in {sum(s == 'ok' for s in c.providers.values())}/"
                f"{len(c.providers)} providers"
                for c in checks
            }
        )
        shipping = [
            Check(
                key="onnx/parity",
                verdict="onnx_parity",
                title="ONNX parity with torch (FP32, shipped file)",
                condition=condition_text("largest logit difference", cfg.max_abs_diff, False)
                + f" on {parity.n_samples} test images",
                stage="export",
                metric="export/parity/max_abs_diff",
                value=parity.max_abs_diff,
                threshold=cfg.max_abs_diff,
                status="pass" if passed else "fail",
                evidence="#onnx-export",
                note=f"top-1 agreement {parity.top1_agreement:.2%}",
            )
        ] + [
            Check(
                key=f"onnx/{c.variant}/accuracy_drop",
                verdict=f"onnx_{c.variant}",
                title=f"ONNX {c.variant} variant (loads everywhere, accuracy kept)",
                condition=condition_text("accuracy points lost against torch", c.max_accuracy_drop, False)
                + ", and it loads and answers in every provider",
                stage="export",
                metric=f"export/{c.variant}/accuracy_drop_points",
                value=c.accuracy_drop if math.isfinite(c.accuracy_drop) else None,
                threshold=c.max_accuracy_drop,
                status="pass" if c.verdict == "pass" else "fail",
                evidence="onnx/" + MANIFEST,
                note="; ".join(c.reasons) or f"top-1 agreement {c.top1_agreement:.2%}",
            )
            for c in checks
        ]
        headline = {k: v for k, v in per_variant.items() if k.endswith(("drop_points", "agreement"))}
        tracker.publish_checks(ref, run, "export", shipping, _finite(headline | parity_metrics))
        run.log_summary(
            "export",
            {
                **asdict(parity),
                "opset": cfg.opset,
                "passed": passed,
                "model_uri": model_uri,
                "size_mb": path.stat().st_size / 1e6,
                "max_abs_diff_limit": cfg.max_abs_diff,
                "variants": [asdict(c) for c in checks],
                "calibration": calibration and asdict(calibration),
                "reference_accuracy": checks[0].reference_accuracy,
                "input_name": INPUT_NAME,
                "output_name": OUTPUT_NAME,
                "files": {c.variant: f"onnx/{Path(p).name}" for c, p in zip(checks, paths.values(), strict=True)},
            },
        )
        if not passed:
            raise ModelError(
                f"ONNX parity failed: max |logit diff| {parity.max_abs_diff:.3g} > "
                f"export.max_abs_diff={cfg.max_abs_diff}"
            )
    return ExportResult(str(path), parity.max_abs_diff, passed, tuple(c.variant for c in checks if c.verdict != "pass"))


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark_model(ref: TrackingRef, checkpoint: str, onnx_path: str, snapshot_path: str, cfg: BenchmarkConfig) -> str:
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "benchmark", BENCHMARK_DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("test",))
        run.log_params({f"benchmark.{k}": v for k, v in cfg.model_dump().items()})
        model, _ = load_model(checkpoint)
        test_x = np.asarray(Snapshot.open(snapshot_path).arrays("test")[0][: max(cfg.batch_sizes)])  # timing only
        result = benchmark(
            model,
            read_manifest(onnx_path),
            test_x,
            cfg.batch_sizes,
            cfg.backends,
            cfg.warmup,
            cfg.iterations,
            cfg.min_seconds,
            cfg.max_seconds,
            cfg.num_threads,
        )
        metrics = {
            f"benchmark/{r.backend}/bs{r.batch_size}/{k}": getattr(r, k)
            for r in result.rows
            for k in (
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "images_per_second",
                "speedup_vs_eager",
                "latency_speedup_vs_eager",
                "fraction_of_peak",
            )
        }
        run.log_metrics(
            _finite(
                metrics | {"benchmark/threads": result.threads, "benchmark/flops_per_image": result.flops_per_image}
            )
        )
        table = [asdict(r) for r in result.rows]
        run.log_rows(table, LATENCY_TABLE)
        run.log_figure(throughput_figure(table), "benchmark/throughput.png")
        recommendation = recommend(result.rows)
        hardware = result.hardware
        run.set_tags(
            {
                "benchmark/cpu": hardware["cpu"],
                "benchmark/cpu_flags": " ".join(hardware["cpu_flags"]),
                **{f"benchmark/peak_source/{d}": p["source"] for d, p in result.peaks.items()},
            }
        )
        largest = max(cfg.batch_sizes)
        parent = tracker.parent(ref)
        parent.log_metrics(
            _finite(
                {
                    k: v
                    for k, v in metrics.items()
                    if f"/bs{largest}/" in k and k.endswith(("images_per_second", "speedup_vs_eager"))
                }
            )
        )
        parent.set_tags(
            {
                f"benchmark/recommended/{device}/{target}": choice["backend"]
                for device, targets in recommendation.items()
                for target, choice in targets.items()
            }
        )
        run.log_summary(
            "benchmark",
            {
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
            },
        )
    return LATENCY_TABLE


@dataclass(frozen=True)
class BenchRunResult:
    export: ExportResult
    table: str  # MLflow artifact path of the latency table
    summary: dict  # the benchmark summary as logged


def bench_past_run(
    uri: str, run_id: str, workdir: str, export_cfg: ExportConfig, bench_cfg: BenchmarkConfig
) -> BenchRunResult:
    """Export and benchmark the checkpoint of finished pipeline run `run_id` on its own snapshot,
    logging both stages under that run. `TrackingError` for an unknown run id."""
    tracker = Tracker(uri)
    record = tracker.load_run(run_id)
    snapshot = (record.summaries.get("ingest") or {}).get("snapshot")
    if not snapshot:
        raise TrackingError(f"run {run_id} has no ingest summary naming its data snapshot")
    if not Path(snapshot).is_dir():
        raise DataError(
            f"run {run_id}'s data snapshot {snapshot} is not on this machine; "
            "run `auditflow bench` where the run's work folder is"
        )
    try:
        data_cfg = DataConfig.model_validate(record.config.get("data", {}))
    except ValueError as err:  # pydantic's ValidationError
        raise TrackingError(f"run {run_id}'s recorded data config does not validate: {err}") from err
    checkpoint = str(tracker.fetch_checkpoint(run_id, cache_dir(workdir) / "sources-of-weights"))
    ref = TrackingRef(uri=uri, experiment_id=record.experiment_id, run_id=run_id)
    exported = export_model.fn(ref, checkpoint, snapshot, data_cfg, export_cfg, workdir)
    table = benchmark_model.fn(ref, checkpoint, exported.onnx_path, snapshot, bench_cfg)
    return BenchRunResult(exported, table, tracker.load_run(run_id).summaries.get("benchmark", {}))
