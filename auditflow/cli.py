"""The `auditflow` command line: parse the options, call a flow or a service, render the result.

`run` validates the configuration before anything starts, then runs the Prefect flow
in-process (Prefect's ephemeral API unless $PREFECT_API_URL points at a server); `report`
rebuilds a past run's report from MLflow alone; `serve` runs the flow on a cron schedule
against a Prefect server it finds ($PREFECT_API_URL) or starts; `ui` opens the MLflow UI;
`gate`, `promote` and `models` call the release services (`auditflow.audits.release`) and
`compare` the paired comparison of two runs (`auditflow.audits.comparison`), with no Prefect
server. Process supervision (servers, interrupts, logging, the store check) lives in
`auditflow.supervise`, the tables in `auditflow.render`. User errors print one red line and exit with code 2.
"""

from __future__ import annotations

import logging
import os
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from auditflow import render, supervise
from auditflow.core.config import available_profiles, load_config, sections_config
from auditflow.core.errors import AuditflowError
from auditflow.core.paths import CACHE_DIR, cache_dir, log_file, reports_dir
from auditflow.core.tracking import preflight, resolve_tracking_uri

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Train, audit, export and benchmark image classifiers."
)
console = Console(stderr=True, soft_wrap=True)  # one error, one line
log = logging.getLogger(__name__)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Profile name or path to a YAML file.")]
DataOpt = Annotated[
    str, typer.Option("--data", "-d", help="Image-folder dir, .tar/.tar.gz/.zip archive, or 'cifar10[:ROOT]'.")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override, e.g. train.epochs=3 (repeatable).")]
WorkdirOpt = Annotated[Path, typer.Option("--workdir", "-w", help="Folder for the MLflow store, artifacts and caches.")]
TrackingUriOpt = Annotated[
    str | None, typer.Option(help="MLflow URI; default $MLFLOW_TRACKING_URI or the workdir store.")
]
Variant = Enum("Variant", {"adjusted": "adjusted"}, type=str)  # `promote --variant`: the file that may ship instead
# `serve --overlap`: a run due while the last runs waits (Prefect's ENQUEUE) or is cancelled (CANCEL_NEW)
Overlap = Enum("Overlap", {"queue": "queue", "skip": "skip"}, type=str)
ReleaseSetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Release policy override, e.g. release.max_accuracy_drop=0.02 (repeatable)."),
]


def _fail(err: BaseException, logs: Path | None = None) -> typer.Exit:
    """One red line (naming the full log, when there is one) and exit code 2."""
    console.print(f"[bold red]error:[/] {err}" + (f" (log: {logs})" if logs else ""))
    return typer.Exit(code=2)


@app.command()
def run(
    profile: ProfileOpt = "quick",
    data: DataOpt = "cifar10",
    overrides: SetOpt = None,
    workdir: WorkdirOpt = Path("."),
    run_name: Annotated[str | None, typer.Option(help="MLflow run name.")] = None,
) -> None:
    """Run the whole pipeline once and print where its results are."""
    try:
        cfg = load_config(profile, overrides or [])  # fail on bad config before any work
        supervise.check_inputs(data, workdir)
        uri = resolve_tracking_uri(cfg.tracking, workdir)
        preflight(uri)  # an unreachable, unwritable or damaged store: now, not after minutes of retries
        supervise.prefect_ready()  # Prefect's settings and local state, before any work
    except AuditflowError as err:
        raise _fail(err) from err
    from auditflow.flows.pipeline import audit_pipeline  # its hooks end the MLflow runs it leaves RUNNING

    console.print(f"[bold]auditflow[/] profile [cyan]{cfg.profile}[/], data [cyan]{data}[/], tracking [cyan]{uri}[/]")
    logs = log_file(workdir, time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    start = time.perf_counter()
    with supervise.run_logging(logs), supervise.interrupts() as received:
        try:
            supervise.read_data(data, cfg.data, workdir)  # a bad source named in seconds, before any server
            with supervise.temporary_api(uri=uri, experiment=cfg.tracking.experiment, logs=logs, console=console):
                result = audit_pipeline(
                    profile=profile, data=data, overrides=list(overrides or []), workdir=str(workdir), run_name=run_name
                )
        except KeyboardInterrupt as err:
            raise typer.Exit(code=supervise.interrupted(received, err, logs=logs, console=console)) from err
        except Exception as err:
            log.error("the run failed", exc_info=err)
            user = supervise.find_user_error(err, workdir)
            if user is not None:
                supervise.last_word()
                raise _fail(user, logs) from err
            raise
    render.run_summary(result, time.perf_counter() - start, workdir)


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="MLflow id of a pipeline (parent) run.")],
    workdir: WorkdirOpt = Path("."),
    out: Annotated[Path | None, typer.Option(help=f"Output folder; default {CACHE_DIR}/reports/RUN_ID.")] = None,
    tracking_uri: TrackingUriOpt = None,
) -> None:
    """Rebuild the audit report of a past run from the MLflow store alone."""
    from auditflow.audits.report import build_report
    from auditflow.core.tracking import Tracker

    try:
        tracker = Tracker(supervise.existing_store(tracking_uri, workdir))
        record = tracker.load_run(run_id)
        files = build_report(record, out or reports_dir(workdir, run_id))
    except AuditflowError as err:
        raise _fail(err) from err
    render.report(record, files, tracker.run_url(record, record.config.get("tracking", {}).get("ui_url")))


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 3 * * *'.")] = "0 3 * * *",
    profile: ProfileOpt = "quick",
    data: DataOpt = "cifar10",
    overrides: SetOpt = None,
    workdir: WorkdirOpt = Path("."),
    name: Annotated[str, typer.Option(help="Deployment name.")] = "auditflow-scheduled",
    port: Annotated[int, typer.Option(help="Port for a Prefect server started here.")] = 4200,
    overlap: Annotated[Overlap, typer.Option(help="A run due while the last runs: queue it, or skip it.")] = "queue",
) -> None:
    """Serve the pipeline on a cron schedule (needs a Prefect server; starts one if none is set).
    One run at a time: runs that would overlap compete for the same cores, GPU and work folder."""
    try:
        load_config(profile, overrides or [])
        supervise.check_cron(cron)
    except AuditflowError as err:
        raise _fail(err) from err
    supervise.prefect_env()
    supervise.exit_on_sigterm()  # so that `finally` stops the server started below
    server = None
    try:
        api_url, server = supervise.api_for_serving(port, console)
        overlap = Overlap(overlap)
        console.print(f"serving [cyan]{name}[/] on cron [cyan]{cron}[/] via {api_url}, one run at a time")
        console.print(f"a run due while the last one runs is {'queued' if overlap == 'queue' else 'skipped'}")
        from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

        from auditflow.flows.pipeline import audit_pipeline

        strategy = ConcurrencyLimitStrategy.ENQUEUE if overlap == "queue" else ConcurrencyLimitStrategy.CANCEL_NEW

        source = data if data.startswith("cifar10") else str(Path(data).resolve())  # runs start elsewhere
        parameters = {"profile": profile, "data": source, "overrides": list(overrides or [])}
        audit_pipeline.serve(
            name=name,
            cron=cron,
            parameters=parameters | {"workdir": str(workdir.resolve())},
            global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=strategy),
        )
    except AuditflowError as err:
        raise _fail(err) from err
    finally:
        supervise.stop_server(server)


@app.command()
def ui(
    workdir: WorkdirOpt = Path("."),
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the local tracking store (same as `mlflow ui --backend-store-uri ...`)."""
    try:
        cmd = supervise.mlflow_ui_command(workdir, host=host, port=port)
    except AuditflowError as err:
        raise _fail(err) from err
    console.print(" ".join(cmd))
    os.execv(cmd[0], cmd)


@app.command("bench-train")
def bench_train_cmd(
    profile: ProfileOpt = "quick",
    data: DataOpt = "cifar10",
    overrides: SetOpt = None,
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1 to train.")] = 3,
    baseline: Annotated[str | None, typer.Option(help="Profile run once (seed 0) for ratios; '' = none.")] = "tutorial",
    against: Annotated[
        list[str] | None,
        typer.Option(help="Also train the profile with this override on the same seeds (repeatable)."),
    ] = None,
    equal_epochs: Annotated[bool, typer.Option(help="--against runs the profile's epochs, no budget.")] = False,
    overhead: Annotated[bool, typer.Option(help="Also run the train task in a flow and report its overhead.")] = False,
    workdir: WorkdirOpt = Path("."),
    out: Annotated[Path | None, typer.Option(help="Write all figures to this JSON file.")] = None,
) -> None:
    """Benchmark training speed and accuracy of a profile over seeds (direct `fit` calls;
    only `--overhead` runs a flow and tracks it)."""
    import json

    from auditflow.core.data import ingest
    from auditflow.models.training.benchseeds import against_config, bench_seeds, check_seeds

    try:
        cfg = load_config(profile, overrides or [])
        base_cfg = load_config(baseline) if baseline else None
        other = against_config(profile, [*(overrides or []), *against], " ".join(against)) if against else None
        check_seeds(seeds, equal_epochs=equal_epochs, against=bool(against))
        snapshot = ingest(data, cfg.data, cache_dir(workdir))
    except AuditflowError as err:
        raise _fail(err) from err
    out_console = render.wide(150)
    handler = supervise.log_to_console(console)
    result = bench_seeds(
        snapshot,
        cfg,
        seeds=seeds,
        baseline=base_cfg,
        against=other,
        equal_epochs=equal_epochs,
        on_seed=lambda seed: console.print(f"[bold]{cfg.profile}[/] seed {seed} ..."),
    )
    render.bench_train(result, data, out_console)
    report = result.report()
    if overhead:
        supervise.stop_logging_to_console(handler)  # Prefect's console handler takes over in the flow
        supervise.prefect_env()
        from auditflow.flows.bench import overhead_split, train_overhead

        flow_result = train_overhead(profile=profile, data=data, overrides=list(overrides or []), workdir=str(workdir))
        report["overhead"] = overhead_split(result.rows[0], flow_result)
        render.overhead(report["overhead"], out_console)
    if out:
        out.write_text(json.dumps(report, indent=2))


@app.command()
def profiles() -> None:
    """List the shipped profiles."""
    for name in available_profiles():
        Console().print(name)


@app.command()
def config(profile: ProfileOpt = "quick", overrides: SetOpt = None) -> None:
    """Print the resolved configuration of a profile plus overrides, as YAML."""
    import yaml

    try:
        cfg = load_config(profile, overrides or [])
    except AuditflowError as err:
        raise _fail(err) from err
    # plain: rich would wrap long lines at the terminal's width and break the YAML
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)


@app.command()
def tune(
    profile: ProfileOpt = "quick",
    data: DataOpt = "cifar10",
    trials: Annotated[int, typer.Option(help="Finished (complete or pruned) trials the study should hold.")] = 20,
    time_budget: Annotated[float | None, typer.Option(help="Minutes after which no new trial starts.")] = None,
    space: Annotated[str | None, typer.Option(help="Search-space YAML file, or a shipped space name.")] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Study name; the same name resumes. Default: from profile, overrides, space, data."),
    ] = None,
    objective: Annotated[
        str, typer.Option(help="'accuracy' or 'accuracy+worst-recall' (two objectives).")
    ] = "accuracy",
    min_worst_recall: Annotated[
        float, typer.Option(help="Choose the best accuracy among trials whose worst-class val. recall is >= this.")
    ] = 0.0,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL; default $AUDITFLOW_STUDY_STORAGE or SQLite in the workdir.")
    ] = None,
    parallel: Annotated[int, typer.Option(help="Trials run at once.")] = 1,
    dask: Annotated[
        str | None, typer.Option(envvar="AUDITFLOW_DASK_ADDRESS", help="Dask scheduler address: trials run there.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write the tuned profile; default WORKDIR/tuned-STUDY.yaml.")
    ] = None,
    overrides: SetOpt = None,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Search hyperparameters with Optuna (TPE, pruning), every trial a Prefect task and an MLflow
    run, and write the chosen configuration as a profile YAML for `auditflow run --profile`."""
    from auditflow.models.tuning.plan import plan_tuning

    study_args = dict(
        trials=trials,
        parallel=parallel,
        space=space,
        objective=objective,
        min_worst_recall=min_worst_recall,
        time_budget_min=time_budget,
        storage=storage,
    )
    try:
        cfg = load_config(profile, overrides or [])
        plan = plan_tuning(cfg, data, study=study, workdir=workdir, **study_args)
        supervise.check_inputs(data, workdir)
        supervise.prefect_ready()
    except AuditflowError as err:
        raise _fail(err) from err
    from auditflow.flows.runners import task_runner
    from auditflow.flows.tune import tune_study

    console.print(
        f"[bold]auditflow tune[/] study [cyan]{plan.name}[/] ({plan.objective}, {trials} trials), "
        f"storage [cyan]{plan.storage}[/], tracking [cyan]{resolve_tracking_uri(cfg.tracking, workdir)}[/]"
    )
    flow = tune_study.with_options(task_runner=task_runner(parallel, dask))
    try:
        result = flow(
            profile=profile,
            data=data,
            overrides=list(overrides or []),
            study=plan.name,
            out=str(out) if out else None,
            workdir=str(workdir),
            **study_args,
        )
    except Exception as err:
        user = supervise.find_user_error(err, workdir)
        if user is not None:
            raise _fail(user) from err
        raise
    render.study(result, data, workdir)


@app.command()
def bench(
    run_id: Annotated[str, typer.Argument(help="MLflow id of a finished pipeline (parent) run.")],
    workdir: WorkdirOpt = Path("."),
    tracking_uri: TrackingUriOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Export and benchmark a past run's model again (no retraining), logged to that run.
    --set takes export.* and benchmark.* fields, e.g. --set benchmark.batch_sizes='[1,32,256]'."""
    try:  # the defaults of today's code, not the past run's (older) export/benchmark settings
        cfg = sections_config(overrides or [], ("export", "benchmark"), command="bench")
        uri = supervise.existing_store(tracking_uri, workdir)
        from auditflow.tasks.export import bench_past_run

        supervise.log_to_console(console)
        result = bench_past_run(uri, run_id, str(workdir), cfg.export, cfg.benchmark)
    except AuditflowError as err:
        raise _fail(err) from err
    render.bench(result.summary, run_id, workdir)


@app.command()
def gate(
    run_id: Annotated[str, typer.Argument(help="MLflow id of a pipeline (parent) run.")],
    workdir: WorkdirOpt = Path("."),
    tracking_uri: TrackingUriOpt = None,
    overrides: ReleaseSetOpt = None,
    log: Annotated[bool, typer.Option("--log", help="Store the record as the run's release/gate.json.")] = False,
) -> None:
    """Re-check a run against the release gate and the current champion; moves no alias.
    Exit code 0 when it would pass, 1 when it would not."""
    from auditflow.audits.release import gate_run

    try:
        uri = supervise.existing_store(tracking_uri, workdir)
        outcome = gate_run(uri, run_id, overrides or [], log_record=log)
    except AuditflowError as err:
        raise _fail(err) from err
    render.gate(outcome, console)
    if outcome.verdict != "pass":
        raise typer.Exit(code=1)


@app.command()
def promote(
    run_id: Annotated[str, typer.Argument(help="MLflow id of a pipeline (parent) run.")],
    workdir: WorkdirOpt = Path("."),
    tracking_uri: TrackingUriOpt = None,
    overrides: ReleaseSetOpt = None,
    waive: Annotated[
        list[str] | None,
        typer.Option(help="Accept this inconclusive check (a verdict group, e.g. fairness) first (repeatable)."),
    ] = None,
    reason: Annotated[str, typer.Option(help="Why the waived checks are acceptable (with --waive).")] = "",
    by: Annotated[str, typer.Option(help="Who accepts them (with --waive); default: the login name.")] = "",
    variant: Annotated[Variant | None, typer.Option(help="adjusted: the logit-adjusted ONNX file instead.")] = None,
) -> None:
    """Make a run's model `champion`, after the same release gate the pipeline applies
    (registering it first if it has no version); refused, with the reason, when the gate fails.
    --waive records who accepted an inconclusive check and why (MLflow tags release/waiver/CHECK and
    release/waivers.json); the gate honours it, the audit verdicts stay as they are."""
    from auditflow.audits.release import promote_run, rebuild_report

    try:
        uri = supervise.existing_store(tracking_uri, workdir)
        shipped = variant.value if variant else None
        result = promote_run(uri, run_id, overrides or [], waive=waive or [], reason=reason, by=by, variant=shipped)
        if result.waivers:  # the report's sign-off block shows them
            render.waived(result.waivers, rebuild_report(uri, run_id, reports_dir(workdir, run_id)))
        if not result.promoted:
            raise AuditflowError(result.refusal(run_id))
    except AuditflowError as err:
        raise _fail(err) from err
    render.promotion(result)


@app.command()
def compare(
    run_a: Annotated[str, typer.Argument(help="MLflow id of the pipeline run to compare with (A: the champion).")],
    run_b: Annotated[str, typer.Argument(help="MLflow id of the run compared (B), where the comparison is logged.")],
    workdir: WorkdirOpt = Path("."),
    tracking_uri: TrackingUriOpt = None,
    confidence: Annotated[float, typer.Option(min=0.5, max=0.9999, help="Two-sided level of the intervals.")] = 0.95,
) -> None:
    """Paired tests of run B against run A on the same test split: McNemar for accuracy, per-class
    recall, DeLong per attack, every verdict. Logged on B as compare/vs_RUN_A.md, .html, .json."""
    from auditflow.audits.comparison import compare_runs

    try:
        found = compare_runs(supervise.existing_store(tracking_uri, workdir), run_a, run_b, confidence=confidence)
    except AuditflowError as err:
        raise _fail(err) from err
    render.comparison(found)


@app.command()
def models(
    workdir: WorkdirOpt = Path("."),
    tracking_uri: TrackingUriOpt = None,
    model_name: Annotated[str | None, typer.Option(help="Registered model; default every one in the store.")] = None,
) -> None:
    """List registered model versions with their aliases, release status and verdicts."""
    from auditflow.audits.release import list_models

    try:
        uri = supervise.existing_store(tracking_uri, workdir)
        found = list_models(uri, model_name)
    except AuditflowError as err:
        raise _fail(err) from err
    render.models(found, uri, model_name)


if __name__ == "__main__":
    app()
