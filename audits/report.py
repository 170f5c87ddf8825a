"""The audit report: one self-contained HTML file (plots embedded), a Markdown twin, a PDF, and
the model card and datasheet beside them.

`build_report` reads a `RunRecord` (what `Tracker.load_run` read back from MLflow) and
nothing else, so the pipeline's last stage and `auditflow report RUN_ID` are the same code.
The first page is what a reviewer decides from: the overall verdict, the run as a link into the
MLflow UI, which accuracy is which, and every check with its condition, value, threshold and
evidence.
"""

from __future__ import annotations

import base64
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader
from markupsafe import Markup

from auditflow.audits import plots
from auditflow.audits.datasheet import write_datasheet
from auditflow.audits.decision import Decision, decide
from auditflow.audits.documents import environment, markdown_html
from auditflow.audits.model_card import write_model_card
from auditflow.audits.waivers import Waiver, held
from auditflow.core.checks import overall
from auditflow.core.names import (
    NOTE_TAG,
    Evaluate,
    Ingest,
    Report,
    Stage,
    Transparency,
    Verdict,
    gating_verdicts,
    verdict_tag,
)
from auditflow.core.tracking import RunRecord, run_url, ui_base

STAGES = (
    Stage.INGEST,
    Stage.TRAIN,
    Stage.EVALUATE,
    Stage.FAIRNESS,
    Stage.TRANSPARENCY,
    Stage.PRIVACY,
    Stage.EXPORT,
    Stage.BENCHMARK,
)
OVERALL_NOTE = "**Overall verdict: {verdict}.** "  # leads the parent run's description
MARKDOWN_EXTENSIONS = ["tables", "sane_lists", "fenced_code", "toc"]  # toc: ids on headings, the evidence anchors
log = logging.getLogger(__name__)
# a status cell of the checks and gate tables (`**fail**`): coloured, with a symbol that reads in grayscale
STATUS_CELL = re.compile(r"<td><strong>(pass|fail|inconclusive|warn|waived|skipped)</strong></td>")


@dataclass(frozen=True)
class ReportFiles:
    """What `build_report` wrote, and where each file goes on the pipeline run."""

    html: Path
    markdown: Path
    summary_markdown: str  # the verdict and checks alone, for a Prefect artifact
    pdf: Path | None = None  # None when WeasyPrint cannot run here (see `pdf_note`)
    pdf_note: str = ""
    documents: tuple[Path, ...] = ()  # model card and datasheet: .html, .md, .json
    figures: tuple[Path, ...] = ()  # figures/<name>.png
    decision: Decision | None = None  # what the report opens with

    @property
    def model_card(self) -> tuple[Path, ...]:
        """The model cards' files (.html, .md, .json; the logit-adjusted file's too, when the run
        exported it), which are also logged beside the ONNX files."""
        return tuple(p for p in self.documents if p.stem.split(".")[0] == "model_card")

    def artifacts(self) -> list[tuple[Path, str]]:
        """(file, artifact folder) of every file, as logged on the pipeline run."""
        pages = (self.html, self.markdown, *([self.pdf] if self.pdf else []))
        return [
            *((path, Report.FOLDER) for path in pages),
            *((png, Report.FIGURES_FOLDER) for png in self.figures),
            *((path, Report.FOLDER) for path in self.documents),
        ]


@dataclass(frozen=True)
class CheckRow:
    """One check as the report lists it: text cells, its value read back from MLflow."""

    key: str
    title: str
    status: str  # pass | warn | fail | inconclusive
    condition: str
    value: str  # formatted; "not measured" when missing
    threshold: str  # formatted, with the warning threshold when there is one
    metric: str
    note: str
    interval: tuple[float, float] | None  # the interval the status was decided on, when it was
    evidence: str  # a Markdown link: a report anchor or the MLflow artifact page


def _png_b64(fig: Any) -> str:
    return base64.b64encode(plots.to_png(fig)).decode()


def overall_verdict(record: RunRecord) -> str:
    """`verdict/overall` of a run: its tag when set, else the worst of the gating stage verdicts
    (`gating_verdicts`; a stage that failed or is missing fails the run)."""
    tagged = record.tags.get(verdict_tag(Verdict.OVERALL))
    if tagged:
        return tagged
    values = list(gating_verdicts(record.tags).values())
    failed = any(st != "FINISHED" for st in record.stage_status.values())
    return overall(values, missing=failed or any(st not in record.summaries for st in STAGES))


def overall_tags(verdict: str, description: str) -> dict[str, str]:
    """The pipeline run's tags once its verdict is known: `verdict/overall`, and its
    description (`description`, the run's current one) led by the verdict; a rerun replaces
    the lead rather than adding a second one."""
    body = re.sub(r"^\*\*Overall verdict: [a-z]+\.\*\* ", "", description)
    return {verdict_tag(Verdict.OVERALL): verdict, NOTE_TAG: OVERALL_NOTE.format(verdict=verdict) + body}


def _fmt(value: Any) -> str:
    if value is None or value != value:
        return "not measured"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def check_rows(record: RunRecord) -> list[CheckRow]:
    """Every check of every stage, in stage order, with its value read from the stage run's
    metrics in MLflow and its evidence as a link (report anchor or MLflow artifact page)."""
    ui = ui_base(record.uri, record.config.get("tracking", {}).get("ui_url"))
    rows = []
    for stage in STAGES:
        for c in record.checks.get(stage, []):
            value = record.stage_metrics.get(stage, {}).get(c["metric"], c["value"])
            evidence = c["evidence"]
            if evidence.startswith("#"):
                link = f"[{evidence.removeprefix('#').replace('-', ' ')}]({evidence})"
            else:
                run_id = record.stage_run_ids.get(stage, "")
                url = f"{ui}/#/experiments/{record.experiment_id}/runs/{run_id}/artifacts/{evidence}"
                link = f"[{evidence}]({url})"
            warn = c.get("warn_threshold")
            rows.append(
                CheckRow(
                    key=c["key"],
                    title=c["title"],
                    status=c["status"],
                    condition=c["condition"],
                    value=_fmt(value),
                    threshold=_fmt(c["threshold"]) + (f" (warn {_fmt(warn)})" if warn not in (None, "") else ""),
                    metric=c["metric"],
                    note=c.get("note", ""),
                    interval=tuple(c["interval"]) if c.get("interval") else None,  # JSON holds a list
                    evidence=link,
                )
            )
    return rows


def run_waivers(record: RunRecord) -> tuple[Waiver, ...]:
    """The waivers on the run that still apply (their check is still inconclusive)."""
    return tuple(held(record.tags).values())


def run_decision(record: RunRecord) -> Decision:
    """The decision the report opens with (`auditflow.audits.decision`)."""
    return decide(
        run_id=record.run_id,
        overall=overall_verdict(record),
        gate=record.summaries.get(Stage.RELEASE),
        checks=[c for stage in STAGES for c in record.checks.get(stage, [])],
        waivers=run_waivers(record),
    )


def report_context(record: RunRecord) -> dict[str, Any]:
    """Everything the templates show, with figures as base64 PNGs."""
    s = record.summaries
    figures: dict[str, str] = {}
    if any(record.history.values()):
        figures["curves"] = _png_b64(plots.curves_figure(record.history))
    if Stage.EVALUATE in s:
        evaluate = s[Stage.EVALUATE]
        figures["confusion"] = _png_b64(plots.confusion_figure(evaluate["confusion"], evaluate["classes"]))
        cal = evaluate.get("calibration")
        if cal:
            figures["reliability"] = _png_b64(plots.reliability_figure(cal["before"], cal["after"], cal["temperature"]))
    if Stage.FAIRNESS in s:
        fairness = s[Stage.FAIRNESS]
        figures["recall"] = _png_b64(
            plots.recall_figure(fairness["per_class"], fairness["thresholds"]["min_class_recall"])
        )
    if Stage.TRANSPARENCY in s and s[Stage.TRANSPARENCY]["deletion"]["attributed"]:
        d = s[Stage.TRANSPARENCY]["deletion"]
        figures["deletion"] = _png_b64(plots.deletion_figure(d["fractions"], d["attributed"], d["random"]))
    for name, image in (
        ("attribution_maps", Transparency.MEAN_MAPS_PNG),
        ("attribution_examples", Transparency.EXAMPLES_PNG),
    ):
        if image in record.images:
            figures[name] = base64.b64encode(record.images[image]).decode()
    if Stage.PRIVACY in s:
        p = s[Stage.PRIVACY]
        if "attacks" in p:  # runs before the reference-model tiers have one loss curve only
            curves = {a["label"]: (a["roc_fpr"], a["roc_tpr"], a["auc"]) for a in p["attacks"]}
            figures["roc"] = _png_b64(plots.roc_figure(curves))
            figures["exposure"] = _png_b64(plots.exposure_figure(p["exposure"], p["strongest"]))
        if p.get("loss_histogram"):
            figures["loss_histogram"] = _png_b64(plots.loss_histogram_figure(**p["loss_histogram"]))
    benchmark = s.get(Stage.BENCHMARK, {})
    if "recommendation" in benchmark and benchmark["rows"]:  # older runs: table only
        figures["throughput"] = _png_b64(plots.throughput_figure(benchmark["rows"]))
    if Ingest.EXAMPLES_PNG in record.images:
        figures["examples"] = base64.b64encode(record.images[Ingest.EXAMPLES_PNG]).decode()
    if Evaluate.MISTAKES_PNG in record.images:
        figures["mistakes"] = base64.b64encode(record.images[Evaluate.MISTAKES_PNG]).decode()
    failed = [stage for stage, st in record.stage_status.items() if st != "FINISHED"]
    ui_url = record.config.get("tracking", {}).get("ui_url")
    verdict = overall_verdict(record)
    waivers = run_waivers(record)
    return {
        "run": record,
        "study": record.study,
        "s": s,
        "m": record.stage_metrics,
        "cfg": record.config,
        "figures": figures,
        "checks": check_rows(record),
        "failed_stages": failed,
        "missing_stages": [st for st in STAGES if st not in s],
        "overall": verdict,
        "run_link": run_url(record.uri, record.experiment_id, record.run_id, ui_url=ui_url),
        "experiment_link": run_url(record.uri, record.experiment_id, None, ui_url=ui_url),
        "local_store": not record.uri.startswith(("http://", "https://")) and not ui_url,
        "versions": {k: v for k, v in sorted(record.tags.items()) if k.startswith("versions.")},
        "gate": s.get(Stage.RELEASE),
        "decision": run_decision(record),
        "waivers": waivers,
    }


def _env(autoescape: bool = False) -> Environment:
    env = environment(autoescape)
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{v:.2%}"
    env.filters["f3"] = lambda v: "n/a" if v is None else f"{v:.3f}"
    env.filters["ci"] = lambda v: "n/a" if not v else f"[{v[0]:.3f}, {v[1]:.3f}]"
    return env


def render(record: RunRecord) -> tuple[str, str, str, dict[str, bytes]]:
    """(html, markdown, summary markdown, figure PNGs by name) of one run.

    One Markdown template serves both files: the HTML is that Markdown converted, with the
    figures embedded as data URIs so the file stands alone.
    """
    ctx = report_context(record)
    md = _env().get_template("report.md.j2").render(embed=False, **ctx)
    # Values (class folder names, paths, run names) may come from untrusted archives: escape
    # them before Markdown passes raw HTML through.
    body = markdown_html(
        _env(autoescape=True).get_template("report.md.j2").render(embed=True, **ctx), MARKDOWN_EXTENSIONS
    )
    body = STATUS_CELL.sub(r'<td class="status status-\1"><strong>\1</strong></td>', body)
    html_env = Environment(loader=PackageLoader("auditflow.audits", "templates"), autoescape=True)
    html = html_env.get_template("document.html.j2").render(
        title=f"auditflow report: {record.name}", badge=ctx["overall"], decision=ctx["decision"], body=Markup(body)
    )
    pngs = {name: base64.b64decode(data) for name, data in ctx["figures"].items()}
    return html, md, _env().get_template("summary.md.j2").render(**ctx), pngs


def write_pdf(html: Path, pdf: Path) -> str:
    """Print `html` to `pdf` with WeasyPrint (no browser); "" on success, else why not."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as err:  # OSError: pango/gobject system libraries missing
        return f"no PDF: WeasyPrint cannot run here ({err}); print the HTML instead (README, Report)"
    HTML(filename=str(html)).write_pdf(str(pdf))
    return ""


def build_report(record: RunRecord, out_dir: str | Path, pdf: bool | None = None) -> ReportFiles:
    """Write `report.html`, `report.md`, `report.pdf`, `figures/*.png`, and the model card and
    datasheet (`.html`, `.md`, `.json`) into `out_dir`. `pdf`: None = as the run's config says
    (`report.pdf`; runs made before that key print one)."""
    if pdf is None:
        pdf = bool(record.config.get("report", {}).get("pdf", True))
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    html, md, summary, pngs = render(record)
    (out / "report.html").write_text(html)
    (out / "report.md").write_text(md)
    figures = tuple(out / "figures" / f"{name}.png" for name in sorted(pngs))
    for path in figures:
        path.write_bytes(pngs[path.stem])
    examples = {"examples": base64.b64encode(pngs["examples"]).decode()} if "examples" in pngs else {}
    documents = (*write_model_card(record, out).values(), *write_datasheet(record, out, examples).values())
    note = write_pdf(out / "report.html", out / "report.pdf") if pdf else "no PDF: report.pdf is false for this run"
    if note:
        log.warning(note)
    return ReportFiles(
        html=out / "report.html",
        markdown=out / "report.md",
        summary_markdown=summary,
        pdf=None if note else out / "report.pdf",
        pdf_note=note,
        documents=tuple(documents),
        figures=figures,
        decision=run_decision(record),
    )
