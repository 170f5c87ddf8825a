"""Opening and closing the parent tracking run of a pipeline run."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from auditflow.core.config import PipelineConfig
from auditflow.core.tracking import Tracker, TrackingRef, open_pipeline_run


@task(name="open-run", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def open_run(cfg: PipelineConfig, source: str, workdir: str, run_name: str | None = None) -> TrackingRef:
    """Create the MLflow parent run, tagged with the Prefect flow run id and data source."""
    name = run_name or f"{cfg.profile}-{flow_run.get_name() or 'local'}"
    return open_pipeline_run(
        cfg, workdir, name, {"prefect.flow_run_id": str(flow_run.get_id() or "none"), "auditflow.source": source}
    )


@task(name="close-run", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def close_run(ref: TrackingRef, error: BaseException | None = None) -> None:
    """End the parent run FINISHED, or FAILED with the error recorded."""
    Tracker(ref.uri).end_run(ref.run_id, error)
