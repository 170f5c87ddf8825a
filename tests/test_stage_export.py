"""The export and benchmark stages' report builders on hand-made findings (no ONNX, no timing,
no Prefect, no MLflow): metric names from the names module, checks at their edges."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from auditflow.core.config import BenchmarkConfig, ExportConfig
from auditflow.core.names import Benchmark, Export, Stage, Verdict
from auditflow.models.export.benchmark import BenchResult, BenchRow
from auditflow.models.export.onnx import ParityResult
from auditflow.models.export.stage import benchmark_report, export_checks, export_report
from auditflow.models.export.variants import VariantCheck


def _variant(name: str, drop: float, limit: float = 0.5, reasons: tuple[str, ...] = ()) -> VariantCheck:
    """A variant judged the way `check_variant` judges: it fails beyond the limit or with reasons."""
    failed = drop > limit or bool(reasons)
    return VariantCheck(
        variant=name,
        path=f"/tmp/onnx/model.{name}.onnx",
        size_mb=1.5,
        providers={"CPUExecutionProvider": "ok"},
        measured_on="CPUExecutionProvider",
        accuracy=0.9 - drop / 100,
        reference_accuracy=0.9,
        accuracy_drop=drop,
        top1_agreement=0.99,
        max_abs_diff=0.01,
        max_accuracy_drop=limit,
        verdict="fail" if failed else "pass",
        reasons=reasons,
    )


def _report(parity_diff: float = 1e-4, variants: list[VariantCheck] | None = None):
    parity = ParityResult(max_abs_diff=parity_diff, top1_agreement=1.0, n_samples=64)
    variants = variants if variants is not None else [_variant("fp32", 0.0), _variant("int8", 0.5)]
    cfg = ExportConfig(max_abs_diff=1e-3)
    return export_report(
        parity=parity, variants=variants, calibration=None, cfg=cfg, manifest="/tmp/onnx/variants.json"
    )


def test_export_report_names_come_from_the_names_module() -> None:
    report = _report()
    assert report.stage == Stage.EXPORT
    int8 = {name: Export.VARIANT.format(variant="int8", name=name) for name in ("accuracy", "accuracy_drop_points")}
    assert report.metrics[int8["accuracy_drop_points"]] == 0.5
    assert report.metrics[int8["accuracy"]] == pytest.approx(0.895)
    assert report.metrics[Export.PARITY_MAX_ABS_DIFF] == 1e-4
    assert Export.INT8_ACCURACY_DROP_POINTS in report.headline  # read by the model card
    assert Export.VARIANT.format(variant="int8", name="size_mb") not in report.headline
    assert set(report.tables) == {Export.VARIANTS_JSON}
    assert [row["variant"] for row in report.tables[Export.VARIANTS_JSON]] == ["fp32", "int8"]
    assert report.tags[Export.VARIANT.format(variant="int8", name="judged")].startswith("accuracy drop 0.50 points")
    assert [folder for _, folder in report.files] == ["onnx"] * 3
    assert report.summary["files"] == {"fp32": "onnx/model.fp32.onnx", "int8": "onnx/model.int8.onnx"}
    assert report.summary["model_uri"] is None and report.summary["passed"] is True


def test_a_variant_at_its_limit_passes_and_beyond_it_fails() -> None:
    at, beyond = _variant("int8", 0.5), _variant("fp16", 0.51)
    checks = export_checks(ParityResult(1e-3, 1.0, 64), [at, beyond], max_abs_diff=1e-3)
    assert [c.verdict for c in checks] == [Verdict.ONNX_PARITY, Verdict.onnx("int8"), Verdict.onnx("fp16")]
    assert [c.status for c in checks] == ["pass", "pass", "fail"]  # parity exactly at its limit passes
    assert checks[2].metric == Export.VARIANT.format(variant="fp16", name="accuracy_drop_points")
    assert all(c.stage == Stage.EXPORT for c in checks)


def test_parity_beyond_its_limit_fails_and_an_unmeasured_variant_has_no_value() -> None:
    unmeasured = _variant("int8", math.nan, reasons=("no provider could run it, so its accuracy is unknown",))
    report = _report(parity_diff=2e-3, variants=[_variant("fp32", 0.0), unmeasured])
    parity, _, int8 = report.checks
    assert parity.status == "fail" and report.summary["passed"] is False
    assert int8.status == "fail" and int8.value is None and "no provider" in int8.note
    assert Export.VARIANT.format(variant="int8", name="accuracy") not in report.finite_metrics()


def _row(backend: str, device: str, batch_size: int, p99: float, ips: float, verdict: str = "pass") -> BenchRow:
    return BenchRow(
        backend=backend,
        variant="int8" if "int8" in backend else "fp32",
        device=device,
        batch_size=batch_size,
        repeats=200,
        p50_ms=p99 / 2,
        p95_ms=p99 * 0.9,
        p99_ms=p99,
        mean_ms=p99 / 2,
        images_per_second=ips,
        speedup_vs_eager=ips / 100,
        latency_speedup_vs_eager=1.0,
        achieved_flops_per_second=1e9,
        fraction_of_peak=0.1,
        verdict=verdict,
    )


def test_benchmark_report_headlines_the_largest_batch_and_recommends_passing_backends() -> None:
    rows = [
        _row("torch-eager", "cpu", 1, 2.0, 500),
        _row("torch-eager", "cpu", 32, 20.0, 100),
        _row("onnx-int8", "cpu", 1, 1.0, 1000, verdict="fail"),  # fastest, but failed its accuracy check
        _row("onnx-int8", "cpu", 32, 10.0, 3200, verdict="fail"),
        _row("onnx-fp32", "cpu", 1, 1.5, 700),
        _row("onnx-fp32", "cpu", 32, 15.0, 200),
    ]
    hardware = {"cpu": "Test CPU", "cpu_flags": ["avx2", "fma"], "threads": 2, "gpu": None}
    result = BenchResult(rows, 2, 1e6, {"cpu": {"flops_per_second": 1e10, "source": "measured"}}, hardware)
    report = benchmark_report(result, cfg=BenchmarkConfig(batch_sizes=(1, 32)))
    assert report.stage == Stage.BENCHMARK
    key = Benchmark.RESULT.format(backend="onnx-int8", batch_size=32, name="images_per_second")
    assert report.metrics[key] == 3200 and key in report.headline
    assert Benchmark.RESULT.format(backend="onnx-int8", batch_size=1, name="images_per_second") not in report.headline
    assert Benchmark.RESULT.format(backend="onnx-fp32", batch_size=32, name="latency_speedup_vs_eager") in (
        report.headline
    )
    assert report.metrics[Benchmark.THREADS] == 2
    assert report.tags[Benchmark.CPU_FLAGS] == "avx2 fma"
    assert report.tags[Benchmark.PEAK_SOURCE.format(device="cpu")] == "measured"
    recommended = {Benchmark.RECOMMENDED.format(device="cpu", target=t) for t in ("latency", "throughput")}
    assert set(report.parent_tags) == recommended
    assert set(report.parent_tags.values()) == {"onnx-fp32"}  # not the failing INT8
    assert len(report.tables[Benchmark.LATENCY_JSON]) == len(rows)
    assert report.summary["device"].startswith("Test CPU (avx2, fma)")


def test_benchmark_keys_parse_back() -> None:
    keys = [Benchmark.RESULT.format(backend="onnx-int8", batch_size=n, name="speedup_vs_eager") for n in (1, 256)] + [
        Benchmark.RESULT.format(backend="onnx-int8", batch_size=1, name="latency_speedup_vs_eager")
    ]
    assert Benchmark.by_batch_size(keys, "onnx-int8", "speedup_vs_eager") == {1: keys[0], 256: keys[1]}
    assert Benchmark.by_batch_size(keys, "torch-eager", "speedup_vs_eager") == {}


def test_export_report_files_are_the_variants_and_their_manifest() -> None:
    report = _report()
    assert [p.name for p, _ in report.files] == ["model.fp32.onnx", "model.int8.onnx", "variants.json"]
    assert all(isinstance(p, Path) for p, _ in report.files)
