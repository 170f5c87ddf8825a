"""Beyond one machine, part one: the privacy audit's reference models on a real Dask cluster
(a scheduler and two worker processes on loopback), spread over both workers (issue 22)."""

from __future__ import annotations

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


@pytest.mark.slow
def test_reference_models_run_on_both_workers_of_a_dask_cluster(
    cluster, prefect_harness, image_folder: Path, tmp_path: Path
) -> None:
    from auditflow.core.tracking import Tracker
    from auditflow.flows.pipeline import audit_pipeline

    overrides = [
        *TINY,
        "privacy.references=2",
        "privacy.reference_runner=dask",
        f"privacy.dask_address={cluster.scheduler_address}",
    ]
    result = audit_pipeline(profile="audit", data=str(image_folder), overrides=overrides, workdir=str(tmp_path))
    assert result.privacy_tier == "reference"
    models = Tracker(result.tracking_uri).load_run(result.run_id).summaries["privacy"]["references"]
    workers = [m["worker"] for m in models]
    print("reference model -> Dask worker:", dict(enumerate(workers)))  # NOTES.md
    assert sorted(workers) == sorted(cluster.workers[name].worker_address for name in cluster.workers)


@pytest.mark.slow
def test_a_worker_that_cannot_see_the_work_folder_is_named_before_training(cluster, tmp_path: Path) -> None:
    assert check_shared_disk(cluster.scheduler_address, [str(tmp_path)]) == 2
    missing = tmp_path / "only-here-not-there"
    with pytest.raises(ConfigError, match=r"^Dask worker tcp://127\.0\.0\.1:\d+ cannot see .*only-here-not-there"):
        check_shared_disk(cluster.scheduler_address, [str(tmp_path), str(missing)])
    with pytest.raises(ConfigError, match="no Dask scheduler answers there"):
        check_shared_disk("tcp://127.0.0.1:9", [str(tmp_path)], timeout=2)


@pytest.mark.slow
def test_tune_with_dask_runs_its_trials_on_the_cluster(cluster, image_folder: Path, tmp_path: Path) -> None:
    """`auditflow tune --dask ADDRESS --parallel 2`, as a user types it: every trial ran on a
    worker of the cluster (its `tune/worker` tag), and the study finished."""
    from test_cli import auditflow

    from auditflow.core.tracking import Tracker

    work = tmp_path / "w"
    args = ["--profile", "tutorial", "--data", str(image_folder), "--trials", "2", "--workdir", str(work)]
    out = auditflow("tune", *args, "--parallel", "2", "--dask", cluster.scheduler_address)
    assert out.returncode == 0, out.stdout[-4000:]
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}")
    experiment = tracker.client.get_experiment_by_name("auditflow")
    trials = [r for r in tracker.client.search_runs([experiment.experiment_id]) if "tune/trial_number" in r.data.tags]
    workers = {name: cluster.workers[name].worker_address for name in cluster.workers}
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    ran_on = [r.data.tags["tune/worker"] for r in trials]
    print("trial -> Dask worker:", ran_on)  # NOTES.md
    assert set(ran_on) <= set(workers.values())
