"""Data-parallel training under torchrun: one process per device, DistributedDataParallel.

`launch` starts `torchrun --standalone --nproc_per_node N -m auditflow.models.training.distributed SPEC` and
waits; every process runs `fit` on its shard (NCCL on CUDA, gloo on CPU), rank 0 writes the
checkpoint, and each rank writes `result-RANK.json` (history and a digest of its final
weights, which must agree across ranks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.errors import ModelError
from auditflow.models.training.fit import EpochStats, FitResult, fit, load_model
from auditflow.models.training.runtime import Runtime, resolve_runtime


def _uses_cuda(device: str) -> bool:
    return torch.cuda.is_available() and device != "cpu"


def _worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    cuda = _uses_cuda(spec["train"]["device"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)  # before the process group, so NCCL binds the right GPU
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    try:
        cfg = TrainConfig.model_validate(spec["train"])
        base = resolve_runtime("cuda" if cuda else "cpu", cfg.precision, cfg.num_threads)
        runtime = Runtime(torch.device("cuda", local), base.autocast_dtype, base.channels_last) if cuda else base
        splits = make_splits(Snapshot.open(spec["snapshot"]), DataConfig.model_validate(spec["data"]))
        init_state = load_model(spec["init_from"])[0].state_dict() if spec.get("init_from") else None
        teacher = load_model(spec["teacher"])[0] if spec.get("teacher") else None
        result = fit(
            splits, cfg, runtime, checkpoint_dir=spec["checkpoint_dir"], init_state=init_state, teacher=teacher
        )
        dist.barrier()
        out = {**asdict(result), "checkpoint": str(result.checkpoint), "world_size": dist.get_world_size()}
        Path(spec["result_dir"], f"result-{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def launch(spec: dict[str, Any], world_size: int, result_dir: str | Path) -> tuple[FitResult, list[dict[str, Any]]]:
    """Run `fit` in `world_size` torchrun processes; returns rank 0's result and every rank's record."""
    cuda = _uses_cuda(spec["train"]["device"])
    if cuda and world_size > torch.cuda.device_count():
        raise ModelError(f"train.world_size={world_size} but only {torch.cuda.device_count()} GPU(s) are visible")
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    spec_path = result_dir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "result_dir": str(result_dir)}))
    env = dict(os.environ)
    if not cuda:  # share the cores instead of oversubscribing them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world_size)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={world_size}",
        "-m",
        "auditflow.models.training.distributed",
        str(spec_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise ModelError(
            f"distributed training ({world_size} processes) failed with exit code {proc.returncode}:\n{tail}"
        )
    records = [json.loads((result_dir / f"result-{r}.json").read_text()) for r in range(world_size)]
    digests = {r["state_digest"] for r in records}
    if len(digests) != 1:  # every rank must end with the same weights, or DDP did not sync
        raise ModelError(f"data-parallel ranks ended with different weights: {sorted(digests)}")
    r0 = {f.name: records[0][f.name] for f in fields(FitResult)}
    result = FitResult(
        **r0 | {"checkpoint": Path(r0["checkpoint"]), "history": tuple(EpochStats(**h) for h in r0["history"])}
    )
    return result, records


if __name__ == "__main__":
    _worker(sys.argv[1])
