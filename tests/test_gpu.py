"""GPU paths. Every test here skips cleanly without CUDA; on a GPU machine run `pytest -m gpu`
(on one whose python has torch but not Prefect: `STEPS=pytest scripts/gpu_session.sh`, NOTES.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_cuda_graph_training_learns_as_the_plain_compiled_run_does(splits, tmp_path: Path) -> None:
    """`train.cuda_graphs`: the warm-up records the step's graphs and every step replays them.
    On an H200 the `full` profile replayed this way gave the same accuracies to the last digit as
    without graphs (NOTES.md); here the toy case learns as tests/test_gpu.py's compiled run does."""
    from conftest import compiled_ema_config

    from auditflow.models.training.fit import fit
    from auditflow.models.training.runtime import resolve_runtime

    runtime = resolve_runtime("auto")
    cfg = compiled_ema_config(runtime).model_copy(update={"cuda_graphs": True})
    result = fit(splits, cfg, runtime, checkpoint_dir=tmp_path)
    assert result.final_val_accuracy >= 0.9 and result.history[-1].val_accuracy >= 0.9, result.choice


def _syncs_in_one_epoch(splits, batch_size: int, flip_mode: str) -> int:
    """Host synchronisations (`torch.cuda.set_sync_debug_mode`) in one epoch of fastnet with
    EMA, random crops and flips, eager bf16."""
    import warnings

    from auditflow.models.training.averaging import make_ema
    from auditflow.models.training.fit import OPTIMIZERS, _param_groups
    from auditflow.models.training.loop import train_one_epoch
    from auditflow.models.training.presets import alternating_flips
    from auditflow.models.training.registry import build_model
    from auditflow.models.training.runtime import resolve_runtime

    runtime = resolve_runtime("cuda", "bf16")
    cfg = TrainConfig(width=8, batch_size=batch_size, lr=0.05, ema_decay=0.9, flip_mode=flip_mode)
    model = runtime.prepare(build_model("fastnet", len(splits.classes), width=8))
    optimizer = OPTIMIZERS["sgd"](_param_groups(model, cfg.weight_decay), cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    images = torch.as_tensor(np.asarray(splits.train_x)).cuda()
    labels = torch.as_tensor(splits.train_y).cuda()
    flips = alternating_flips(len(labels), seed=0, epoch=1).cuda() if flip_mode == "alternate" else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_one_epoch(
                model, images, labels, optimizer=optimizer, scheduler=scheduler, cfg=cfg, runtime=runtime,
                generator=torch.Generator().manual_seed(0), ema=make_ema(model, 0.9), flips=flips,
            )  # fmt: skip
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("flip_mode", ["random", "alternate"])
def test_no_training_step_waits_for_the_gpu(splits, flip_mode: str) -> None:
    """The host queues the next step while the GPU runs this one: an epoch synchronises a fixed
    number of times (its permutation, its augmentation draws, its loss at the end), whatever
    its number of steps. Per-step EMA counts and per-step augmentation copies each synchronised
    once or twice a step before."""
    steps = len(splits.train_y) // 2
    _syncs_in_one_epoch(splits, steps, flip_mode)  # the process's first epoch syncs once more (lazy set-up)
    few, many = _syncs_in_one_epoch(splits, steps, flip_mode), _syncs_in_one_epoch(splits, 2, flip_mode)
    assert few == many, f"{few} synchronisations with 2 steps, {many} with {len(splits.train_y) // 2}"
    assert many <= 6


def test_optimisers_on_a_gpu_step_in_one_fused_kernel() -> None:
    from auditflow.models.training.fit import OPTIMIZERS, _param_groups
    from auditflow.models.training.registry import build_model

    model = build_model("fastnet", 3, width=8).cuda()
    for name in ("sgd", "adam", "adamw"):
        optimizer = OPTIMIZERS[name](_param_groups(model, 5e-4), TrainConfig(optimizer=name))
        assert all(g["fused"] for g in optimizer.param_groups), name


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
