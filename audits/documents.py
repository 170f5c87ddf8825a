"""What the model card and the datasheet share: numbers that carry their MLflow source, and
rendering one document dict to Markdown, standalone HTML and JSON.

Every number on a card is a `Number`: the value as MLflow holds it, plus the stage run and
metric it was read from, so a test (and a sceptical reader) can check each one against the
store. The Markdown and HTML show the same values, formatted by the templates.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import markdown
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from auditflow.core import names
from auditflow.core.tracking import RunRecord


def number(record: RunRecord, stage: str, metric: str) -> dict[str, Any] | None:
    """`{"value", "stage", "metric"}` of metric `metric` of stage run `stage` (`parent` for the
    pipeline run), or None when the run did not log it."""
    source = record.metrics if stage == "parent" else record.stage_metrics.get(stage, {})
    value = source.get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return {"value": value, "stage": stage, "metric": metric}


def numbers_in(doc: Any) -> list[dict[str, Any]]:
    """Every `number` in a nested document, depth first."""
    if isinstance(doc, dict):
        if {"value", "stage", "metric"} <= doc.keys():
            return [doc]
        return [n for v in doc.values() for n in numbers_in(v)]
    if isinstance(doc, list):
        return [n for v in doc for n in numbers_in(v)]
    return []


def md_cell(value: Any) -> str:
    """Text safe inside a Markdown table cell: `|` escaped, no line breaks."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _fmt(n: dict[str, Any] | None, spec: str = ".3f") -> str:
    if n is None:
        return "n/a"
    if spec == "pct":
        return f"{n['value']:.2%}"
    if spec == "int":
        return f"{round(n['value']):,}"
    return f"{n['value']:{spec}}"


def show(value: Any) -> str:
    """A logged value as text: 4 significant digits for floats, "not logged" for None."""
    if value is None:
        return "not logged"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def registered_name(configured: str | None, experiment_name: str | None) -> str:
    """The name a run's model is registered under (and shown as on its card): `release.model_name`,
    else the run's experiment name."""
    return configured or experiment_name or "auditflow"


def environment(autoescape: bool = False) -> Environment:
    """The Jinja environment of every Markdown template (report, card, datasheet, gate); escape
    HTML (`autoescape`) when the Markdown is rendered for an HTML page. Templates read metric
    and tag names from the names module, as `names` (`m.evaluate[names.Evaluate.TEST_ACCURACY]`)."""
    env = Environment(
        loader=PackageLoader("auditflow.audits", "templates"),
        undefined=StrictUndefined,
        autoescape=autoescape,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = _fmt
    env.filters["cell"] = md_cell
    env.filters["show"] = show
    env.globals["names"] = names
    return env


# Markdown escapes `&` again inside code: the `&#34;` that autoescaping made of a quote would show
# as `&#34;` in a code block (a pasted snippet is then a syntax error). One pass undoes exactly that
# second escape; `<` stays `&lt;`, so no value of the user's can become a tag.
_DOUBLE_ESCAPED = re.compile(r"&amp;(#34|#39|amp|lt|gt|quot);")


def markdown_html(escaped_markdown: str, extensions: list[str]) -> str:
    """HTML of Markdown whose values were HTML-escaped by the template (`environment(True)`)."""
    return _DOUBLE_ESCAPED.sub(r"&\1;", markdown.markdown(escaped_markdown, extensions=extensions))


def render_document(template: str, doc: dict[str, Any], *, title: str, figures: dict[str, str]) -> tuple[str, str]:
    """(Markdown, standalone HTML) of document `doc` through Markdown template `template`;
    `figures` are base64 PNGs, linked from the Markdown and embedded in the HTML."""
    md = environment().get_template(template).render(doc=doc, figures=figures, embed=False)
    # escaped for HTML: values come from user data (class folders, config text)
    body = markdown_html(
        environment(autoescape=True).get_template(template).render(doc=doc, figures=figures, embed=True),
        ["tables", "sane_lists", "fenced_code"],
    )
    page = Environment(loader=PackageLoader("auditflow.audits", "templates"), autoescape=True)
    html = page.get_template("document.html.j2").render(title=title, body=Markup(body), badge=None)
    return md, html


def write_document(out: Path, stem: str, *, md: str, html: str, doc: dict[str, Any]) -> dict[str, Path]:
    """`<stem>.md`, `<stem>.html` and `<stem>.json` in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"markdown": out / f"{stem}.md", "html": out / f"{stem}.html", "json": out / f"{stem}.json"}
    files["markdown"].write_text(md)
    files["html"].write_text(html)
    files["json"].write_text(json.dumps(doc, indent=2, default=str))
    return files
