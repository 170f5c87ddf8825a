"""Stages 6 and 7: the ONNX variants with their checks, then the inference benchmark.

The stages themselves are `models/export/stage.py`; these tasks open their inputs, log what the
report cannot carry (dataset inputs, the ONNX model with its signature) and publish the report.
`bench_past_run` runs both stages' code again on a finished run's checkpoint and snapshot,
logging new stage runs under that run (`auditflow bench RUN_ID`); no flow, no retraining.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.fairness_stage import offsets_to_export
from auditflow.audits.plots import throughput_figure
from auditflow.core.config import BenchmarkConfig, DataConfig, EvalConfig, ExportConfig, FairnessConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.errors import DataError, ModelError, TrackingError
from auditflow.core.names import Benchmark, Evaluate, Stage
from auditflow.core.paths import cache_dir, run_dir
from auditflow.core.tracking import RunLogger, Tracker, TrackingRef
from auditflow.models.evaluation.calibration import fit_description
from auditflow.models.export.onnx import inference_providers
from auditflow.models.export.stage import (
    ARTIFACT_FOLDER,
    ExportStage,
    ShippedCalibration,
    benchmark_stage,
    export_stage,
)
from auditflow.models.export.variants import read_manifest
from auditflow.models.training.checkpoints import load_model

EXPORT_DESCRIPTION = (
    "Export: the model as ONNX variants (graph-optimised FP32, which ships, and INT8/FP16 as configured), each "
    "with outputs `logits` and `probabilities` (the calibration temperature folded in), loaded in every ONNX "
    "Runtime provider present and judged on the whole test split (variants on paired exact intervals against "
    "FP32; they decide the recommendation, not the run's verdict); FP32 parity with torch; the calibration "
    "check on the shipped file's own probabilities."
)
BENCHMARK_DESCRIPTION = (
    "Benchmark: latency percentiles and throughput per backend and batch size (time-boxed), FLOPs and share "
    "of the device's peak, and the variant to ship for a latency or a throughput target."
)


@dataclass(frozen=True)
class ExportResult:
    onnx_path: str  # the shipped FP32 file; variants.json beside it lists the others
    max_abs_diff: float
    passed: bool  # FP32 parity with torch (logits and probabilities)
    failing: tuple[str, ...] = ()  # variants that did not pass their checks (not recommended)


def _log_models(run: RunLogger, found: ExportStage, uri: str) -> tuple[str, str | None]:
    """Log the shipped FP32 file, and the logit-adjusted variant when one was built, as MLflow
    ONNX models of the export stage run; their model URIs."""
    log = partial(run.log_onnx_model, example_in=found.example, uri=uri, providers=inference_providers())
    shipped = log(found.onnx_path, example_out=found.example_outputs)
    if found.adjusted_path is None or found.adjusted_outputs is None:
        return shipped, None
    return shipped, log(found.adjusted_path, example_out=found.adjusted_outputs, name="onnx_model_adjusted")


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_model(
    ref: TrackingRef,
    checkpoint: str,
    snapshot_path: str,
    data_cfg: DataConfig,
    cfg: ExportConfig,
    workdir: str,
    *,
    eval_cfg: EvalConfig,
    temperature: float,
    fitted_on: str,
    adjusted_offsets: tuple[float, ...] | None = None,
    max_adjusted_drop: float = 1.0,
) -> ExportResult:
    """Export the checkpoint as ONNX variants with `temperature` (fitted on `fitted_on`) folded
    into their `probabilities` output (and, with `adjusted_offsets`, the logit-adjusted variant),
    judge them (the calibration check with `eval_cfg`'s thresholds), log the shipped FP32 file as
    an MLflow ONNX model; `ModelError` (after logging) when FP32 parity with torch fails."""
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.EXPORT, EXPORT_DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "test"))
        model, _ = load_model(checkpoint)
        snapshot = Snapshot.open(snapshot_path)
        found = export_stage(
            model,
            make_splits(snapshot, data_cfg),
            image_shape=snapshot.image_shape,
            cfg=cfg,
            calibration=ShippedCalibration.of(temperature, fitted_on, eval_cfg),
            seed=data_cfg.seed,
            out_dir=run_dir(workdir, ref.run_id) / ARTIFACT_FOLDER,
            offsets=adjusted_offsets,
            max_adjusted_drop=max_adjusted_drop,
        )
        tracker.publish(ref, run, found.with_model_uri(*_log_models(run, found, ref.uri)))
        if not found.passed:
            raise ModelError(
                f"ONNX parity failed: max |logit diff| {found.parity.max_abs_diff:.3g} "
                f"(export.max_abs_diff={cfg.max_abs_diff}), max |probabilities diff| "
                f"{found.parity.probabilities_max_abs_diff:.3g} "
                f"(export.max_probability_diff={cfg.max_probability_diff})"
            )
    return ExportResult(found.onnx_path, found.parity.max_abs_diff, found.passed, found.failing)


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark_model(ref: TrackingRef, checkpoint: str, onnx_path: str, snapshot_path: str, cfg: BenchmarkConfig) -> str:
    """Time torch and the ONNX variants; returns the latency table's artifact path."""
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.BENCHMARK, BENCHMARK_DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("test",))
        model, _ = load_model(checkpoint)
        test_x = np.asarray(Snapshot.open(snapshot_path).arrays("test")[0][: max(cfg.batch_sizes)])  # timing only
        report = benchmark_stage(model, read_manifest(onnx_path), test_x, cfg=cfg)
        figure = throughput_figure(report.tables[Benchmark.LATENCY_JSON])
        tracker.publish(ref, run, replace(report, figures={Benchmark.THROUGHPUT_PNG: figure}))
    return Benchmark.LATENCY_JSON


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
    snapshot = (record.summaries.get(Stage.INGEST) or {}).get("snapshot")
    if not snapshot:
        raise TrackingError(f"run {run_id} has no ingest summary naming its data snapshot")
    if not Path(snapshot).is_dir():
        raise DataError(
            f"run {run_id}'s data snapshot {snapshot} is not on this machine; "
            "run `auditflow bench` where the run's work folder is"
        )
    try:
        data_cfg = DataConfig.model_validate(record.config.get("data", {}))
        eval_cfg = EvalConfig.model_validate(record.config.get("evaluate", {}))
        fairness_cfg = FairnessConfig.model_validate(record.config.get("fairness", {}))
    except ValueError as err:  # pydantic's ValidationError
        raise TrackingError(
            f"run {run_id}'s recorded data, evaluate or fairness config does not validate: {err}"
        ) from err
    # the temperature the run's evaluate stage fitted; a run without one ships T = 1
    temperature = record.stage_metrics.get(Stage.EVALUATE, {}).get(Evaluate.TEMPERATURE)
    fit = (record.summaries.get(Stage.EVALUATE) or {}).get("calibration") or {}
    fitted_on = (
        fit_description(fit.get("fitted_on", ""), fit.get("n_fit", 0))
        if temperature is not None
        else "nothing (the run has no evaluate stage), so T = 1"
    )
    checkpoint = str(tracker.fetch_checkpoint(run_id, cache_dir(workdir) / "sources-of-weights"))
    ref = TrackingRef(uri=uri, experiment_id=record.experiment_id, run_id=run_id)
    exported = export_model.fn(
        ref,
        checkpoint,
        snapshot,
        data_cfg,
        export_cfg,
        workdir,
        eval_cfg=eval_cfg,
        temperature=1.0 if temperature is None else temperature,
        fitted_on=fitted_on,
        # the logit-adjusted variant the run's fairness stage asked for, exported again beside it
        adjusted_offsets=offsets_to_export(record.summaries.get(Stage.FAIRNESS)),
        max_adjusted_drop=fairness_cfg.mitigation_max_accuracy_drop,
    )
    table = benchmark_model.fn(ref, checkpoint, exported.onnx_path, snapshot, bench_cfg)
    return BenchRunResult(exported, table, tracker.load_run(run_id).summaries.get(Stage.BENCHMARK, {}))
