"""Hyperparameter search: space validation, pruning, the choice rule on synthetic trials, and a
small study under the session's Prefect harness (every trial an MLflow run, resume, retries)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from auditflow.cli import app
from auditflow.core.config import load_config
from auditflow.core.errors import AuditflowError, ConfigError
from auditflow.core.tracking import STAGE_TAG, Tracker, TrackingRef
from auditflow.core.tracking.studies import study_summary, trial_runs
from auditflow.models.training.fit import EpochStats
from auditflow.models.tuning.space import TrialResult, choose_trial, load_space, pareto_front, parse_space, plan_study
from auditflow.models.tuning.study import make_pruner, pruning_callback

runner = CliRunner()
TINY = [
    "train.width=8",
    "train.progressive_scale=null",  # a few toy epochs learn more reliably at full size
    "train.batch_size=16",
    "train.precision=fp32",
    "train.compile=false",
    "train.tta_translate=0",
    "train.val_subset=null",
    "data.val_fraction=0.25",
]
SPACE = {
    "train.lr": {"low": 0.02, "high": 0.3, "log": True},
    "train.epochs": {"low": 1, "high": 2},
    "train.ema_decay": {"choices": [None, 0.9]},
}


def _plan_error(raw: object, overrides: tuple[str, ...] = (), trials: int = 3) -> str:
    with pytest.raises(ConfigError) as err:
        plan_study(load_config("quick", list(overrides)), parse_space(raw, "s.yaml"), source="data", trials=trials)
    return str(err.value)


# ------------------------------------------------------------------ the space
def test_default_space_covers_the_usual_knobs_and_validates() -> None:
    space = load_space()
    assert set(space.params) == {
        "train.lr",
        "train.weight_decay",
        "train.width",
        "train.epochs",
        "train.label_smoothing",
        "train.ema_decay",
        "train.batch_size",
    }
    assert space.kinds["train.epochs"] == "int" and space.kinds["train.lr"] == "float"
    plan = plan_study(load_config("quick"), space, source="cifar10", trials=20)
    assert plan.name == f"quick-{plan.fingerprint[:8]}" and plan.directions == ("maximize",)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {"train.lrr": {"low": 0.1, "high": 0.2}},
            "search space s.yaml: unknown key 'train.lrr': not a config field; did you mean 'train.lr'?",
        ),
        (
            {"lr": {"low": 0.1, "high": 0.2}},
            "search space s.yaml: unknown key 'lr': not a config field; keys are section.field with a section of "
            "data, train, evaluate, fairness, transparency, privacy, export, benchmark, tracking, card, release, "
            "report",
        ),
        ({"train.lr": {"low": 0.5, "high": 0.1}}, "search space s.yaml: train.lr: empty range: low=0.5 > high=0.1"),
        ({"train.width": {"choices": []}}, "search space s.yaml: train.width: empty choices: give at least one value"),
        (
            {"train.weight_decay": {"low": 0, "high": 0.1, "log": True}},
            "search space s.yaml: train.weight_decay: a log-scale range needs low > 0, got low=0",
        ),
        (
            {"train.model": {"low": 0, "high": 1}},
            "search space s.yaml: train.model: a range needs a numeric field; give choices instead",
        ),
        (
            {"train.epochs": {"low": 1.5, "high": 3}},
            "search space s.yaml: train.epochs: an integer field needs integer low, high and step",
        ),
        (
            {"train.lr": {"low": 0.1, "high": 0.2, "scale": "log"}},
            "search space s.yaml: train.lr: scale: Extra inputs are not permitted",
        ),
        (
            {"train.lr": 0.1},
            "search space s.yaml: train.lr: give a range {low, high[, log, step]} or {choices: [...]}, got 0.1",
        ),
        ({}, "search space s.yaml: must be a non-empty mapping of config fields to ranges or choices"),
    ],
)
def test_bad_space_fails_naming_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_space(raw, "s.yaml")
    assert str(err.value) == message


def test_zero_trials_and_a_space_no_trial_satisfies_fail_before_any_trial() -> None:
    assert _plan_error(SPACE, trials=0) == "trials must be at least 1, got 0"
    # every sampled value breaks a config rule (tta_translate needs tta)
    assert _plan_error({"train.tta_translate": {"choices": [1, 2]}}, ("train.tta=false", "train.tta_translate=0")) == (
        "search space s.yaml: no trial can satisfy it: all 64 sampled configurations are invalid, e.g. "
        "invalid configuration: train: Value error, tta_translate=2 needs tta=true"
    )
    assert _plan_error(SPACE, ("data.val_fraction=0",)) == (
        "trials are scored on the validation split: data.val_fraction must be above 0"
    )


# ------------------------------------------------------------------ pruning
def _epoch(epoch: int, val_accuracy: float) -> EpochStats:
    return EpochStats(epoch, 1.0, 0.5, 1.0, val_accuracy, 0.1, 1.0, 100.0)


def test_pruning_callback_stops_a_trial_below_the_median() -> None:
    study = optuna.create_study(direction="maximize", pruner=make_pruner(("maximize",)))
    for _ in range(3):  # the pruner's startup trials, all at 0.9 from epoch 1
        trial = study.ask()
        for epoch in (1, 2, 3):
            trial.report(0.9, epoch)
        study.tell(trial, 0.9)
    on_epoch = pruning_callback(study.ask())
    on_epoch(_epoch(1, 0.1))  # warm-up epochs are never pruned
    on_epoch(_epoch(2, 0.1))
    on_epoch(_epoch(3, math.nan))  # not validated: nothing to report
    with pytest.raises(optuna.TrialPruned, match="pruned after epoch 3"):
        on_epoch(_epoch(3, 0.1))
    two = optuna.create_study(directions=["maximize", "maximize"])
    pruning_callback(two.ask())(_epoch(3, 0.0))  # Optuna cannot prune two objectives: a no-op


# ------------------------------------------------------------------ the choice rule
def _synthetic(n: int, seed: int) -> list[TrialResult]:
    rng = np.random.default_rng(seed)
    acc = rng.uniform(0.5, 0.95, n).round(2)  # rounded: ties happen
    recall = np.clip(acc - rng.uniform(0.0, 0.5, n), 0, 1).round(2)
    return [
        TrialResult(i, float(a), float(r), {"train.lr": 0.1}) for i, (a, r) in enumerate(zip(acc, recall, strict=True))
    ]


def test_pareto_front_and_choice_on_hand_made_trials() -> None:
    results = [
        TrialResult(0, 0.90, 0.40, {}),
        TrialResult(1, 0.85, 0.70, {}),
        TrialResult(2, 0.80, 0.60, {}),
        TrialResult(3, 0.90, 0.40, {}),
        TrialResult(4, 0.70, 0.75, {}),
    ]
    assert [r.number for r in pareto_front(results)] == [0, 3, 1, 4]  # 2 is beaten by 1 on both
    assert choose_trial(results).trial.number == 0  # no floor: best accuracy, earlier of a tie
    assert choose_trial(results, 0.5).trial.number == 1
    assert choose_trial(results, 0.72).trial.number == 4
    missed = choose_trial(results, 0.8)
    assert (missed.trial.number, missed.rule_met) == (4, False)
    with pytest.raises(AuditflowError, match="no trial completed"):
        choose_trial([])


@pytest.mark.parametrize("seed", range(5))
def test_chosen_trial_obeys_the_rule_and_sits_on_the_front(seed: int) -> None:
    results = _synthetic(40, seed)
    floor = float(np.median([r.worst_class_recall for r in results]))
    choice = choose_trial(results, floor)
    # brute force: the rule holds, nothing eligible is more accurate, and the choice is not dominated
    assert choice.rule_met and choice.trial.worst_class_recall >= floor
    assert all(r.val_accuracy <= choice.trial.val_accuracy for r in results if r.worst_class_recall >= floor)
    front = pareto_front(results)
    assert choice.trial in front
    # the front agrees with Optuna's own two-objective front over the same values
    study = optuna.create_study(directions=["maximize", "maximize"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trials(
        [
            optuna.trial.create_trial(
                params={"x": 0.5}, distributions=dist, values=[r.val_accuracy, r.worst_class_recall]
            )
            for r in results
        ]
    )
    assert {r.number for r in front} == {t.number for t in study.best_trials}


# ------------------------------------------------------------------ the CLI
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "error: --trials must be at least 1, got 0"),
        (
            ["--objective", "speed"],
            "error: unknown objective 'speed'; choose one of ['accuracy', 'accuracy+worst-recall']",
        ),
        (["--space", "nope.yaml"], "error: search space file 'nope.yaml' does not exist"),
        (["--study", "a b"], "error: study name 'a b': use up to 100 letters, digits, '.', '_' or '-'"),
        (["--min-worst-recall", "1.5"], "error: min worst-class recall must be within 0..1, got 1.5"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, image_folder: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["tune", "--data", str(image_folder), "--workdir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert result.output.strip() == message
    assert not (tmp_path / "optuna.db").exists()


def test_cli_rejects_an_unknown_space_key(image_folder: Path, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("train.lrr: {low: 0.01, high: 0.1}\n")
    result = runner.invoke(
        app, ["tune", "--data", str(image_folder), "--space", str(space), "--workdir", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: search space {space}: unknown key 'train.lrr': not a config field; did you mean 'train.lr'?"
    )


# ------------------------------------------------------------------ a study, end to end
@pytest.fixture(scope="module")
def study_run(prefect_harness, image_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    from auditflow.flows.tune import tune_study

    work = tmp_path_factory.mktemp("tune")
    space = work / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    kwargs = dict(
        profile="quick",
        data=str(image_folder),
        overrides=TINY,
        space=str(space),
        study="toy",
        objective="accuracy+worst-recall",
        workdir=str(work),
    )
    first = tune_study(trials=2, **kwargs)
    return first, kwargs, work


@pytest.mark.slow
def test_every_trial_is_an_mlflow_run_with_its_parameters(study_run) -> None:
    summary, _, work = study_run
    tracker = Tracker(summary.tracking_uri)
    parent = tracker.get_run(summary.run_id)
    ref = TrackingRef(summary.tracking_uri, parent.info.experiment_id, summary.run_id)
    study = optuna.load_study(study_name="toy", storage=f"sqlite:///{work.resolve()}/optuna.db")
    runs = trial_runs(tracker, ref)
    assert [r.data.tags[STAGE_TAG] for r in runs] == ["trial-0", "trial-1"]
    for run, trial in zip(runs, study.trials, strict=True):
        assert run.data.tags["mlflow.parentRunId"] == summary.run_id and run.info.status == "FINISHED"
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
        assert {k: run.data.params[k] for k in SPACE} == {k: str(v) for k, v in trial.params.items()}
        assert trial.values == [run.data.metrics["tune/val_accuracy"], run.data.metrics["tune/worst_class_recall"]]
    artifacts = {f.path for f in tracker.client.list_artifacts(summary.run_id, "tune")}
    assert {
        "tune/profile.yaml",
        "tune/pareto_front.png",
        "tune/optimization_history.png",
        "tune/trials.json",
        "tune/pareto_front.json",
        "tune/summary.json",
    } <= artifacts
    assert parent.data.tags["auditflow.study"] == "toy" and parent.info.status == "FINISHED"


def tmp_path_factory_dir(summary) -> Path:
    return Path(summary.profile_path).parent / "report"


@pytest.mark.slow
def test_tuned_profile_runs_and_names_its_study(study_run) -> None:
    summary, _, _ = study_run
    cfg = load_config(summary.profile_path)  # what `auditflow run --profile FILE` loads
    assert cfg.profile == f"tuned:toy:{summary.run_id}"
    assert cfg.train.width == 8 and not cfg.train.compile  # the base overrides travel along
    for key, value in summary.params.items():
        assert getattr(cfg.train, key.removeprefix("train.")) == value
    found = study_summary(Tracker(summary.tracking_uri), cfg.profile)
    assert found is not None and found["study"] == "toy" and found["chosen_trial"] == summary.chosen_trial

    # the report of a run with this profile has a study section (load_run fills record.study)
    from auditflow.audits.report import build_report
    from auditflow.core.tracking import RunRecord

    record = RunRecord(
        run_id="r",
        name="tuned-run",
        status="FINISHED",
        tags={},
        params={},
        metrics={},
        uri=summary.tracking_uri,
        experiment_id="0",
        config={"profile": cfg.profile},
        study=found,
    )
    text = Path(build_report(record, tmp_path_factory_dir(summary)).markdown).read_text()
    assert "## Tuning study\nThis run's profile came from the `auditflow tune` study `toy`" in text
    assert f"The chosen trial {summary.chosen_trial} (" in text


@pytest.mark.slow
def test_resume_runs_no_finished_trial_again_and_retries_a_killed_one(study_run) -> None:
    from auditflow.flows.tune import tune_study

    first, kwargs, work = study_run
    storage = f"sqlite:///{work.resolve()}/optuna.db"
    tracker = Tracker(first.tracking_uri)
    ref = TrackingRef(first.tracking_uri, tracker.get_run(first.run_id).info.experiment_id, first.run_id)

    again = tune_study(trials=2, **kwargs)  # same name, already 2 finished: nothing to train
    assert again.run_id == first.run_id and len(trial_runs(tracker, ref)) == 2
    assert len(optuna.load_study(study_name="toy", storage=storage).trials) == 2

    # a kill mid-trial leaves the Optuna trial and its MLflow run RUNNING
    study = optuna.load_study(study_name="toy", storage=storage)
    killed = study.ask(load_space(kwargs["space"]).distributions())
    orphan = tracker.start_run(
        ref.experiment_id, "trial-2", {STAGE_TAG: f"trial-{killed.number}"}, parent_id=ref.run_id
    )

    third = tune_study(trials=3, **kwargs)
    trials = optuna.load_study(study_name="toy", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"]
    assert trials[3].params == trials[2].params  # the killed trial, queued again with its parameters
    assert tracker.get_run(orphan.run_id).info.status == "KILLED"
    assert third.run_id == first.run_id and third.states == {"complete": 3, "fail": 1}
    assert len(trial_runs(tracker, ref)) == 4  # two first, the orphan, the retry


@pytest.mark.slow
def test_same_study_name_with_another_space_is_refused(study_run) -> None:
    from auditflow.flows.tune import tune_study

    _, kwargs, work = study_run
    other = work / "other.yaml"
    other.write_text("train.lr: {low: 0.01, high: 0.1}\n")
    with pytest.raises(ConfigError, match=r"study 'toy' in .* was started with another profile"):
        tune_study(trials=1, **(kwargs | {"space": str(other)}))


def test_the_space_is_fitted_to_the_training_split() -> None:
    """The pipeline refuses a batch larger than the training split, so a study on a small
    dataset must not choose one: the default space (128, 256, 512) on 42 images used to write a
    profile that `auditflow run` then refused."""
    from auditflow.core.config import load_config
    from auditflow.models.tuning.space import fit_space_to_data

    base = load_config("tutorial").model_dump(mode="json")
    default = load_space(None)
    fitted = fit_space_to_data(base, default, 300)
    assert fitted.params["train.batch_size"].choices == (128, 256)
    assert {k: v for k, v in fitted.params.items() if k != "train.batch_size"} == {
        k: v for k, v in default.params.items() if k != "train.batch_size"
    }
    assert fit_space_to_data(base, default, 1000) == default
    assert fit_space_to_data(base, default, 42).params["train.batch_size"].choices == (5,)  # 8 steps per epoch
    ranged = parse_space({"train.batch_size": {"low": 8, "high": 512}}, "ranged")
    assert fit_space_to_data(base, ranged, 42).params["train.batch_size"].high == 42
    no_batch = parse_space({"train.lr": {"low": 0.01, "high": 0.1}}, "lr only")
    assert fit_space_to_data(base, no_batch, 42) == no_batch  # the tutorial's batch of 4 fits
    with pytest.raises(ConfigError, match=r"^train.batch_size=256 is larger than the training split \(42 images\)"):
        fit_space_to_data(load_config("quick").model_dump(mode="json"), no_batch, 42)


# ------------------------------------------------------------------ the study's summary, pure
def test_summarise_chooses_by_the_rule_and_reports_the_study_without_mlflow(tmp_path: Path) -> None:
    """`summarise` on an in-memory study of four trials (one pruned): the choice follows the
    worst-recall floor, the profile carries the chosen values, the front and the state counts
    are the study's, and the report holds the figures. No MLflow, no Prefect."""
    from auditflow.models.tuning.report import summarise

    space = parse_space(SPACE, "s.yaml")
    plan = plan_study(
        load_config("quick", TINY), space, source="data", trials=4, min_worst_recall=0.5, workdir=tmp_path
    )
    study = optuna.create_study(directions=list(plan.directions), study_name=plan.name)
    scores = [(0.90, 0.40), (0.80, 0.60), (0.70, 0.70), None]  # trial 3 is pruned
    for number, score in enumerate(scores):
        trial = study.ask(space.distributions())
        if score is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        trial.set_user_attr("val_accuracy", score[0])
        trial.set_user_attr("worst_class_recall", score[1])
        trial.set_user_attr("mlflow_run_id", f"run{number}")
        study.tell(trial, score[0] if len(plan.directions) == 1 else list(score))

    found = summarise(
        study, plan, run_id="study-run", tracking_uri="sqlite:///x.db", profile_name="tuned", profile_path="p.yaml"
    )
    s = found.summary
    # 0.90 misses the 0.5 floor; 0.80 is the best accuracy that meets it
    assert (s.chosen_trial, s.val_accuracy, s.worst_class_recall, s.rule_met) == (1, 0.80, 0.60, True)
    assert s.states == {"complete": 3, "pruned": 1}
    assert [row["trial"] for row in s.front] == [0, 1, 2]  # none dominates another
    chosen = study.trials[1].params
    profile = yaml.safe_load(found.profile_text)
    for key, value in chosen.items():
        section, field = key.split(".")
        assert profile[section][field] == value, key
    assert "study-run" in found.profile_text and "run1" in found.profile_text
    assert found.report.figures, "the Pareto and history figures"
    assert (s.run_id, s.profile_path, s.study) == ("study-run", "p.yaml", plan.name)


def test_a_new_study_starts_from_the_profile_and_reports_the_gain_over_it(tmp_path: Path) -> None:
    """A study's first trial runs the profile's own values when the space holds them all, and
    its summary says how much the chosen trial gained over that start. When one value lies
    outside the space, there is no starting trial."""
    from auditflow.models.tuning.report import summarise
    from auditflow.models.tuning.space import starting_point
    from auditflow.models.tuning.study import StudyDriver, TrialScores

    cfg = load_config("quick", TINY)  # lr 0.2, batch 16, label smoothing 0.2
    held = {
        "train.lr": {"low": 0.1, "high": 0.4, "log": True},
        "train.batch_size": {"choices": [16, 32]},
        "train.label_smoothing": {"low": 0.1, "high": 0.3},
    }
    plan = plan_study(cfg, parse_space(held, "s.yaml"), source="data", trials=2, workdir=tmp_path)
    assert starting_point(plan.base, plan.space) == {
        "train.lr": 0.2,
        "train.batch_size": 16,
        "train.label_smoothing": 0.2,
    }
    outside = parse_space(held | {"train.batch_size": {"choices": [32, 64]}}, "s.yaml")
    assert starting_point(plan.base, outside) is None

    driver = StudyDriver(plan)
    for accuracy in (0.70, 0.80):
        spec = driver.ask()
        assert spec is not None
        if spec.number == 0:
            assert spec.params == starting_point(plan.base, plan.space)
        driver.tell(spec.number, TrialScores(accuracy, 0.5, (0.5, 0.5), epochs=1, train_seconds=1.0))
    assert driver.study.trials[1].params != driver.study.trials[0].params

    found = summarise(
        driver.study, plan, run_id="r", tracking_uri="sqlite:///x.db", profile_name="tuned", profile_path="p.yaml"
    )
    assert (found.summary.chosen_trial, found.summary.start_trial) == (1, 0)
    assert found.summary.start_accuracy == pytest.approx(0.70)
    assert "The profile's own values (trial 0): validation accuracy 0.7000; the choice gains +10.00 points." in (
        found.profile_text
    )
    best_start = optuna.create_study(study_name=plan.name)  # the start wins: said so, no gain claimed
    for number, trial in enumerate(driver.study.trials[:2]):
        best_start.add_trial(
            optuna.trial.create_trial(
                params=trial.params,
                distributions=trial.distributions,
                value=(0.9, 0.8)[number],
                user_attrs={**trial.user_attrs, "val_accuracy": (0.9, 0.8)[number]},
            )
        )
    found = summarise(
        best_start, plan, run_id="r", tracking_uri="sqlite:///x.db", profile_name="tuned", profile_path="p.yaml"
    )
    assert (found.summary.chosen_trial, found.summary.start_trial) == (0, 0)
    assert "validation accuracy 0.9000; no trial did better." in found.profile_text
    assert found.summary.versus_start == (
        "The profile's own values (trial 0): validation accuracy 0.9000; no trial did better."
    )
