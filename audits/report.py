"""The audit report: one self-contained HTML file (plots embedded) and a Markdown twin.

`build_report` reads a `RunRecord` (what `Tracker.load_run` read back from MLflow) and
nothing else, so the pipeline's last stage and `auditflow report RUN_ID` are the same code.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markdown
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from auditflow.audits import plots
from auditflow.core.tracking import RunRecord

STAGES = ("ingest", "train", "evaluate", "fairness", "privacy", "export", "benchmark")


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    markdown: Path
    summary_markdown: str  # the verdict table alone, for a Prefect artifact


def _png_b64(fig: Any) -> str:
    return base64.b64encode(plots.to_png(fig)).decode()


def _verdicts(s: dict[str, dict[str, Any]], status: dict[str, str]) -> list[dict[str, str]]:
    rows = []
    ev = s.get("evaluate")
    if ev and "learning" in ev:
        learned = ev["learning"]
        rows.append(
            {
                "check": "Model learned (test accuracy above chance)",
                "result": learned["message"],
                "verdict": "pass" if learned["verdict"] == "pass" else "FAIL",
            }
        )
    rows.append(
        {
            "check": "Test accuracy",
            "result": f"{ev['accuracy']:.2%}" if ev else "missing",
            "verdict": "info" if ev else "missing",
        }
    )
    for stage, label in (("fairness", "Per-class fairness"), ("privacy", "Membership privacy")):
        r = s.get(stage)
        if r is None:
            rows.append({"check": label, "result": status.get(stage, "not run"), "verdict": "missing"})
        else:
            rows.append(
                {
                    "check": label,
                    "result": "; ".join(r["reasons"]) or "within thresholds",
                    "verdict": "pass" if r["passed"] else "FAIL",
                }
            )
    ex = s.get("export")
    rows.append(
        {
            "check": "ONNX parity",
            "verdict": ("pass" if ex["passed"] else "FAIL") if ex else "missing",
            "result": f"max abs logit diff {ex['max_abs_diff']:.2e}, top-1 agreement {ex['top1_agreement']:.2%}"
            if ex
            else "missing",
        }
    )
    for v in (ex or {}).get("variants", []):
        rows.append(
            {
                "check": f"ONNX {v['variant']} variant (loads everywhere, accuracy kept)",
                "verdict": "pass" if v["verdict"] == "pass" else "FAIL",
                "result": f"{v['accuracy_drop']:+.2f} accuracy points lost (limit {v['max_accuracy_drop']}), "
                f"top-1 agreement {v['top1_agreement']:.2%}" + "".join(f"; {r}" for r in v["reasons"]),
            }
        )
    return rows


def report_context(record: RunRecord) -> dict[str, Any]:
    """Everything the templates show, with figures as base64 PNGs."""
    s = record.summaries
    figures: dict[str, str] = {}
    if record.history:
        figures["curves"] = _png_b64(plots.curves_figure(record.history))
    if "evaluate" in s:
        figures["confusion"] = _png_b64(plots.confusion_figure(s["evaluate"]["confusion"], s["evaluate"]["classes"]))
    if "fairness" in s:
        figures["recall"] = _png_b64(
            plots.recall_figure(s["fairness"]["per_class"], s["fairness"]["thresholds"]["min_class_recall"])
        )
    if "privacy" in s:
        p = s["privacy"]
        figures["roc"] = _png_b64(plots.roc_figure(p["roc_fpr"], p["roc_tpr"], p["auc"]))
    if "recommendation" in s.get("benchmark", {}) and s["benchmark"]["rows"]:  # older runs: table only
        figures["throughput"] = _png_b64(plots.throughput_figure(s["benchmark"]["rows"]))
    verdicts = _verdicts(s, record.stage_status)
    failed = [stage for stage, st in record.stage_status.items() if st != "FINISHED"]
    return {
        "run": record,
        "s": s,
        "cfg": record.config,
        "figures": figures,
        "verdicts": verdicts,
        "failed_stages": failed,
        "missing_stages": [st for st in STAGES if st not in s],
        "overall": "FAIL" if any(v["verdict"] in ("FAIL", "missing") for v in verdicts) or failed else "pass",
        "versions": {k: v for k, v in sorted(record.tags.items()) if k.startswith("versions.")},
    }


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("auditflow.audits", "templates"),
        undefined=StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{v:.2%}"
    env.filters["f3"] = lambda v: "n/a" if v is None else f"{v:.3f}"
    env.filters["ci"] = lambda v: "n/a" if not v else f"[{v[0]:.3f}, {v[1]:.3f}]"
    return env


def render(record: RunRecord) -> tuple[str, str, str, dict[str, bytes]]:
    """(html, markdown, summary markdown, figure PNGs by name) of one run.

    One Markdown template serves both files: the HTML is that Markdown converted, with the
    figures embedded as data URIs so the file stands alone.
    """
    env = _env()
    ctx = report_context(record)
    md = env.get_template("report.md.j2").render(embed=False, **ctx)
    # Values (class folder names, paths, run names) may come from untrusted archives: escape
    # them before Markdown passes raw HTML through.
    escaping = _env()
    escaping.autoescape = True
    body = markdown.markdown(
        escaping.get_template("report.md.j2").render(embed=True, **ctx), extensions=["tables", "sane_lists"]
    )
    html_env = Environment(loader=PackageLoader("auditflow.audits", "templates"), autoescape=True)
    html = html_env.get_template("report.html.j2").render(title=record.name, overall=ctx["overall"], body=Markup(body))
    pngs = {name: base64.b64decode(data) for name, data in ctx["figures"].items()}
    return html, md, env.get_template("summary.md.j2").render(**ctx), pngs


def build_report(record: RunRecord, out_dir: str | Path) -> ReportFiles:
    """Write `report.html`, `report.md` and `figures/*.png` into `out_dir`."""
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    html, md, summary, pngs = render(record)
    (out / "report.html").write_text(html)
    (out / "report.md").write_text(md)
    for name, data in pngs.items():
        (out / "figures" / f"{name}.png").write_bytes(data)
    return ReportFiles(html=out / "report.html", markdown=out / "report.md", summary_markdown=summary)
