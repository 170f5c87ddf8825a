from __future__ import annotations

from pathlib import Path

import pytest

from auditflow.core.config import PipelineConfig, TrackingConfig
from auditflow.core.errors import TrackingError
from auditflow.core.tracking import Tracker, open_pipeline_run, resolve_tracking_uri


def test_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert resolve_tracking_uri(TrackingConfig(), tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri(TrackingConfig(tracking_uri="sqlite:///x.db"), tmp_path) == "sqlite:///x.db"


def test_failed_stage_ends_failed_with_error(tmp_path: Path) -> None:
    ref = open_pipeline_run(PipelineConfig(), tmp_path, "t", tags={})
    tracker = Tracker(ref.uri)
    with pytest.raises(RuntimeError, match="boom"), tracker.stage(ref, "train"):
        raise RuntimeError("boom")
    tracker.end_run(ref.run_id, RuntimeError("boom"))
    parent = tracker.get_run(ref.run_id)
    child = tracker.children(parent)["train"]
    assert child.info.status == "FAILED"
    assert child.data.tags["auditflow.error"] == "RuntimeError: boom"
    assert parent.info.status == "FAILED"
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts live beside the SQLite store


def test_unknown_run_id(tmp_path: Path) -> None:
    ref = open_pipeline_run(PipelineConfig(), tmp_path, "t", tags={})
    with pytest.raises(TrackingError, match=r"^run id 'deadbeef' not found in the MLflow store at sqlite:///"):
        Tracker(ref.uri).load_run("deadbeef")


def test_stage_run_is_not_a_report_target(tmp_path: Path) -> None:
    ref = open_pipeline_run(PipelineConfig(), tmp_path, "t", tags={})
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "ingest") as run:
        child_id = run.run_id
    with pytest.raises(TrackingError, match=rf"run {child_id} is a stage run; pass its parent {ref.run_id}"):
        tracker.load_run(child_id)


def test_run_ends_failed_even_when_recording_the_error_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = open_pipeline_run(PipelineConfig(), tmp_path, "t", tags={})
    tracker = Tracker(ref.uri)

    def store_down(*args, **kwargs):
        raise OSError("artifact store down")

    monkeypatch.setattr(tracker.client, "log_text", store_down)
    with pytest.raises(OSError, match="artifact store down"):
        tracker.end_run(ref.run_id, RuntimeError("boom"))
    assert tracker.get_run(ref.run_id).info.status == "FAILED"


def test_report_escapes_values_from_the_data(tmp_path: Path) -> None:
    from auditflow.audits.report import build_report
    from auditflow.core.tracking import RunRecord

    evil = "<img src=x onerror=alert(1)>"
    record = RunRecord(
        run_id="r1",
        name="n",
        status="FINISHED",
        tags={},
        params={},
        metrics={},
        uri="sqlite:///x",
        experiment_id="1",
        config={"profile": "quick"},
        summaries={
            "ingest": {
                "source": "/d",
                "digest": "0" * 64,
                "classes": [evil, "b"],
                "counts": {"train": [1, 1], "val": [0, 0], "test": [1, 1]},
                "image_shape": [32, 32, 3],
            }
        },
    )
    files = build_report(record, tmp_path)
    html = files.html.read_text()
    assert evil not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert evil in files.markdown.read_text()  # Markdown keeps the name as it is


def test_experiment_opens_in_the_model_training_view_and_links_say_so(tmp_path: Path) -> None:
    from auditflow.core.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, run_url

    ref = open_pipeline_run(PipelineConfig(), tmp_path, "t", tags={})
    tracker = Tracker(ref.uri)
    assert tracker.client.get_experiment(ref.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert tracker.get_run(ref.run_id).data.tags["mlflow.note.content"].startswith("auditflow pipeline run")
    assert (
        run_url(ref.uri, "1", "abc") == "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )
    assert (
        run_url("https://mlflow.example/", "1")
        == "https://mlflow.example/#/experiments/1?workflowType=machine_learning"
    )
    assert run_url(ref.uri, "1", None, ui_url="http://ui:8080/").startswith("http://ui:8080/#/experiments/1?")


def test_publish_copies_verdicts_and_headline_to_the_parent(tmp_path: Path) -> None:
    from auditflow.core.checks import Check
    from auditflow.core.stage import StageReport

    ref = open_pipeline_run(PipelineConfig(), tmp_path, "t", tags={})
    tracker = Tracker(ref.uri)
    checks = [
        Check(
            "fairness/gap", "fairness", "Gap", "gap ≤ 0.3", "fairness", "fairness/recall_gap", 0.4, 0.3, "fail", "#f"
        ),
        Check(
            "fairness/worst", "fairness", "Worst", "worst ≥ 0.5", "fairness", "fairness/worst", 0.6, 0.5, "pass", "#f"
        ),
    ]
    report = StageReport(
        stage="fairness",
        metrics={"fairness/worst": 0.6, "fairness/skipped": float("nan")},
        headline={"fairness/recall_gap": 0.4},
        params={"fairness.max_recall_gap": 0.3},
        tags={"fairness/method": "simultaneous"},
        parent_tags={"fairness/method": "simultaneous"},
        checks=tuple(checks),
        tables={"fairness/rows.json": [{"class": "a", "recall": 0.5}]},
        documents={"fairness/doc.json": {"a": 1}},
        summary={"verdict": "fail"},
    )
    with tracker.stage(ref, "fairness", "a stage") as run:
        assert tracker.publish(ref, run, report) == {"fairness": "fail"}
    record = tracker.load_run(ref.run_id)
    assert record.tags["verdict/fairness"] == "fail" and record.metrics["fairness/recall_gap"] == 0.4
    assert "fairness/worst" not in record.metrics, "only the headline goes to the parent"
    assert record.stage_metrics["fairness"] == {"fairness/worst": 0.6, "fairness/recall_gap": 0.4}, "NaN is dropped"
    assert record.stage_tags["fairness"]["verdict/fairness"] == "fail"
    assert record.stage_tags["fairness"]["fairness/method"] == record.tags["fairness/method"] == "simultaneous"
    assert [c["key"] for c in record.checks["fairness"]] == ["fairness/gap", "fairness/worst"]
    assert record.summaries["fairness"] == {"verdict": "fail"}
    child = tracker.client.get_run(record.stage_run_ids["fairness"])
    assert child.data.params == {"fairness.max_recall_gap": "0.3"}
    logged = {a.path for a in tracker.client.list_artifacts(child.info.run_id, "fairness")}
    assert {"fairness/rows.json", "fairness/doc.json", "fairness/checks.json", "fairness/summary.json"} <= logged
    assert record.stage_tags["fairness"]["mlflow.note.content"] == "a stage"


def test_a_run_cancelled_from_prefect_ends_its_mlflow_runs_killed(tmp_path: Path) -> None:
    """The pipeline's on_cancellation hook, called the way Prefect's runner calls it when a
    served run is cancelled (by keyword: flow=, flow_run=, state=; seen failing in CI with a
    parameter named otherwise), ends the run's MLflow runs KILLED with Prefect's reason."""
    import asyncio
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun, State, StateType
    from prefect.runner._hook_runner import _run_hooks  # the runner's own caller
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    from auditflow.core.tracking import PARENT_TAG
    from auditflow.core.tracking.stale import END_REASON_TAG
    from auditflow.flows.pipeline import audit_pipeline
    from auditflow.tasks.run import end_tracking_runs

    flow_run = FlowRun(flow_id=uuid4(), name="cancelled-otter", parameters={"workdir": str(tmp_path)})
    ref = open_pipeline_run(PipelineConfig(), tmp_path, "t", tags={"prefect.flow_run_id": str(flow_run.id)})
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, "ingest"):
        pass
    experiment = tracker.get_run(ref.run_id).info.experiment_id
    stage = tracker.client.create_run(experiment, tags={PARENT_TAG: ref.run_id})  # a stage cut short
    state = State(type=StateType.CANCELLING, name="Cancelling", message="cancelled from the UI")
    with temporary_settings({PREFECT_LOGGING_TO_API_ENABLED: False}):  # a flow run the API never saw
        asyncio.run(_run_hooks([end_tracking_runs], flow_run, audit_pipeline, state))
    parent = tracker.get_run(ref.run_id)
    assert parent.info.status == "KILLED"
    assert tracker.get_run(stage.info.run_id).info.status == "KILLED"
    assert tracker.children(parent)["ingest"].info.status == "FINISHED"  # what had ended stays as it was
    assert "'cancelled-otter' Cancelling: cancelled from the UI" in parent.data.tags[END_REASON_TAG]


# ---------------------------------------------------------------- a new SQLite store from a template
def test_a_new_sqlite_store_is_a_copy_of_a_migrated_one_with_its_own_default_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import stat

    from auditflow.core.tracking.seed import seed_sqlite_store

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    os.umask(old := os.umask(0o022))
    (tmp_path / "a").mkdir()
    first = open_pipeline_run(PipelineConfig(), tmp_path / "a", "t", tags={})  # builds the template
    [template] = (tmp_path / "cache" / "auditflow").glob("mlflow-*-empty.db")
    work = tmp_path / "b"
    work.mkdir()
    assert seed_sqlite_store(f"sqlite:///{work / 'mlflow.db'}")
    assert (work / "mlflow.db").read_bytes() == template.read_bytes()  # no run, no experiment: tables only
    assert stat.S_IMODE((work / "mlflow.db").stat().st_mode) == 0o666 & ~old  # as MLflow's own file
    ref = open_pipeline_run(PipelineConfig(), work, "t", tags={})
    tracker = Tracker(ref.uri)
    tracker.end_run(ref.run_id)
    assert tracker.get_run(ref.run_id).info.status == "FINISHED"
    default = tracker.client.get_experiment("0")  # MLflow adds it on first open, for this store
    assert default.name == "Default" and default.artifact_location == str(tmp_path / "mlruns" / "0")
    assert Tracker(first.uri).get_run(first.run_id).info.run_id == first.run_id
    assert not list(work.glob(".mlflow.db.*"))  # no copy left behind


def test_seeding_never_replaces_a_store_and_without_a_cache_mlflow_builds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from auditflow.core.tracking.seed import seed_sqlite_store

    (tmp_path / "cache").write_text("a file, so no cache folder can be made here")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert not seed_sqlite_store(f"sqlite:///{tmp_path / 'mlflow.db'}")  # falls back quietly
    ref = open_pipeline_run(PipelineConfig(), tmp_path, "t", tags={})  # MLflow migrates it itself
    assert not seed_sqlite_store(ref.uri)  # exists: left alone
    assert not seed_sqlite_store("http://127.0.0.1:5000") and not seed_sqlite_store(f"sqlite:///{tmp_path}/no/x.db")
    assert Tracker(ref.uri).get_run(ref.run_id).info.run_id == ref.run_id
