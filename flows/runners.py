"""Where a flow's parallel tasks run: threads on this machine, or a Dask cluster.

The Dask workers read the run's files by path (the data snapshot, the predictions, the
reference-model cache under the work folder): the cluster must share that disk with the machine
that runs the flow (docs/deploy.md). `check_shared_disk` asks every worker at start-up and names
the first that cannot see them, in one line, before any training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from auditflow.core.errors import ConfigError


def task_runner(parallel: int = 1, dask_address: str | None = None) -> TaskRunner:
    """Threads on this machine, or the Dask cluster (scheduler) at `dask_address`."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return ThreadPoolTaskRunner(max_workers=parallel)


def _missing(paths: Sequence[str]) -> list[str]:
    return [p for p in paths if not os.path.exists(p)]


def check_shared_disk(dask_address: str, paths: Sequence[str], *, timeout: float = 30) -> int:
    """Every worker of the Dask cluster at `dask_address` sees every path in `paths`; the number
    of workers. Raises `ConfigError` naming the first worker and path it cannot see, or the
    scheduler it cannot reach."""
    from distributed import Client

    try:
        client = Client(dask_address, timeout=timeout)
    except OSError as err:
        raise ConfigError(f"privacy.dask_address={dask_address!r}: no Dask scheduler answers there ({err})") from None
    try:
        seen = client.run(_missing, list(paths))
    finally:
        client.close()
    if not seen:
        raise ConfigError(f"privacy.dask_address={dask_address!r}: the Dask cluster has no workers")
    for worker, missing in sorted(seen.items()):
        if missing:
            raise ConfigError(
                f"Dask worker {worker} cannot see {missing[0]}: the workers read the run's snapshot and work "
                "folder by path, so they must share that disk with this machine (docs/deploy.md)"
            )
    return len(seen)
