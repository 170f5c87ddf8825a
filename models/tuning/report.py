"""What a finished (or stopped) study found, as data: the chosen trial, the tuned profile's text,
the trials table, the Pareto front, the figures and the study run's metrics and tags, in one
`StageReport` for the study's MLflow run. No Prefect, no MLflow: `tasks/tune.py` writes the
profile and publishes the report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import optuna

from auditflow.core.names import Stage, Tune
from auditflow.core.stage import StageReport
from auditflow.models.tuning.space import (
    Choice,
    StudyPlan,
    TrialResult,
    choose_trial,
    pareto_front,
    trial_results,
    tuned_profile,
)
from auditflow.models.tuning.study import START, history_figure, importance_figure, pareto_figure


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
    start_trial: int | None  # the complete trial of the profile's own values, if the study ran one
    start_accuracy: float | None  # its validation accuracy, 0..1
    versus_start: str | None  # the chosen trial against that start, one sentence (profile header, CLI)


@dataclass(frozen=True)
class StudyFindings:
    summary: StudySummary
    report: StageReport  # for the study run itself (`Tracker.publish` with the study run)
    profile_text: str  # the tuned profile YAML


def trials_table(study: optuna.Study, plan: StudyPlan, front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial of any state: scores (None unless complete), its MLflow run, whether it
    is on the Pareto front, and its sampled values."""
    on_front = {f["trial"] for f in front}
    return [
        {
            "trial": t.number,
            "state": t.state.name.lower(),
            "val_accuracy": t.user_attrs.get("val_accuracy"),
            "worst_class_recall": t.user_attrs.get("worst_class_recall"),
            "run_id": t.user_attrs.get("mlflow_run_id"),
            "on_front": t.number in on_front,
            **{k: t.params.get(k) for k in plan.space.params},
        }
        for t in study.trials
    ]


def _figures(
    study: optuna.Study, results: list[TrialResult], choice: Choice, min_worst_recall: float
) -> tuple[dict[str, Any], dict[str, str]]:
    """The study's figures, and a tag saying why parameter importances are missing, if they are."""
    figures = {
        Tune.PARETO_FRONT_PNG: pareto_figure(results, choice, min_worst_recall),
        Tune.OPTIMIZATION_HISTORY_PNG: history_figure(study),
    }
    try:
        figures[Tune.PARAM_IMPORTANCES_PNG] = importance_figure(study)
    except (ValueError, RuntimeError) as err:  # fewer than two complete trials, or none that differ
        return figures, {Tune.PARAM_IMPORTANCES: f"not computed: {err}"}
    return figures, {}


def _versus_start(start: TrialResult, choice: Choice) -> str:
    said = f"The profile's own values (trial {start.number}): validation accuracy {start.val_accuracy:.4f}; "
    if start.number == choice.trial.number:
        return said + "no trial did better."
    return said + f"the choice gains {100 * (choice.trial.val_accuracy - start.val_accuracy):+.2f} points."


def summarise(
    study: optuna.Study, plan: StudyPlan, *, run_id: str, tracking_uri: str, profile_name: str, profile_path: str
) -> StudyFindings:
    """Choose the trial (`choose_trial`), write its profile (named `profile_name`, to be saved at
    `profile_path`) and report the study to its run `run_id`: trials table, Pareto front,
    figures, the chosen trial's validation accuracy and worst-class recall (0..1), trial counts
    per state, and tags naming the choice."""
    results = trial_results(study)
    choice = choose_trial(results, plan.min_worst_recall)
    start = next((r for r in results if study.trials[r.number].user_attrs.get(START)), None)
    versus_start = None if start is None else _versus_start(start, choice)
    chosen_run = study.trials[choice.trial.number].user_attrs.get("mlflow_run_id", "")
    text = tuned_profile(
        plan,
        choice,
        profile_name=profile_name,
        header=[
            f"Written by `auditflow tune`: study {plan.name!r}, MLflow study run {run_id}.",
            f"Trial {choice.trial.number} (run {chosen_run}): validation accuracy {choice.trial.val_accuracy:.4f}, "
            f"worst-class recall {choice.trial.worst_class_recall:.4f}.",
            f"Choice: {choice.reason}.",
            *([versus_start] if versus_start else []),
        ],
    )
    front = [
        {"trial": r.number, "val_accuracy": r.val_accuracy, "worst_class_recall": r.worst_class_recall, **r.params}
        for r in pareto_front(results)
    ]
    states = dict(Counter(t.state.name.lower() for t in study.trials))
    summary = StudySummary(
        study=plan.name,
        run_id=run_id,
        tracking_uri=tracking_uri,
        states=states,
        chosen_trial=choice.trial.number,
        val_accuracy=choice.trial.val_accuracy,
        worst_class_recall=choice.trial.worst_class_recall,
        rule_met=choice.rule_met,
        reason=choice.reason,
        params=choice.trial.params,
        front=front,
        profile_path=profile_path,
        start_trial=None if start is None else start.number,
        start_accuracy=None if start is None else start.val_accuracy,
        versus_start=versus_start,
    )
    figures, importance_tags = _figures(study, results, choice, plan.min_worst_recall)
    report = StageReport(
        stage=Stage.TUNE,
        metrics={
            Tune.VAL_ACCURACY: choice.trial.val_accuracy,
            Tune.WORST_CLASS_RECALL: choice.trial.worst_class_recall,
            Tune.CHOSEN_TRIAL: choice.trial.number,
            Tune.TRIALS_TARGET: plan.trials,
        }
        | {Tune.TRIALS_IN_STATE.format(state=state): n for state, n in states.items()},
        tags=importance_tags
        | {
            Tune.CHOSEN_TRIAL: str(choice.trial.number),
            Tune.CHOSEN_RUN_ID: chosen_run,
            Tune.RULE_MET: str(choice.rule_met),
            Tune.PROFILE_PATH: profile_path,
        },
        tables={Tune.TRIALS_JSON: trials_table(study, plan, front), Tune.PARETO_FRONT_JSON: front},
        texts={Tune.PROFILE_YAML: text},
        figures=figures,
        summary=asdict(summary)
        | {"objective": plan.objective, "min_worst_recall": plan.min_worst_recall, "chosen_run_id": chosen_run},
    )
    return StudyFindings(summary, report, text)
