"""`auditflow tune` as a user types it, then `auditflow run` on the profile it wrote (a file of its
own so that pytest-xdist runs it beside test_cli.py's shared run, not after it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_cli import assert_finished_with_every_stage, auditflow, parent_runs

from auditflow.core.tracking import Tracker


@pytest.mark.slow
def test_tune_finishes_its_trials_and_the_profile_it_writes_runs(
    image_folder: Path, tmp_path: Path, prefect_api_url: str
) -> None:
    """Issue 24's command: `tune --profile tutorial --trials 3` through the entry point, then
    `run --profile FILE` with the profile it wrote. Both reach FINISHED in MLflow. (The run uses
    the session's Prefect API: test_cli covers the temporary server `run` starts.)"""
    work = tmp_path / "w"
    args = ["--profile", "tutorial", "--data", str(image_folder), "--trials", "3", "--workdir", str(work)]
    out = auditflow("tune", *args)
    assert out.returncode == 0, out.stdout[-4000:]
    profile = next(work.glob("tuned-*.yaml"))
    assert f"auditflow run --profile {profile}" in out.stdout.replace("\n", "")
    tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}")
    experiment = tracker.client.get_experiment_by_name("auditflow")
    runs = tracker.client.search_runs([experiment.experiment_id], max_results=100)
    study = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if "tune/trial_number" in r.data.tags]
    assert [r.info.status for r in study] == ["FINISHED"]
    assert len(trials) == 3 and {r.info.status for r in trials} == {"FINISHED"}

    light = ["--set", "benchmark.batch_sizes=[1, 4]", "--set", "benchmark.iterations=3", "--set", "report.pdf=false"]
    light += ["--set", "benchmark.min_seconds=0", "--set", "benchmark.max_seconds=1"]
    out = auditflow(
        "run", "--profile", str(profile), "--data", str(image_folder), "--workdir", str(work), *light,
        env={"PREFECT_API_URL": prefect_api_url},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:]
    tuned = [r for r in parent_runs(work) if r.info.run_id != study[0].info.run_id]
    assert len(tuned) == 1
    assert_finished_with_every_stage(work, tuned[0].info.run_id)
