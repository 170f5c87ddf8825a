"""A profile's training over seeds on a GPU machine that has torch but neither Prefect nor MLflow
(a lent GPU: scripts/gpu_session.sh), through the same `fit` the pipeline uses: what
`auditflow bench-train --seeds N` measures, written as JSON, and optionally a torch profiler
table of training steps (where a step's GPU time goes, and how much of the wall the GPU idles).

    python scripts/gpu_train_bench.py ARCHIVE --profile full --seeds 5 --out full.json [--trace N]

Imports only `auditflow.core` and `auditflow.models` (pydantic and PyYAML besides torch).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("archive")
    p.add_argument("--profile", default="full")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--out", required=True)
    p.add_argument("--cache", default=None, help="ingest cache folder (shared between calls)")
    p.add_argument("--trace", type=int, default=0, help="also profile this many training steps")
    p.add_argument("--compile-mode", default=None, help="an experiment: torch.compile's mode for `fit`'s model")
    p.add_argument("--foreach", action="store_true", help="an experiment: multi-tensor optimiser steps, not fused")
    a = p.parse_args()
    if a.foreach:
        from auditflow.models.training import fit

        fit._fused = lambda groups: None
    if a.compile_mode:  # not a product option (yet): every torch.compile call of this process gets the mode
        torch.compile = functools.partial(torch.compile, mode=a.compile_mode)

    from auditflow.core.config import load_config
    from auditflow.core.data import ingest

    cfg = load_config(a.profile, a.overrides)
    start = time.perf_counter()
    snapshot = ingest(a.archive, cfg.data, a.cache or tempfile.mkdtemp())
    print(f"ingested in {time.perf_counter() - start:.1f} s", flush=True)
    report: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "profile": a.profile,
        "overrides": a.overrides,
        "compile_mode": a.compile_mode,
        "foreach": a.foreach,
    }
    if a.seeds:
        report = bench(snapshot, cfg, a.seeds, Path(a.out), report)
    if a.trace:
        report["trace"] = trace_steps(snapshot, cfg, a.trace)
    Path(a.out).write_text(json.dumps(report, indent=1, default=str))


def bench(snapshot, cfg, seeds: int, out: Path, report: dict) -> dict:
    """`bench_train` (what `bench-train` runs per seed) over seeds 0..`seeds`-1, each row
    printed and written to `out` as soon as it is measured (a GPU lease can end mid-run)."""
    from auditflow.models.training.benchtrain import bench_train, summarise

    rows = []
    for seed in range(seeds):
        row = bench_train(snapshot, cfg, seed)
        rows.append(row)
        print(
            f"seed {row.seed}: TTA {100 * row.test_accuracy:.2f}%  shipped {100 * row.shipped_accuracy:.2f}%  "
            f"train {row.train_seconds:.2f} s ({row.images_per_second:,.0f} img/s)  epochs {row.epochs}  "
            f"val {row.val_seconds:.2f} s  wall {row.wall_seconds:.1f} s  kept {row.kept_weights}",
            flush=True,
        )
        report = report | {"rows": [asdict(r) for r in rows], "summary": summarise(rows)}
        out.write_text(json.dumps(report, indent=1, default=str))
    s = report["summary"]
    print(f"mean TTA {100 * s['accuracy_mean']:.2f}% (sd {100 * s['accuracy_std']:.2f}), "
          f"train {s['train_seconds_mean']:.2f} s mean", flush=True)  # fmt: skip
    return report


def trace_steps(snapshot, cfg, steps: int) -> dict:
    """`steps` training steps of `cfg` (after its warm-up and compile) under torch.profiler:
    wall seconds per step, GPU kernel seconds per step, and the top kernels and host ops."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from auditflow.core.data import make_splits
    from auditflow.models.training.averaging import make_ema
    from auditflow.models.training.fit import OPTIMIZERS, _build, _param_groups
    from auditflow.models.training.loop import train_one_epoch, warm_up
    from auditflow.models.training.runtime import resolve_runtime

    train = cfg.train
    runtime = resolve_runtime(train.device, train.precision)
    splits = make_splits(snapshot, cfg.data)
    base, _ = _build(splits, train, runtime, None)
    optimizer = OPTIMIZERS[train.optimizer](_param_groups(base, train.weight_decay), train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    images = torch.as_tensor(splits.train_x[: steps * train.batch_size].copy()).to(runtime.device)
    labels = torch.as_tensor(splits.train_y[: steps * train.batch_size].copy()).to(runtime.device)
    model, *_ = warm_up(base, base, optimizer, images=images, labels=labels, cfg=train, runtime=runtime)
    ema = make_ema(base, train.ema_decay) if train.ema_decay else None

    def epoch() -> float:
        kwargs = dict(optimizer=optimizer, scheduler=scheduler, cfg=train, runtime=runtime, ema=ema)
        return train_one_epoch(model, images, labels, generator=torch.Generator().manual_seed(0), **kwargs)[2]

    epoch()  # first-call costs outside the trace
    plain = epoch()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        traced = epoch()
    events = prof.key_averages()
    # GPU time: kernels and copies only (device-side events); operators also carry their
    # kernels' time, and summing both would count it twice
    kernels = [e for e in events if e.device_type != DeviceType.CPU]
    gpu = lambda e: getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    gpu_us = sum(gpu(e) for e in kernels)
    top_gpu = sorted(kernels, key=lambda e: -gpu(e))[:15]
    top_cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    launches = sum(e.count for e in events if "LaunchKernel" in e.key)
    n = len(images) // train.batch_size
    print(f"trace: {n} steps, {1e3 * plain / n:.2f} ms/step untraced, {1e3 * traced / n:.2f} ms/step traced, "
          f"GPU kernels {gpu_us / 1e3 / n:.2f} ms/step, {launches / n:.0f} launches/step", flush=True)  # fmt: skip
    try:
        print(events.table(sort_by="self_device_time_total", row_limit=12), flush=True)
    except Exception as err:  # the sort key is named differently in some torch versions
        print(f"no table: {err}", flush=True)
    return {
        "steps": n,
        "ms_per_step": 1e3 * plain / n,
        "ms_per_step_traced": 1e3 * traced / n,
        "gpu_ms_per_step": gpu_us / 1e3 / n,
        "launches_per_step": launches / n,
        "top_gpu": [(e.key, e.count, gpu(e) / 1e3) for e in top_gpu],
        "top_cpu": [(e.key, e.count, e.self_cpu_time_total / 1e3) for e in top_cpu],
        "runtime": asdict(runtime) | {"device": str(runtime.device), "autocast_dtype": str(runtime.autocast_dtype)},
    }


if __name__ == "__main__":
    sys.exit(main())
