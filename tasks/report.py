"""Stage 8: the audit report, rebuilt from what MLflow holds, logged to the parent run.

Before rendering, the run's overall verdict is decided from the stage verdicts and stored as
the parent's `verdict/overall` tag, so the report's badge, the MLflow runs table and the
Prefect artifact all show the one value. The model card and datasheet are logged beside the
report, and the card again with the model (the export stage run's `onnx/` folder).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from auditflow.audits.decision import Decision
from auditflow.audits.report import build_report, overall_tags, overall_verdict
from auditflow.core.names import NOTE_TAG, Report, Stage
from auditflow.core.paths import run_dir
from auditflow.core.tracking import RunLogger, Tracker, TrackingRef
from auditflow.models.export.stage import ARTIFACT_FOLDER as MODEL_FOLDER


@dataclass(frozen=True)
class ReportResult:
    html: str
    markdown: str
    pdf: str | None  # None when no PDF could be made here
    overall: str  # pass | fail | inconclusive
    run_url: str  # the run in the MLflow UI (model-training view)
    decision: Decision | None = None  # the decision the report opens with


@task(name="report", retries=1, cache_policy=NO_CACHE)
def report_run(ref: TrackingRef, workdir: str) -> ReportResult:
    tracker = Tracker(ref.uri)
    parent = tracker.parent(ref)
    verdict = overall_verdict(tracker.load_run(ref.run_id))
    parent.set_tags(overall_tags(verdict, tracker.get_run(ref.run_id).data.tags.get(NOTE_TAG, "")))
    record = tracker.load_run(ref.run_id)  # with the tag, so the report shows what MLflow holds
    files = build_report(record, run_dir(workdir, ref.run_id) / Report.FOLDER)
    for path, folder in files.artifacts():
        parent.log_artifact(path, folder)
    if export_run := record.stage_run_ids.get(Stage.EXPORT):
        with_model = RunLogger(tracker.client, export_run)
        for path in files.model_card:
            with_model.log_artifact(path, MODEL_FOLDER)
    if files.pdf_note:
        parent.set_tags({Report.PDF_NOTE: files.pdf_note})
    create_markdown_artifact(
        key="auditflow-report",
        markdown=f"{files.summary_markdown}\n\nReport: `{files.html}`",
        description=f"auditflow audit summary, overall {verdict}",
    )
    link = tracker.run_url(ref, record.config.get("tracking", {}).get("ui_url"))
    return ReportResult(
        str(files.html), str(files.markdown), files.pdf and str(files.pdf), verdict, link, files.decision
    )
