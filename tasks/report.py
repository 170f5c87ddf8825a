"""Stage 8: the audit report, rebuilt from what MLflow holds, logged to the parent run.

Before rendering, the run's overall verdict is decided from the stage verdicts and stored as
the parent's `verdict/overall` tag, so the report's badge, the MLflow runs table and the
Prefect artifact all show the one value. The model card and datasheet are logged beside the
report, and the card again with the model (the export stage run's `onnx/` folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from auditflow.audits.report import build_report, overall_verdict
from auditflow.core.paths import run_dir
from auditflow.core.tracking import NOTE_TAG, VERDICT_PREFIX, RunLogger, Tracker, TrackingRef


@dataclass(frozen=True)
class ReportResult:
    html: str
    markdown: str
    pdf: str | None  # None when no PDF could be made here
    overall: str  # pass | fail | inconclusive
    run_url: str  # the run in the MLflow UI (model-training view)


@task(name="report", retries=1, cache_policy=NO_CACHE)
def report_run(ref: TrackingRef, workdir: str) -> ReportResult:
    tracker = Tracker(ref.uri)
    parent = tracker.parent(ref)
    verdict = overall_verdict(tracker.load_run(ref.run_id))
    note = tracker.get_run(ref.run_id).data.tags.get(NOTE_TAG, "")
    parent.set_tags({f"{VERDICT_PREFIX}overall": verdict, NOTE_TAG: f"**Overall verdict: {verdict}.** {note}"})
    record = tracker.load_run(ref.run_id)  # with the tag, so the report shows what MLflow holds
    files = build_report(record, run_dir(workdir, ref.run_id) / "report")
    for path in (files.html, files.markdown, *([files.pdf] if files.pdf else [])):
        parent.log_artifact(path, "report")
    for png in sorted(Path(files.html).parent.glob("figures/*.png")):
        parent.log_artifact(png, "report/figures")
    for path in files.documents:
        parent.log_artifact(path, "report")
    export_run = record.stage_run_ids.get("export")
    if export_run:
        with_model = RunLogger(tracker.client, export_run)
        for path in files.documents:
            if path.stem == "model_card":
                with_model.log_artifact(path, "onnx")
    if files.pdf_note:
        parent.set_tags({"report/pdf": files.pdf_note})
    link = tracker.run_url(ref, record.config.get("tracking", {}).get("ui_url"))
    create_markdown_artifact(
        key="auditflow-report",
        markdown=f"{files.summary_markdown}\n\nReport: `{files.html}`",
        description=f"auditflow audit summary, overall {verdict}",
    )
    return ReportResult(str(files.html), str(files.markdown), files.pdf and str(files.pdf), verdict, link)
