"""Opening and closing the parent tracking run of a pipeline run, and ending it when Prefect
reports the flow run crashed or cancelled."""

from __future__ import annotations

import logging
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from auditflow.core.config import PipelineConfig, load_config
from auditflow.core.errors import AuditflowError, TrackingOutageError
from auditflow.core.tracking import Tracker, TrackingRef, end_flow_run_runs, open_pipeline_run, resolve_tracking_uri

log = logging.getLogger(__name__)


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: retry when the tracking store stopped answering or on an unexpected
    error, never on a user error (a corrupt store, a bad config) that a retry only repeats."""
    try:
        state.result()
    except TrackingOutageError:
        return True
    except AuditflowError:
        return False
    except Exception:
        return True
    return False


def retry_on_outage(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition of long stages: retry only when the tracking store stopped answering."""
    try:
        state.result()
    except TrackingOutageError:
        return True
    except BaseException:
        return False
    return False


@task(
    name="open-run", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_unless_user_error, cache_policy=NO_CACHE
)
def open_run(cfg: PipelineConfig, source: str, workdir: str, run_name: str | None = None) -> TrackingRef:
    """Create the MLflow parent run, tagged with the Prefect flow run id and data source."""
    name = run_name or f"{cfg.profile}-{flow_run.get_name() or 'local'}"
    return open_pipeline_run(
        cfg, workdir, name, tags={"prefect.flow_run_id": str(flow_run.get_id() or "none"), "auditflow.source": source}
    )


@task(name="close-run", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def close_run(ref: TrackingRef, error: BaseException | None = None) -> None:
    """End the parent run FINISHED, or FAILED with the error recorded (KILLED for an interrupt)."""
    Tracker(ref.uri).end_run(ref.run_id, error)


def end_tracking_runs(flow: Any, flow_run: Any, state: Any) -> None:
    """`on_crashed` / `on_cancellation` hook of the pipeline flow: the MLflow runs of this flow
    run that are still RUNNING (the process was interrupted, or the run cancelled from the UI,
    before `close-run`) end KILLED with Prefect's reason. Never raises: a hook that fails would
    hide the crash itself; the next start ends what is left (`end_stale_runs`). Prefect's flow
    engine calls it positionally, its runner (a run cancelled from the UI) by keyword: the
    parameter names are Prefect's."""
    run = flow_run
    params = dict(run.parameters or {})
    try:
        cfg = load_config(params.get("profile", "quick"), params.get("overrides") or [])
        uri = resolve_tracking_uri(cfg.tracking, params.get("workdir", "."))
        reason = f"Prefect flow run {run.name!r} {state.name}: {state.message or 'no message'}"
        ended = end_flow_run_runs(uri, cfg.tracking.experiment, str(run.id), reason=reason)
        if ended:
            log.info("ended %d MLflow run(s) left RUNNING by flow run %s: KILLED", len(ended), run.name)
    except Exception as err:
        log.warning("could not end the MLflow runs of flow run %s: %s", run.name, err)


def dask_worker() -> str:
    """The address of the Dask worker running the calling task, or "" outside Dask."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return ""
