"""Tasks of a hyperparameter study: open (or reopen) the study's MLflow run, train one trial as
a child run of it, and summarise the study (choice, Pareto front, plots, tuned profile)."""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from sqlalchemy.engine import make_url

from auditflow.core.config import PipelineConfig
from auditflow.core.data import Snapshot, make_splits
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
from auditflow.models.tuning.space import (
    StudyPlan,
    choose_trial,
    pareto_front,
    trial_config,
    trial_results,
    tuned_profile,
)
from auditflow.models.tuning.study import (
    TrialScores,
    TrialSpec,
    attach_trial,
    history_figure,
    importance_figure,
    pareto_figure,
    pruning_callback,
    score_trial,
)
from auditflow.tasks.train import epoch_metrics


@dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: str  # "complete" or "pruned"
    scores: TrialScores | None  # None when pruned
    run_id: str  # the trial's MLflow run
    message: str


@dataclass(frozen=True)
class StudySummary:
    study: str
    run_id: str  # the study's MLflow run
    tracking_uri: str
    states: dict[str, int]  # Optuna trial state -> trials in the study
    chosen_trial: int
    val_accuracy: float  # chosen trial, whole validation split, 0..1
    worst_class_recall: float  # chosen trial, 0..1
    rule_met: bool
    reason: str
    params: dict[str, object]  # the chosen trial's sampled values
    front: list[dict[str, object]]  # Pareto front rows, best accuracy first
    profile_path: str  # the tuned profile YAML


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
    ref = open_pipeline_run(cfg, workdir, f"study-{plan.name}", tags)
    run = tracker.parent(ref)
    run.log_params({"tune.objective": plan.objective, "tune.min_worst_recall": plan.min_worst_recall})
    run.set_tags(
        {
            "tune/storage": make_url(plan.storage).render_as_string(hide_password=True),
            "tune/objective": plan.objective,
            "tune/fingerprint": plan.fingerprint,
        }
    )
    run.log_dict(plan.space.as_dict(), "tune/space.json")
    return ref


@task(name="trial", cache_policy=NO_CACHE)
def run_trial(ref: TrackingRef, spec: TrialSpec, base: dict, snapshot_path: str, workdir: str) -> TrialOutcome:
    """Train trial `spec` as child run `trial-N` of the study run, reporting each epoch's
    validation accuracy to Optuna, which may prune it."""
    cfg = trial_config(base, spec.params)
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, f"trial-{spec.number}") as run:
        run.log_params(spec.params | {"tune.trial_number": spec.number})
        run.set_tags({"tune/study": spec.study, "tune/trial_number": spec.number, "tune/retry_of": spec.origin})
        runtime = resolve_runtime(cfg.train.device, cfg.train.precision, cfg.train.num_threads)
        splits = make_splits(Snapshot.open(snapshot_path), cfg.data)
        prune = pruning_callback(attach_trial(spec))

        def on_epoch(stats: EpochStats) -> None:
            run.log_metrics({f"train/{k}": v for k, v in epoch_metrics(stats).items()}, step=stats.epoch)
            prune(stats)

        # keyed by the first try: a trial retried after a kill resumes its checkpoint
        work = cache_dir(workdir) / "tuning" / spec.study / f"trial-{spec.origin}"
        try:
            scores = score_trial(splits, cfg.train, runtime, work, on_epoch)
        except optuna.TrialPruned as pruned:
            run.set_tags({"tune/state": "pruned", "tune/pruned": str(pruned)})
            shutil.rmtree(work, ignore_errors=True)
            return TrialOutcome(spec.number, "pruned", None, run.run_id, str(pruned))
        run.log_metrics(
            {
                "tune/val_accuracy": scores.val_accuracy,
                "tune/worst_class_recall": scores.worst_class_recall,
                "tune/epochs": scores.epochs,
                "tune/train_s": scores.train_seconds,
            }
            | {f"tune/recall.{c}": r for c, r in zip(splits.classes, scores.recall, strict=True)}
        )
        run.set_tags({"tune/state": "complete"})
        shutil.rmtree(work, ignore_errors=True)
    return TrialOutcome(spec.number, "complete", scores, run.run_id, "")


@task(name="summarise-study", cache_policy=NO_CACHE)
def summarise_study(ref: TrackingRef, plan: StudyPlan, out: str) -> StudySummary:
    """Choose the trial, write it as a profile YAML at `out`, and log the trials table, the
    Pareto front, the optimisation history and parameter importances to the study run."""
    study = optuna.load_study(study_name=plan.name, storage=plan.storage)
    results = trial_results(study)
    choice = choose_trial(results, plan.min_worst_recall)
    run = Tracker(ref.uri).parent(ref)
    chosen_run = study.trials[choice.trial.number].user_attrs.get("mlflow_run_id", "")
    text = tuned_profile(
        plan,
        choice,
        tuned_profile_name(plan.name, ref.run_id),
        header=[
            f"Written by `auditflow tune`: study {plan.name!r}, MLflow study run {ref.run_id}.",
            f"Trial {choice.trial.number} (run {chosen_run}): validation accuracy {choice.trial.val_accuracy:.4f}, "
            f"worst-class recall {choice.trial.worst_class_recall:.4f}.",
            f"Choice: {choice.reason}.",
        ],
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    run.log_text(text, "tune/profile.yaml")

    front = [
        {"trial": r.number, "val_accuracy": r.val_accuracy, "worst_class_recall": r.worst_class_recall, **r.params}
        for r in pareto_front(results)
    ]
    states = dict(Counter(t.state.name.lower() for t in study.trials))
    rows = [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "val_accuracy": t.user_attrs.get("val_accuracy"),
            "worst_class_recall": t.user_attrs.get("worst_class_recall"),
            "run_id": t.user_attrs.get("mlflow_run_id"),
            "on_front": any(f["trial"] == t.number for f in front),
            **{k: t.params.get(k) for k in plan.space.params},
        }
        for t in study.trials
    ]
    run.log_rows(rows, "tune/trials.json")
    run.log_rows(front, "tune/pareto_front.json")
    run.log_figure(pareto_figure(results, choice, plan.min_worst_recall), "tune/pareto_front.png")
    run.log_figure(history_figure(study), "tune/optimization_history.png")
    try:
        run.log_figure(importance_figure(study), "tune/param_importances.png")
    except (ValueError, RuntimeError) as err:  # fewer than two complete trials, or none that differ
        run.set_tags({"tune/param_importances": f"not computed: {err}"})
    run.log_metrics(
        {
            "tune/val_accuracy": choice.trial.val_accuracy,
            "tune/worst_class_recall": choice.trial.worst_class_recall,
            "tune/chosen_trial": choice.trial.number,
            "tune/trials_target": plan.trials,
        }
        | {f"tune/trials_{state}": n for state, n in states.items()}
    )
    run.set_tags(
        {
            "tune/chosen_trial": choice.trial.number,
            "tune/chosen_run_id": chosen_run,
            "tune/rule_met": choice.rule_met,
            "tune/profile_path": str(Path(out).resolve()),
        }
    )
    summary = StudySummary(
        study=plan.name,
        run_id=ref.run_id,
        tracking_uri=ref.uri,
        states=states,
        chosen_trial=choice.trial.number,
        val_accuracy=choice.trial.val_accuracy,
        worst_class_recall=choice.trial.worst_class_recall,
        rule_met=choice.rule_met,
        reason=choice.reason,
        params=choice.trial.params,
        front=front,
        profile_path=str(Path(out).resolve()),
    )
    run.log_summary(
        "tune",
        asdict(summary)
        | {"objective": plan.objective, "min_worst_recall": plan.min_worst_recall, "chosen_run_id": chosen_run},
    )
    return summary
