"""Tracking: the only package that imports MLflow (this module, `registry` and `studies`).

One parent run per pipeline run and one nested child run per stage. Runs are addressed by id
through `MlflowClient`, not through MLflow's thread-local "active run", so stages may run in
any thread or process. A stage that raises ends FAILED with its error recorded as a tag and
a text artifact; nothing is left RUNNING.

Each stage logs `<stage>/summary.json`; the report is rebuilt from those files and the
metric histories alone (`load_run`), so a report can be regenerated from the store.

Names follow one scheme (docs/architecture.md, "Tracking names and verdicts"): metrics are
`stage/name` (`metric_key` makes class names safe), verdicts are `verdict/<check>` tags, every
run carries a description (`mlflow.note.content`), and `publish` copies a stage's headline
metrics and verdicts to the parent so the runs table compares pipeline runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import sqlite3
import subprocess
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditflow.core.checks import Check, verdicts
from auditflow.core.config import PipelineConfig, TrackingConfig
from auditflow.core.errors import DataError, TrackingError, TrackingOutageError
from auditflow.core.paths import ARTIFACT_DIR, DB_NAME

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "auditflow.stage"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
# The experiment kind the MLflow UI's own "experiment type" selector writes (mlflow 3.17,
# `setExperimentTag({key: "mlflow.experimentKind", value: kind})`); "custom_model_development"
# is shown as "Machine learning". MLflow 3.17.2 opens a page in the view its global
# `workflowType` names (URL parameter, else the browser's last choice, else GenAI), so links
# built here also carry `UI_VIEW`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_VIEW = "workflowType=machine_learning"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `auditflow ui` serves a local store
VERDICT_PREFIX = "verdict/"
SUMMARY = "summary.json"
CHECKS = "checks.json"
# Images the report embeds as they were logged (drawn from data, not from summaries).
REPORT_IMAGES = ("ingest/examples.png",)
HISTORY = ("train_loss", "val_accuracy", "train_accuracy", "val_loss")  # train/<name>, per epoch
_UNSAFE = re.compile(r"[^0-9A-Za-z_\-. ]")
MAX_PART = 80  # characters of one key part: MLflow refuses metric keys over 250 characters
# Ownership of a run: the process that opened it. A run still RUNNING whose process is gone
# (SIGKILL, power loss, out-of-memory kill) is marked KILLED by the next start.
PID_TAG = "auditflow.pid"
PID_START_TAG = "auditflow.pid_start"  # the process's start time, so a reused pid is not taken for it
HOST_TAG = "auditflow.host"
END_REASON_TAG = "auditflow.end_reason"  # why a run was ended by someone other than its own code
# Per-epoch metrics that the store refused are retried after these pauses (seconds), then the
# stage fails naming them; training itself never waits on the store.
RETRY_DELAYS_S = (2.0, 5.0, 10.0)
PROBE_TIMEOUT_S = 5.0  # the preflight check of an HTTP tracking server
SQLITE_MAGIC = b"SQLite format 3\x00"


def metric_key(*parts: str) -> str:
    """`stage/metric/class/<name>` with every part made a legal MLflow key (letters, digits,
    `_-. `); other characters become `_`, so class folders like `cat's` still log. A part
    longer than `MAX_PART` is cut and ends with 6 hex digits of its hash, so a 255-character
    folder name still fits MLflow's 250 characters and stays distinct."""
    return "/".join(_safe_part(str(p)) for p in parts)


def _safe_part(part: str) -> str:
    safe = _UNSAFE.sub("_", part)
    if len(safe) <= MAX_PART:
        return safe
    return f"{safe[: MAX_PART - 7]}-{hashlib.sha256(part.encode()).hexdigest()[:6]}"


def class_keys(classes: tuple[str, ...] | list[str]) -> list[str]:
    """The metric key of each class (`metric_key`); `DataError` when two classes would log
    under one key (`a+b` and `a_b`), which would silently mix their metrics."""
    keys = [metric_key(c) for c in classes]
    seen: dict[str, str] = {}
    for name, key in zip(classes, keys, strict=True):
        if key in seen:
            raise DataError(
                f"class folders {seen[key]!r} and {name!r} would log under the same MLflow key {key!r} (keys keep "
                "letters, digits and _-. and space; other characters become _): rename one of them"
            )
        seen[key] = name
    return keys


def resolve_tracking_uri(cfg: TrackingConfig, workdir: str | Path) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else a SQLite store in `workdir`."""
    if cfg.tracking_uri:
        return cfg.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(Path(workdir) / DB_NAME).resolve()}"


def environment_tags() -> dict[str, str]:
    """Versions of the numerical stack and the git commit of this checkout."""
    import onnxruntime
    import torch

    tags = {
        "versions.python": platform.python_version(),
        "versions.torch": torch.__version__,
        "versions.cuda": str(torch.version.cuda),
        "versions.onnxruntime": onnxruntime.__version__,
        "auditflow.host": platform.node(),
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        tags["auditflow.git_commit"] = commit.stdout.strip() if commit.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        tags["auditflow.git_commit"] = "unknown"
    return tags


def _process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, Linux `/proc`); "" when it is gone
    or there is no `/proc`."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def owner_tags() -> dict[str, str]:
    """Which process owns a run: host, pid and the pid's start time."""
    return {HOST_TAG: platform.node(), PID_TAG: str(os.getpid()), PID_START_TAG: _process_start(os.getpid())}


def _owner_alive(tags: dict[str, str]) -> bool | None:
    """Whether the process that opened a run still runs; None when that cannot be told here
    (another host, or a run opened before runs recorded their process)."""
    if tags.get(HOST_TAG) != platform.node() or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    if Path("/proc/self/stat").exists():
        started = _process_start(pid)
        return bool(started) and started == (tags.get(PID_START_TAG) or started)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# Errors of the store that a later try may not meet: an outage, not a bad request (MLflow's SQL
# store maps SQLite's "database is locked" to TEMPORARILY_UNAVAILABLE; its REST client raises
# INTERNAL_ERROR when the server cannot be reached or fails).
_OUTAGE_CODES = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")


def _is_store_error(err: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(err, MlflowException) and err.error_code in _OUTAGE_CODES


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", "") or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def preflight(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check once, before any work, that the store at `uri` can be used: an HTTP tracking
    server answers within `timeout_s`; a SQLite store's folder is writable and its file, when
    there is one, is a readable SQLite database. `TrackingError` naming what is wrong and
    what to do. Other schemes (postgresql, databricks ...) are not checked here."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                return
        except urllib.error.HTTPError:  # it answered (an auth proxy, an older server): reachable
            return
        except (OSError, ValueError) as err:  # refused, unresolvable, timed out
            reason = getattr(err, "reason", None) or err
            raise TrackingOutageError(
                f"cannot reach the MLflow store at {uri}: {reason}; start the tracking server or point "
                "MLFLOW_TRACKING_URI (or tracking.tracking_uri) at one that runs"
            ) from err
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    _check_writable(db.parent, f"the folder of the MLflow store {db.parent}")
    if not db.exists():
        return
    try:
        with open(db, "r+b") as handle:
            head = handle.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise TrackingError(f"the MLflow store {db} cannot be opened for writing: {err.strerror}") from err
    fix = f"move it aside (mv {db} {db}.bad) to start an empty store there, or restore it from a backup"
    if head and head != SQLITE_MAGIC:
        raise TrackingError(f"the MLflow store {db} is not an SQLite database (damaged or another file); {fix}")
    try:
        with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
            conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.DatabaseError as err:
        raise TrackingError(f"the MLflow store {db} cannot be read ({err}); {fix}") from err


def _check_writable(folder: Path, what: str) -> None:
    """`TrackingError` unless a file can be created in `folder` (SQLite writes a journal beside
    its database). A real write, not a permission check: root ignores the mode bits, a
    read-only mount does not."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".auditflow-write-check-"):
            pass
    except FileNotFoundError:
        return  # created later, under a folder checked by the caller
    except OSError as err:
        raise TrackingError(f"{what} is not writable: {err.strerror}; make it writable or use another folder") from err


@contextlib.contextmanager
def _fluent_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (needed by `mlflow.onnx.log_model`) at `uri` for a moment.

    `mlflow.set_tracking_uri` also writes $MLFLOW_TRACKING_URI, which would leak into every
    later run in this process; both are restored on exit.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = saved_uri
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


@dataclass(frozen=True)
class TrackingRef:
    """What a task needs to reach its run: small and picklable, passed between tasks."""

    uri: str
    experiment_id: str
    run_id: str  # the parent (pipeline) run


class RunLogger:
    """Logging calls bound to one run id."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def describe(self, text: str) -> None:
        """The run's description, shown on its page in the MLflow UI (Markdown)."""
        self.client.set_tag(self.run_id, NOTE_TAG, text)

    def log_checks(self, stage: str, checks: list[Check]) -> dict[str, str]:
        """`<stage>/checks.json` and a `verdict/<group>` tag per verdict group; the verdicts."""
        self.log_rows([c.as_dict() for c in checks], f"{stage}/{CHECKS}")
        found = verdicts(checks)
        self.set_tags({f"{VERDICT_PREFIX}{group}": status for group, status in found.items()})
        return found

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_text(self.run_id, json.dumps(obj, indent=2, default=str), artifact_file)

    def log_table(self, data: dict[str, list[Any]], artifact_file: str) -> None:
        """Columns of equal length, shown as a table in the MLflow UI."""
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """Log a matplotlib figure and close it (MLflow only saves it; open figures pile up)."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            plt.close(figure)

    def log_rows(self, rows: list[dict[str, Any]], artifact_file: str) -> None:
        """A list of same-keyed records as an MLflow table."""
        self.log_table({key: [r[key] for r in rows] for key in rows[0]}, artifact_file)

    def log_summary(self, stage: str, summary: dict[str, Any]) -> None:
        """The stage's small result, which the report reads back."""
        self.log_dict(summary, f"{stage}/{SUMMARY}")

    def log_dataset(self, *, name: str, digest: str, source: str, profile: dict[str, Any], context: str) -> None:
        """A dataset input of this run: name, content digest, source and a small profile."""
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.http_dataset_source import HTTPDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset as DatasetEntity
        from mlflow.entities import DatasetInput, InputTag

        if source == "cifar10" or source.startswith("cifar10:"):
            src = HTTPDatasetSource("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz")
        else:
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local
                warnings.simplefilter("ignore", UserWarning)
                src = resolve_dataset_source(str(Path(source).resolve()))
        dataset = MetaDataset(src, name=name, digest=digest[:36])
        base = dataset._to_mlflow_entity()
        entity = DatasetEntity(
            name=base.name,
            digest=base.digest,
            source_type=base.source_type,
            source=base.source,
            schema=base.schema,
            profile=json.dumps(profile),
        )
        self.client.log_inputs(self.run_id, [DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])])

    def log_onnx_model(
        self, path: str | Path, example_in: Any, example_out: dict[str, Any], uri: str, providers: list[str]
    ) -> str:
        """Log an ONNX file as an MLflow model whose signature is inferred from one example
        batch (input array -> named outputs); returns its model URI."""
        import mlflow
        import onnx
        from mlflow.models import infer_signature

        model = onnx.load(str(path))
        with _fluent_tracking_uri(uri), mlflow.start_run(run_id=self.run_id):
            info = mlflow.onnx.log_model(
                model,
                name="onnx_model",
                input_example=example_in,
                signature=infer_signature(example_in, example_out),
                onnx_execution_providers=providers,
            )
        self.client.update_run(self.run_id, status="RUNNING")  # the with-block marked it FINISHED
        return info.model_uri


class DeferredMetrics:
    """Per-epoch metrics of a long loop that must not stop when the store hiccups.

    `log` sends what is pending (oldest first) and keeps whatever the store refused; training
    goes on. `close` retries the rest after `RETRY_DELAYS_S` and raises `TrackingOutageError`
    naming the stage and the epochs if the store still refuses them: nothing is dropped
    silently."""

    def __init__(self, run: RunLogger, stage: str, uri: str) -> None:
        self.run, self.stage, self.uri = run, stage, uri
        self.pending: list[tuple[dict[str, float], int]] = []
        self.error: BaseException | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.pending.append((metrics, step))
        self._send()

    def _send(self) -> None:
        while self.pending:
            metrics, step = self.pending[0]
            try:
                self.run.log_metrics(metrics, step=step)
            except Exception as err:  # MLflow raises its own and the transport's types
                if self.error is None:
                    log.warning("%s: the store refused epoch %d's metrics, kept to retry: %s", self.stage, step, err)
                self.error = err
                return
            self.pending.pop(0)

    def close(self) -> None:
        for delay in RETRY_DELAYS_S:
            if not self.pending:
                return
            time.sleep(delay)
            self._send()
        if self.pending:
            steps = [step for _, step in self.pending]
            assert self.error is not None
            raise TrackingOutageError(
                f"stage {self.stage}: the MLflow store at {self.uri} refused the metrics of epochs "
                f"{steps[0]}-{steps[-1]} {len(RETRY_DELAYS_S) + 1} times ({_first_line(self.error)}); the trained "
                "model is kept: rerun the same command to log it without training again"
            ) from self.error


class Tracker:
    """Creates and ends runs; reads them back for the report."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def experiment_id(self, name: str, workdir: str | Path | None = None) -> str:
        """Id of experiment `name`, created on first use (artifacts beside a local SQLite store)."""
        from mlflow.exceptions import MlflowException

        try:
            exp = self.client.get_experiment_by_name(name)
            if exp is not None:
                if EXPERIMENT_KIND_TAG not in exp.tags:  # created by an older auditflow
                    self.client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
                return exp.experiment_id
            location = None
            if self.uri.startswith("sqlite:") and workdir is not None:
                location = (Path(workdir) / ARTIFACT_DIR).resolve().as_uri()
            return self.client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException as err:
            kind = TrackingOutageError if _is_store_error(err) else TrackingError
            raise kind(f"cannot reach the MLflow store at {self.uri}: {_first_line(err)}") from err

    def start_run(self, experiment_id: str, name: str, tags: dict[str, str], parent_id: str | None = None) -> RunLogger:
        all_tags = owner_tags() | dict(tags)
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        return RunLogger(self.client, run.info.run_id)

    def end_run(self, run_id: str, error: BaseException | None = None) -> None:
        """FINISHED; FAILED with the error as a tag and `error.txt`; KILLED when `error` is an
        interrupt (Ctrl-C, SIGTERM: not an `Exception`). The status is set even when recording
        the error fails, so no run is left RUNNING."""
        status = "FINISHED"
        try:
            if error is not None:
                status = "FAILED" if isinstance(error, Exception) else "KILLED"
                message = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
                self.client.set_tag(run_id, "auditflow.error", message[:5000])
                if status == "KILLED":
                    self.client.set_tag(run_id, END_REASON_TAG, f"interrupted ({type(error).__name__})")
                self.client.log_text(run_id, "".join(traceback.format_exception(error)), "error.txt")
        finally:
            self.client.set_terminated(run_id, status=status)

    @contextlib.contextmanager
    def stage(self, ref: TrackingRef, name: str, description: str = "") -> Iterator[RunLogger]:
        """A child run of `ref.run_id` for one stage, described by `description`; FAILED with
        the error if the body raises."""
        tags = {STAGE_TAG: name} | ({NOTE_TAG: description} if description else {})
        run = self.start_run(ref.experiment_id, name, tags, parent_id=ref.run_id)
        try:
            yield run
        except BaseException as err:
            try:
                self.end_run(run.run_id, err)
            except Exception as store_err:  # the store is down: the next start marks the run KILLED
                log.warning("could not mark stage run %s of %s ended: %s", run.run_id, name, _first_line(store_err))
            if _is_store_error(err) and not isinstance(err, TrackingError):
                raise TrackingOutageError(
                    f"stage {name}: the MLflow store at {self.uri} failed: {_first_line(err)}"
                ) from err
            raise
        self.end_run(run.run_id)

    def publish(
        self, ref: TrackingRef, run: RunLogger, stage: str, checks: list[Check], headline: dict[str, float]
    ) -> dict[str, str]:
        """Log a stage's checks (table + verdict tags) and copy its verdicts and `headline`
        metrics to the parent run, where the runs table compares pipeline runs; the verdicts."""
        found = run.log_checks(stage, checks)
        parent = self.parent(ref)
        parent.set_tags({f"{VERDICT_PREFIX}{group}": status for group, status in found.items()})
        if headline:
            parent.log_metrics(headline)
        return found

    def attach_datasets(self, ref: TrackingRef, run: RunLogger, contexts: tuple[str, ...]) -> None:
        """Record on `run` the dataset inputs (of the given contexts: train, validation, test)
        that the ingest stage of pipeline run `ref` logged, so each run names the data it used."""
        from mlflow.entities import DatasetInput

        ingest = self.children(self.get_run(ref.run_id)).get("ingest")
        if ingest is None:
            return
        chosen = [
            DatasetInput(i.dataset, tags=i.tags)
            for i in ingest.inputs.dataset_inputs
            if any(t.key == "mlflow.data.context" and t.value in contexts for t in i.tags)
        ]
        if chosen:
            self.client.log_inputs(run.run_id, chosen)

    # ------------------------------------------------------------------ reading back
    def get_run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise TrackingError(f"run id {run_id!r} not found in the MLflow store at {self.uri}") from err
            raise TrackingOutageError(
                f"cannot read run {run_id!r} from the MLflow store at {self.uri}: {_first_line(err)}"
            ) from err

    def children(self, run: Any) -> dict[str, Any]:
        """Stage name -> newest child run of `run`."""
        found = self.client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{run.info.run_id}'",
            order_by=["attributes.start_time ASC"],
        )
        return {r.data.tags.get(STAGE_TAG, r.info.run_name): r for r in found}

    def fetch_checkpoint(self, ref: str, dest: str | Path) -> Path:
        """`ref` itself when it is a checkpoint file, else the final checkpoint of pipeline run
        `ref`, downloaded into `dest` (teachers and fine-tuning sources)."""
        if Path(ref).is_file():
            return Path(ref)
        run = self.get_run(ref)
        train = self.children(run).get("train")
        if train is None or train.info.status != "FINISHED":
            raise TrackingError(f"run {ref} has no finished train stage to take a checkpoint from")
        target = Path(dest) / ref
        target.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(train.info.run_id, "checkpoint/model.pt", str(target)))

    def load_run(self, run_id: str) -> RunRecord:
        """Everything the report needs from one pipeline run, read from the store alone."""
        run = self.get_run(run_id)
        if PARENT_TAG in run.data.tags:
            raise TrackingError(f"run {run_id} is a stage run; pass its parent {run.data.tags[PARENT_TAG]}")
        experiment = self.client.get_experiment(run.info.experiment_id)
        record = RunRecord(
            run_id=run_id,
            name=run.info.run_name,
            status=run.info.status,
            tags=dict(run.data.tags),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
            uri=self.uri,
            experiment_id=run.info.experiment_id,
            experiment_name=experiment.name,
            experiment_tags=dict(experiment.tags),
            start_time_ms=run.info.start_time or 0,
        )
        with tempfile.TemporaryDirectory() as tmp:
            for stage, child in self.children(run).items():
                record.stage_status[stage] = child.info.status
                record.stage_run_ids[stage] = child.info.run_id
                record.stage_metrics[stage] = dict(child.data.metrics)
                record.stage_tags[stage] = dict(child.data.tags)
                try:
                    local = self.client.download_artifacts(child.info.run_id, f"{stage}/{SUMMARY}", tmp)
                    record.summaries[stage] = json.loads(Path(local).read_text())
                except Exception:  # a failed stage may have logged no summary
                    log.debug("no summary for stage %s", stage)
                try:
                    local = self.client.download_artifacts(child.info.run_id, f"{stage}/{CHECKS}", tmp)
                    table = json.loads(Path(local).read_text())  # MLflow's table form: columns + rows
                    record.checks[stage] = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
                except Exception:  # a stage without checks, or one that failed before judging
                    log.debug("no checks for stage %s", stage)
                for image in (i for i in REPORT_IMAGES if i.startswith(f"{stage}/")):
                    try:
                        record.images[image] = Path(
                            self.client.download_artifacts(child.info.run_id, image, tmp)
                        ).read_bytes()
                    except Exception:
                        log.debug("no %s in stage %s", image, stage)
            try:  # the release gate's record, logged on the parent (a run may have none)
                local = self.client.download_artifacts(run_id, "release/gate.json", tmp)
                record.summaries["release"] = json.loads(Path(local).read_text())
            except Exception:
                log.debug("no release gate record for run %s", run_id)
            try:
                local = self.client.download_artifacts(run_id, "config.json", tmp)
                record.config = json.loads(Path(local).read_text())
            except Exception as err:
                raise TrackingError(f"run {run_id} has no config.json artifact; is it an auditflow run?") from err
        train_id = record.stage_run_ids.get("train")
        if train_id:
            for key in HISTORY:
                # sorted by epoch: epochs restored from a checkpoint are logged after the live ones
                history = self.client.get_metric_history(train_id, f"train/{key}")
                record.history[key] = sorted((m.step, m.value) for m in history)
        from auditflow.core.tracking.studies import study_summary  # studies builds on this module

        record.study = study_summary(self, str(record.config.get("profile", "")))
        return record

    def parent(self, ref: TrackingRef) -> RunLogger:
        """Logging calls on the pipeline (parent) run."""
        return RunLogger(self.client, ref.run_id)

    def run_url(self, ref_or_record: Any, ui_url: str | None = None) -> str:
        """A link to the run in the MLflow UI (model-training view), see `run_url`."""
        return run_url(self.uri, ref_or_record.experiment_id, ref_or_record.run_id, ui_url)


def ui_base(uri: str, ui_url: str | None = None) -> str:
    """The MLflow UI that shows store `uri`: `ui_url` when given, the tracking server itself
    when the URI is http(s), else the address `auditflow ui` serves a local store on."""
    if ui_url:
        return ui_url.rstrip("/")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI


def run_url(uri: str, experiment_id: str, run_id: str | None = None, ui_url: str | None = None) -> str:
    """A link to a run (or, without `run_id`, to its experiment's runs table) that opens in
    the MLflow UI's model-training view."""
    path = f"/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{ui_base(uri, ui_url)}{path}?{UI_VIEW}"


@dataclass
class RunRecord:
    run_id: str
    name: str
    status: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]
    uri: str
    experiment_id: str
    experiment_name: str = ""
    experiment_tags: dict[str, str] = field(default_factory=dict)
    start_time_ms: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # stage -> its checks table
    stage_status: dict[str, str] = field(default_factory=dict)
    stage_run_ids: dict[str, str] = field(default_factory=dict)
    stage_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # train/<name> by epoch
    images: dict[str, bytes] = field(default_factory=dict)  # REPORT_IMAGES that were logged
    study: dict[str, Any] | None = None  # the `auditflow tune` study a tuned profile came from


def end_stale_runs(tracker: Tracker, experiment_id: str) -> list[str]:
    """Mark KILLED, with `END_REASON_TAG` saying why, every run of the experiment still
    RUNNING whose process (recorded at `start_run`) has ended on this host; the ids. Runs
    opened on other hosts, or before runs recorded their process, are left alone."""
    ended = []
    for run in tracker.client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        tags = dict(run.data.tags)
        if _owner_alive(tags) is not False:
            continue
        reason = (
            f"process {tags[PID_TAG]} on {tags[HOST_TAG]} ended without closing this run (killed: SIGKILL, out of "
            f"memory or power loss); marked KILLED by process {os.getpid()} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
        )
        tracker.client.set_tag(run.info.run_id, END_REASON_TAG, reason)
        tracker.client.set_terminated(run.info.run_id, status="KILLED")
        log.warning("run %s (%s), left RUNNING by a killed process, is now KILLED", run.info.run_id, run.info.run_name)
        ended.append(run.info.run_id)
    return ended


def end_flow_run_runs(uri: str, experiment: str, flow_run_id: str, reason: str) -> list[str]:
    """Mark KILLED the pipeline run of Prefect flow run `flow_run_id` (in experiment
    `experiment`) and its stage runs that are still RUNNING, with `reason` (the crash or
    cancellation Prefect reported); the ids."""
    tracker = Tracker(uri)
    exp = tracker.client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    ended = []
    found = tracker.client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{_quote(flow_run_id)}'"
    )
    for parent in found:
        children = tracker.client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent.info.run_id}' and attributes.status = 'RUNNING'",
        )
        for run in [*children, *([parent] if parent.info.status == "RUNNING" else [])]:
            tracker.client.set_tag(run.info.run_id, END_REASON_TAG, reason[:5000])
            tracker.client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


def end_own_runs(uri: str, experiment: str, reason: str) -> list[str]:
    """Mark FAILED, with `reason`, the runs of `experiment` that this process opened and that
    are still RUNNING: for a run stopped from outside its own code (its orchestrator died); the ids."""
    tracker = Tracker(uri)
    exp = tracker.client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    found = tracker.client.search_runs(
        [exp.experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{PID_TAG}` = '{os.getpid()}'"
    )
    ended = []
    for run in (r for r in found if r.data.tags.get(HOST_TAG) == platform.node()):
        tracker.client.set_tag(run.info.run_id, "auditflow.error", reason[:5000])
        tracker.client.set_tag(run.info.run_id, END_REASON_TAG, reason[:5000])
        tracker.client.set_terminated(run.info.run_id, status="FAILED")
        ended.append(run.info.run_id)
    return ended


def open_pipeline_run(cfg: PipelineConfig, workdir: str | Path, run_name: str, tags: dict[str, str]) -> TrackingRef:
    """Start the parent run: config as params and as `config.json`, environment tags. First
    check the store (`preflight`) and end the runs that killed processes left RUNNING."""
    uri = resolve_tracking_uri(cfg.tracking, workdir)
    preflight(uri)
    tracker = Tracker(uri)
    exp = tracker.experiment_id(cfg.tracking.experiment, workdir)
    end_stale_runs(tracker, exp)
    note = (
        f"auditflow pipeline run, profile `{cfg.profile}`: ingest, train, evaluate, fairness and privacy audits, "
        "ONNX export, benchmark, report. Headline metrics and `verdict/*` tags are copied here from the stage runs."
    )
    run = tracker.start_run(
        exp, run_name, {**environment_tags(), "auditflow.profile": cfg.profile, NOTE_TAG: note, **tags}
    )
    try:
        run.log_params(cfg.flat())
        run.log_dict(cfg.model_dump(mode="json"), "config.json")
    except BaseException as err:  # a retry will open a new run: do not leave this one RUNNING
        tracker.end_run(run.run_id, err)
        raise
    return TrackingRef(uri=uri, experiment_id=exp, run_id=run.run_id)


def _quote(value: str) -> str:
    """`value` inside a single-quoted MLflow filter string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
