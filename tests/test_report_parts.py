"""The report's parts that need no store: the verdict and its tags, the checks table, the files
and where they are logged, and the names the templates read (`audits/report.py`,
`audits/documents.py`). Records are made by hand."""

from __future__ import annotations

from pathlib import Path

from auditflow.audits.documents import environment
from auditflow.audits.report import (
    STAGES,
    CheckRow,
    ReportFiles,
    check_rows,
    gating_verdicts,
    overall_tags,
    overall_verdict,
)
from auditflow.core.names import NOTE_TAG, Evaluate, Fairness, Report, Stage, Verdict, verdict_tag
from auditflow.core.tracking import RunRecord


def _record(**changes: object) -> RunRecord:
    record = RunRecord(
        run_id="r1",
        name="run",
        status="FINISHED",
        tags={},
        params={},
        metrics={},
        uri="sqlite:///x.db",
        experiment_id="7",
        summaries={stage: {} for stage in STAGES},
        stage_status=dict.fromkeys(STAGES, "FINISHED"),
        stage_run_ids={stage: f"id-{stage}" for stage in STAGES},
    )
    for key, value in changes.items():
        setattr(record, key, value)
    return record


def _check(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "key": "fairness/worst_class_recall",
        "verdict": Verdict.FAIRNESS,
        "title": "Worst-class recall",
        "condition": "worst-class recall ≥ 0.5",
        "stage": Stage.FAIRNESS,
        "metric": Fairness.WORST_CLASS_RECALL,
        "value": 0.1,
        "threshold": 0.5,
        "status": "pass",
        "evidence": "#fairness",
        "warn_threshold": None,
        "note": "",
        "interval": None,
    }
    return row | changes


def test_overall_tags_lead_the_description_once() -> None:
    first = overall_tags("pass", "auditflow pipeline run.")
    assert first == {
        verdict_tag(Verdict.OVERALL): "pass",
        NOTE_TAG: "**Overall verdict: pass.** auditflow pipeline run.",
    }
    again = overall_tags("fail", first[NOTE_TAG])  # a retried report stage replaces the lead
    assert again[NOTE_TAG] == "**Overall verdict: fail.** auditflow pipeline run."
    assert overall_tags("inconclusive", "")[NOTE_TAG] == "**Overall verdict: inconclusive.** "


def test_overall_verdict_leaves_the_release_gate_out_and_fails_a_missing_stage() -> None:
    tags = {verdict_tag(Verdict.FAIRNESS): "pass", verdict_tag(Verdict.RELEASE): "fail"}
    assert overall_verdict(_record(tags=tags)) == "pass"
    assert overall_verdict(_record(tags=tags | {verdict_tag(Verdict.PRIVACY): "inconclusive"})) == "inconclusive"
    assert overall_verdict(_record(tags=tags | {verdict_tag(Verdict.OVERALL): "fail"})) == "fail"  # the tag wins
    summaries = {stage: {} for stage in STAGES if stage != Stage.PRIVACY}
    assert overall_verdict(_record(tags=tags, summaries=summaries)) == "fail"
    failed = dict.fromkeys(STAGES, "FINISHED") | {Stage.EXPORT: "FAILED"}
    assert overall_verdict(_record(tags=tags, stage_status=failed)) == "fail"


def test_an_optional_onnx_variant_does_not_change_the_overall_verdict() -> None:
    """A variant that fails or is inconclusive is not recommended; the run's verdict stays."""
    tags = {verdict_tag(g): "pass" for g in (Verdict.FAIRNESS, Verdict.ONNX_PARITY, Verdict.onnx("fp32"))}
    for status in ("fail", "inconclusive"):
        with_variants = tags | {verdict_tag(Verdict.onnx("int8")): status, verdict_tag(Verdict.onnx("fp16")): status}
        assert overall_verdict(_record(tags=with_variants)) == "pass"
        assert gating_verdicts(with_variants) == {Verdict.FAIRNESS: "pass", Verdict.ONNX_PARITY: "pass",
                                                  Verdict.onnx("fp32"): "pass"}  # fmt: skip
    shipped_fails = tags | {verdict_tag(Verdict.onnx("fp32")): "fail"}  # the file that ships still gates
    assert overall_verdict(_record(tags=shipped_fails)) == "fail"


def test_check_rows_read_values_from_the_stage_metrics_in_stage_order() -> None:
    checks = {
        Stage.FAIRNESS: [_check(warn_threshold=0.6, interval=(0.45, 0.7))],
        Stage.EVALUATE: [
            _check(key="evaluate/ece", stage=Stage.EVALUATE, metric=Evaluate.TEST_ECE_CALIBRATED, value=None,
                   evidence=Evaluate.RELIABILITY_PNG, note="after scaling"),
        ],
    }  # fmt: skip
    record = _record(checks=checks, stage_metrics={Stage.FAIRNESS: {Fairness.WORST_CLASS_RECALL: 0.55}})
    evaluate, fairness = check_rows(record)
    assert all(isinstance(row, CheckRow) for row in (evaluate, fairness))
    assert fairness.value == "0.55"  # what MLflow holds, not the value in the checks table
    assert fairness.threshold == "0.5 (warn 0.6)"
    assert fairness.interval == (0.45, 0.7)
    assert fairness.evidence == "[fairness](#fairness)"
    assert evaluate.value == "not measured" and evaluate.note == "after scaling"
    assert evaluate.evidence == (
        f"[{Evaluate.RELIABILITY_PNG}](http://127.0.0.1:5000/#/experiments/7/runs/id-evaluate/artifacts/"
        f"{Evaluate.RELIABILITY_PNG})"
    )


def test_report_files_say_where_each_file_is_logged(tmp_path: Path) -> None:
    card = tuple(tmp_path / f"model_card.{ext}" for ext in ("html", "md", "json"))
    sheet = tuple(tmp_path / f"datasheet.{ext}" for ext in ("html", "md", "json"))
    figures = (tmp_path / "figures" / "confusion.png",)
    files = ReportFiles(
        html=tmp_path / "report.html",
        markdown=tmp_path / "report.md",
        summary_markdown="",
        documents=card + sheet,
        figures=figures,
    )
    assert files.model_card == card
    assert files.artifacts() == [
        (tmp_path / "report.html", Report.FOLDER),
        (tmp_path / "report.md", Report.FOLDER),
        (figures[0], Report.FIGURES_FOLDER),
        *((path, Report.FOLDER) for path in card + sheet),
    ]
    with_pdf = ReportFiles(html=files.html, markdown=files.markdown, summary_markdown="", pdf=tmp_path / "report.pdf")
    assert (tmp_path / "report.pdf", Report.FOLDER) in with_pdf.artifacts()


def test_templates_read_names_from_the_names_module() -> None:
    template = environment().from_string('{{ m[names.Evaluate.TEST_ACCURACY] }} {{ names.verdict_tag("x") }}')
    assert template.render(m={"evaluate/test_accuracy": 0.5}) == "0.5 verdict/x"


def test_the_adjusted_file_has_a_card_of_its_own_numbers_and_the_plain_card_keeps_its_own() -> None:
    """Issue 19: the card `promote --variant adjusted` ships with describes model.adjusted.onnx:
    its accuracy and cost against the plain file, its probabilities' calibration, the recalls
    after the offsets, its model URI and file, and its own checks. Every number names the stage
    metric it was read from."""
    from auditflow.audits.documents import numbers_in
    from auditflow.audits.model_card import build_model_card, has_adjusted_file, render_model_card
    from auditflow.core.names import Export, Privacy

    def own(name: str) -> str:
        return Export.VARIANT.format(variant=Verdict.ADJUSTED_VARIANT, name=name)

    export = {
        "model_uri": "models:/m-plain",
        "files": {"fp32": "onnx/model.onnx", "adjusted": "onnx/model.adjusted.onnx"},
    }
    metrics = {
        Stage.EVALUATE: {Evaluate.TEST_ACCURACY_NO_TTA: 0.85, Evaluate.TEST_IMAGES: 1000.0},
        Stage.EXPORT: {own("accuracy"): 0.83, own("accuracy_drop_points"): 1.7,
                       own("accuracy_drop_points_ci_low"): 1.07, own("accuracy_drop_points_ci_high"): 2.41,
                       own("probabilities_ece"): 0.016},
        Stage.FAIRNESS: {Fairness.WORST_CLASS_RECALL: 0.69, Fairness.MITIGATION_WORST_CLASS_RECALL_AFTER: 0.76,
                         Fairness.MITIGATION_RECALL_GAP_AFTER: 0.177},
        Stage.PRIVACY: {Privacy.STRONGEST_AUC: 0.52},
    }  # fmt: skip
    tags = {verdict_tag(Verdict.onnx("adjusted")): "fail", verdict_tag(Verdict.FAIRNESS_ADJUSTED): "pass"}
    assert not has_adjusted_file(_record(summaries={Stage.EXPORT: export}, stage_metrics=metrics, tags=tags))
    adjusted = export | {"adjusted_model_uri": "models:/m-adjusted"}
    record = _record(summaries={Stage.EXPORT: adjusted}, stage_metrics=metrics, tags=tags)
    assert has_adjusted_file(record)
    plain = build_model_card(record)
    plain_md = render_model_card(record)[0]  # the plain card renders without the adjusted one's fields
    assert "This file's own checks" not in plain_md and "| file |" not in plain_md
    assert (
        plain["metrics"][0]["value"]["value"] == 0.85
        and plain["model_details"]["mlflow"]["model_uri"] == "models:/m-plain"
    )
    md, _, card = render_model_card(record, variant="adjusted")
    values = {row["name"].split(" (")[0]: row["value"] and row["value"]["value"] for row in card["metrics"]}
    assert values["top-1 accuracy, shipped model"] == 0.83
    assert values["accuracy points lost against the plain model.onnx"] == 1.7
    assert values["worst-class recall after the logit offsets"] == 0.76
    assert values["recall gap after the logit offsets"] == 0.177
    assert card["metrics"][1]["interval"][0]["value"] == 1.07  # the paired interval, from its metric
    assert any(row["name"].startswith("membership attack AUC") for row in card["metrics"])  # carried over
    assert card["model_details"]["mlflow"]["model_uri"] == "models:/m-adjusted"
    assert 'InferenceSession("model.adjusted.onnx"' in card["how_to_use"]
    assert card["checks"]["this_file"] == {"onnx_adjusted": "fail", "fairness_adjusted": "pass"}
    assert "This file's own checks: onnx_adjusted **fail**, fairness_adjusted **pass**" in md
    assert "model.adjusted.onnx: the same weights, with the fairness audit's per-class logit offsets" in md
    assert all(n["stage"] in STAGES and n["metric"] in metrics[n["stage"]] for n in numbers_in(card["metrics"]))
