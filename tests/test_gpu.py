"""GPU paths. Every test here skips cleanly without CUDA; on a GPU machine run `pytest -m gpu`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import ingest, make_splits

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def splits(image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    snap = ingest(str(image_folder), DataConfig(), tmp_path_factory.mktemp("cache"))
    return make_splits(snap, DataConfig(val_fraction=0.25))


def test_compiled_bf16_training_on_cuda(splits, tmp_path: Path) -> None:
    from conftest import compiled_ema_run

    from auditflow.models.training.runtime import resolve_runtime

    result = compiled_ema_run(splits, resolve_runtime("auto"), tmp_path)
    # the CPU twin: tests/test_training_small.py::test_compiled_ema_run_learns_on_cpu
    assert result.compile_seconds > 0
    assert result.final_val_accuracy >= 0.9 and result.history[-1].val_accuracy >= 0.9, result.choice


def test_peak_of_known_gpus_comes_from_the_datasheet() -> None:
    from auditflow.models.training.runtime import resolve_runtime
    from auditflow.models.training.speed import GPU_BF16_PEAK, device_peak

    peak = device_peak(resolve_runtime("auto"))
    name = torch.cuda.get_device_name()
    if any(k in name for k in GPU_BF16_PEAK):
        assert "datasheet" in peak.source
    assert peak.flops_per_second > 1e12


# The GPU inference backends (torch CUDA graphs and half precision, ONNX Runtime CUDA and
# TensorRT) are covered by tests/test_bench.py, which skip the same way without CUDA.


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ddp_on_two_gpus(image_folder: Path, tmp_path: Path) -> None:
    from auditflow.models.training.distributed import Job, launch

    snap = ingest(str(image_folder), DataConfig(), tmp_path / "cache")
    cfg = TrainConfig(width=8, epochs=2, batch_size=8, lr=0.05, world_size=2)
    spec = {
        "snapshot": str(snap.path),
        "data": DataConfig(val_fraction=0.25).model_dump(mode="json"),
        "train": cfg.model_dump(mode="json"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    result, records = launch(spec, Job(2), tmp_path / "ddp")  # refuses ranks whose weights differ
    assert [r["world_size"] for r in records] == [2, 2] and len(result.history) == 2
