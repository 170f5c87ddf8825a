"""The review experience: the report in a real browser, the MLflow UI of a finished run, the
model card and datasheet against MLflow, and the naming scheme on every run.

The session's one tiny pipeline run (conftest `shared_run`) on toy data whose first class is
named `circle|disc`, so a stray `|` in a Markdown table would split its cells, and whose model
card owner holds one too.
Screenshots are kept under pytest's tmp dir and copied to `test-artifacts/` (git-ignored).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from browser import chromium, chromium_binary
from run_keys import OWNER, PIPED_CLASS

from auditflow.audits.documents import md_cell, numbers_in
from auditflow.core.checks import judge, overall, verdicts
from auditflow.core.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, NOTE_TAG, metric_key
from auditflow.supervise import mlflow_ui_command

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HEADLINE = (
    "evaluate/test_accuracy",
    "evaluate/test_accuracy_no_tta",
    "evaluate/test_ece_calibrated",
    "evaluate/temperature",
    "fairness/worst_class_recall",
    "fairness/recall_gap",
    "privacy/loss/auc",
    "privacy/strongest/auc",
    "export/parity/max_abs_diff",
    "train/final_val_accuracy",
)
VERDICTS = (
    "learning",
    "calibration",
    "fairness",
    "fairness_subgroups",
    "privacy",
    "privacy_strength",
    "privacy_design",
    "onnx_parity",
    "onnx_fp32",
    "onnx_int8",
    "overall",
)
needs_chromium = pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed (.ci/run installs it)")


def keep(path: Path) -> Path:
    """Copy a screenshot to test-artifacts/, where CI and people find it."""
    ARTIFACTS.mkdir(exist_ok=True)
    return Path(shutil.copy2(path, ARTIFACTS / path.name))


@pytest.fixture
def reviewed_run(shared_run):
    """(PipelineResult, Tracker, RunRecord, work folder) of the session's shared run."""
    return shared_run


# ------------------------------------------------------------------ fast unit tests
def test_judge_and_overall_at_their_edges() -> None:
    assert judge(0.5, 0.5, higher_is_better=True) == "pass"
    assert judge(0.4999, 0.5, higher_is_better=True) == "fail"
    assert judge(0.15, 0.15, higher_is_better=False, warn=0.05) == "warn"
    assert judge(0.05, 0.15, higher_is_better=False, warn=0.05) == "pass"
    assert judge(0.1501, 0.15, higher_is_better=False, warn=0.05) == "fail"
    assert judge(None, 0.1, higher_is_better=True) == "inconclusive"
    assert overall(["pass", "warn"]) == "pass" and overall(["pass", "inconclusive"]) == "inconclusive"
    assert overall(["inconclusive", "fail"]) == "fail" and overall(["pass"], missing=True) == "fail"
    rows = [{"verdict": "fairness", "status": "pass"}, {"verdict": "fairness", "status": "fail"}]
    assert verdicts(rows) == {"fairness": "fail"}


def test_markdown_cells_escape_pipes_and_metric_keys_are_legal() -> None:
    assert md_cell("max |diff| 1e-3") == "max \\|diff\\| 1e-3"
    assert md_cell("a\nb") == "a b"
    assert metric_key("evaluate", "recall", "class", "cat's|dog") == "evaluate/recall/class/cat_s_dog"


def test_duplicate_check_finds_exact_and_near_copies() -> None:
    from auditflow.audits.datasheet import duplicate_check

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    near = np.clip(train[3].astype(int) + rng.integers(-2, 3, train[3].shape), 0, 255).astype(np.uint8)
    other = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    result = duplicate_check(train, np.stack([train[0], near, other]), max_distance=4)
    assert (result.exact, result.near, result.n_test) == (1, 2, 3)  # the exact copy is also near


def test_temperature_scaling_recovers_a_known_temperature() -> None:
    from auditflow.models.evaluation.calibration import calibrate, fit_temperature

    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, (4000, 5))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])  # calibrated at z: logits 3 z need T = 3
    assert fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.1)
    result = calibrate(3 * z[:2000], labels[:2000], test_logits=3 * z[2000:], test_labels=labels[2000:], n_bins=15)
    assert result.ece_after < result.ece_before and result.nll_after < result.nll_before


# ------------------------------------------------------------------ the tiny run
@pytest.mark.slow
def test_every_run_follows_the_naming_scheme_and_the_parent_has_the_headline(reviewed_run) -> None:
    result, tracker, record, _ = reviewed_run
    experiment = tracker.client.get_experiment(record.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    parent = tracker.get_run(result.run_id)
    runs = [parent, *tracker.children(parent).values()]
    for run in runs:
        assert run.data.tags.get(NOTE_TAG), f"{run.info.run_name} has no description"
        bare = [k for k in run.data.metrics if "/" not in k]
        assert not bare, f"{run.info.run_name}: metrics without a stage prefix {bare}"
    for key in HEADLINE:
        assert key in parent.data.metrics, key
    for name in VERDICTS:
        assert parent.data.tags[f"verdict/{name}"] in ("pass", "warn", "fail", "inconclusive"), name
    assert parent.data.tags["verdict/overall"] == result.overall
    assert parent.data.metrics["evaluate/test_accuracy_no_tta"] == pytest.approx(result.test_accuracy_no_tta)
    children = tracker.children(parent)
    for stage in ("train", "evaluate", "fairness", "transparency", "privacy", "export", "benchmark"):
        assert children[stage].inputs.dataset_inputs, f"{stage} names no dataset"
    assert {t.value for i in parent.inputs.dataset_inputs for t in i.tags} == {"train", "validation", "test"}
    # the class with a pipe logs under a legal key
    assert metric_key("evaluate", "recall", "class", PIPED_CLASS) in children["evaluate"].data.metrics
    # the card travels with the model
    assert "onnx/model_card.json" in {
        a.path for a in tracker.client.list_artifacts(children["export"].info.run_id, "onnx")
    }


@pytest.mark.slow
def test_card_and_datasheet_numbers_equal_the_mlflow_values(reviewed_run) -> None:
    _, tracker, record, _ = reviewed_run
    folder = Path(reviewed_run[0].report_html).parent
    for stem, least in (("model_card", 8), ("datasheet", 12)):
        doc = json.loads((folder / f"{stem}.json").read_text())
        found = numbers_in(doc)
        assert len(found) >= least, stem
        md = (folder / f"{stem}.md").read_text()
        for n in found:
            run_id = record.run_id if n["stage"] == "parent" else record.stage_run_ids[n["stage"]]
            logged = tracker.client.get_run(run_id).data.metrics[n["metric"]]
            assert n["value"] == logged, (stem, n)
        for key in ("model_card", "datasheet"):
            assert (folder / f"{key}.html").is_file() and (folder / f"{key}.md").is_file()
        assert md.count("|") > 10
    card = json.loads((folder / "model_card.json").read_text())
    assert card["model_details"]["owners"] == [OWNER]
    assert OWNER.replace("|", "\\|") in (folder / "model_card.md").read_text()  # escaped in its table cell
    shipped = record.stage_metrics["evaluate"]["evaluate/test_accuracy_no_tta"]
    assert card["metrics"][0]["value"]["value"] == shipped and "no TTA" in card["metrics"][0]["name"]
    assert card["output"]["postprocessing"]["temperature"]["metric"] == "evaluate/temperature"
    assert "onnxruntime" in card["how_to_use"] and "InferenceSession" in card["how_to_use"]
    # the snippet pastes: the HTML page's code block, as a browser shows it, is valid Python (issue 19
    # found `&#34;model.onnx&#34;` in it); the model has the registry's name and version
    page = (folder / "model_card.html").read_text()
    [snippet] = re.findall(r'<pre><code class="language-python">(.*?)</code></pre>', page, re.S)
    compile(html.unescape(snippet), "model_card.html", "exec")
    registered = record.tags["release/model"]  # "<name> v<version>"
    assert f"{card['model_details']['name']} v{card['model_details']['version'].split()[0]}" == registered
    transparency = card["transparency"]
    assert transparency["shortcut_check"] == record.tags["verdict/transparency"]
    assert transparency["classes_flagged_count"]["metric"] == "transparency/shortcut_classes"
    assert len(transparency["classes_flagged"]) == transparency["classes_flagged_count"]["value"]
    assert "Shortcut check: **" in (folder / "model_card.md").read_text()
    sheet = json.loads((folder / "datasheet.json").read_text())
    assert [r["class"] for r in sheet["composition"]["per_class"]] == [PIPED_CLASS, "square", "stripes"]
    assert sheet["duplicates"]["near"]["metric"] == "ingest/near_duplicates"


@pytest.mark.slow
def test_report_pdf_is_printed_with_page_numbers(reviewed_run) -> None:
    result = reviewed_run[0]
    assert result.report_pdf is not None, "WeasyPrint could not run"
    pdf = Path(result.report_pdf).read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    from weasyprint import HTML

    pages = HTML(filename=result.report_html).render().pages
    assert len(pages) >= 2

    def texts(box) -> list[str]:
        return [getattr(box, "text", "") or "", *(t for child in getattr(box, "children", []) for t in texts(child))]

    margins = [b for b in pages[1]._page_box.children if type(b).__name__ == "MarginBox"]  # WeasyPrint's page boxes
    assert f"page 2 of {len(pages)}" in [t for box in margins for t in texts(box)]
    html = Path(result.report_html).read_text()
    assert "@bottom-center" in html and "counter(page)" in html and "break-after: avoid" in html


@pytest.mark.slow
@needs_chromium
def test_report_renders_in_chromium(reviewed_run, tmp_path: Path) -> None:
    result, _, record, _ = reviewed_run
    with chromium(width=1280, height=1000) as page:
        page.goto(Path(result.report_html).as_uri())
        images = page.js("Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert images and all(ok for _, ok in images), f"broken images: {images}"
        tables = page.js(
            """Array.from(document.querySelectorAll('table')).map(t => ({
                 head: Array.from(t.querySelectorAll('thead th')).map(c => c.innerText.trim()),
                 rows: Array.from(t.querySelectorAll('tbody tr')).map(
                     r => Array.from(r.children).map(c => c.innerText.trim()))}))"""
        )
        for table in tables:
            for row in table["rows"]:
                assert len(row) == len(table["head"]), f"a cell was split: {table['head']} vs {row}"
        cells = [cell for table in tables for row in table["rows"] for cell in row]
        assert PIPED_CLASS in cells  # the class name stays whole in its cell
        checks = next(t for t in tables if t["head"][:5] == ["check", "status", "condition", "value", "threshold"])
        assert len(checks["rows"]) >= 8
        for row in checks["rows"]:
            _, status, _, value, threshold, evidence = row
            assert status in ("pass", "warn", "fail", "inconclusive"), row
            assert value and threshold and evidence, row
            # a check with nothing to measure (no subgroup large enough on toy data) never passes
            assert value != "not measured" or status == "inconclusive", row
        # the transparency section: its heading, the shortcut table with a row per class, its figures
        assert page.js("!!document.getElementById('transparency') && !!document.getElementById('shortcut-check')")
        shortcut = next(t for t in tables if "rise [interval]" in t["head"])
        assert len(shortcut["rows"]) == 3 and {r[1] for r in shortcut["rows"]} <= {"pass", "fail", "inconclusive"}
        alts = [alt for alt, _ in images]
        assert "deletion curve: most attributed first against random" in alts
        shown = record.summaries["transparency"]["sanity"]["shown"]
        assert ("mean attribution map per class with the shortcut window" in alts) == shown
        badge = page.js("document.getElementById('overall-verdict').dataset.verdict")
        assert badge == record.tags["verdict/overall"] == result.overall
        anchors = page.js("Array.from(document.querySelectorAll('a[href^=\"#\"]')).map(a => a.getAttribute('href'))")
        assert anchors and all(page.js(f"!!document.getElementById('{a[1:]}')") for a in set(anchors)), anchors
        shot = page.screenshot(tmp_path / "report-first-page.png", full_page=False)
        full = page.screenshot(tmp_path / "report-full.png")
        assert page.errors == [], page.errors
    keep(shot), keep(full)
    assert shot.stat().st_size > 10_000


@pytest.mark.slow
@needs_chromium
def test_the_first_screen_states_the_decision_and_420_px_never_scrolls_sideways(reviewed_run, tmp_path: Path) -> None:
    """Issue 19: at 1400x900 the first screen holds the decision, its reasons and the next step,
    in one badge that agrees with them; at 420 px wide the page has no horizontal scroll (a wide
    table scrolls inside itself)."""
    result = reviewed_run[0]
    decision = result.decision
    with chromium(width=1400, height=900) as page:
        page.goto(Path(result.report_html).as_uri())
        seen = page.js(
            """(() => { const h = document.getElementById('decision'); const out = [];
                 for (let e = h; e && (e === h || e.tagName !== 'H2'); e = e.nextElementSibling)
                   if (e.getBoundingClientRect().top < innerHeight) out.push(e.innerText);
                 return out.join('\\n'); })()"""
        )
        badge = page.js("document.getElementById('decision-badge').dataset.decision")
        shot = page.screenshot(tmp_path / "report-1400x900.png", full_page=False)
    assert badge == decision.outcome
    assert decision.headline in seen
    assert "Next:" in seen and decision.next_steps[0].split("`")[0].strip() in seen
    with chromium(width=420, height=900) as page:
        page.goto(Path(result.report_html).as_uri())
        widths = page.js("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        narrow = page.screenshot(tmp_path / "report-420.png", full_page=False)
    assert widths[0] <= widths[1] == 420, widths
    keep(shot), keep(narrow)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(reviewed_run, tmp_path: Path):
    """`auditflow ui`'s MLflow server on a free loopback port over the tiny run's store."""
    workdir = reviewed_run[3]
    port = _free_port()
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115 (closed below)
    command = mlflow_ui_command(workdir, host="127.0.0.1", port=port)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}"
                )
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.slow
@needs_chromium
def test_mlflow_ui_opens_in_the_training_view_with_the_headline_in_the_runs_table(
    reviewed_run, mlflow_server: str, tmp_path: Path
) -> None:
    from auditflow.core.tracking import run_url

    _, _, record, _ = reviewed_run
    # The same REST call the UI makes for the experiment page: the kind tag is there.
    with urllib.request.urlopen(
        f"{mlflow_server}/api/2.0/mlflow/experiments/get?experiment_id={record.experiment_id}"
    ) as r:
        tags = {t["key"]: t["value"] for t in json.load(r)["experiment"]["tags"]}
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    shown = {"evaluate/test_accuracy_no_tta", "fairness/worst_class_recall", "privacy/loss/auc"}
    with chromium(width=1900, height=1000) as page:
        page.goto(run_url(mlflow_server, record.experiment_id))  # the link the report and the CLI print
        page.wait_for("location.hash.includes('/runs') && document.querySelectorAll('[role=gridcell]').length > 0")
        assert "workflowType=machine_learning" in page.js("location.hash")
        nav = page.js("document.body.innerText")
        assert "Runs" in nav and "Token Usage" not in nav  # the model-training view, not GenAI's overview
        assert record.name in page.js(
            "Array.from(document.querySelectorAll('[role=gridcell]')).map(c => c.innerText).join(' ')"
        )
        # A reviewer adds the headline metrics as columns (MLflow 3.17 shows attributes only by default).
        page.js("Array.from(document.querySelectorAll('button')).find(b => b.innerText.trim() === 'Columns').click()")
        page.wait_for("!!document.querySelector('[role=dialog] input')")
        for key in sorted(shown):
            page.js("(() => { const i = document.querySelector('[role=dialog] input'); i.focus(); i.select(); })()")
            page.call("Input.insertText", text=key)  # the column selector's search box
            node = (
                "Array.from(document.querySelectorAll('[role=dialog] .du-bois-light-tree-treenode'))"
                f".find(n => n.innerText.trim() === {json.dumps(key)})"
            )
            page.wait_for(f"!!{node}")
            page.js(f"{node}.querySelector('.du-bois-light-tree-checkbox').click()")
        page.call("Input.dispatchKeyEvent", type="keyDown", key="Escape", code="Escape", windowsVirtualKeyCode=27)
        cells = page.wait_for(
            "(() => { const c = Array.from(document.querySelectorAll('[role=gridcell]'))"
            ".filter(c => (c.getAttribute('col-id') || '').startsWith('metrics.'));"
            " return c.length ? c.map(x => [x.getAttribute('col-id'), x.innerText.trim()]) : null })()",
            timeout=30,
        )
        shot = page.screenshot(tmp_path / "mlflow-runs-table.png", full_page=False)
    keep(shot)
    by_column: dict[str, list[str]] = {}
    for column, text in cells:
        by_column.setdefault(column, []).append(text)
    for key in shown:
        column = f"metrics.`{key}`"
        assert column in by_column, (key, list(by_column))
        value = record.metrics[key]
        assert any(t and abs(float(t) - value) < 1e-3 for t in by_column[column] if t != "-"), (key, by_column[column])
