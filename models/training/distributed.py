"""Data-parallel training under torchrun: one process per device, DistributedDataParallel.

`launch` starts `torchrun --standalone --nproc_per_node N -m auditflow.models.training.distributed SPEC` and
waits; every process runs `fit` on its shard (NCCL on CUDA, gloo on CPU), rank 0 writes the
checkpoint, and each rank writes `result-RANK.json` (history and a digest of its final
weights, which must agree across ranks).

On several machines (`Job.nodes` > 1) this machine is node 0: its torchrun hosts the c10d
rendezvous at `Job.endpoint`, and every other node runs `torchrun_command(...)` (logged here),
reading the same SPEC and writing its results beside it: the nodes share that folder's disk.
A node that has not joined within `Job.timeout_s` fails the launch in one line naming the
endpoint.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.errors import ModelError
from auditflow.models.training.fit import EpochStats, FitResult, fit, load_model
from auditflow.models.training.runtime import Runtime, resolve_runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """The shape of a torchrun job: `per_node` processes on each of `nodes` machines."""

    per_node: int
    nodes: int = 1
    endpoint: str | None = None  # host:port of node 0's c10d rendezvous (nodes > 1)
    timeout_s: float = 600.0  # for every node to join
    rdzv_id: str = "auditflow"  # the same on every node of one job

    @property
    def processes(self) -> int:
        return self.per_node * self.nodes


def torchrun_command(spec_path: str | Path, job: Job) -> list[str]:
    """The command each node runs (the same on all of them; node 0 is the one at the endpoint)."""
    if job.nodes == 1:
        where = ["--standalone"]
    else:
        where = [
            f"--nnodes={job.nodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={job.endpoint}",
            f"--rdzv_id={job.rdzv_id}",
            f"--rdzv_conf=join_timeout={job.timeout_s:g}",
            "--max_restarts=0",
        ]
    run = [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={job.per_node}"]
    return [*run, "-m", "auditflow.models.training.distributed", str(spec_path)]


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


def launch(spec: dict[str, Any], job: Job, result_dir: str | Path) -> tuple[FitResult, list[dict[str, Any]]]:
    """Run `fit` in the `job`'s torchrun processes; returns rank 0's result and every rank's record."""
    cuda = _uses_cuda(spec["train"]["device"])
    if cuda and job.per_node > torch.cuda.device_count():
        raise ModelError(f"train.world_size={job.per_node} but only {torch.cuda.device_count()} GPU(s) are visible")
    result_dir = Path(result_dir)
    result_dir.mkdir(parents=True, exist_ok=True)
    for stale in result_dir.glob("result-*.json"):  # another attempt's: never read as this one's
        stale.unlink()
    spec_path = result_dir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "result_dir": str(result_dir)}))
    env = dict(os.environ)
    if not cuda:  # share the cores instead of oversubscribing them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // job.per_node)))
    cmd = torchrun_command(spec_path, job)
    if job.nodes > 1:  # torchrun bounds the wait itself (join_timeout)
        others = " ".join(cmd[1:])
        log.info(
            "waiting up to %.0f s for %d more node(s) at %s; on each, with %s shared, run: python %s",
            job.timeout_s,
            job.nodes - 1,
            job.endpoint,
            result_dir,
            others,
        )
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 and job.nodes > 1 and "RendezvousTimeoutError" in output:
        raise ModelError(
            f"train.nodes={job.nodes}: not every node joined the rendezvous at {job.endpoint} within "
            f"{job.timeout_s:g} s (train.rdzv_timeout_s); start the torchrun command logged above on each other node"
        )
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-25:])
        raise ModelError(
            f"distributed training ({job.processes} processes) failed with exit code {proc.returncode}:\n{tail}"
        )
    records = [json.loads((result_dir / f"result-{r}.json").read_text()) for r in range(job.processes)]
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
