"""Tasks of a hyperparameter study: open (or reopen) the study's MLflow run, train one trial as
a child run of it, and summarise the study (choice, Pareto front, plots, tuned profile; the
report itself is `models/tuning/report.py`'s)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from sqlalchemy.engine import make_url

from auditflow.core.config import PipelineConfig
from auditflow.core.data import Snapshot, make_splits
from auditflow.core.names import Train, Tune
from auditflow.core.paths import cache_dir
from auditflow.core.tracking import (
    Tracker,
    TrackingRef,
    open_pipeline_run,
    resolve_tracking_uri,
)
from auditflow.core.tracking.studies import resume_study_run, tuned_profile_name
from auditflow.models.training.fit import EpochStats
from auditflow.models.training.runtime import resolve_runtime
from auditflow.models.training.stage import epoch_metrics
from auditflow.models.tuning.report import StudySummary, summarise
from auditflow.models.tuning.space import StudyPlan, trial_config
from auditflow.models.tuning.study import TrialScores, TrialSpec, attach_trial, pruning_callback, score_trial
from auditflow.tasks.run import dask_worker

__all__ = ["StudySummary", "TrialOutcome", "open_study_run", "run_trial", "summarise_study"]


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: str  # "complete" or "pruned"
    scores: TrialScores | None  # None when pruned
    run_id: str  # the trial's MLflow run
    message: str


@task(name="open-study", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def open_study_run(plan: StudyPlan, cfg: PipelineConfig, run_id: str | None, workdir: str) -> TrackingRef:
    """The study's MLflow run: reopened when the study already has one, else created with the
    base config as params and the space, objective and storage."""
    tracker = Tracker(resolve_tracking_uri(cfg.tracking, workdir))
    ref = resume_study_run(tracker, run_id) if run_id else None
    if ref is not None:
        return ref
    tags = {
        "auditflow.study": plan.name,
        "auditflow.source": plan.source,
        "prefect.flow_run_id": str(flow_run.get_id() or "none"),
    }
    ref = open_pipeline_run(cfg, workdir, f"study-{plan.name}", tags=tags)
    run = tracker.parent(ref)
    run.log_params({"tune.objective": plan.objective, "tune.min_worst_recall": plan.min_worst_recall})
    run.set_tags(
        {
            Tune.STORAGE: make_url(plan.storage).render_as_string(hide_password=True),
            Tune.OBJECTIVE: plan.objective,
            Tune.FINGERPRINT: plan.fingerprint,
        }
    )
    run.log_dict(plan.space.as_dict(), Tune.SPACE_JSON)
    return ref


def _trial_metrics(scores: TrialScores, classes: tuple[str, ...]) -> dict[str, float]:
    """A complete trial's scores: validation accuracy and worst-class recall (0..1), epochs,
    training seconds and each class's recall."""
    return {
        Tune.VAL_ACCURACY: scores.val_accuracy,
        Tune.WORST_CLASS_RECALL: scores.worst_class_recall,
        Tune.EPOCHS: scores.epochs,
        Tune.TRAIN_S: scores.train_seconds,
    } | {Tune.RECALL_OF_CLASS.format(cls=c): r for c, r in zip(classes, scores.recall, strict=True)}


@task(name="trial", cache_policy=NO_CACHE)
def run_trial(ref: TrackingRef, spec: TrialSpec, base: dict, snapshot_path: str, workdir: str) -> TrialOutcome:
    """Train trial `spec` as child run `trial-N` of the study run, reporting each epoch's
    validation accuracy to Optuna, which may prune it."""
    cfg = trial_config(base, spec.params)
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, f"trial-{spec.number}") as run:
        run.log_params(spec.params | {"tune.trial_number": spec.number})
        run.set_tags(
            {Tune.STUDY: spec.study, Tune.TRIAL_NUMBER: spec.number, Tune.RETRY_OF: spec.origin}
            | {Tune.WORKER: dask_worker() or "this process"}
        )
        runtime = resolve_runtime(cfg.train.device, cfg.train.precision, cfg.train.num_threads)
        splits = make_splits(Snapshot.open(snapshot_path), cfg.data)
        prune = pruning_callback(attach_trial(spec))

        def on_epoch(stats: EpochStats) -> None:
            run.log_metrics({Train.EPOCH.format(name=k): v for k, v in epoch_metrics(stats).items()}, step=stats.epoch)
            prune(stats)

        # keyed by the first try: a trial retried after a kill resumes its checkpoint
        work = cache_dir(workdir) / "tuning" / spec.study / f"trial-{spec.origin}"
        try:
            scores = score_trial(splits, cfg.train, runtime, checkpoint_dir=work, on_epoch=on_epoch)
        except optuna.TrialPruned as pruned:
            run.set_tags({Tune.STATE: "pruned", Tune.PRUNED: str(pruned)})
            shutil.rmtree(work, ignore_errors=True)
            return TrialOutcome(spec.number, "pruned", None, run.run_id, str(pruned))
        run.log_metrics(_trial_metrics(scores, splits.classes))
        run.set_tags({Tune.STATE: "complete"})
        shutil.rmtree(work, ignore_errors=True)
    return TrialOutcome(spec.number, "complete", scores, run.run_id, "")


@task(name="summarise-study", cache_policy=NO_CACHE)
def summarise_study(ref: TrackingRef, plan: StudyPlan, out: str) -> StudySummary:
    """Choose the trial, write it as a profile YAML at `out`, and log the trials table, the
    Pareto front, the optimisation history and parameter importances to the study run."""
    study = optuna.load_study(study_name=plan.name, storage=plan.storage)
    found = summarise(
        study,
        plan,
        run_id=ref.run_id,
        tracking_uri=ref.uri,
        profile_name=tuned_profile_name(plan.name, ref.run_id),
        profile_path=str(Path(out).resolve()),
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(found.profile_text)
    tracker = Tracker(ref.uri)
    tracker.publish(ref, tracker.parent(ref), found.report)
    return found.summary
