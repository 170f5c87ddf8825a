"""The hyperparameter study: validate -> open (or resume) the Optuna study and its MLflow run ->
ingest -> trials, `parallel` at a time through the flow's task runner -> summarise.

The study is validated (arguments, space, feasibility: `plan_tuning`, the check the CLI makes
before any work) before any trial starts. Trials run as
Prefect tasks: in threads by default, on a Dask cluster with `task_runner(dask_address=...)`
(the study storage must then be a database every worker reaches, not the local SQLite file).
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow
from prefect.futures import PrefectFuture, as_completed

from auditflow.core.config import load_config
from auditflow.core.data import ingest, make_splits
from auditflow.core.paths import cache_dir
from auditflow.core.tracking import TrackingRef
from auditflow.models.tuning.plan import plan_tuning
from auditflow.models.tuning.study import StudyDriver, TrialSpec
from auditflow.tasks.ingest import ingest_data
from auditflow.tasks.run import close_run
from auditflow.tasks.tune import StudySummary, TrialOutcome, open_study_run, run_trial, summarise_study

log = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3  # trials that raise one after another before the study stops


def _record(driver: StudyDriver, spec: TrialSpec, future: PrefectFuture[TrialOutcome]) -> Exception | None:
    """Tell the study how trial `spec` ended; returns the error of a trial that raised."""
    try:
        outcome = future.result()
    except Exception as err:  # a crashed trial fails alone; its MLflow run holds the traceback
        log.warning("trial %d failed: %s: %s", spec.number, type(err).__name__, err)
        driver.tell(spec.number, None, error=f"{type(err).__name__}: {err}")
        return err
    driver.tell(spec.number, outcome.scores, pruned=outcome.state == "pruned", attrs={"mlflow_run_id": outcome.run_id})
    return None


def _run_trials(driver: StudyDriver, ref: TrackingRef, snapshot: str, workdir: str, parallel: int) -> int:
    """Keep `parallel` trials in flight until the study has enough; returns trials started here."""
    running: dict[PrefectFuture[TrialOutcome], TrialSpec] = {}
    started = failures = 0
    while True:
        while len(running) < parallel and (spec := driver.ask()) is not None:
            running[run_trial.submit(ref, spec, driver.plan.base, snapshot, workdir)] = spec
            started += 1
        if not running:
            return started
        done = next(as_completed(list(running)))
        error = _record(driver, running.pop(done), done)
        failures = failures + 1 if error is not None else 0
        if error is not None and failures >= MAX_FAILURES_IN_A_ROW:
            for future, spec in running.items():  # let the trials in flight end, and record them
                _record(driver, spec, future)
            raise error


@flow(name="auditflow-tune")
def tune_study(
    profile: str = "quick",
    data: str = "cifar10",
    trials: int = 20,
    overrides: list[str] | None = None,
    space: str | None = None,
    study: str | None = None,
    objective: str = "accuracy",
    min_worst_recall: float = 0.0,
    time_budget_min: float | None = None,
    storage: str | None = None,
    parallel: int = 1,
    out: str | None = None,
    workdir: str = ".",
) -> StudySummary:
    """Search `space` (a shipped name or YAML path) around profile + overrides until the study
    holds `trials` finished trials, and write the chosen configuration as a profile YAML
    (`out`, default `WORKDIR/tuned-STUDY.yaml`). Running it again with the same study name
    resumes the study."""
    cfg = load_config(profile, overrides or [])
    # the training split's size, from the snapshot the ingest task then reuses: the space's batch
    # sizes must fit it, as the pipeline refuses a batch larger than the split
    n_train = len(make_splits(ingest(data, cfg.data, cache_dir(workdir)), cfg.data).train_y)
    plan = plan_tuning(
        cfg,
        data,
        trials=trials,
        parallel=parallel,
        space=space,
        objective=objective,
        min_worst_recall=min_worst_recall,
        time_budget_min=time_budget_min,
        study=study,
        storage=storage,
        workdir=workdir,
        n_train=n_train,
    )
    Path(workdir).mkdir(parents=True, exist_ok=True)  # the default study storage lives there
    driver = StudyDriver(plan)
    ref = open_study_run(plan, cfg, driver.study.user_attrs.get("mlflow_run_id"), workdir)
    driver.study.set_user_attr("mlflow_run_id", ref.run_id)
    try:
        snap = ingest_data(ref, data, cfg.data, workdir)
        started = _run_trials(driver, ref, snap.snapshot, workdir, parallel)
        log.info("study %s: %d trials run now, %d finished in all", plan.name, started, driver.finished())
        summary = summarise_study(ref, plan, out or str(Path(workdir) / f"tuned-{plan.name}.yaml"))
    except BaseException as err:
        close_run(ref, err)
        raise
    close_run(ref)
    return summary
