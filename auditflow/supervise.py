"""The CLI's process supervision: Prefect's settings and servers, signals, logging, exits.

A run in the terminal starts Prefect's temporary API server with SIGINT blocked in it (so a
Ctrl-C stops the flow, not its server), watches that server and exits at once when it dies,
turns SIGINT and SIGTERM into KeyboardInterrupt (so the flow ends its runs KILLED), writes
every log record to the run's log file and keeps tracebacks off the terminal. `auditflow
serve` starts `prefect server` in its own session and stops it on exit. The CLI (`cli.py`)
only parses, calls and renders; everything here is about the processes around the call.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditflow.core.errors import AuditflowError
from auditflow.core.paths import ARTIFACT_DIR, DB_NAME, cache_dir
from auditflow.core.tracking import end_own_runs, preflight, resolve_tracking_uri

if TYPE_CHECKING:
    from rich.console import Console

    from auditflow.core.config import DataConfig

# Compute modules log with `logging`; Prefect shows these loggers in the terminal and its UI.
EXTRA_LOGGERS = "auditflow"
log = logging.getLogger(__name__)
INTERRUPTED = 128  # + the signal's number: the exit code of a run stopped by Ctrl-C (130) or SIGTERM (143)
# Error records that stay off the terminal (the log file keeps them, tracebacks included): the
# CLI prints the one line that matters, and Prefect's run loggers would print a traceback each.
QUIET_ERRORS = ("prefect.flow_runs", "prefect.task_runs", "auditflow.cli", __name__)


# ---------------------------------------------------------------------------- Prefect's settings
def prefect_env() -> None:
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


def prefect_ready(server_here: bool = False) -> None:
    """Prefect's settings in the environment, then its local home and database checked
    (`AuditflowError` when they could not be used), before any work. `server_here`: a Prefect
    server is about to be started on them although $PREFECT_API_URL is set."""
    prefect_env()
    from auditflow.flows.preflight import check_prefect_home

    check_prefect_home(server_here)


def check_inputs(data: str, workdir: Path) -> None:
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


def read_data(data: str, cfg: DataConfig, workdir: Path) -> None:
    """Read and check a local data source into its snapshot before any server or store starts:
    a bad archive, folder or image is named in seconds, not after the temporary Prefect API and
    the MLflow store are up (46 s on 2 cores). The flow's ingest stage then reuses the snapshot
    (`core.data.ingest` keys it by the source's fingerprint). `cifar10` is left to the stage."""
    if data == "cifar10" or data.startswith("cifar10:"):
        return
    from auditflow.core.data import ingest

    ingest(data, cfg, cache_dir(workdir))


def existing_store(tracking_uri: str | None, workdir: Path) -> str:
    """The MLflow URI a command that reads past runs reads; `AuditflowError` when a local store is
    not there. MLflow's download progress bars are turned off: they would stand in front of the
    one-line answer."""
    from auditflow.core.config import TrackingConfig

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri), workdir)
    if uri.startswith("sqlite:") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise AuditflowError(f"no MLflow store at {uri}; pass --workdir or --tracking-uri")
    preflight(uri)
    return uri


# ---------------------------------------------------------------------------- logging
def log_to_console(console: Console) -> logging.Handler:
    """Progress of compute code (epochs, decoding) on `console`, for commands that run no flow."""
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False)
    for name in EXTRA_LOGGERS.split(","):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
    return handler


def stop_logging_to_console(handler: logging.Handler) -> None:
    """Undo `log_to_console` (before a flow, whose Prefect console handler takes over)."""
    for name in EXTRA_LOGGERS.split(","):
        logging.getLogger(name).removeHandler(handler)


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
def run_logging(path: Path) -> Iterator[None]:
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


def last_word() -> None:
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


# ---------------------------------------------------------------------------- the temporary API server
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
    if server.running:
        return server.server_process
    for _ in range(_PORT_TRIES):
        # Prefect draws the port from 8000-8999 at random and takes a /health answer from
        # whatever listens there: two runs starting together could draw the same port, and
        # the second then talked to the first one's server until its own failed to bind
        # (exit 3) mid-run. The kernel's pick cannot be in use, and the port must be ours.
        server.port = _kernel_port()
        _start_unmasked(server)
        assert server.server_process is not None
        if _owns_port(server.server_process, server.port):
            return server.server_process
        log.warning("port %d answered for another process; starting the temporary server again", server.port)
        server.server_process.terminate()  # not server.stop(): it forgets the instance Prefect's calls look up
        server.server_process.wait()
        server.running = False
    raise AuditflowError(f"the temporary Prefect API server found no port of its own in {_PORT_TRIES} tries")


_PORT_TRIES = 3


def _start_unmasked(server: Any) -> None:
    """`server.start()` from a thread with SIGINT blocked, so the process it starts has it blocked."""
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


def _kernel_port() -> int:
    """A free port on 127.0.0.1 as the kernel picks it (from its ephemeral range)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _owns_port(process: subprocess.Popen[Any], port: int, *, timeout: float = 120.0) -> bool:
    """Whether `process` listens on `port`: waits while it is alive and not yet listening,
    False once it exits (uvicorn exits 3 when the port was taken)."""
    import psutil

    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            sockets = psutil.Process(process.pid).net_connections(kind="tcp")
            if any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == port for s in sockets):
                return True
        time.sleep(0.1)
    return False


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


def _exit_when_server_dies(
    server: subprocess.Popen[Any], *, uri: str, experiment: str, logs: Path, console: Console
) -> _ServerWatch:
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
def temporary_api(*, uri: str, experiment: str, logs: Path, console: Console) -> Iterator[None]:
    """Prefect's temporary API server started for the block (unless a server is configured) and
    watched: if it dies mid-run, the MLflow runs of `experiment` at `uri` end FAILED, one line
    naming the log `logs` goes to `console` and the process exits 2."""
    server = _start_temporary_api()
    watch = (
        _exit_when_server_dies(server, uri=uri, experiment=experiment, logs=logs, console=console) if server else None
    )
    try:
        yield
    finally:
        if watch is not None:
            watch.stop()


# ---------------------------------------------------------------------------- signals
@contextlib.contextmanager
def interrupts() -> Iterator[list[int]]:
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


def interrupted(received: list[int], err: KeyboardInterrupt, *, logs: Path, console: Console) -> int:
    """A run stopped by the signal `interrupts` caught (SIGINT when a KeyboardInterrupt came
    another way): logged, one line on `console`, and the exit code (`INTERRUPTED` + its number)."""
    caught = signal.Signals(received[0] if received else signal.SIGINT)
    log.error("interrupted by %s", caught.name, exc_info=err)
    last_word()
    console.print(
        f"[bold yellow]interrupted[/] ({caught.name}): the run stopped and its MLflow runs "
        "end KILLED; rerun the same command to resume: finished stages are reused and unfinished training "
        f"goes on from its last finished epoch (log: {logs})"
    )
    return INTERRUPTED + caught


def exit_on_sigterm() -> None:
    """A plain SIGTERM would skip `finally` blocks (and orphan a server started there)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


# ---------------------------------------------------------------------------- errors
def _disk_full(err: OSError, workdir: Path) -> AuditflowError:
    """A full disk is the environment's fault, not a bug: one line naming where it was writing."""
    where = f" writing {err.filename}" if err.filename else f" under --workdir {str(workdir)!r}"
    return AuditflowError(
        f"no space left on the device{where} ({err.strerror}); free space there or use a --workdir on another "
        "disk, then rerun the same command: what was written is consistent and finished work is reused"
    )


def find_user_error(err: BaseException, workdir: Path = Path(".")) -> AuditflowError | None:
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


# ---------------------------------------------------------------------------- a Prefect server for `serve`
def check_cron(cron: str) -> None:
    """`AuditflowError` naming `cron` unless it is a cron expression (checked before any server starts)."""
    from datetime import datetime

    from cronsim import CronSim, CronSimError  # ships with Prefect

    try:
        CronSim(cron, datetime.now())
    except CronSimError as err:
        raise AuditflowError(f"invalid cron expression {cron!r}: {err}") from err


def api_for_serving(port: int, console: Console) -> tuple[str, subprocess.Popen[bytes] | None]:
    """The Prefect API `serve` registers with: $PREFECT_API_URL, else 127.0.0.1:`port`, where a
    server answering is used and otherwise one is started (returned, for `stop_server`)."""
    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        return api_url, None
    api_url = f"http://127.0.0.1:{port}/api"
    # set before Prefect is first imported: it reads its settings once, and without the URL the
    # served runs would start a temporary server of their own on the same database
    os.environ["PREFECT_API_URL"] = api_url
    if server_healthy(api_url):
        return api_url, None
    prefect_ready(server_here=True)  # the server started here uses PREFECT_HOME's database
    console.print(f"starting a Prefect server on 127.0.0.1:{port} (UI: http://127.0.0.1:{port})")
    return api_url, start_prefect_server(api_url, port)


def server_healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_prefect_server(api_url: str, port: int) -> subprocess.Popen[bytes]:
    """`prefect server start` (SQLite under $PREFECT_HOME) in its own session; waits for health."""
    prefect_bin = shutil.which("prefect") or str(Path(sys.executable).with_name("prefect"))
    server = subprocess.Popen(
        [prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)], start_new_session=True
    )
    try:
        for _ in range(120):
            if server_healthy(api_url):
                return server
            if server.poll() is not None:
                raise AuditflowError(f"prefect server exited with code {server.returncode}")
            time.sleep(1)
        raise AuditflowError(f"prefect server did not answer at {api_url} within 120 s")
    except BaseException:
        stop_server(server)
        raise


def stop_server(server: subprocess.Popen[Any] | None) -> None:
    """SIGTERM to the session of a server `start_prefect_server` started, if it still runs."""
    if server is not None and server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)


# ---------------------------------------------------------------------------- the MLflow UI for `ui`
def mlflow_ui_command(workdir: Path, *, host: str, port: int) -> list[str]:
    """`mlflow ui` on the work folder's SQLite store and artifact folder, one worker process;
    `AuditflowError` when there is no store. One worker: a SQLite store serialises its writers
    anyway, and MLflow's default of 4 imports the server four times (34 s of CPU to start on 2
    cores, against 12 s)."""
    db, artifacts = (workdir / DB_NAME).resolve(), (workdir / ARTIFACT_DIR).resolve()
    if not db.is_file():
        raise AuditflowError(f"no MLflow store at {db}; run `auditflow run` first or pass --workdir")
    mlflow_bin = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    return [
        mlflow_bin,
        "ui",
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--default-artifact-root",
        str(artifacts),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
