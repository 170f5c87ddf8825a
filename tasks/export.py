"""Stages 6 and 7: ONNX export with parity checks, then the inference benchmark."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.core.config import BenchmarkConfig, DataConfig, ExportConfig
from auditflow.core.data import Snapshot
from auditflow.core.errors import ModelError
from auditflow.core.tracking import Tracker, TrackingRef
from auditflow.models.benchmark import benchmark, describe_device
from auditflow.models.export import INPUT_NAME, OUTPUT_NAME, check_parity, export_onnx, inference_providers, onnx_session
from auditflow.models.presets import to_input
from auditflow.models.checkpoints import load_model
from auditflow.core.paths import run_dir


@dataclass(frozen=True)
class ExportResult:
    onnx_path: str
    max_abs_diff: float
    passed: bool


@task(name="export-onnx", cache_policy=NO_CACHE)
def export_model(ref: TrackingRef, checkpoint: str, snapshot_path: str, data_cfg: DataConfig, cfg: ExportConfig, workdir: str) -> ExportResult:
    with Tracker(ref.uri).stage(ref, "export") as run:
        run.log_params({f"export.{k}": v for k, v in cfg.model_dump().items()})
        model, _ = load_model(checkpoint)
        snapshot = Snapshot.open(snapshot_path)
        path = export_onnx(model, snapshot.image_shape, run_dir(workdir, ref.run_id) / "model.onnx", cfg.opset)
        images, _ = snapshot.arrays("test")
        # a seeded sample across classes (snapshots are stored class by class)
        pick = np.sort(np.random.default_rng(data_cfg.seed).permutation(len(images))[: cfg.parity_samples])
        test_x = np.asarray(images[pick])
        parity = check_parity(model, path, test_x)
        passed = parity.max_abs_diff <= cfg.max_abs_diff
        example = to_input(test_x[:2]).numpy()
        outputs = {OUTPUT_NAME: onnx_session(path).run([OUTPUT_NAME], {INPUT_NAME: example})[0]}
        model_uri = run.log_onnx_model(path, example, outputs, ref.uri, inference_providers())
        run.log_metrics({"max_abs_diff": parity.max_abs_diff, "top1_agreement": parity.top1_agreement,
                         "size_mb": path.stat().st_size / 1e6, "passed": float(passed)})
        run.log_summary("export", {**asdict(parity), "opset": cfg.opset, "passed": passed, "model_uri": model_uri,
                                   "size_mb": path.stat().st_size / 1e6, "max_abs_diff_limit": cfg.max_abs_diff})
        if not passed:
            raise ModelError(f"ONNX parity failed: max |logit diff| {parity.max_abs_diff:.3g} > export.max_abs_diff={cfg.max_abs_diff}")
    return ExportResult(str(path), parity.max_abs_diff, passed)


@task(name="benchmark", cache_policy=NO_CACHE)
def benchmark_model(ref: TrackingRef, checkpoint: str, onnx_path: str, snapshot_path: str, cfg: BenchmarkConfig) -> str:
    with Tracker(ref.uri).stage(ref, "benchmark") as run:
        run.log_params({f"benchmark.{k}": v for k, v in cfg.model_dump().items()})
        model, _ = load_model(checkpoint)
        test_x = np.asarray(Snapshot.open(snapshot_path).arrays("test")[0][: max(cfg.batch_sizes)])  # timing only
        rows = benchmark(model, onnx_path, test_x, cfg.batch_sizes, cfg.warmup, cfg.iterations, cfg.num_threads)
        for r in rows:
            run.log_metrics({f"{r.backend}.bs{r.batch_size}.p50_ms": r.p50_ms, f"{r.backend}.bs{r.batch_size}.p95_ms": r.p95_ms,
                             f"{r.backend}.bs{r.batch_size}.images_per_second": r.images_per_second,
                             f"{r.backend}.bs{r.batch_size}.speedup_vs_torch": r.speedup_vs_torch})
        table = [asdict(r) for r in rows]
        run.log_rows(table, "benchmark/latency.json")
        run.log_summary("benchmark", {"rows": table, "device": describe_device()})
    return "benchmark/latency.json"
