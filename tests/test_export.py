from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from auditflow.models.benchmark import benchmark
from auditflow.models.export import INPUT_NAME, OUTPUT_NAME, check_parity, export_onnx, onnx_session
from auditflow.models.presets import to_input
from auditflow.models.registry import build_model, prepare_from_data


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    import torch

    torch.manual_seed(0)
    model = build_model("fastnet", 4, width=8)
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    prepare_from_data(model, to_input(images))
    model.eval()
    path = export_onnx(model, (32, 32, 3), tmp_path_factory.mktemp("onnx") / "m.onnx", opset=18)
    return model, path, images


def test_export_is_valid_onnx_with_dynamic_batch(exported) -> None:
    model, path, images = exported
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [INPUT_NAME]
    dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param and not dim.dim_value  # symbolic batch axis
    session = onnx_session(path)
    for n in (1, 7):
        out = session.run([OUTPUT_NAME], {INPUT_NAME: to_input(images[:n]).numpy()})[0]
        assert out.shape == (n, 4)


def test_parity_with_torch(exported) -> None:
    model, path, images = exported
    parity = check_parity(model, path, images, batch_size=8)
    assert parity.n_samples == 20
    assert parity.max_abs_diff < 1e-4
    assert parity.top1_agreement == 1.0


def test_parity_detects_a_different_model(exported) -> None:
    import copy

    import torch

    model, path, images = exported
    other = copy.deepcopy(model)
    with torch.no_grad():
        other[1].head.weight.add_(0.5)
    same = check_parity(model, path, images)
    parity = check_parity(other, path, images)
    assert parity.max_abs_diff > 100 * max(same.max_abs_diff, 1e-7)


def test_benchmark_rows(exported) -> None:
    model, path, images = exported
    rows = benchmark(model, path, images, batch_sizes=(1, 32), warmup=1, iterations=3)
    backends = {r.backend for r in rows}
    assert {"torch-cpu", "onnxruntime-cpu"} <= backends
    assert {r.batch_size for r in rows} == {1, 32}
    for r in rows:
        assert 0 < r.p50_ms <= r.p95_ms
        assert r.images_per_second == pytest.approx(r.batch_size / (r.p50_ms / 1e3))
        if r.backend == "torch-cpu":
            assert r.speedup_vs_torch == 1.0
