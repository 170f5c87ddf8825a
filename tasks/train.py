"""Stage 2: snapshot -> trained checkpoint, with per-epoch metrics and speed figures in MLflow.

The work is `auditflow.models.training.stage` (resume or reuse, fit, keep, the report); this
task opens the snapshot, fetches weights named by run id, streams each epoch's metrics to
MLflow as it ends and publishes the stage's report.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from auditflow.core.config import DataConfig, PrivacyConfig, TrainConfig
from auditflow.core.data import Snapshot
from auditflow.core.errors import ConfigError
from auditflow.core.names import Stage
from auditflow.core.paths import cache_dir, run_dir
from auditflow.core.tracking import DeferredMetrics, Tracker, TrackingRef, class_keys
from auditflow.models.training.precision import trained_runtime
from auditflow.models.training.runtime import resolve_runtime
from auditflow.models.training.speed import device_peak
from auditflow.models.training.stage import (
    TrainResult,
    ddp_spec,
    epoch_metrics,
    load_sources,
    prepare,
    start_report,
    train_and_keep,
    train_metrics,
    train_report,
)
from auditflow.tasks.run import retry_on_outage

DESCRIPTION = (
    "Train: the model fit on the training split (validation each epoch), with per-epoch `train/...` curves, "
    "speed and utilisation, the weights kept (raw or EMA) and the final checkpoint."
)


# Retried only when the tracking store stopped answering: the retry reuses the finished
# training (or resumes from the last epoch's checkpoint), so it never trains an epoch twice.
@task(name="train", retries=1, retry_delay_seconds=30, retry_condition_fn=retry_on_outage, cache_policy=NO_CACHE)
def train_model(
    ref: TrackingRef,
    snapshot_path: str,
    *,
    data_cfg: DataConfig,
    cfg: TrainConfig,
    workdir: str,
    privacy_cfg: PrivacyConfig | None = None,
) -> TrainResult:
    """Train on the training split, less the canaries whose coin said "out" when
    `privacy_cfg.canaries` > 0 (the one-run privacy audit: drawn here, once, with
    `privacy_cfg.seed`, and returned in the result for the evaluation to score)."""
    canaries, canary_seed = (privacy_cfg.canaries, privacy_cfg.seed) if privacy_cfg else (0, 0)
    if canaries and cfg.processes > 1:  # the torchrun workers build their own splits
        raise ConfigError(
            f"privacy.canaries={canaries} needs single-process training, but train.world_size={cfg.world_size} "
            f"and train.nodes={cfg.nodes}"
        )
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.TRAIN, DESCRIPTION) as run:
        tracker.attach_datasets(ref, run, ("train", "validation"))
        runtime = resolve_runtime(cfg.device, cfg.precision, cfg.num_threads)
        tracker.publish(ref, run, start_report(cfg, runtime.describe(), canaries=canaries))
        snapshot = Snapshot.open(snapshot_path)
        class_keys(snapshot.classes)  # before training: every later stage logs per-class metrics
        sources = _fetch_sources(tracker, cfg, workdir)
        init_model, teacher = load_sources(sources, cfg, snapshot.classes)
        final = run_dir(workdir, ref.run_id) / "model.pt"
        data = prepare(snapshot, data_cfg, cfg, canaries=(canaries, canary_seed), workdir=workdir, final=final)
        # a store that stops answering mid-epoch must not stop training: epochs it refuses
        # are kept and sent again, and the stage fails after training if they still cannot
        # be logged (the finished training is kept for the rerun)
        epochs_log = DeferredMetrics(run, Stage.TRAIN, ref.uri)
        training = train_and_keep(
            data,
            cfg,
            runtime,
            train_run=run.run_id,
            on_epoch=lambda stats: epochs_log.log(train_metrics(epoch_metrics(stats)), stats.epoch),
            init_model=init_model,
            teacher=teacher,
            spec=ddp_spec(snapshot_path, data_cfg, cfg, sources=sources),
        )
        epochs_log.close()
        for stats in training.unlogged(cfg.processes):
            run.log_metrics(train_metrics(epoch_metrics(stats)), step=stats.epoch)
        peak = device_peak(trained_runtime(runtime, training.fit.precision))  # bf16 training: a bf16 peak
        stage = train_report(training, data, cfg, peak=peak, runtime=runtime, sources=sources)
        tracker.publish(ref, run, stage.report)
    return stage.result


def _fetch_sources(tracker: Tracker, cfg: TrainConfig, workdir: str) -> dict[str, Path]:
    """The checkpoints named by `train.init_from` and `train.teacher` (a file, or a run id whose
    final checkpoint is downloaded), by option name."""
    fetched = cache_dir(workdir) / "sources-of-weights"
    options = (("init_from", cfg.init_from), ("teacher", cfg.teacher))
    return {name: tracker.fetch_checkpoint(value, fetched) for name, value in options if value}
