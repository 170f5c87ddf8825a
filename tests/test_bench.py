"""Inference benchmark: method, thread budget, recommendation, GPU paths, and `auditflow bench`.

Timings are never asserted; only that the numbers are consistent with each other."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from auditflow.core.config import BenchmarkConfig, ExportConfig
from auditflow.models.export import benchmark as bench
from auditflow.models.export.benchmark import BenchRow, benchmark, recommend, time_calls
from auditflow.models.export.variants import build_variants
from auditflow.models.training.presets import to_input
from auditflow.models.training.registry import build_model, prepare_from_data

FAST = {"warmup": 1, "min_repeats": 3, "min_seconds": 0.0, "max_seconds": 0.3}
CPU_BACKENDS = ("torch-eager", "onnx-fp32", "onnx-int8")
GPU_BACKENDS = (
    "torch-eager-cuda",
    "torch-compile-cuda",
    "torch-cudagraph-fp16-cuda",
    "torch-cudagraph-bf16-cuda",
    "onnx-fp32-cuda",
    "onnx-fp16-cuda",
    "onnx-fp16-tensorrt",
)
needs_cuda = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = build_model("fastnet", 4, width=8)
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    prepare_from_data(model, to_input(images))
    model.eval()
    paths, _ = build_variants(
        model,
        image_shape=(32, 32, 3),
        out_dir=tmp_path_factory.mktemp("onnx"),
        calibration_images=images,
        cfg=ExportConfig(),
    )
    return model, {name: (path, "pass") for name, path in paths.items()}, images


def test_rows_are_consistent_and_threads_are_restored(setup) -> None:
    model, variants, images = setup
    before, other = torch.get_num_threads(), 1
    torch.set_num_threads(2)  # the session runs on 1 (conftest); a budget of 2 would time-box out here
    try:
        result = benchmark(model, variants, images, batch_sizes=(1, 32), backends=CPU_BACKENDS, threads=other, **FAST)
        assert torch.get_num_threads() == 2  # the benchmark's budget does not leak
    finally:
        torch.set_num_threads(before)
    assert result.threads == other and result.hardware["threads"] == other
    assert {(r.backend, r.batch_size) for r in result.rows} == {(b, n) for b in CPU_BACKENDS for n in (1, 32)}
    for r in result.rows:
        assert r.repeats >= 3 and r.device == "cpu"
        assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
        assert r.images_per_second == pytest.approx(r.batch_size / (r.mean_ms / 1e3))
        assert r.achieved_flops_per_second == pytest.approx(result.flops_per_image * r.images_per_second)
        peak = result.peaks["cpu"]["flops_per_second"]
        assert r.fraction_of_peak == pytest.approx(r.achieved_flops_per_second / peak)
        eager = next(e for e in result.rows if e.backend == "torch-eager" and e.batch_size == r.batch_size)
        assert r.speedup_vs_eager == pytest.approx(r.images_per_second / eager.images_per_second)
        assert r.latency_speedup_vs_eager == pytest.approx(eager.p50_ms / r.p50_ms)
    assert {r.variant for r in result.rows} == {"fp32", "int8"}
    assert "matmul" in result.peaks["cpu"]["source"]  # the peak is named with its source
    assert result.flops_per_image > 1e6
    for key in ("cpu", "cpu_flags", "torch", "onnxruntime", "onnx", "python"):
        assert key in result.hardware


def test_threads_are_restored_when_a_backend_fails(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    model, variants, images = setup

    def broken(*_args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setitem(bench.BACKENDS, "torch-eager", ("fp32", "cpu", broken))
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        benchmark(model, variants, images, batch_sizes=(1,), backends=("torch-eager",), threads=before + 1, **FAST)
    assert torch.get_num_threads() == before


def test_inference_flops_match_a_hand_count() -> None:
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    flops = bench.inference_flops_per_image(torch.nn.Sequential(conv), (32, 32, 3))
    assert flops == 2 * 32 * 32 * 8 * 3 * 3 * 3  # multiply-add = 2, per output element and tap


def test_time_calls_is_time_boxed() -> None:
    calls: list[int] = []
    ms = time_calls(lambda: calls.append(1), lambda: None, warmup=0, min_repeats=5, min_seconds=0.0, max_seconds=60)
    assert len(ms) == 5 and len(calls) == 6  # one warm-up call even when warmup=0
    import time

    ms = time_calls(
        lambda: time.sleep(0.02), lambda: None, warmup=1, min_repeats=10_000, min_seconds=0.0, max_seconds=0.1
    )
    assert 1 <= len(ms) <= 6  # max_seconds ends the case long before min_repeats


def test_missing_variant_and_gpu_backends_are_skipped_with_a_reason(setup) -> None:
    model, variants, images = setup
    only_fp32 = {"fp32": variants["fp32"]}
    result = benchmark(model, only_fp32, images, batch_sizes=(1,), backends=("torch-eager", "onnx-int8"), **FAST)
    assert {r.backend for r in result.rows} == {"torch-eager"}
    assert "no int8 variant was built" in result.skipped["onnx-int8"]
    if not torch.cuda.is_available():
        result = benchmark(model, variants, images, batch_sizes=(1,), backends=GPU_BACKENDS, **FAST)
        assert result.rows == [] and set(result.skipped) == set(GPU_BACKENDS)
        assert all(why == "needs a CUDA device" for why in result.skipped.values())


def _row(backend: str, bs: int, p50: float, p99: float, ips: float, verdict: str = "pass") -> BenchRow:
    return BenchRow(
        backend=backend,
        variant="fp32",
        device="cpu",
        batch_size=bs,
        repeats=200,
        p50_ms=p50,
        p95_ms=p99,
        p99_ms=p99,
        mean_ms=p50,
        images_per_second=ips,
        speedup_vs_eager=1.0,
        latency_speedup_vs_eager=1.0,
        achieved_flops_per_second=0.0,
        fraction_of_peak=0.0,
        verdict=verdict,
    )


def test_recommendation_takes_tail_latency_and_throughput_among_passing_variants() -> None:
    rows = [
        _row("torch-eager", 1, 1.0, 1.5, 1000),
        _row("torch-eager", 256, 70, 80, 3600),
        _row("onnx-fp32", 1, 0.4, 2.0, 2500),
        _row("onnx-fp32", 256, 60, 65, 4200),  # fast p50, slow tail
        _row("onnx-int8", 1, 0.3, 0.5, 3300, "fail"),
        _row("onnx-int8", 256, 30, 33, 8500, "fail"),
    ]
    rows.append(replace(_row("onnx-q", 1, 0.6, 0.9, 1600), verdict="pass"))
    rows.append(replace(_row("onnx-fp16-cuda", 1, 0.1, 0.2, 9000), device="cpu", verdict="inconclusive"))
    rec = recommend(rows)["cpu"]
    assert rec["latency"]["backend"] == "onnx-q"  # lowest p99 among passing, not the lowest p50
    assert rec["throughput"]["backend"] == "onnx-fp32"  # int8 is faster but failed its accuracy check
    assert "onnx-int8 (fail)" in rec["throughput"]["reason"]
    assert "onnx-fp16-cuda (inconclusive)" in rec["latency"]["reason"]  # an unsettled variant is not recommended
    assert recommend([]) == {}


def test_benchmark_config_names_bad_values() -> None:
    with pytest.raises(ValueError, match="backends"):
        BenchmarkConfig(backends=("torch-fast",))
    with pytest.raises(ValueError, match=r"min_seconds=5\.0 exceeds max_seconds=1\.0"):
        BenchmarkConfig(min_seconds=5, max_seconds=1)


@pytest.mark.slow
def test_torch_compile_backend_runs_on_cpu(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's torch-compile backend, on AOTAutograd without Inductor's code generation: a
    cold Inductor compile of this inference graph costs about 40 s of CPU on 2 cores (a fresh CI
    machine has no cache), and tests/test_training_small.py compiles with Inductor for real."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, **kw, backend="aot_eager"))
    model, variants, images = setup
    result = benchmark(model, variants, images, batch_sizes=(1,), backends=("torch-eager", "torch-compile"), **FAST)
    assert {r.backend for r in result.rows} == {"torch-eager", "torch-compile"}


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_backend_runs_or_says_why_not(setup, backend: str) -> None:
    model, variants, images = setup
    result = benchmark(model, variants, images, batch_sizes=(1, 8), backends=("torch-eager-cuda", backend), **FAST)
    assert {r.batch_size for r in result.rows if r.backend == "torch-eager-cuda"} == {1, 8}
    if backend.startswith("torch") or backend == "onnx-fp32-cuda":
        assert {r.backend for r in result.rows} >= {backend}, result.skipped
    else:  # TensorRT may be listed by the wheel but lack its libraries
        assert backend in {r.backend for r in result.rows} or backend in result.skipped
    assert all(r.device == "cuda" for r in result.rows)
    assert "datasheet" in result.peaks["cuda"]["source"] or "measured" in result.peaks["cuda"]["source"]


# ------------------------------------------------------------------------------ auditflow bench
runner = CliRunner()


def test_bench_with_an_unknown_run_id_is_one_clear_error(tmp_path: Path) -> None:
    from auditflow.cli import app
    from auditflow.core.tracking import Tracker

    Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}").experiment_id("auditflow", tmp_path)
    out = runner.invoke(app, ["bench", "0123abcd", "--workdir", str(tmp_path)])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run id '0123abcd' not found in the MLflow store")


def test_bench_without_a_store_or_with_a_bad_override_is_one_clear_error(tmp_path: Path) -> None:
    from auditflow.cli import app

    out = runner.invoke(app, ["bench", "0123abcd", "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and out.output.startswith("error: no MLflow store at sqlite:///")
    out = runner.invoke(app, ["bench", "0123abcd", "--workdir", str(tmp_path), "--set", "train.epochs=3"])
    assert out.exit_code == 2 and "bench takes only export.* and benchmark.* overrides" in out.output


@pytest.mark.slow
def test_bench_past_run_logs_both_stages_to_that_run_and_the_report_shows_them(
    image_folder: Path, tmp_path: Path
) -> None:
    """A finished run with only ingest and train (checkpoint) is exported and benchmarked again."""
    from auditflow.audits.report import render
    from auditflow.core.config import DataConfig, PipelineConfig, TrainConfig
    from auditflow.core.data import ingest, make_splits
    from auditflow.core.paths import cache_dir
    from auditflow.core.tracking import Tracker, open_pipeline_run
    from auditflow.models.training.checkpoints import checkpoint_payload, save_checkpoint
    from auditflow.tasks.export import bench_past_run

    ref = open_pipeline_run(PipelineConfig(), tmp_path, "past", tags={})
    tracker = Tracker(ref.uri)
    snapshot = ingest(str(image_folder), DataConfig(), cache_dir(tmp_path))
    splits = make_splits(snapshot, DataConfig())
    counts = {s: np.bincount(getattr(splits, f"{s}_y"), minlength=3).tolist() for s in ("train", "val", "test")}
    with tracker.stage(ref, "ingest") as run:
        run.log_summary(
            "ingest",
            {
                "source": str(image_folder),
                "digest": snapshot.digest,
                "counts": counts,
                "classes": list(snapshot.classes),
                "image_shape": list(snapshot.image_shape),
                "snapshot": str(snapshot.path),
            },
        )
    torch.manual_seed(0)
    model = build_model("fastnet", 3, width=8)
    prepare_from_data(model, to_input(splits.train_x))
    with tracker.stage(ref, "train") as run:
        save_checkpoint(
            checkpoint_payload(model.eval(), TrainConfig(width=8), snapshot.classes, epoch=1), tmp_path / "model.pt"
        )
        run.log_artifact(tmp_path / "model.pt", "checkpoint")
    with tracker.stage(ref, "fairness") as run:  # its logit adjustment was worth exporting (all bench reads)
        run.log_summary("fairness", {"mitigation": {"offsets": [0.0, 0.4, -0.2], "exported": True}})
    tracker.end_run(ref.run_id)

    bench_cfg = BenchmarkConfig(
        batch_sizes=(1, 4), backends=CPU_BACKENDS, warmup=1, iterations=2, min_seconds=0.0, max_seconds=0.2
    )
    result = bench_past_run(ref.uri, ref.run_id, str(tmp_path), ExportConfig(calibration_samples=16), bench_cfg)

    record = tracker.load_run(ref.run_id)
    assert record.stage_status == {
        "ingest": "FINISHED",
        "train": "FINISHED",
        "fairness": "FINISHED",
        "export": "FINISHED",
        "benchmark": "FINISHED",
    }
    # the re-export keeps the run's logit-adjusted variant (it used to drop it)
    assert {v["variant"] for v in record.summaries["export"]["variants"]} == {"fp32", "int8", "fp16", "adjusted"}
    assert record.summaries["export"]["adjusted_model_uri"]
    assert record.summaries["export"]["calibration"] == {
        "method": "minmax",
        "n_images": 16,
        "seed": 0,
        "reduce_range": True,
        "gelu": "integer",
    }
    metrics = record.stage_metrics["benchmark"]
    assert metrics["benchmark/onnx-int8/bs4/images_per_second"] > 0
    assert "benchmark/onnx-int8/bs1/p99_ms" in metrics
    assert "export/int8/accuracy_drop_points" in record.stage_metrics["export"]
    assert "benchmark/onnx-int8/bs4/speedup_vs_eager" in record.metrics  # headline copied to the parent
    assert record.tags["verdict/onnx_int8"] in ("pass", "fail", "inconclusive")  # copied to the parent
    assert set(record.summaries["benchmark"]["recommendation"]["cpu"]) == {"latency", "throughput"}
    assert result.summary["rows"] == record.summaries["benchmark"]["rows"]
    bench_run = record.stage_run_ids["benchmark"]
    artifacts = {a.path for a in tracker.client.list_artifacts(bench_run, "benchmark")}
    assert {"benchmark/latency.json", "benchmark/throughput.png", "benchmark/summary.json"} <= artifacts
    # the report, without the hand-made fairness stage above (too thin for its section)
    _, md, summary, pngs = render(
        replace(record, summaries={k: v for k, v in record.summaries.items() if k != "fairness"})
    )
    assert "Ship on cpu for a latency target" in md and "Ship on cpu for a throughput target" in md
    assert "| int8 |" in md and "minmax calibration on 16 training images" in md
    assert "throughput" in pngs
    assert "ONNX int8 variant" in summary
