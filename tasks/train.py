"""Stage 2: snapshot -> trained checkpoint, with per-epoch metrics and speed figures in MLflow."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.audits.canaries import choose_canaries, kept_for_training
from auditflow.core.config import DataConfig, TrainConfig
from auditflow.core.data import Snapshot, Splits, make_splits
from auditflow.core.errors import ConfigError, ModelError
from auditflow.core.paths import cache_dir, run_dir, trained_dir
from auditflow.core.tracking import DeferredMetrics, Tracker, TrackingRef, class_keys
from auditflow.models.training.checkpoints import load_model, read_checkpoint
from auditflow.models.training.distributed import launch
from auditflow.models.training.fit import EpochStats, FitResult, check_batch_size, fit
from auditflow.models.training.runtime import resolve_runtime
from auditflow.models.training.speed import device_peak, speed_metrics
from auditflow.tasks.run import retry_on_outage

log = logging.getLogger(__name__)
RESULT = "result.json"  # beside a finished training's checkpoint: its weights digest and train run


@dataclass(frozen=True)
class TrainResult:
    checkpoint: str  # final checkpoint of this run
    val_accuracy: float  # last epoch, 0..1
    train_seconds: float  # training passes only
    epochs: int  # epochs trained (the plan's count: what reference models of this recipe repeat)
    compile_seconds: float  # torch.compile + warm-up before the training clock
    images: int  # training images the model saw
    split_images: int  # the whole training split (more than `images` when canaries were held out)
    dp_epsilon: float | None = None  # DP-SGD: the accountant's epsilon spent; None without DP
    dp_delta: float | None = None


DESCRIPTION = (
    "Train: the model fit on the training split (validation each epoch), with per-epoch `train/...` curves, "
    "speed and utilisation, the weights kept (raw or EMA) and the final checkpoint."
)


def unit_name(key: str) -> str:
    """A metric name with its unit: `seconds` -> `epoch_s`, `*_seconds` -> `*_s`."""
    if key == "seconds":
        return "epoch_s"
    return key.removesuffix("_seconds") + "_s" if key.endswith("_seconds") else key


def epoch_metrics(stats: EpochStats) -> dict[str, float]:
    """One epoch's figures by metric name, without the stage prefix (the caller adds it)."""
    return {unit_name(k): v for k, v in stats.__dict__.items() if k != "epoch"}


def train_metrics(values: dict[str, float]) -> dict[str, float]:
    """`train/<name>` with units in the names, for MLflow."""
    return {f"train/{unit_name(k)}": v for k, v in values.items()}


@contextlib.contextmanager
def exclusive(work: Path) -> Iterator[None]:
    """Hold `work/.lock`: two runs of the same data and config must not share checkpoints."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise ModelError(
                f"another run is training the same data and config in {work}; wait for it or change the config"
            ) from err
        yield


def resume_key(digest: str, data_cfg: DataConfig, train_cfg: TrainConfig, canaries: tuple[int, int] = (0, 0)) -> str:
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


def keep_finished(result: FitResult, work: Path, finished: Path, train_run: str) -> None:
    """Keep a finished training (checkpoint + weights digest) for later runs with the same data
    and config, before anything else can fail: a run killed or failed in a later stage is
    rerun without training again."""
    finished.mkdir(parents=True, exist_ok=True)
    shutil.copy2(result.checkpoint, finished / "last.tmp")
    (finished / "last.tmp").replace(finished / "last.pt")
    record = {"weights_sha256": result.state_digest, "train_run": train_run, "epochs": len(result.history)}
    (finished / "result.tmp").write_text(json.dumps(record, indent=2))
    (finished / "result.tmp").replace(finished / RESULT)


# Retried only when the tracking store stopped answering: the retry reuses the finished
# training (or resumes from the last epoch's checkpoint), so it never trains an epoch twice.
@task(name="train", retries=1, retry_delay_seconds=30, retry_condition_fn=retry_on_outage, cache_policy=NO_CACHE)
def train_model(
    ref: TrackingRef,
    snapshot_path: str,
    data_cfg: DataConfig,
    cfg: TrainConfig,
    workdir: str,
    canaries: int = 0,
    canary_seed: int = 0,
) -> TrainResult:
    """Train on the training split, less the canaries whose coin said "out" when `canaries` > 0
    (the one-run privacy audit: `auditflow.audits.canaries`)."""
    if canaries and cfg.world_size > 1:  # the torchrun workers build their own splits
        raise ConfigError(
            f"privacy.canaries={canaries} needs single-process training, but train.world_size={cfg.world_size}"
        )
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "train", DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "validation"))
        runtime = resolve_runtime(cfg.device, cfg.precision, cfg.num_threads)
        run.log_params({f"train.{k}": v for k, v in cfg.model_dump().items()})
        described = runtime.describe()
        run.set_tags(described)
        tracker.parent(ref).set_tags(
            {"auditflow.device": described["device_name"], "auditflow.precision": described["precision"]}
        )
        snapshot = Snapshot.open(snapshot_path)
        class_keys(snapshot.classes)  # before training: every later stage logs per-class metrics
        key = resume_key(snapshot.digest, data_cfg, cfg, (canaries, canary_seed))
        work, finished = cache_dir(workdir) / "checkpoints" / key, trained_dir(workdir, key)
        sources = {
            name: tracker.fetch_checkpoint(value, cache_dir(workdir) / "sources-of-weights")
            for name, value in (("init_from", cfg.init_from), ("teacher", cfg.teacher))
            if value
        }
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
            if tuple(payload["classes"]) != snapshot.classes:
                raise ConfigError(
                    f"train.teacher={cfg.teacher!r} was trained on classes {payload['classes']}, "
                    f"not this data's {list(snapshot.classes)}"
                )
        run.set_tags({f"auditflow.{k}_checkpoint": str(v) for k, v in sources.items()})

        splits = make_splits(snapshot, data_cfg)
        split_images = len(splits.train_y)
        if canaries:
            splits = _without_excluded_canaries(splits, canaries, canary_seed)
            run.log_params({"train.canaries": canaries})
        check_batch_size(cfg.batch_size, len(splits.train_y), cfg.world_size)
        with exclusive(work):
            reused = reuse_finished(finished, work)
            # a store that stops answering mid-epoch must not stop training: epochs it refuses
            # are kept and sent again, and the stage fails after training if they still cannot
            # be logged (the finished training is kept for the rerun)
            epochs_log = DeferredMetrics(run, "train", ref.uri)
            if cfg.world_size > 1:
                spec = {
                    "snapshot": snapshot_path,
                    "data": data_cfg.model_dump(mode="json"),
                    "train": cfg.model_dump(mode="json"),
                    "checkpoint_dir": str(work),
                    **{k: str(v) for k, v in sources.items()},
                }
                result, _ = launch(spec, cfg.world_size, work / "ddp")
            else:

                def on_epoch(stats: EpochStats) -> None:
                    epochs_log.log(train_metrics(epoch_metrics(stats)), stats.epoch)

                def train() -> FitResult:
                    return fit(
                        splits,
                        cfg,
                        runtime,
                        work,
                        on_epoch=on_epoch,
                        init_state=init_model.state_dict() if init_model is not None else None,
                        teacher=teacher,
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
            keep_finished(result, work, finished, run.run_id)
            epochs_log.close()
            # epochs not logged live: all of them from the (untracked) workers, else those restored
            unlogged = result.history if cfg.world_size > 1 else result.history[: result.resumed_from_epoch]
            for stats in unlogged:
                run.log_metrics(train_metrics(epoch_metrics(stats)), step=stats.epoch)
            final = run_dir(workdir, ref.run_id) / "model.pt"
            shutil.copy2(result.checkpoint, final)
            run.log_artifact(final, "checkpoint")
            shutil.rmtree(work, ignore_errors=True)  # kept in `finished`: nothing left to resume
        last = result.history[-1]
        peak = device_peak(runtime)
        # one GPU per process under DDP; CPU processes share the same cores
        devices = cfg.world_size if runtime.device.type == "cuda" else 1
        metrics = speed_metrics(
            result.flops_per_image,
            result.images_per_second,
            result.train_seconds,
            peak.flops_per_second * devices,
            result.time_to_target,
        )
        metrics |= {
            "compile_seconds": result.compile_seconds,
            "val_seconds": result.val_seconds,
            "planned_epochs": result.plan["epochs"],
        }
        choice = result.choice
        run.set_tags(
            {
                "auditflow.peak_source": peak.source,
                "auditflow.weights_sha256": result.state_digest,
                "train/reused_from_run": reused["train_run"] if reused else "none",
                "train/kept_weights": choice["kept"],
                "train/plan": result.plan["reason"],
            }
        )
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
        run.log_metrics(logged)
        privacy = getattr(result, "privacy", {})
        if privacy:  # DP-SGD: what the accountant says was spent
            dp = {f"train/dp_{k}": float(v) for k, v in privacy.items() if isinstance(v, int | float)}
            run.log_metrics(dp)
            run.set_tags({"train/dp_accountant": str(privacy.get("accountant", ""))})
            tracker.parent(ref).log_metrics({k: dp[k] for k in ("train/dp_epsilon", "train/dp_delta") if k in dp})
        headline = ("train/final_val_accuracy", "train/train_s", "train/parameters", "train/planned_epochs")
        tracker.parent(ref).log_metrics({k: logged[k] for k in headline if logged[k] == logged[k]})
        run.log_summary(
            "train",
            {
                "model": cfg.model,
                "parameters": result.parameters,
                "epochs": result.plan["epochs"],
                "max_epochs": cfg.epochs,
                "plan": result.plan,
                "weights": choice,
                "final_train_accuracy": last.train_accuracy,
                "final_val_accuracy": result.final_val_accuracy,
                "best_val_accuracy": max(
                    (h.val_accuracy for h in result.history if h.val_accuracy == h.val_accuracy), default=float("nan")
                ),
                "resumed_from_epoch": result.resumed_from_epoch,
                "images": len(splits.train_y),
                "canaries": canaries,
                "reused_from_run": reused["train_run"] if reused else None,
                "runtime": described,
                "world_size": cfg.world_size,
                "peak_source": peak.source,
                "init_from": cfg.init_from,
                "teacher": cfg.teacher,
                **metrics,
            },
        )
    return TrainResult(
        str(final),
        result.final_val_accuracy,
        result.train_seconds,
        int(result.plan["epochs"]),
        result.compile_seconds,
        len(splits.train_y),
        split_images,
        float(privacy["epsilon"]) if "epsilon" in privacy else None,
        float(privacy["delta"]) if "delta" in privacy else None,
    )


def _without_excluded_canaries(splits: Splits, count: int, seed: int) -> Splits:
    n = len(splits.train_y)
    if count > n // 2:
        raise ConfigError(
            f"privacy.canaries={count} needs at least {2 * count} training images, this run has {n}: "
            f"set privacy.canaries to at most {n // 2} (0 = off)"
        )
    chosen = choose_canaries(n, count, seed)
    keep = kept_for_training(n, chosen)
    log.info(
        "one-run audit: %d of %d canaries trained on, %d held out; training on %d of %d images",
        int(chosen.included.sum()),
        count,
        len(chosen.excluded),
        len(keep),
        n,
    )
    return replace(splits, train_x=splits.train_x[keep], train_y=splits.train_y[keep])
