"""A tuning request, checked in one place: the CLI calls `plan_tuning` before any work (to fail
in one line and to name the study), and the flow (`auditflow.flows.tune.tune_study`, also a
deployment entrypoint) calls it again with the training split's size, to which it fits the space."""

from __future__ import annotations

from pathlib import Path

from auditflow.core.config import PipelineConfig
from auditflow.core.errors import ConfigError
from auditflow.models.tuning.space import StudyPlan, load_space, plan_study


def plan_tuning(
    cfg: PipelineConfig,
    data: str,
    *,
    trials: int,
    parallel: int,
    space: str | None,
    objective: str,
    min_worst_recall: float,
    time_budget_min: float | None,
    study: str | None,
    storage: str | None,
    workdir: str | Path,
    n_train: int | None = None,
) -> StudyPlan:
    """The study's validated plan (`plan_study`) for profile + overrides `cfg` on `data`;
    `ConfigError` names the bad option. `space`: a shipped name or a YAML path."""
    for option, value in (("parallel", parallel), ("trials", trials)):
        if value < 1:
            raise ConfigError(f"--{option} must be at least 1, got {value}")
    return plan_study(
        cfg,
        load_space(space),
        source=data,
        trials=trials,
        objective=objective,
        min_worst_recall=min_worst_recall,
        time_budget_min=time_budget_min,
        name=study,
        storage=storage,
        workdir=workdir,
        n_train=n_train,
    )
