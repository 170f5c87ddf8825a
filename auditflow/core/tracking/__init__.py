"""Tracking: the only package that imports MLflow (this module and its submodules).

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

This module holds runs, stages and records (`Tracker`, `open_pipeline_run`, `RunRecord`). Beside
it: `run_logger` (`RunLogger`, the logging calls bound to one run), `health` (`preflight`: the
store checked before any work; outages told from bad requests), `stale` (run ownership; runs
left RUNNING by a process that is gone are ended), `registry` (the model registry) and
`studies` (tuning studies). Every name other code uses from the first three is re-exported
here, so callers import from `auditflow.core.tracking` alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditflow.core.config import PipelineConfig, TrackingConfig
from auditflow.core.errors import DataError, TrackingError, TrackingOutageError
from auditflow.core.files import SQLITE_MAGIC as SQLITE_MAGIC
from auditflow.core.names import (
    CHECKS,
    NOTE_TAG,
    SUMMARY,
    VERDICT_PREFIX,
    Evaluate,
    Ingest,
    Release,
    Stage,
    Train,
    Transparency,
)
from auditflow.core.names import MAX_PART as MAX_PART
from auditflow.core.names import metric_key as metric_key
from auditflow.core.paths import ARTIFACT_DIR, DB_NAME
from auditflow.core.stage import StageReport
from auditflow.core.tracking.health import PROBE_TIMEOUT_S as PROBE_TIMEOUT_S
from auditflow.core.tracking.health import _first_line, _is_store_error
from auditflow.core.tracking.health import preflight as preflight
from auditflow.core.tracking.run_logger import RunLogger
from auditflow.core.tracking.run_logger import _fluent_tracking_uri as _fluent_tracking_uri
from auditflow.core.tracking.seed import seed_sqlite_store
from auditflow.core.tracking.stale import END_REASON_TAG, end_stale_runs, owner_tags
from auditflow.core.tracking.stale import HOST_TAG as HOST_TAG
from auditflow.core.tracking.stale import PID_START_TAG as PID_START_TAG
from auditflow.core.tracking.stale import PID_TAG as PID_TAG
from auditflow.core.tracking.stale import end_flow_run_runs as end_flow_run_runs
from auditflow.core.tracking.stale import end_own_runs as end_own_runs

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
STAGE_TAG = "auditflow.stage"
# The experiment kind the MLflow UI's own "experiment type" selector writes (mlflow 3.17,
# `setExperimentTag({key: "mlflow.experimentKind", value: kind})`); "custom_model_development"
# is shown as "Machine learning". MLflow 3.17.2 opens a page in the view its global
# `workflowType` names (URL parameter, else the browser's last choice, else GenAI), so links
# built here also carry `UI_VIEW`.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_VIEW = "workflowType=machine_learning"
DEFAULT_UI = "http://127.0.0.1:5000"  # where `auditflow ui` serves a local store
# Images the report embeds as they were logged (drawn from data, not from summaries).
REPORT_IMAGES = (Ingest.EXAMPLES_PNG, Evaluate.MISTAKES_PNG, Transparency.MEAN_MAPS_PNG, Transparency.EXAMPLES_PNG)
HISTORY = ("train_loss", "val_accuracy", "train_accuracy", "val_loss")  # Train.EPOCH names, per epoch
# Per-epoch metrics that the store refused are retried after these pauses (seconds), then the
# stage fails naming them; training itself never waits on the store.
RETRY_DELAYS_S = (2.0, 5.0, 10.0)


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


@dataclass(frozen=True)
class TrackingRef:
    """What a task needs to reach its run: small and picklable, passed between tasks."""

    uri: str
    experiment_id: str
    run_id: str  # the parent (pipeline) run


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

        seed_sqlite_store(uri)  # a new SQLite store: a copy of a migrated one, not MLflow's migrations
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

    def start_run(
        self, experiment_id: str, name: str, tags: dict[str, str], *, parent_id: str | None = None
    ) -> RunLogger:
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

    def publish(self, ref: TrackingRef, run: RunLogger, report: StageReport) -> dict[str, str]:
        """Log everything a stage found on its run `run`: params, metrics, tags, tables,
        documents, figures, files, checks (with `verdict/<group>` tags) and the summary; copy
        the verdicts, the headline metrics and `report.parent_tags` to the parent run, where the
        runs table compares pipeline runs. Returns the verdicts (group -> status)."""
        if report.params:
            run.log_params(dict(report.params))
        metrics = report.finite_metrics()
        if metrics:
            run.log_metrics(metrics)
        if report.tags:
            run.set_tags(dict(report.tags))
        for name, rows in report.tables.items():
            if rows:
                run.log_rows(rows, name)
        for name, columns in report.columns.items():
            run.log_table(columns, name)
        for name, document in report.documents.items():
            run.log_dict(document, name)
        for name, text in report.texts.items():
            run.log_text(text, name)
        for name, figure in report.figures.items():
            run.log_figure(figure, name)
        for path, folder in report.files:
            run.log_artifact(path, folder)
        found = run.log_checks(report.stage, list(report.checks)) if report.checks else {}
        parent = self.parent(ref)
        parent_tags = {f"{VERDICT_PREFIX}{group}": status for group, status in found.items()} | dict(report.parent_tags)
        if parent_tags:
            parent.set_tags(parent_tags)
        headline = {k: v for k, v in metrics.items() if k in report.headline}
        if headline:
            parent.log_metrics(headline)
        if report.summary is not None:
            run.log_summary(report.stage, dict(report.summary))
        return found

    def attach_datasets(self, ref: TrackingRef, run: RunLogger, contexts: tuple[str, ...]) -> None:
        """Record on `run` the dataset inputs (of the given contexts: train, validation, test)
        that the ingest stage of pipeline run `ref` logged, so each run names the data it used."""
        from mlflow.entities import DatasetInput

        ingest = self.children(self.get_run(ref.run_id)).get(Stage.INGEST)
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
        train = self.children(run).get(Stage.TRAIN)
        if train is None or train.info.status != "FINISHED":
            raise TrackingError(f"run {ref} has no finished train stage to take a checkpoint from")
        target = Path(dest) / ref
        target.mkdir(parents=True, exist_ok=True)
        path = f"{Train.CHECKPOINT_FOLDER}/model.pt"
        return Path(self.client.download_artifacts(train.info.run_id, path, str(target)))

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
                self._read_stage(record, stage, child, tmp)
            gate = self._artifact_json(run_id, Release.GATE_JSON, tmp)  # on the parent; a run may have none
            if gate is not None:
                record.summaries[Stage.RELEASE] = gate
            try:
                local = self.client.download_artifacts(run_id, "config.json", tmp)
                record.config = json.loads(Path(local).read_text())
            except Exception as err:
                raise TrackingError(f"run {run_id} has no config.json artifact; is it an auditflow run?") from err
        train_id = record.stage_run_ids.get(Stage.TRAIN)
        if train_id:
            for key in HISTORY:
                # sorted by epoch: epochs restored from a checkpoint are logged after the live ones
                history = self.client.get_metric_history(train_id, Train.EPOCH.format(name=key))
                record.history[key] = sorted((m.step, m.value) for m in history)
        from auditflow.core.tracking.studies import study_summary  # studies builds on this module

        record.study = study_summary(self, str(record.config.get("profile", "")))
        return record

    def _read_stage(self, record: RunRecord, stage: str, child: Any, tmp: str) -> None:
        """Stage run `child` into `record`: status, id, metrics, tags, its summary and checks
        table (a stage that failed early may have neither) and the images the report embeds."""
        run_id = child.info.run_id
        record.stage_status[stage] = child.info.status
        record.stage_run_ids[stage] = run_id
        record.stage_metrics[stage] = dict(child.data.metrics)
        record.stage_tags[stage] = dict(child.data.tags)
        summary = self._artifact_json(run_id, f"{stage}/{SUMMARY}", tmp)
        if summary is not None:
            record.summaries[stage] = summary
        table = self._artifact_json(run_id, f"{stage}/{CHECKS}", tmp)  # MLflow's table form: columns + rows
        if table is not None:
            record.checks[stage] = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
        for image in (i for i in REPORT_IMAGES if i.startswith(f"{stage}/")):
            try:
                record.images[image] = Path(self.client.download_artifacts(run_id, image, tmp)).read_bytes()
            except Exception:  # MLflow raises its own and the transport's types
                log.debug("no %s in stage %s", image, stage)

    def _artifact_json(self, run_id: str, path: str, tmp: str) -> Any:
        """JSON artifact `path` of run `run_id`, downloaded into `tmp`; None when the run has none."""
        try:
            return json.loads(Path(self.client.download_artifacts(run_id, path, tmp)).read_text())
        except Exception:  # MLflow raises its own and the transport's types
            log.debug("no %s in run %s", path, run_id)
            return None

    def parent(self, ref: TrackingRef) -> RunLogger:
        """Logging calls on the pipeline (parent) run."""
        return RunLogger(self.client, ref.run_id)

    def run_url(self, ref_or_record: Any, ui_url: str | None = None) -> str:
        """A link to the run in the MLflow UI (model-training view), see `run_url`."""
        return run_url(self.uri, ref_or_record.experiment_id, ref_or_record.run_id, ui_url=ui_url)


def ui_base(uri: str, ui_url: str | None = None) -> str:
    """The MLflow UI that shows store `uri`: `ui_url` when given, the tracking server itself
    when the URI is http(s), else the address `auditflow ui` serves a local store on."""
    if ui_url:
        return ui_url.rstrip("/")
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else DEFAULT_UI


def run_url(uri: str, experiment_id: str, run_id: str | None = None, *, ui_url: str | None = None) -> str:
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
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # HISTORY name -> (epoch, value)
    images: dict[str, bytes] = field(default_factory=dict)  # REPORT_IMAGES that were logged
    study: dict[str, Any] | None = None  # the `auditflow tune` study a tuned profile came from


def open_pipeline_run(cfg: PipelineConfig, workdir: str | Path, run_name: str, *, tags: dict[str, str]) -> TrackingRef:
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
