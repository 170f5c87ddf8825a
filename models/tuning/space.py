"""Hyperparameter search, what a study is: its search space, its validated plan, and the rule
that chooses the trial to ship. Running a study is `study.py`.

- The search space is a YAML mapping from config fields (`train.lr`, as in `--set`) to a range
  or a list of choices (`SearchParam`). It is checked against `PipelineConfig` before any trial
  starts: unknown keys, empty ranges and a space no sampled configuration satisfies fail then.
- Trials are scored on the validation split (accuracy and worst-class recall); the test split
  is never looked at, so the tuned profile's test accuracy stays an honest estimate.
- The shipped trial is chosen by a rule over complete trials (`choose_trial`): the best
  accuracy among trials whose worst-class recall reaches a floor; `pareto_front` shows the
  trade-off it was chosen from.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

import optuna
import yaml
from pydantic import BaseModel, ValidationError

from auditflow.core.config import PipelineConfig, SearchParam, build_config
from auditflow.core.errors import AuditflowError, ConfigError

log = logging.getLogger(__name__)

# objective name -> directions of the values a trial returns (accuracy first)
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "accuracy": ("maximize",),
    "accuracy+worst-recall": ("maximize", "maximize"),
}
STUDY_DB = "optuna.db"  # default study storage in the work folder (not mlflow.db: both keep alembic tables)
STORAGE_ENV = "AUDITFLOW_STUDY_STORAGE"  # a database URL for studies shared by a team
FEASIBILITY_SAMPLES = 64  # random configurations validated before the first trial
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


# ------------------------------------------------------------------ the search space
def _sections() -> dict[str, type[BaseModel]]:
    return {
        name: f.annotation
        for name, f in PipelineConfig.model_fields.items()
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
    }


def _numeric_kind(annotation: Any) -> str | None:
    """ "int" or "float" for fields a range can sample (None allowed beside), else None."""
    args = set(get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else {annotation}
    args.discard(NoneType)
    if float in args:
        return "float"
    return "int" if args == {int} else None


@dataclass(frozen=True)
class SearchSpace:
    params: dict[str, SearchParam]  # config key (section.field) -> range or choices
    kinds: dict[str, str]  # config key -> "int", "float" or "choices"
    source: str  # where it was read from, for messages

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        out: dict[str, optuna.distributions.BaseDistribution] = {}
        for key, p in self.params.items():
            kind = self.kinds[key]
            if kind == "choices":
                out[key] = optuna.distributions.CategoricalDistribution(p.choices)
            elif kind == "int":
                out[key] = optuna.distributions.IntDistribution(
                    int(p.low), int(p.high), log=p.log, step=int(p.step or 1)
                )
            else:
                out[key] = optuna.distributions.FloatDistribution(p.low, p.high, log=p.log, step=p.step)
        return out

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {key: p.model_dump(exclude_defaults=True) for key, p in self.params.items()}


def _check_key(key: str, where: str) -> str:
    """The kind of range config field `key` takes; `ConfigError` when it is not a field."""
    sections = _sections()
    section, _, name = str(key).partition(".")
    if section in sections and name in sections[section].model_fields:
        kind = _numeric_kind(sections[section].model_fields[name].annotation)
        return kind or "choices"
    known = [f"{s}.{f}" for s, model in sections.items() for f in model.model_fields]
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.8)
    if close:
        hint = f"did you mean {close[0]!r}?"
    elif section in sections:
        hint = f"{section} has {', '.join(sections[section].model_fields)}"
    else:
        hint = f"keys are section.field with a section of {', '.join(sections)}"
    raise ConfigError(f"{where}: unknown key {key!r}: not a config field; {hint}")


def parse_space(raw: Any, source: str) -> SearchSpace:
    """Validate a search-space mapping (`{"train.lr": {"low": 0.01, "high": 0.5, "log": True}}`)."""
    where = f"search space {source}"
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: must be a non-empty mapping of config fields to ranges or choices")
    params, kinds = {}, {}
    for key, value in raw.items():
        field_kind = _check_key(key, where)
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: {key}: give a range {{low, high[, log, step]}} or {{choices: [...]}}, got {value!r}"
            )
        try:
            spec = SearchParam.model_validate(value)
        except ValidationError as err:
            messages = "; ".join(
                ": ".join([*map(str, e["loc"]), e["msg"].removeprefix("Value error, ")]) for e in err.errors()
            )
            raise ConfigError(f"{where}: {key}: {messages}") from err
        if spec.choices is None:
            if field_kind == "choices":
                raise ConfigError(f"{where}: {key}: a range needs a numeric field; give choices instead")
            if field_kind == "int" and not all(float(v).is_integer() for v in (spec.low, spec.high, spec.step or 1)):
                raise ConfigError(f"{where}: {key}: an integer field needs integer low, high and step")
        params[key], kinds[key] = spec, "choices" if spec.choices is not None else field_kind
    return SearchSpace(params, kinds, source)


def load_space(space: str | None = None) -> SearchSpace:
    """A shipped space by name (None = "default", in `auditflow/core/spaces/`) or a YAML file."""
    name = space or "default"
    if Path(name).suffix in {".yaml", ".yml"}:
        if not Path(name).is_file():
            raise ConfigError(f"search space file {name!r} does not exist")
        text = Path(name).read_text()
    else:
        shipped = resources.files("auditflow.core") / "spaces" / f"{name}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"unknown search space {name!r}; give 'default' or a path to a .yaml file")
        text = shipped.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"search space {name}: not valid YAML: {err}") from err
    return parse_space(raw, name)


def trial_config(base: dict[str, Any], params: dict[str, Any]) -> PipelineConfig:
    """`base` (a resolved config as JSON-like data) with the sampled `params` set, validated."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = value
    return build_config(raw)


def starting_point(base: dict[str, Any], space: SearchSpace) -> dict[str, Any] | None:
    """`base`'s own values of the space's keys, when the space holds every one of them: a study
    runs them as its first trial, so that it says what it gained over where it started. None
    when a value lies outside its range or choices."""
    point: dict[str, Any] = {}
    for key, dist in space.distributions().items():
        section, name = key.split(".", 1)
        value = base.get(section, {}).get(name)
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            held = value in dist.choices
        else:
            held = isinstance(value, int | float) and dist.low <= value <= dist.high
        if not held:
            return None
        point[key] = value
    return point


def check_space(base: dict[str, Any], space: SearchSpace, samples: int = FEASIBILITY_SAMPLES) -> float:
    """Share of `samples` random configurations of `space` (over `base`) that validate.

    Raises `ConfigError` when none does: then no trial could run."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line for a scratch study
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))  # in memory
    finally:
        optuna.logging.set_verbosity(verbosity)
    dists, errors = space.distributions(), []
    for _ in range(samples):
        trial = study.ask(dists)
        try:
            trial_config(base, trial.params)
        except ConfigError as err:
            errors.append(str(err))
        study.tell(trial, 0.0)
    if len(errors) == samples:
        raise ConfigError(
            f"search space {space.source}: no trial can satisfy it: all {samples} sampled "
            f"configurations are invalid, e.g. {errors[0]}"
        )
    if errors:
        log.warning(
            "%d of %d sampled configurations are invalid and will fail as trials, e.g. %s",
            len(errors),
            samples,
            errors[0],
        )
    return 1 - len(errors) / samples


def fit_space_to_data(base: dict[str, Any], space: SearchSpace, n_train: int) -> SearchSpace:
    """`space` with only the batch sizes the pipeline accepts on a training split of `n_train`
    images (it refuses a batch larger than the split: one partial step per epoch). When none of
    the space's fits, the study searches with one batch size, an eighth of the split (8 steps
    per epoch); both said in the log. `ConfigError` when the space has no batch size and the
    profile's does not fit."""
    key, small = "train.batch_size", max(1, n_train // 8)
    param = space.params.get(key)
    if param is None:
        if base["train"]["batch_size"] > n_train:
            raise ConfigError(
                f"train.batch_size={base['train']['batch_size']} is larger than the training split "
                f"({n_train} images); set train.batch_size={small} or so, or search it in the space"
            )
        return space
    if param.choices is not None:
        kept = tuple(c for c in param.choices if isinstance(c, int) and c <= n_train)
        fitted = param.model_copy(update={"choices": kept}) if kept else None
    else:
        fitted = param.model_copy(update={"high": float(min(param.high, n_train))}) if param.low <= n_train else None
    kinds = space.kinds
    if fitted is None:
        fitted, kinds = SearchParam(choices=(small,)), {**space.kinds, key: "choices"}
        log.warning(
            "search space %s: no train.batch_size fits the training split (%d images); searching with %d",
            space.source,
            n_train,
            small,
        )
    elif fitted != param:
        log.warning(
            "search space %s: train.batch_size limited to the training split (%d images): %s",
            space.source,
            n_train,
            fitted.model_dump(exclude_defaults=True),
        )
    return SearchSpace({**space.params, key: fitted}, kinds, space.source)


# ------------------------------------------------------------------ the study's plan
@dataclass(frozen=True)
class StudyPlan:
    """Everything a study needs, validated before any trial starts. Small and picklable."""

    name: str  # Optuna study name
    storage: str  # Optuna storage URL
    objective: str  # a key of OBJECTIVES
    trials: int  # finished (complete or pruned) trials the study should hold
    min_worst_recall: float  # floor of the choice rule, 0..1
    timeout_s: float | None  # wall seconds this invocation may start trials for; None = no limit
    base: dict[str, Any]  # the resolved profile + overrides, as JSON-like data
    space: SearchSpace
    fingerprint: str  # sha256 of base, space, objective and data source: what a resumed study must match
    source: str  # the data source

    @property
    def directions(self) -> tuple[str, ...]:
        return OBJECTIVES[self.objective]


def default_storage(workdir: str | Path) -> str:
    """$AUDITFLOW_STUDY_STORAGE, else SQLite in the work folder."""
    return os.environ.get(STORAGE_ENV) or f"sqlite:///{(Path(workdir) / STUDY_DB).resolve()}"


def plan_study(
    cfg: PipelineConfig,
    space: SearchSpace,
    *,
    source: str,
    trials: int,
    objective: str = "accuracy",
    min_worst_recall: float = 0.0,
    time_budget_min: float | None = None,
    name: str | None = None,
    storage: str | None = None,
    workdir: str | Path = ".",
    n_train: int | None = None,
) -> StudyPlan:
    """Check every argument and the space before any trial; `ConfigError` names the bad one.
    `n_train`: the training split's size, when known; the space is then fitted to it
    (`fit_space_to_data`), and the fitted space is what the study's name and fingerprint hold."""
    if trials < 1:
        raise ConfigError(f"trials must be at least 1, got {trials}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")
    if not 0.0 <= min_worst_recall <= 1.0:
        raise ConfigError(f"min worst-class recall must be within 0..1, got {min_worst_recall}")
    if time_budget_min is not None and time_budget_min <= 0:
        raise ConfigError(f"time budget must be positive minutes, got {time_budget_min}")
    if cfg.data.val_fraction <= 0:
        raise ConfigError("trials are scored on the validation split: data.val_fraction must be above 0")
    if cfg.train.processes != 1 or cfg.train.init_from or cfg.train.teacher:
        raise ConfigError(
            "tuning trains in-process from scratch: train.world_size and train.nodes must be 1 and "
            "train.init_from and train.teacher unset"
        )
    base = cfg.model_dump(mode="json")
    if n_train is not None:
        space = fit_space_to_data(base, space, n_train)
    check_space(base, space)
    blob = json.dumps([base, space.as_dict(), objective, source], sort_keys=True, default=str)
    fingerprint = hashlib.sha256(blob.encode()).hexdigest()
    name = name or f"{cfg.profile}-{fingerprint[:8]}"
    if not STUDY_NAME.fullmatch(name):
        raise ConfigError(f"study name {name!r}: use up to 100 letters, digits, '.', '_' or '-'")
    return StudyPlan(
        name=name,
        storage=storage or default_storage(workdir),
        objective=objective,
        trials=trials,
        min_worst_recall=min_worst_recall,
        timeout_s=None if time_budget_min is None else time_budget_min * 60,
        base=base,
        space=space,
        fingerprint=fingerprint,
        source=source,
    )


# ------------------------------------------------------------------ choosing the trial
@dataclass(frozen=True)
class TrialResult:
    number: int
    val_accuracy: float  # 0..1, higher is better
    worst_class_recall: float  # 0..1, higher is better
    params: dict[str, Any]


@dataclass(frozen=True)
class Choice:
    trial: TrialResult
    rule_met: bool  # False: no trial reached the floor; the one closest to it was taken
    reason: str


def trial_results(study: optuna.Study) -> list[TrialResult]:
    """The complete trials of `study`, with both scores (whatever the objective)."""
    return [
        TrialResult(t.number, t.user_attrs["val_accuracy"], t.user_attrs["worst_class_recall"], dict(t.params))
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ]


def pareto_front(results: Sequence[TrialResult]) -> list[TrialResult]:
    """Trials that no other trial beats on one score without losing on the other (accuracy,
    worst-class recall), best accuracy first.

    Written out rather than read from `Study.best_trials` so the front exists in the
    accuracy-only mode too, where worst-class recall is recorded but not optimised."""

    def dominates(a: TrialResult, b: TrialResult) -> bool:
        ge = a.val_accuracy >= b.val_accuracy and a.worst_class_recall >= b.worst_class_recall
        return ge and (a.val_accuracy > b.val_accuracy or a.worst_class_recall > b.worst_class_recall)

    front = [r for r in results if not any(dominates(other, r) for other in results)]
    return sorted(front, key=lambda r: (-r.val_accuracy, -r.worst_class_recall, r.number))


def choose_trial(results: Sequence[TrialResult], min_worst_recall: float = 0.0) -> Choice:
    """The best validation accuracy among trials whose worst-class recall is at least
    `min_worst_recall` (ties: higher worst-class recall, then the earlier trial); such a trial
    is always on the Pareto front. When no trial reaches the floor, the one with the highest
    worst-class recall, with `rule_met=False`."""
    if not results:
        raise AuditflowError("no trial completed, so there is no configuration to choose")
    eligible = [r for r in results if r.worst_class_recall >= min_worst_recall]
    if eligible:
        best = min(eligible, key=lambda r: (-r.val_accuracy, -r.worst_class_recall, r.number))
        return Choice(
            best,
            True,
            f"best validation accuracy with worst-class recall >= {min_worst_recall:g} "
            f"({len(eligible)} of {len(results)} trials qualify)",
        )
    best = min(results, key=lambda r: (-r.worst_class_recall, -r.val_accuracy, r.number))
    return Choice(
        best,
        False,
        f"no trial reached worst-class recall {min_worst_recall:g}; "
        f"took the highest worst-class recall ({best.worst_class_recall:.3f})",
    )


# ------------------------------------------------------------------ outputs
def tuned_profile(plan: StudyPlan, choice: Choice, *, profile_name: str, header: Sequence[str] = ()) -> str:
    """The chosen configuration as a profile YAML for `auditflow run --profile FILE`, headed by
    `header` lines as comments. Its `profile` field is `profile_name`."""
    cfg = trial_config(plan.base | {"profile": profile_name}, choice.trial.params)
    lines = [f"# {line}" for line in header]
    return "\n".join(lines) + ("\n" if lines else "") + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
