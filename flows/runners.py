"""Where a flow's parallel tasks run: threads on this machine, or a Dask cluster."""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner


def task_runner(parallel: int = 1, dask_address: str | None = None) -> TaskRunner:
    """Threads on this machine, or the Dask cluster (scheduler) at `dask_address`."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return ThreadPoolTaskRunner(max_workers=parallel)
