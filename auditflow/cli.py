"""The `auditflow` command line.

`run` validates the configuration before anything starts, then runs the Prefect flow
in-process (Prefect's ephemeral API unless $PREFECT_API_URL points at a server); `report`
rebuilds a past run's report from MLflow alone; `serve` runs the flow on a cron schedule
against a Prefect server it finds ($PREFECT_API_URL) or starts; `ui` opens the MLflow UI.
User errors print one red line and exit with code 2.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from auditflow.core.config import available_profiles, load_config
from auditflow.core.errors import AuditflowError
from auditflow.core.paths import ARTIFACT_DIR, CACHE_DIR, DB_NAME, cache_dir, log_file, reports_dir
from auditflow.core.tracking import end_own_runs, preflight, resolve_tracking_uri

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Train, audit, export and benchmark image classifiers."
)
console = Console(stderr=True, soft_wrap=True)  # one error, one line
# Compute modules log with `logging`; Prefect shows these loggers in the terminal and its UI.
EXTRA_LOGGERS = "auditflow"
log = logging.getLogger(__name__)
INTERRUPTED = 128  # + the signal's number: the exit code of a run stopped by Ctrl-C (130) or SIGTERM (143)
# Error records that stay off the terminal (the log file keeps them, tracebacks included): the
# CLI prints the one line that matters, and Prefect's run loggers would print a traceback each.
QUIET_ERRORS = ("prefect.flow_runs", "prefect.task_runs", __name__)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="Profile name or path to a YAML file.")]
DataOpt = Annotated[
    str, typer.Option("--data", "-d", help="Image-folder dir, .tar/.tar.gz/.zip archive, or 'cifar10[:ROOT]'.")
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override, e.g. train.epochs=3 (repeatable).")]
WorkdirOpt = Annotated[Path, typer.Option("--workdir", "-w", help="Folder for the MLflow store, artifacts and caches.")]


def _fail(err: BaseException, logs: Path | None = None) -> typer.Exit:
    """One red line (naming the full log, when there is one) and exit code 2."""
    console.print(f"[bold red]error:[/] {err}" + (f" (log: {logs})" if logs else ""))
    return typer.Exit(code=2)


def _prefect_env() -> None:
    """Settings read when Prefect is imported: show our loggers, no telemetry."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", EXTRA_LOGGERS)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # bars between the log lines
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # The temporary API server gets 20 s to start by default; on 2 busy cores it can take longer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # said at import when the home cannot be made; `check_prefect_home` says it in one line instead
    warnings.filterwarnings("ignore", message="Failed to create the Prefect home directory", category=UserWarning)
    for name in EXTRA_LOGGERS.split(","):
        logging.getLogger(name).setLevel(logging.INFO)


def _prefect_ready(server_here: bool = False) -> None:
    """Prefect's settings in the environment, then its local home and database checked (one
    `error:` line and exit 2 when they could not be used), before any work. `server_here`: a
    Prefect server is about to be started on them although $PREFECT_API_URL is set."""
    _prefect_env()
    from auditflow.flows.preflight import check_prefect_home

    try:
        check_prefect_home(server_here)
    except AuditflowError as err:
        raise _fail(err) from err


def _log_to_console() -> logging.Handler:
    """Progress of compute code (epochs, decoding) on stderr, for commands that run no flow."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False)
    for name in EXTRA_LOGGERS.split(","):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    return handler


def _check_inputs(data: str, workdir: Path) -> None:
    """Before any work: the data source exists and the work folder can be made and written."""
    if not (data == "cifar10" or data.startswith("cifar10:")) and not Path(data).exists():
        raise AuditflowError(f"data path {data!r} does not exist")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file in the way, no permission
        raise AuditflowError(f"--workdir {str(workdir)!r} cannot be used as a folder: {err.strerror}") from err
    for folder in (workdir, cache_dir(workdir)):
        try:  # a real write: root ignores mode bits, a read-only mount does not
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".auditflow-write-check-"):
                pass
        except FileNotFoundError:
            continue  # the cache folder is made on first use, inside a folder found writable
        except OSError as err:
            raise AuditflowError(f"--workdir folder {str(folder)!r} is not writable: {err.strerror}") from err


class _WithoutTraceback(logging.Formatter):
    """A log record as the terminal shows it: the message without its traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _for_terminal(record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and record.name.startswith(QUIET_ERRORS))


@contextlib.contextmanager
def _run_logging(path: Path) -> Iterator[None]:
    """During a flow run: every record in full in the log file `path`; on the terminal,
    progress and warnings without tracebacks, and no error records of flow and task runs."""
    from prefect.logging.handlers import PrefectConsoleHandler

    root = logging.getLogger()
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    terminals = [h for h in root.handlers if isinstance(h, PrefectConsoleHandler)]
    saved = [h.formatter for h in terminals]
    root.addHandler(to_file)
    for handler in terminals:
        handler.setFormatter(_WithoutTraceback(handler.formatter))
        handler.addFilter(_for_terminal)
    try:
        yield
    finally:
        for handler, formatter in zip(terminals, saved, strict=True):
            handler.setFormatter(formatter)
            handler.removeFilter(_for_terminal)
        root.removeHandler(to_file)
        to_file.close()


def _start_temporary_api() -> subprocess.Popen[Any] | None:
    """Start Prefect's temporary API server (the one Prefect starts on first use when no
    server is configured) with SIGINT blocked in it. A Ctrl-C reaches the terminal's whole
    process group; without this the server died of it too, and the flow spent minutes
    retrying calls to it before failing with a connection traceback. The server process, or
    None when a Prefect server is configured."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    server = SubprocessASGIServer()  # Prefect's own calls get this same instance, already started
    failure: list[BaseException] = []

    def start() -> None:
        # a thread's signal mask is inherited by the process it starts, and kept across exec
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server.start()
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=start, name="prefect-api-start", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return server.server_process


class _ServerWatch(threading.Thread):
    """Calls `on_exit(code)` once if the temporary Prefect API server exits before `stop()`."""

    def __init__(self, server: subprocess.Popen[Any], on_exit: Callable[[int], None]) -> None:
        super().__init__(name="prefect-api-watch", daemon=True)
        self.server, self.on_exit, self.stopped = server, on_exit, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.2):
            if self.server.poll() is not None:
                self.on_exit(self.server.returncode)
                return

    def stop(self) -> None:
        self.stopped.set()


def _exit_when_server_dies(server: subprocess.Popen[Any], uri: str, experiment: str, logs: Path) -> _ServerWatch:
    """Watch the temporary Prefect API server; if it dies mid-run, end this process's MLflow
    runs FAILED with the reason, print one line and exit 2 at once. Failing fast is the choice:
    the flow engine would retry its calls to the dead server for minutes and then fail with a
    traceback, and a rerun loses at most the epoch in progress (checkpoints are written
    atomically; a finished training is reused)."""

    def died(code: int) -> None:
        reason = f"the temporary Prefect API server (pid {server.pid}) exited with code {code} mid-run"
        log.error("%s; ending this run's MLflow runs FAILED and exiting", reason)
        with contextlib.suppress(Exception):  # the line and the exit matter more
            end_own_runs(uri, experiment, reason)
        console.print(
            f"[bold red]error:[/] {reason}; the run stopped (its MLflow runs are marked FAILED): rerun the same "
            f"command to resume (log: {logs})"
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(2)  # from this thread: the main thread is inside the flow engine's retries

    watch = _ServerWatch(server, died)
    watch.start()
    return watch


@contextlib.contextmanager
def _interrupts() -> Iterator[list[int]]:
    """SIGINT and SIGTERM raise KeyboardInterrupt (so the flow ends its runs KILLED either way);
    the list holds the signal received."""
    received: list[int] = []

    def interrupt(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _disk_full(err: OSError, workdir: Path) -> AuditflowError:
    """A full disk is the environment's fault, not a bug: one line naming where it was writing."""
    where = f" writing {err.filename}" if err.filename else f" under --workdir {str(workdir)!r}"
    return AuditflowError(
        f"no space left on the device{where} ({err.strerror}); free space there or use a --workdir on another "
        "disk, then rerun the same command: what was written is consistent and finished work is reused"
    )


def _last_word() -> None:
    """Before the run's final line, silence Prefect's terminal handlers, whichever logger holds
    them: its run loggers write from their own threads, and it logs the temporary API server's
    stop at exit, both after that line. For good: the process ends with the line; the log file
    keeps every record."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [
        logging.getLogger(),
        *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL + 1)
    with contextlib.suppress(ValueError, OSError):  # a stream already closed (an in-process test runner's)
        sys.stderr.flush()


def _find_user_error(err: BaseException, workdir: Path = Path(".")) -> AuditflowError | None:
    """The user's or the environment's error behind `err` (its causes and contexts included)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, AuditflowError):
            return current
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return _disk_full(current, workdir)
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


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
        _check_inputs(data, workdir)
        uri = resolve_tracking_uri(cfg.tracking, workdir)
        preflight(uri)  # an unreachable, unwritable or damaged store: now, not after minutes of retries
    except AuditflowError as err:
        raise _fail(err) from err
    _prefect_ready()
    from auditflow.flows.pipeline import audit_pipeline

    console.print(f"[bold]auditflow[/] profile [cyan]{cfg.profile}[/], data [cyan]{data}[/], tracking [cyan]{uri}[/]")
    logs = log_file(workdir, time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
    start = time.perf_counter()
    flow = audit_pipeline  # its on_crashed / on_cancellation hooks end the MLflow runs it leaves RUNNING
    with _run_logging(logs), _interrupts() as received:
        try:
            server = _start_temporary_api()
            watch = _exit_when_server_dies(server, uri, cfg.tracking.experiment, logs) if server else None
            try:
                result = flow(
                    profile=profile, data=data, overrides=list(overrides or []), workdir=str(workdir), run_name=run_name
                )
            finally:
                if watch is not None:
                    watch.stop()
        except KeyboardInterrupt as err:
            signum = received[0] if received else signal.SIGINT
            log.error("interrupted by %s", signal.Signals(signum).name, exc_info=err)
            _last_word()
            console.print(
                f"[bold yellow]interrupted[/] ({signal.Signals(signum).name}): the run stopped and its MLflow runs "
                "end KILLED; rerun the same command to resume: finished stages are reused and unfinished training "
                f"goes on from its last finished epoch (log: {logs})"
            )
            raise typer.Exit(code=INTERRUPTED + signum) from err
        except Exception as err:
            log.error("the run failed", exc_info=err)
            user = _find_user_error(err, workdir)
            if user is not None:
                _last_word()
                raise _fail(user, logs) from err
            raise
    colour = {"pass": "green", "fail": "red"}.get(result.overall, "yellow")
    table = Table(title=f"auditflow run {result.run_id} ({time.perf_counter() - start:.0f} s)", show_header=False)
    table.add_row("overall verdict", f"[bold {colour}]{result.overall}[/] (MLflow tag verdict/overall)")
    shipped = f"{result.test_accuracy_no_tta:.2%} (ONNX, no test-time augmentation)"
    table.add_row("test accuracy, shipped model", shipped)
    if result.test_accuracy != result.test_accuracy_no_tta:
        table.add_row("test accuracy with TTA", f"{result.test_accuracy:.2%} (not shipped; the audits do not use it)")
    if result.learning != "pass":
        table.add_row("[bold red]MODEL DID NOT LEARN[/]", f"[red]{result.learning_message}[/]")
    table.add_row("fairness", f"{result.fairness} (worst-class recall {result.worst_class_recall:.3f})")
    tpr = "not stated" if result.privacy_tpr != result.privacy_tpr else f"{result.privacy_tpr:.4f}"
    tier = "" if result.privacy_tier == "reference" else "; loss tier only, see the report"
    table.add_row("privacy", f"{result.privacy} ({result.privacy_attack} attack TPR at low FPR {tpr}{tier})")
    table.add_row("release gate", f"{result.release} ({result.model_version}; `auditflow models` lists the versions)")
    out = Console()
    out.print(table)
    # paths and the link outside the table, never wrapped: a table cuts them with an ellipsis when
    # stdout is not a terminal (a scheduled run's log), and a user copies them
    paths = {"ONNX model": result.onnx_path, "report": result.report_html, "report PDF": result.report_pdf}
    for name, path in paths.items():
        if path:
            out.print(f"{name}: {path}", soft_wrap=True, markup=False, highlight=False)
    out.print(f"MLflow run: [link={result.run_url}]{result.run_url}[/link]", soft_wrap=True, highlight=False)
    if result.tracking_uri.startswith("sqlite:"):
        Console().print(f"Local store: serve it with [bold]auditflow ui --workdir {workdir}[/] and open the link")


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="MLflow id of a pipeline (parent) run.")],
    workdir: WorkdirOpt = Path("."),
    out: Annotated[Path | None, typer.Option(help=f"Output folder; default {CACHE_DIR}/reports/RUN_ID.")] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow URI; default $MLFLOW_TRACKING_URI or the workdir store.")
    ] = None,
) -> None:
    """Rebuild the audit report of a past run from the MLflow store alone."""
    from auditflow.audits.report import build_report
    from auditflow.core.config import TrackingConfig
    from auditflow.core.tracking import Tracker

    try:
        uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri), workdir)
        if uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise AuditflowError(f"no MLflow store at {uri}; pass --workdir or --tracking-uri")
        preflight(uri)
        record = Tracker(uri).load_run(run_id)
        files = build_report(record, out or reports_dir(workdir, run_id))
    except AuditflowError as err:
        raise _fail(err) from err
    from auditflow.audits.report import overall_verdict

    Console().print(
        f"overall verdict: {overall_verdict(record)}\nreport: {files.html}\nmarkdown: {files.markdown}\n"
        + (f"pdf: {files.pdf}\n" if files.pdf else f"{files.pdf_note}\n")
        + f"model card: {files.html.parent / 'model_card.html'}\ndatasheet: {files.html.parent / 'datasheet.html'}\n"
        + f"MLflow run: {Tracker(uri).run_url(record, record.config.get('tracking', {}).get('ui_url'))}"
    )


def _server_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="Cron schedule, e.g. '0 3 * * *'.")] = "0 3 * * *",
    profile: ProfileOpt = "quick",
    data: DataOpt = "cifar10",
    overrides: SetOpt = None,
    workdir: WorkdirOpt = Path("."),
    name: Annotated[str, typer.Option(help="Deployment name.")] = "auditflow-scheduled",
    port: Annotated[int, typer.Option(help="Port for a Prefect server started here.")] = 4200,
) -> None:
    """Serve the pipeline on a cron schedule (needs a Prefect server; starts one if none is set)."""
    from datetime import datetime

    from cronsim import CronSim, CronSimError  # ships with Prefect

    try:
        load_config(profile, overrides or [])
        try:
            CronSim(cron, datetime.now())
        except CronSimError as err:
            raise AuditflowError(f"invalid cron expression {cron!r}: {err}") from err
    except AuditflowError as err:
        raise _fail(err) from err
    _prefect_env()
    # A plain SIGTERM would skip `finally` and orphan the server started below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server: subprocess.Popen[bytes] | None = None
    try:
        api_url = os.environ.get("PREFECT_API_URL")
        if not api_url:
            api_url = f"http://127.0.0.1:{port}/api"
            # set before Prefect is first imported: it reads its settings once, and without the
            # URL the served runs would start a temporary server of their own on the same database
            os.environ["PREFECT_API_URL"] = api_url
            if not _server_healthy(api_url):
                _prefect_ready(server_here=True)  # the server started here uses PREFECT_HOME's database
                server = _start_prefect_server(api_url, port)
        console.print(f"serving [cyan]{name}[/] on cron [cyan]{cron}[/] via {api_url}")
        from auditflow.flows.pipeline import audit_pipeline

        source = data if data.startswith("cifar10") else str(Path(data).resolve())  # runs start elsewhere
        audit_pipeline.serve(
            name=name,
            cron=cron,
            parameters={
                "profile": profile,
                "data": source,
                "overrides": list(overrides or []),
                "workdir": str(workdir.resolve()),
            },
        )
    except AuditflowError as err:
        raise _fail(err) from err
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)


def _start_prefect_server(api_url: str, port: int) -> subprocess.Popen[bytes]:
    """`prefect server start` (SQLite under $PREFECT_HOME) in its own session; waits for health."""
    console.print(f"starting a Prefect server on 127.0.0.1:{port} (UI: http://127.0.0.1:{port})")
    prefect_bin = shutil.which("prefect") or str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(
        [prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)], start_new_session=True
    )
    try:
        for _ in range(120):
            if _server_healthy(api_url):
                return server
            if server.poll() is not None:
                raise AuditflowError(f"prefect server exited with code {server.returncode}")
            time.sleep(1)
        raise AuditflowError(f"prefect server did not answer at {api_url} within 120 s")
    except BaseException:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        raise


@app.command()
def ui(
    workdir: WorkdirOpt = Path("."),
    port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """Open the MLflow UI on the local tracking store (same as `mlflow ui --backend-store-uri ...`)."""
    db = (workdir / DB_NAME).resolve()
    if not db.is_file():
        raise _fail(AuditflowError(f"no MLflow store at {db}; run `auditflow run` first or pass --workdir"))
    cmd = [
        shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow")),
        "ui",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--default-artifact-root",
        str((workdir / ARTIFACT_DIR).resolve()),
        "--host",
        host,
        "--port",
        str(port),
    ]
    console.print(" ".join(cmd))
    os.execv(cmd[0], cmd)


@app.command("bench-train")
def bench_train_cmd(
    profile: ProfileOpt = "quick",
    data: DataOpt = "cifar10",
    overrides: SetOpt = None,
    seeds: Annotated[int, typer.Option(help="Seeds 0..N-1 to train.")] = 3,
    baseline: Annotated[
        str | None, typer.Option(help="Profile to run once (seed 0) for ratios; '' = none.")
    ] = "tutorial",
    overhead: Annotated[bool, typer.Option(help="Also run the train task in a flow and report its overhead.")] = False,
    workdir: WorkdirOpt = Path("."),
    out: Annotated[Path | None, typer.Option(help="Write all figures to this JSON file.")] = None,
) -> None:
    """Benchmark training speed and accuracy of a profile over seeds (direct `fit` calls;
    only `--overhead` runs a flow and tracks it)."""
    import json
    from dataclasses import asdict

    from auditflow.core.data import ingest
    from auditflow.models.training.benchtrain import bench_train, compare_to_baseline, summarise

    try:
        cfg = load_config(profile, overrides or [])
        base_cfg = load_config(baseline) if baseline else None
        if seeds < 1:
            raise AuditflowError(f"--seeds must be at least 1, got {seeds}")
        snapshot = ingest(data, cfg.data, cache_dir(workdir))
    except AuditflowError as err:
        raise _fail(err) from err
    out_console = Console(width=None if sys.stdout.isatty() else 150)
    handler = _log_to_console()
    rows = []
    for seed in range(seeds):
        console.print(f"[bold]{cfg.profile}[/] seed {seed} ...")
        rows.append(bench_train(snapshot, cfg, seed))
    base = bench_train(snapshot, base_cfg, 0) if base_cfg else None
    table = Table(title=f"bench-train: {cfg.profile} on {data}")
    columns = (
        "profile",
        "seed",
        "test acc",
        "epochs",
        "train s",
        "val s",
        "img/s",
        "MFLOP/img",
        "GFLOP/s",
        "of peak",
        "to target s",
        "kept",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows + ([base] if base else []):
        table.add_row(
            r.profile,
            str(r.seed),
            f"{r.test_accuracy:.2%}",
            str(r.epochs),
            f"{r.train_seconds:.1f}",
            f"{r.val_seconds:.1f}",
            f"{r.images_per_second:.0f}",
            f"{r.flops_per_image / 1e6:.1f}",
            f"{r.achieved_flops_per_second / 1e9:.1f}",
            f"{r.fraction_of_peak:.1%}",
            "-" if r.time_to_target_seconds is None else f"{r.time_to_target_seconds:.1f}",
            r.kept_weights,
        )
    out_console.print(table)
    for r in rows + ([base] if base else []):
        out_console.print(
            f"{r.profile} seed {r.seed}: {r.plan}; per-epoch validation {r.val_seconds:.1f} s "
            f"in all ({r.val_seconds / max(r.epochs, 1):.1f} s per epoch)"
        )
    summary = summarise(rows)
    out_console.print(
        f"{cfg.profile}: mean test accuracy {summary['accuracy_mean']:.2%} "
        f"(sd {summary['accuracy_std']:.2%}, n={seeds}); mean training {summary['train_seconds_mean']:.1f} s; "
        f"peak: {rows[0].peak_source}"
    )
    report: dict[str, object] = {"rows": [asdict(r) for r in rows], "summary": summary}
    if base:
        ratio = compare_to_baseline(summary, base)
        report |= {"baseline": asdict(base), "vs_baseline": ratio}
        errors = "" if ratio["error_ratio"] is None else f"{ratio['error_ratio']:.2f}x the error rate, "
        out_console.print(
            f"vs {base.profile}: {ratio['accuracy_points']:+.1f} accuracy points, {errors}"
            f"{ratio['train_time_ratio']:.1f}x the training time"
        )
    if overhead:
        for name in EXTRA_LOGGERS.split(","):  # Prefect's console handler takes over in the flow
            logging.getLogger(name).removeHandler(handler)
        _prefect_env()
        from auditflow.flows.bench import overhead_split, train_overhead

        flow_result = train_overhead(profile=profile, data=data, overrides=list(overrides or []), workdir=str(workdir))
        over = overhead_split(rows[0], flow_result)
        direct, outside = over["direct_wall_seconds"], over["outside_loop_extra_seconds"]
        report["overhead"] = over
        out_console.print(
            f"train task in a flow: {over['task_wall_seconds']:.1f} s vs direct fit {direct:.1f} s "
            f"(seed 0): overhead {over['overhead_fraction']:+.1%}; training loops "
            f"{over['train_seconds']:.1f} s vs {over['direct_train_seconds']:.1f} s; outside the loop "
            f"{outside:+.1f} s ({over['outside_loop_extra_fraction']:+.1%})"
        )
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
        typer.Option(help="Study name; the same name resumes. Default: from profile, overrides, space and data."),
    ] = None,
    objective: Annotated[
        str, typer.Option(help="'accuracy' or 'accuracy+worst-recall' (two objectives).")
    ] = "accuracy",
    min_worst_recall: Annotated[
        float,
        typer.Option(
            help="Choose the best accuracy among trials whose worst-class validation recall is at least this."
        ),
    ] = 0.0,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL; default $AUDITFLOW_STUDY_STORAGE or SQLite in the workdir.")
    ] = None,
    parallel: Annotated[int, typer.Option(help="Trials run at once.")] = 1,
    dask: Annotated[
        str | None,
        typer.Option(envvar="AUDITFLOW_DASK_ADDRESS", help="Dask scheduler address: run trials on that cluster."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write the tuned profile; default WORKDIR/tuned-STUDY.yaml.")
    ] = None,
    overrides: SetOpt = None,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Search hyperparameters with Optuna (TPE, pruning), every trial a Prefect task and an MLflow
    run, and write the chosen configuration as a profile YAML for `auditflow run --profile`."""
    from auditflow.models.tuning.space import load_space, plan_study

    try:
        cfg = load_config(profile, overrides or [])
        if parallel < 1:
            raise AuditflowError(f"--parallel must be at least 1, got {parallel}")
        if trials < 1:
            raise AuditflowError(f"--trials must be at least 1, got {trials}")
        plan = plan_study(
            cfg,
            load_space(space),
            data,
            trials,
            objective=objective,
            min_worst_recall=min_worst_recall,
            time_budget_min=time_budget,
            name=study,
            storage=storage,
            workdir=workdir,
        )
        _check_inputs(data, workdir)
    except AuditflowError as err:
        raise _fail(err) from err
    _prefect_ready()
    from auditflow.flows.runners import task_runner
    from auditflow.flows.tune import tune_study

    console.print(
        f"[bold]auditflow tune[/] study [cyan]{plan.name}[/] ({plan.objective}, {trials} trials), "
        f"storage [cyan]{plan.storage}[/], tracking [cyan]{resolve_tracking_uri(cfg.tracking, workdir)}[/]"
    )
    try:
        result = tune_study.with_options(task_runner=task_runner(parallel, dask))(
            profile=profile,
            data=data,
            trials=trials,
            overrides=list(overrides or []),
            space=space,
            study=plan.name,
            objective=objective,
            min_worst_recall=min_worst_recall,
            time_budget_min=time_budget,
            storage=storage,
            parallel=parallel,
            out=str(out) if out else None,
            workdir=str(workdir),
        )
    except Exception as err:
        user = _find_user_error(err, workdir)
        if user is not None:
            raise _fail(user) from err
        raise
    out_console = Console(width=None if sys.stdout.isatty() else 150)
    front = Table(title=f"Pareto front (validation accuracy vs worst-class recall) of study {result.study}")
    for col in ("trial", "accuracy", "worst recall", "parameters"):
        front.add_column(col, justify="left" if col == "parameters" else "right")
    for row in result.front:
        values = (f"{k}={row[k]:.4g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in result.params)
        front.add_row(
            f"{row['trial']}{' *' if row['trial'] == result.chosen_trial else ''}",
            f"{row['val_accuracy']:.2%}",
            f"{row['worst_class_recall']:.3f}",
            " ".join(values),
        )
    out_console.print(front)
    table = Table(title=f"study {result.study} (MLflow run {result.run_id})", show_header=False)
    table.add_row("trials", ", ".join(f"{n} {state}" for state, n in sorted(result.states.items())))
    table.add_row(
        "chosen trial",
        f"{result.chosen_trial}: {result.reason}"
        if result.rule_met
        else f"[red]{result.chosen_trial}: {result.reason}[/]",
    )
    table.add_row("validation accuracy", f"{result.val_accuracy:.2%}")
    table.add_row("worst-class recall", f"{result.worst_class_recall:.3f}")
    table.add_row("tuned profile", result.profile_path)
    table.add_row("MLflow", result.tracking_uri)
    out_console.print(table)
    out_console.print(
        f"Run it: [bold]auditflow run --profile {result.profile_path} --data {data} --workdir {workdir}[/]"
    )


@app.command()
def bench(
    run_id: Annotated[str, typer.Argument(help="MLflow id of a finished pipeline (parent) run.")],
    workdir: WorkdirOpt = Path("."),
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow URI; default $MLFLOW_TRACKING_URI or the workdir store.")
    ] = None,
    overrides: SetOpt = None,
) -> None:
    """Export and benchmark a past run's model again (no retraining), logged to that run.
    --set takes export.* and benchmark.* fields, e.g. --set benchmark.batch_sizes='[1,32,256]'."""
    from auditflow.core.config import TrackingConfig, apply_override, build_config

    try:
        raw: dict = {}  # the defaults of today's code, not the past run's (older) export/benchmark settings
        for override in overrides or []:
            if not override.strip().startswith(("export.", "benchmark.")):
                raise AuditflowError(f"--set {override!r}: bench takes only export.* and benchmark.* overrides")
            apply_override(raw, override)
        cfg = build_config(raw)
        uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri), workdir)
        if uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise AuditflowError(f"no MLflow store at {uri}; pass --workdir or --tracking-uri")
        preflight(uri)
        from auditflow.tasks.export import bench_past_run

        _log_to_console()
        result = bench_past_run(uri, run_id, str(workdir), cfg.export, cfg.benchmark)
    except AuditflowError as err:
        raise _fail(err) from err
    summary = result.summary
    table = Table(title=f"bench {run_id}: {summary.get('device', '')}")
    for col in ("backend", "batch", "p50 ms", "p99 ms", "images/s", "vs eager", "of peak", "accuracy"):
        table.add_column(col, justify="right")
    for r in summary.get("rows", []):
        table.add_row(
            r["backend"],
            str(r["batch_size"]),
            f"{r['p50_ms']:.2f}",
            f"{r['p99_ms']:.2f}",
            f"{r['images_per_second']:.0f}",
            f"{r['speedup_vs_eager']:.2f}x",
            f"{r['fraction_of_peak']:.1%}",
            r["verdict"],
        )
    out = Console(width=None if sys.stdout.isatty() else 150)
    out.print(table)
    for device, rec in summary.get("recommendation", {}).items():
        for target, choice in rec.items():
            out.print(f"{device}, {target} target: [bold]{choice['backend']}[/] ({choice['reason']})")
    out.print(f"Rebuild the report with: auditflow report {run_id} --workdir {workdir}")


TrackingUriOpt = Annotated[
    str | None, typer.Option(help="MLflow URI; default $MLFLOW_TRACKING_URI or the workdir store.")
]
ReleaseSetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Release policy override, e.g. release.max_accuracy_drop=0.02 (repeatable)."),
]


def _existing_store(tracking_uri: str | None, workdir: Path) -> str:
    """The MLflow URI to read; `AuditflowError` when a local store is not there. MLflow's
    download progress bars are turned off: they would stand in front of the one-line answer."""
    from auditflow.core.config import TrackingConfig

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri), workdir)
    if uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise AuditflowError(f"no MLflow store at {uri}; pass --workdir or --tracking-uri")
    preflight(uri)
    return uri


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
    from auditflow.tasks.release import gate_run

    try:
        uri = _existing_store(tracking_uri, workdir)
        outcome = gate_run(uri, run_id, overrides or [], log_record=log)
    except AuditflowError as err:
        raise _fail(err) from err
    from rich.markup import escape

    Console(soft_wrap=True).print(outcome.markdown, markup=False, highlight=False)
    colour = "green" if outcome.verdict == "pass" else "red"
    console.print(f"[bold {colour}]release gate[/] {escape(outcome.summary)}", highlight=False)
    if outcome.verdict != "pass":
        raise typer.Exit(code=1)


@app.command()
def promote(
    run_id: Annotated[str, typer.Argument(help="MLflow id of a pipeline (parent) run.")],
    workdir: WorkdirOpt = Path("."),
    tracking_uri: TrackingUriOpt = None,
    overrides: ReleaseSetOpt = None,
) -> None:
    """Make a run's model `champion`, after the same release gate the pipeline applies
    (registering it first if it has no version); refused, with the reason, when the gate fails."""
    from auditflow.tasks.release import promote_run

    try:
        uri = _existing_store(tracking_uri, workdir)
        result = promote_run(uri, run_id, overrides or [])
        if not result.promoted:
            raise AuditflowError(
                f"promote refused: {result.model_name} v{result.version} (run {run_id}) fails the release gate: "
                + "; ".join(result.reasons)
                + f" (record: release/gate.json of run {run_id})"
            )
    except AuditflowError as err:
        raise _fail(err) from err
    out = Console(soft_wrap=True, highlight=False)
    if result.previous_champion == result.version:
        out.print(f"{result.model_name} v{result.version} is already champion ({result.summary})", markup=False)
    else:
        replaced = f", replacing v{result.previous_champion}" if result.previous_champion else ""
        out.print(f"{result.model_name} v{result.version} is now champion{replaced} ({result.summary})", markup=False)


@app.command()
def models(
    workdir: WorkdirOpt = Path("."),
    tracking_uri: TrackingUriOpt = None,
    model_name: Annotated[str | None, typer.Option(help="Registered model; default every one in the store.")] = None,
) -> None:
    """List registered model versions with their aliases, release status and verdicts."""
    from datetime import datetime

    from auditflow.audits.gate import METRICS
    from auditflow.tasks.release import RELEASE_VERDICT, STATUS_TAG, list_models

    try:
        uri = _existing_store(tracking_uri, workdir)
        found = list_models(uri, model_name)
    except AuditflowError as err:
        raise _fail(err) from err
    out = Console(width=None if sys.stdout.isatty() else 170)
    if not any(found.values()):
        out.print(f"no registered model versions in {uri}" + (f" named {model_name!r}" if model_name else ""))
        return
    for name, rows in found.items():
        table = Table(title=f"registered model {name}")
        for col in ("version", "aliases", "status", "gate", "overall", "accuracy", "worst recall", "run", "registered"):
            table.add_column(col, justify="right" if col in ("version", "accuracy", "worst recall") else "left")
        for row in rows:
            v = row.version
            accuracy = row.metrics.get(METRICS["accuracy"])
            recall = row.metrics.get(METRICS["worst_class_recall"])
            table.add_row(
                v.version,
                ", ".join(v.aliases) or "-",
                v.tags.get(STATUS_TAG, "-"),
                v.tags.get(RELEASE_VERDICT, "-"),
                row.verdicts.get("overall", "-"),
                "-" if accuracy is None else f"{accuracy:.2%}",
                "-" if recall is None else f"{recall:.3f}",
                f"{v.run_id} ({row.run_name})" if row.run_name else (v.run_id or "-"),
                datetime.fromtimestamp(v.created_ms / 1000).strftime("%Y-%m-%d %H:%M"),
            )
        out.print(table)


if __name__ == "__main__":
    app()
