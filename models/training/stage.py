"""The train stage without Prefect or MLflow: resume or reuse, fit, keep, and the stage's report.

The Prefect task (`auditflow.tasks.train`) opens the snapshot, fetches weights named by run
id, streams per-epoch metrics to MLflow through the `on_epoch` callback it passes in, and
publishes the `StageReport` built here. Everything else is here:

- `resume_key`: unfinished runs and finished trainings are found again by data + config.
- `train_and_keep`: under a lock on the run's checkpoint folder, put a finished training of
  the same data and config where `fit` resumes from (it then trains no epoch), train (or
  resume), keep the finished training for later runs, copy the final checkpoint out.
- `train_report`: params, final metrics, tags (`train/plan`, `train/kept_weights`, ...), the
  checkpoint artifact and the summary the report reads back; with `TrainResult`, the small
  typed result the next stages take (including the canaries drawn once, for evaluation).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import Snapshot, Splits, make_splits
from auditflow.core.errors import ConfigError, ModelError
from auditflow.core.names import Stage, Train
from auditflow.core.paths import cache_dir, trained_dir
from auditflow.core.stage import StageReport
from auditflow.models.training.canaries import Canaries, hold_out_canaries
from auditflow.models.training.checkpoints import load_model, read_checkpoint
from auditflow.models.training.distributed import Job, launch
from auditflow.models.training.fit import EpochStats, FitResult, check_batch_size, fit
from auditflow.models.training.runtime import Runtime
from auditflow.models.training.speed import Peak, speed_metrics

log = logging.getLogger(__name__)
RESULT = "result.json"  # beside a finished training's checkpoint: its weights digest and train run
HEADLINE = (Train.FINAL_VAL_ACCURACY, Train.TRAIN_S, Train.PARAMETERS, Train.PLANNED_EPOCHS)
DP_HEADLINE = (Train.DP_EPSILON, Train.DP_DELTA)  # DP-SGD runs: on the parent too


def unit_name(key: str) -> str:
    """A metric name with its unit: `seconds` -> `epoch_s`, `*_seconds` -> `*_s`."""
    if key == "seconds":
        return "epoch_s"
    return key.removesuffix("_seconds") + "_s" if key.endswith("_seconds") else key


def epoch_metrics(stats: EpochStats) -> dict[str, float]:
    """One epoch's figures by metric name, without the stage prefix (the caller adds it)."""
    return {unit_name(k): v for k, v in stats.__dict__.items() if k != "epoch"}


def train_metrics(values: Mapping[str, float]) -> dict[str, float]:
    """`train/<name>` with units in the names, for MLflow."""
    return {Train.EPOCH.format(name=unit_name(k)): v for k, v in values.items()}


@contextlib.contextmanager
def exclusive(work: Path, *, poll_s: float = 1.0, say_every_s: float = 60.0) -> Iterator[None]:
    """Hold `work`'s lock file: two runs of the same data and config must not train into the
    same folder `work` at once. A run that finds it held waits for its holder, saying so every
    `say_every_s`, then goes on with what the holder left (its finished training, or its cache
    entry), without training again. The holder is alive while it holds the lock: the kernel
    releases the lock of a process that dies. The file (`<work>.lock`) lives beside the folder and
    is never deleted, so that the holder may remove the folder under it; `work` itself is not
    created here."""
    work.parent.mkdir(parents=True, exist_ok=True)
    with open(work.with_name(work.name + ".lock"), "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another run"
            log.info("%s is training the same data and config in %s; waiting for it to end", holder, work)
            start = said = time.monotonic()
            while True:
                time.sleep(poll_s)
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - said >= say_every_s:
                        said = time.monotonic()
                        log.info("still waiting for %s (%.0f s)", holder, said - start)
            log.info("%s ended after %.0f s of waiting; going on in %s", holder, time.monotonic() - start, work)
        handle.seek(0)
        handle.truncate()
        handle.write(f"the run of process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield


def resume_key(digest: str, data_cfg: DataConfig, train_cfg: TrainConfig, *, canaries: tuple[int, int] = (0, 0)) -> str:
    """Checkpoints of an unfinished run, and finished trainings, are found again by data + config
    (and by the canaries held out of training, when there are any: (count, seed))."""
    parts = [digest, data_cfg.model_dump(mode="json"), train_cfg.model_dump(mode="json")]
    blob = json.dumps(parts + ([list(canaries)] if canaries[0] else []), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def reuse_finished(finished: Path, work: Path) -> dict[str, str] | None:
    """Put a finished training of the same data + config (`finished`) where `fit` resumes from
    (`work/last.pt`): `fit` then trains no epoch and only scores the kept weights again. Its
    `result.json` (weights digest, train run), or None when there is none."""
    try:
        result = json.loads((finished / RESULT).read_text())
    except (OSError, ValueError):
        return None
    if not (finished / "last.pt").is_file():
        return None
    try:  # damaged: say so here, naming this copy (the resumed copy's warning named checkpoints/)
        read_checkpoint(finished / "last.pt")
    except ModelError as err:
        log.warning("discarding the kept training %s and training again: %s", finished, err)
        shutil.rmtree(finished, ignore_errors=True)
        return None
    shutil.copy2(finished / "last.pt", work / "last.pt")  # a copy: a kill now leaves the result intact
    log.info("reusing the finished training of this data and config (train run %s)", result.get("train_run"))
    return result


def keep_finished(result: FitResult, *, work: Path, finished: Path, train_run: str) -> None:
    """Keep a finished training (checkpoint + weights digest) for later runs with the same data
    and config, before anything else can fail: a run killed or failed in a later stage is
    rerun without training again."""
    finished.mkdir(parents=True, exist_ok=True)
    shutil.copy2(result.checkpoint, finished / "last.tmp")
    (finished / "last.tmp").replace(finished / "last.pt")
    record = {"weights_sha256": result.state_digest, "train_run": train_run, "epochs": len(result.history)}
    (finished / "result.tmp").write_text(json.dumps(record, indent=2))
    (finished / "result.tmp").replace(finished / RESULT)


def load_sources(
    sources: Mapping[str, Path], cfg: TrainConfig, classes: tuple[str, ...]
) -> tuple[nn.Module | None, nn.Module | None]:
    """(model to fine-tune from, teacher) from the checkpoints named by `train.init_from` and
    `train.teacher` (`sources` keys), each checked against this config and data."""
    init_model = teacher = None
    if "init_from" in sources:
        init_model, payload = load_model(sources["init_from"])
        src = (payload["config"]["model"], payload["config"]["width"])
        if src != (cfg.model, cfg.width):
            raise ConfigError(
                f"train.init_from={cfg.init_from!r} holds a {src[0]!r} model of width {src[1]}, "
                f"but train.model={cfg.model!r}, train.width={cfg.width}"
            )
    if "teacher" in sources:
        teacher, payload = load_model(sources["teacher"])
        if tuple(payload["classes"]) != classes:
            raise ConfigError(
                f"train.teacher={cfg.teacher!r} was trained on classes {payload['classes']}, "
                f"not this data's {list(classes)}"
            )
    return init_model, teacher


@dataclass(frozen=True)
class Places:
    """Where one training's files live."""

    work: Path  # checkpoints of an unfinished run (resumed from); removed once it is finished
    finished: Path  # the finished training, kept for later runs of the same data + config
    final: Path  # this run's final checkpoint (logged as `checkpoint/model.pt`)


@dataclass(frozen=True)
class TrainData:
    """What this run trains on, and where its files go."""

    splits: Splits  # the splits, less the canaries held out of training
    split_images: int  # the whole training split (more than `splits.train_y` when canaries were held out)
    canaries: Canaries  # drawn here, once; empty when the one-run audit is off
    places: Places


def prepare(
    snapshot: Snapshot, data_cfg: DataConfig, cfg: TrainConfig, *, canaries: tuple[int, int], workdir: str, final: Path
) -> TrainData:
    """The splits of `snapshot` less the excluded canaries (`canaries` = (count, seed); the
    run's one draw), and the checkpoint folders of this data + config."""
    whole = make_splits(snapshot, data_cfg)
    splits, chosen = hold_out_canaries(whole, *canaries)
    key = resume_key(snapshot.digest, data_cfg, cfg, canaries=canaries)
    places = Places(cache_dir(workdir) / "checkpoints" / key, trained_dir(workdir, key), final)
    return TrainData(splits, len(whole.train_y), chosen, places)


@dataclass(frozen=True)
class Training:
    """What `train_and_keep` did."""

    fit: FitResult
    reused: dict[str, Any] | None  # the reused finished training's record (`train_run`), or None
    final: Path  # this run's final checkpoint

    def unlogged(self, world_size: int) -> tuple[EpochStats, ...]:
        """Epochs not streamed live: all of them from the (untracked) torchrun workers, else
        those restored from a checkpoint."""
        history = self.fit.history
        return history if world_size > 1 else history[: self.fit.resumed_from_epoch]


def ddp_spec(snapshot_path: str, data_cfg: DataConfig, cfg: TrainConfig, *, sources: Mapping[str, Path]) -> dict:
    """What the torchrun workers need to build the splits and train (`distributed.launch`);
    `checkpoint_dir` is added by `train_and_keep`."""
    return {
        "snapshot": snapshot_path,
        "data": data_cfg.model_dump(mode="json"),
        "train": cfg.model_dump(mode="json"),
        **{k: str(v) for k, v in sources.items()},
    }


def job_for(cfg: TrainConfig, work: Path) -> Job:
    """The torchrun job of `cfg`: its rendezvous id is the checkpoint folder's name (the data and
    config key), so every node of the same training joins the same rendezvous."""
    return Job(cfg.world_size, cfg.nodes, cfg.rdzv_endpoint, cfg.rdzv_timeout_s, rdzv_id=work.name)


def train_and_keep(
    data: TrainData,
    cfg: TrainConfig,
    runtime: Runtime,
    *,
    train_run: str,
    on_epoch: Callable[[EpochStats], None] | None = None,
    init_model: nn.Module | None = None,
    teacher: nn.Module | None = None,
    spec: dict | None = None,
) -> Training:
    """Train `cfg.model` on `data.splits` (or resume, or reuse a finished training of the same
    data and config), keep the finished training and copy its checkpoint to `data.places.final`.

    `spec`: `ddp_spec(...)`, used when `cfg.processes` > 1 (torchrun workers); `on_epoch` gets
    each epoch trained in this process; `train_run` is recorded with the finished training."""
    splits, places = data.splits, data.places
    check_batch_size(cfg.batch_size, len(splits.train_y), cfg.processes)
    work, finished = places.work, places.finished
    with exclusive(work):
        work.mkdir(parents=True, exist_ok=True)  # (again: the run it waited for removes it)
        reused = reuse_finished(finished, work)
        if cfg.processes > 1:
            result, _ = launch({**(spec or {}), "checkpoint_dir": str(work)}, job_for(cfg, work), work / "ddp")
        else:

            def train() -> FitResult:
                init_state = init_model.state_dict() if init_model is not None else None
                return fit(
                    splits, cfg, runtime, checkpoint_dir=work, on_epoch=on_epoch, init_state=init_state, teacher=teacher
                )

            result = train()
            if reused is not None and result.state_digest != reused.get("weights_sha256"):
                log.warning(
                    "the kept training in %s does not hold the weights it recorded (sha256 %s, found %s): "
                    "training again",
                    finished,
                    reused.get("weights_sha256"),
                    result.state_digest,
                )
                shutil.rmtree(finished, ignore_errors=True)
                (work / "last.pt").unlink(missing_ok=True)
                reused, result = None, train()
        keep_finished(result, work=work, finished=finished, train_run=train_run)
        shutil.copy2(result.checkpoint, places.final)
        shutil.rmtree(work, ignore_errors=True)  # kept in `finished`: nothing left to resume
    return Training(result, reused, places.final)


@dataclass(frozen=True, eq=False)
class TrainResult:
    """The train stage's small result, what the later stages take."""

    checkpoint: str  # final checkpoint of this run
    val_accuracy: float  # last epoch, 0..1
    train_seconds: float  # training passes only
    epochs: int  # epochs trained (the plan's count: what reference models of this recipe repeat)
    compile_seconds: float  # torch.compile + warm-up before the training clock
    images: int  # training images the model saw
    split_images: int  # the whole training split (more than `images` when canaries were held out)
    dp_epsilon: float | None = None  # DP-SGD: the accountant's epsilon spent; None without DP
    dp_delta: float | None = None
    canaries: Canaries = field(default_factory=Canaries.none)  # the one-run audit's, drawn once here


@dataclass(frozen=True)
class TrainStage:
    report: StageReport
    result: TrainResult


def start_report(cfg: TrainConfig, runtime_tags: Mapping[str, str], *, canaries: int = 0) -> StageReport:
    """What is known before training (logged first, so a failed run still shows it): the
    config as params, the runtime as tags, the device and precision on the parent."""
    params = {f"train.{k}": v for k, v in cfg.model_dump().items()} | ({"train.canaries": canaries} if canaries else {})
    return StageReport(
        Stage.TRAIN,
        params=params,
        tags=dict(runtime_tags),
        parent_tags={
            "auditflow.device": runtime_tags["device_name"],
            "auditflow.precision": runtime_tags["precision"],
        },
    )


def train_report(
    training: Training,
    data: TrainData,
    cfg: TrainConfig,
    *,
    peak: Peak,
    runtime: Runtime,
    sources: Mapping[str, Path],
) -> TrainStage:
    """The stage's report and small result: speed against `peak` (times the GPUs under DDP),
    the weights kept, the plan, the DP accountant's figures, the checkpoint and the summary."""
    result, reused = training.fit, training.reused
    runtime_tags = runtime.describe()
    if result.precision:  # `auto` timed on the CPU: the precision it kept, not the first guess
        runtime_tags["precision"] = result.precision["chosen"]
    # one GPU per process under DDP; CPU processes share the same cores
    devices = cfg.world_size if runtime.device.type == "cuda" else 1
    metrics = speed_metrics(
        result.flops_per_image,
        result.images_per_second,
        result.train_seconds,
        peak_flops=peak.flops_per_second * devices,
        time_to_target=result.time_to_target,
    ) | {
        "compile_seconds": result.compile_seconds,
        "val_seconds": result.val_seconds,
        "planned_epochs": result.plan["epochs"],
    }
    choice, last = result.choice, result.history[-1]
    logged = train_metrics(
        metrics
        | {
            "final_val_accuracy": result.final_val_accuracy,
            "parameters": result.parameters,
            "final_train_accuracy": last.train_accuracy,
            "raw_val_accuracy": choice["raw_accuracy"],
        }
        | ({"ema_val_accuracy": choice["ema_accuracy"]} if choice["ema_accuracy"] is not None else {})
    )
    privacy = result.privacy
    dp = {Train.DP.format(name=k): float(v) for k, v in privacy.items() if isinstance(v, int | float)}
    tags = {f"auditflow.{k}_checkpoint": str(v) for k, v in sources.items()} | {
        "auditflow.peak_source": peak.source,
        "auditflow.weights_sha256": result.state_digest,
        Train.REUSED_FROM_RUN: reused["train_run"] if reused else "none",
        Train.KEPT_WEIGHTS: choice["kept"],
        Train.PLAN: result.plan["reason"],
        Train.PRECISION: result.precision.get("reason")
        or f"{runtime_tags['precision']}: train.precision={cfg.precision}",
        "precision": runtime_tags["precision"],
    }
    if privacy:  # DP-SGD: what the accountant says was spent
        tags[Train.DP_ACCOUNTANT] = str(privacy.get("accountant", ""))
    all_metrics = logged | dp
    headline = {k: all_metrics[k] for k in (*HEADLINE, *DP_HEADLINE) if k in all_metrics}
    report = StageReport(
        Stage.TRAIN,
        metrics=all_metrics,
        headline=headline,
        tags=tags,
        parent_tags={"auditflow.precision": runtime_tags["precision"]},
        files=((training.final, Train.CHECKPOINT_FOLDER),),
        summary=_summary(training, data, cfg, peak=peak, runtime_tags=runtime_tags, speed=metrics),
    )
    small = TrainResult(
        checkpoint=str(training.final),
        val_accuracy=result.final_val_accuracy,
        train_seconds=result.train_seconds,
        epochs=int(result.plan["epochs"]),
        compile_seconds=result.compile_seconds,
        images=len(data.splits.train_y),
        split_images=data.split_images,
        dp_epsilon=float(privacy["epsilon"]) if "epsilon" in privacy else None,
        dp_delta=float(privacy["delta"]) if "delta" in privacy else None,
        canaries=data.canaries,
    )
    return TrainStage(report, small)


def _summary(
    training: Training,
    data: TrainData,
    cfg: TrainConfig,
    *,
    peak: Peak,
    runtime_tags: Mapping[str, str],
    speed: Mapping[str, float],
) -> dict[str, Any]:
    """`train/summary.json`: what the report reads back."""
    result, reused = training.fit, training.reused
    return {
        "model": cfg.model,
        "parameters": result.parameters,
        "epochs": result.plan["epochs"],
        "max_epochs": cfg.epochs,
        "plan": result.plan,
        "weights": result.choice,
        "final_train_accuracy": result.history[-1].train_accuracy,
        "final_val_accuracy": result.final_val_accuracy,
        "best_val_accuracy": max(
            (h.val_accuracy for h in result.history if h.val_accuracy == h.val_accuracy), default=float("nan")
        ),
        "resumed_from_epoch": result.resumed_from_epoch,
        "images": len(data.splits.train_y),
        "canaries": len(data.canaries.index),
        "reused_from_run": reused["train_run"] if reused else None,
        "runtime": dict(runtime_tags),
        "world_size": cfg.world_size,
        "nodes": cfg.nodes,
        "peak_source": peak.source,
        "init_from": cfg.init_from,
        "teacher": cfg.teacher,
        **speed,
    }
