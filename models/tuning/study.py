"""Running a study: one trial (train, score on the validation split, report to the pruner),
the driver that asks Optuna for trials and tells it their outcomes, and the study's figures.

Optuna is the search engine (TPE; median pruning on the per-epoch validation accuracy that
`fit` reports) and its RDB storage the study's memory: a study of the same name resumes where
it stopped, and trials a killed process left RUNNING are failed and queued again with the same
parameters (Optuna's `RetryHeartbeatStaleTrialCallback`). What a study is and how its trial is
chosen live in `space.py`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from auditflow.core.config import TrainConfig
from auditflow.core.data import Splits
from auditflow.core.errors import ConfigError
from auditflow.models.evaluation.metrics import evaluate
from auditflow.models.training.checkpoints import load_model
from auditflow.models.training.fit import EpochStats, fit, predict
from auditflow.models.training.runtime import Runtime
from auditflow.models.tuning.space import (
    Choice,
    StudyPlan,
    TrialResult,
    pareto_front,
    starting_point,
    trial_config,
)

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # times a trial interrupted by a kill is queued again
MAX_INVALID = 20  # sampled configurations the config rejects before the study gives up
START = "start"  # user attribute of the trial that runs the profile's own values


# ------------------------------------------------------------------ one trial
@dataclass(frozen=True)
class TrialSpec:
    """What a trial task needs to train and to report to its study. Small and picklable."""

    study: str
    storage: str
    directions: tuple[str, ...]
    number: int  # Optuna trial number, 0-based
    trial_id: int  # Optuna's storage id of the trial (reporting intermediate values needs it)
    origin: int  # the trial this one retries after a kill (its checkpoints), else `number`
    params: dict[str, Any]  # config key -> sampled value


@dataclass(frozen=True)
class TrialScores:
    val_accuracy: float  # whole validation split, shipped weights, profile's TTA, 0..1, higher is better
    worst_class_recall: float  # lowest per-class recall on the same images, 0..1, higher is better
    recall: tuple[float, ...]  # per class, in class order
    epochs: int  # epochs trained
    train_seconds: float  # training passes only


def make_pruner(directions: Sequence[str]) -> optuna.pruners.BasePruner:
    """Median pruning from epoch 3, once 3 trials have finished; none for two objectives (Optuna
    cannot prune multi-objective trials)."""
    if len(directions) > 1:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3)  # steps are 1-based epochs


def attach_trial(spec: TrialSpec) -> optuna.Trial:
    """The running trial of `spec`, reopened from the storage (in any process)."""
    study = optuna.load_study(study_name=spec.study, storage=spec.storage, pruner=make_pruner(spec.directions))
    return optuna.trial.Trial(study, spec.trial_id)


def pruning_callback(trial: optuna.Trial) -> Callable[[EpochStats], None]:
    """An `on_epoch` for `fit`: reports each validated epoch's accuracy to Optuna and raises
    `optuna.TrialPruned` when the pruner stops the trial. Reports nothing for two objectives."""
    multi = len(trial.study.directions) > 1

    def on_epoch(stats: EpochStats) -> None:
        if multi or math.isnan(stats.val_accuracy):  # NaN: epoch not validated
            return
        trial.report(stats.val_accuracy, stats.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {stats.epoch} (val accuracy {stats.val_accuracy:.4f})")

    return on_epoch


def score_trial(
    splits: Splits,
    cfg: TrainConfig,
    runtime: Runtime,
    *,
    checkpoint_dir: str | Path,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> TrialScores:
    """Train one trial's config and score its shipped weights on the whole validation split."""
    result = fit(splits, cfg, runtime, checkpoint_dir=checkpoint_dir, on_epoch=on_epoch)
    model, _ = load_model(result.checkpoint, runtime.device)
    logits = predict(
        runtime.prepare(model), np.asarray(splits.val_x), runtime, tta=cfg.tta, translate=cfg.tta_translate
    )
    scores = evaluate(logits, splits.val_y, splits.classes)
    return TrialScores(
        val_accuracy=scores.accuracy,
        worst_class_recall=min(scores.recall),
        recall=scores.recall,
        epochs=len(result.history),
        train_seconds=result.train_seconds,
    )


# ------------------------------------------------------------------ the study
class StudyDriver:
    """One invocation of a study: asks Optuna for trials and tells it their outcomes.

    Opening resumes a study of the same name (`load_if_exists`); finished trials count toward
    `plan.trials` and are not rerun. Trials left RUNNING by a killed process are failed and
    queued again with the same parameters, at most `MAX_RETRIES` times each."""

    def __init__(self, plan: StudyPlan) -> None:
        self.plan = plan
        self.study = optuna.create_study(
            study_name=plan.name,
            storage=plan.storage,
            directions=list(plan.directions),
            pruner=make_pruner(plan.directions),
            load_if_exists=True,
        )
        known = self.study.user_attrs.get("fingerprint")
        if known not in (None, plan.fingerprint):
            raise ConfigError(
                f"study {plan.name!r} in {plan.storage} was started with another profile, overrides, "
                "space, objective or data; give another study name"
            )
        self.study.set_user_attr("fingerprint", plan.fingerprint)
        # a fresh seed per invocation: the same seed would repeat the first invocation's samples
        self.study.sampler = optuna.samplers.TPESampler(seed=len(self.study.trials))
        if not self.study.trials:
            self._enqueue_start()
        self.requeued = self._requeue_interrupted()
        self.deadline = None if plan.timeout_s is None else time.monotonic() + plan.timeout_s
        self.running: dict[int, optuna.Trial] = {}
        self.invalid = 0

    def _enqueue_start(self) -> None:
        """A new study's first trial is the profile's own values, where the space holds them."""
        start = starting_point(self.plan.base, self.plan.space)
        if start is None:
            log.info("study %s: the profile's values lie outside the space; no starting trial", self.plan.name)
            return
        self.study.enqueue_trial(start, user_attrs={START: True})

    def _requeue_interrupted(self) -> list[int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
            numbers = [
                t.number for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            ]
            for number in numbers:
                retry(self.study, self.study.tell(number, state=optuna.trial.TrialState.FAIL))
        if numbers:
            log.warning("study %s: trials %s were interrupted; queued again", self.plan.name, numbers)
        return numbers

    def _origin(self, number: int) -> int:
        """The first trial of a chain of retries (whose checkpoint a retry resumes), else `number`."""
        frozen = self.study.get_trials(deepcopy=False)[number]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            origin = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        return number if origin is None else origin

    def finished(self) -> int:
        """Complete and pruned trials in the study."""
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(self.study.get_trials(deepcopy=False, states=done))

    def ask(self) -> TrialSpec | None:
        """The next trial to run, or None when enough are finished or running, or time is up.

        A sampled configuration the config rejects fails at once, without training."""
        while self.finished() + len(self.running) < self.plan.trials:
            if self.deadline is not None and time.monotonic() > self.deadline:
                log.info("study %s: time budget spent; no more trials start", self.plan.name)
                return None
            trial = self.study.ask(self.plan.space.distributions())
            try:
                trial_config(self.plan.base, trial.params)
            except ConfigError as err:
                self.invalid += 1
                trial.set_user_attr("error", str(err))
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                if self.invalid >= MAX_INVALID:
                    raise ConfigError(
                        f"study {self.plan.name}: {self.invalid} sampled configurations were invalid, "
                        f"e.g. {err}; narrow the search space"
                    ) from err
                continue
            self.running[trial.number] = trial
            # Optuna has no public accessor for the storage id a trial is reopened by elsewhere
            return TrialSpec(
                study=self.plan.name,
                storage=self.plan.storage,
                directions=self.plan.directions,
                number=trial.number,
                trial_id=trial._trial_id,
                origin=self._origin(trial.number),
                params=dict(trial.params),
            )
        return None

    def tell(
        self,
        number: int,
        scores: TrialScores | None,
        *,
        pruned: bool = False,
        attrs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Record a trial: complete with `scores`, pruned, or failed (`error`)."""
        trial = self.running.pop(number)
        for key, value in (attrs or {}).items():
            trial.set_user_attr(key, value)
        if error is not None:
            trial.set_user_attr("error", error)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif pruned:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            assert scores is not None
            for key in ("val_accuracy", "worst_class_recall", "recall"):
                trial.set_user_attr(key, getattr(scores, key))
            values = [scores.val_accuracy, scores.worst_class_recall][: len(self.plan.directions)]
            self.study.tell(trial, values)


def _quiet_plot(plot: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """An `optuna.visualization.matplotlib` figure (those functions are marked experimental)."""
    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return plot(*args, **kwargs).figure


def history_figure(study: optuna.Study) -> Any:
    """Validation accuracy of each complete trial and the best so far."""
    from optuna.visualization.matplotlib import plot_optimization_history

    return _quiet_plot(
        plot_optimization_history,
        study,
        target=lambda t: t.user_attrs["val_accuracy"],
        target_name="validation accuracy",
    )


def importance_figure(study: optuna.Study) -> Any:
    """Share of the variance of validation accuracy each parameter explains (fANOVA, seeded;
    Optuna's default PED-ANOVA assumes lower targets are better); needs two complete trials."""
    from optuna.visualization.matplotlib import plot_param_importances

    return _quiet_plot(
        plot_param_importances,
        study,
        optuna.importance.FanovaImportanceEvaluator(seed=0),
        target=lambda t: t.user_attrs["val_accuracy"],
        target_name="validation accuracy",
    )


def pareto_figure(results: Sequence[TrialResult], choice: Choice, min_worst_recall: float) -> Any:
    """Accuracy against worst-class recall of every complete trial, the front joined, the floor
    dashed and the chosen trial starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = sorted(pareto_front(results), key=lambda r: r.worst_class_recall)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter([r.worst_class_recall for r in results], [r.val_accuracy for r in results], c="0.6", label="trials")
    ax.plot(
        [r.worst_class_recall for r in front], [r.val_accuracy for r in front], "o-", c="tab:red", label="Pareto front"
    )
    ax.scatter(
        [choice.trial.worst_class_recall],
        [choice.trial.val_accuracy],
        marker="*",
        s=250,
        c="tab:blue",
        zorder=3,
        label=f"chosen (trial {choice.trial.number})",
    )
    if min_worst_recall > 0:
        ax.axvline(min_worst_recall, ls="--", c="0.3", label=f"worst-class recall floor {min_worst_recall:g}")
    ax.set_xlabel("worst-class recall (validation)")
    ax.set_ylabel("accuracy (validation)")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig
