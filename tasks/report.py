"""Stage 8: the audit report, rebuilt from what MLflow holds, logged to the parent run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from auditflow.audits.report import build_report
from auditflow.core.paths import run_dir
from auditflow.core.tracking import Tracker, TrackingRef


@dataclass(frozen=True)
class ReportResult:
    html: str
    markdown: str


@task(name="report", retries=1, cache_policy=NO_CACHE)
def report_run(ref: TrackingRef, workdir: str) -> ReportResult:
    tracker = Tracker(ref.uri)
    record = tracker.load_run(ref.run_id)
    files = build_report(record, run_dir(workdir, ref.run_id) / "report")
    parent = tracker.parent(ref)
    parent.log_artifact(files.html, "report")
    parent.log_artifact(files.markdown, "report")
    for png in sorted(Path(files.html).parent.glob("figures/*.png")):
        parent.log_artifact(png, "report/figures")
    link = tracker.run_url(ref)
    create_markdown_artifact(
        key="auditflow-report",
        markdown=f"{files.summary_markdown}\n\nMLflow run: [{ref.run_id}]({link}) · report: `{files.html}`",
        description="auditflow audit summary",
    )
    return ReportResult(str(files.html), str(files.markdown))
