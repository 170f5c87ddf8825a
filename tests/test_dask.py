"""Beyond one machine, part one: the privacy audit's reference models on a real Dask cluster
(a scheduler and two worker processes on loopback), spread over both workers (issue 22)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from run_keys import TINY

from auditflow.core.errors import ConfigError
from auditflow.flows.runners import check_shared_disk


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


def _kill_a_worker_mid_reference(address: str, seen: dict, stop: threading.Event) -> None:
    """Once both workers hold a reference model (Dask's `processing`), SIGKILL the process of
    the first one, as a machine lost mid-run; its nanny starts a fresh worker (a new address).
    `seen`: what each worker held, and which worker was killed."""
    from distributed import Client

    with Client(address, timeout=30) as client:
        while not stop.is_set():
            busy = {worker: list(keys) for worker, keys in client.processing().items() if keys}
            if len(busy) == 2:
                victim = sorted(busy)[0]
                pid = client.run(os.getpid, workers=[victim])[victim]
                seen |= {"held": busy, "killed": victim}
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)


@pytest.mark.slow
def test_reference_models_spread_over_both_workers_and_survive_a_killed_worker(
    cluster, prefect_harness, image_folder: Path, tmp_path: Path
) -> None:
    """The audit profile's two reference models run one on each worker of the cluster; the
    worker of one is killed mid-training. Dask computes its model again on a live worker, the
    run finishes with both models, and the cache holds each model once, complete."""
    from auditflow.core.paths import cache_dir
    from auditflow.core.tracking import Tracker
    from auditflow.flows.pipeline import audit_pipeline
    from auditflow.models.references import META_FILE

    overrides = [
        *TINY,
        "privacy.references=2",
        "privacy.reference_runner=dask",
        f"privacy.dask_address={cluster.scheduler_address}",
    ]
    seen: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_worker_mid_reference, args=(cluster.scheduler_address, seen, stop))
    killer.start()
    try:
        result = audit_pipeline(profile="audit", data=str(image_folder), overrides=overrides, workdir=str(tmp_path))
    finally:
        stop.set()
        killer.join()
    assert seen, "the two reference models never ran on the two workers at once"
    print("held when killed:", seen["held"], "killed:", seen["killed"])  # NOTES.md
    assert result.privacy_tier == "reference"
    models = Tracker(result.tracking_uri).load_run(result.run_id).summaries["privacy"]["references"]
    workers = [m["worker"] for m in models]
    print("reference model -> Dask worker:", dict(enumerate(workers)))  # NOTES.md
    assert len(models) == 2 and seen["killed"] not in workers  # the killed worker's model came from another
    assert not any(m["cached"] for m in models)  # computed again, not taken half-written from the cache
    entries = sorted(p for p in (cache_dir(tmp_path) / "references").iterdir() if p.is_dir())
    assert [e.name for e in entries] == sorted(m["key"] for m in models)
    assert all((e / META_FILE).is_file() for e in entries)  # written last: complete


@pytest.mark.slow
def test_a_worker_that_cannot_see_the_work_folder_is_named_before_training(cluster, tmp_path: Path) -> None:
    assert check_shared_disk(cluster.scheduler_address, [str(tmp_path)]) == 2
    missing = tmp_path / "only-here-not-there"
    with pytest.raises(ConfigError, match=r"^Dask worker tcp://127\.0\.0\.1:\d+ cannot see .*only-here-not-there"):
        check_shared_disk(cluster.scheduler_address, [str(tmp_path), str(missing)])
    with pytest.raises(ConfigError, match="no Dask scheduler answers there"):
        check_shared_disk("tcp://127.0.0.1:9", [str(tmp_path)], timeout=2)


@pytest.mark.slow
def test_tune_with_dask_runs_its_trials_on_the_cluster(
    cluster, image_folder: Path, tmp_path: Path, prefect_api_url: str
) -> None:
    """`auditflow tune --dask ADDRESS --parallel 2`, as a user types it: every trial ran on a
    worker of the cluster (its `tune/worker` tag), and the study finished. (On the session's
    Prefect API: test_tune_cli covers the temporary server `tune` starts.)"""
    from test_cli import auditflow

    from auditflow.core.tracking import Tracker

    work = tmp_path / "w"
    args = ["--profile", "tutorial", "--data", str(image_folder), "--trials", "2", "--workdir", str(work)]
    out = auditflow(
        "tune", *args, "--parallel", "2", "--dask", cluster.scheduler_address, env={"PREFECT_API_URL": prefect_api_url}
    )
    assert out.returncode == 0, out.stdout[-4000:]
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}")
    experiment = tracker.client.get_experiment_by_name("auditflow")
    trials = [r for r in tracker.client.search_runs([experiment.experiment_id]) if "tune/trial_number" in r.data.tags]
    workers = {name: cluster.workers[name].worker_address for name in cluster.workers}
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    ran_on = [r.data.tags["tune/worker"] for r in trials]
    print("trial -> Dask worker:", ran_on)  # NOTES.md
    assert set(ran_on) <= set(workers.values())
