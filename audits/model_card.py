"""The model card: the fields of the Model Card Toolkit and of Hugging Face model cards, built
from what MLflow holds for one pipeline run (`RunRecord`) and nothing else.

Sections: model details (name, version, date, owner, licence, citation, architecture),
intended and out-of-scope uses, input and output specification (the raw `logits` and the
calibrated `probabilities` output, with the temperature folded into the graph), metrics with
intervals, trade-offs, limitations with mitigations, the checks, and a "how to use" snippet
for the ONNX model. Rendered to Markdown, standalone HTML and JSON (the machine-readable
copy); every number is a `documents.number` carrying the stage run and metric it was read from.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from auditflow.audits.documents import md_cell, number, registered_name, render_document, write_document
from auditflow.core.checks import overall
from auditflow.core.names import (
    VERDICT_PREFIX,
    Benchmark,
    Evaluate,
    Export,
    Fairness,
    Privacy,
    Stage,
    Train,
    Transparency,
    Verdict,
    verdict_tag,
)
from auditflow.core.tracking import RunRecord, run_url

SNIPPET = """import numpy as np
import onnxruntime as ort

session = ort.InferenceSession("{file}", providers=["CPUExecutionProvider"])
images = np.zeros((1, {h}, {w}, 3), np.uint8)  # your images: uint8, N x {h} x {w} x 3 (RGB)
pixels = images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0  # N x 3 x {h} x {w} in [0, 1]
# N x {k} each: raw logits, and calibrated probabilities = softmax(logits / T), T = {t:.4f} inside the graph
logits, probabilities = session.run(["{output}", "{probabilities}"], {{"{input}": pixels}})
classes = {classes!r}
print([(classes[i], float(p[i])) for i, p in zip(probabilities.argmax(1), probabilities)])"""


def _transparency(record: RunRecord) -> dict[str, Any] | None:
    """The shortcut check's verdict and the classes it flagged, with their windows, and the
    explanation method with its sanity check; None for a run without the transparency stage."""
    t = record.summaries.get(Stage.TRANSPARENCY)
    if t is None:
        return None
    windows = {r["class"]: r["window"] for r in t["shortcut"]}
    return {
        "shortcut_check": record.tags.get(verdict_tag(Verdict.TRANSPARENCY), t["status"]),
        "classes_flagged": [{"class": c, "window": windows.get(c)} for c in t["flagged"]],
        "classes_flagged_count": number(record, Stage.TRANSPARENCY, Transparency.SHORTCUT_CLASSES),
        "method": t["method"],
        "sanity_rank_correlation": number(record, Stage.TRANSPARENCY, Transparency.SANITY_SPEARMAN),
        "sanity_check": t["sanity"]["status"],
        "maps_shown": t["sanity"]["shown"],
        "meaning": "flagged: occluding the class's window of most attribution removes much of its recall and "
        "pasting it onto other classes' images turns them into the class, each beyond a random window",
    }


def _verdicts(record: RunRecord) -> dict[str, str]:
    """Stage verdicts by check group (`verdict/overall` left out)."""
    return {
        k.removeprefix(VERDICT_PREFIX): v
        for k, v in record.tags.items()
        if k.startswith(VERDICT_PREFIX) and k != verdict_tag(Verdict.OVERALL)
    }


def _gating(verdicts: dict[str, str]) -> list[str]:
    """The statuses of the groups that count towards `verdict/overall` (`Verdict.gates`)."""
    return [v for group, v in verdicts.items() if Verdict.gates(group)]


def _metric(record: RunRecord, name: str, metric: str, *, interval: bool, what: str) -> dict[str, Any]:
    """One metrics row: `metric` of the stage its name starts with, and its `_ci_low`/`_ci_high`
    interval when `interval`."""
    stage = metric.split("/", 1)[0]
    entry: dict[str, Any] = {"name": name, "value": number(record, stage, metric), "measured_on": what}
    if interval:
        entry["interval"] = [number(record, stage, f"{metric}_ci_low"), number(record, stage, f"{metric}_ci_high")]
    return entry


def build_model_card(record: RunRecord) -> dict[str, Any]:
    """The model card of pipeline run `record` as a document dict."""
    s, cfg = record.summaries, record.config
    card, train_cfg = cfg.get("card", {}), cfg.get("train", {})
    ingest, evaluate, export = s.get(Stage.INGEST, {}), s.get(Stage.EVALUATE, {}), s.get(Stage.EXPORT, {})
    classes = ingest.get("classes", [])
    height, width = (ingest.get("image_shape") or [0, 0])[:2]
    name = card.get("model_name") or registered_name(cfg.get("release", {}).get("model_name"), record.experiment_name)
    date = datetime.fromtimestamp(record.start_time_ms / 1000, UTC).strftime("%Y-%m-%d") if record.start_time_ms else ""
    registered = (s.get(Stage.RELEASE) or {}).get("candidate", {}).get("version")
    version = card.get("version") or (f"{registered} (run {record.name})" if registered else record.name)
    url = run_url(record.uri, record.experiment_id, record.run_id, ui_url=cfg.get("tracking", {}).get("ui_url"))
    temperature = number(record, Stage.EVALUATE, Evaluate.TEMPERATURE)
    t_value = temperature["value"] if temperature else 1.0
    tta = bool(evaluate.get("tta"))
    shipped_file = (export.get("files") or {}).get("fp32", "onnx/model.onnx")
    probabilities = (export.get("output_names") or ["logits", "probabilities"])[-1]
    n_test = number(record, Stage.EVALUATE, Evaluate.TEST_IMAGES)
    on_test = f"test split ({n_test['value']:.0f} images)" if n_test else "test split"
    verdicts = _verdicts(record)
    privacy = record.summaries.get(Stage.PRIVACY, {})
    attack = privacy.get("strongest", "not run")
    fpr_text = f"{100 * privacy.get('verdict_fpr', 0.01):g}%"
    attacked = "training members vs test non-members"
    metrics = [
        _metric(record, "top-1 accuracy, shipped model (ONNX, no TTA)", Evaluate.TEST_ACCURACY_NO_TTA,
                interval=True, what=on_test),
        _metric(record, "top-1 accuracy with test-time augmentation (not shipped)" if tta else "top-1 accuracy",
                Evaluate.TEST_ACCURACY, interval=True, what=on_test),
        _metric(record, "expected calibration error of the raw logits (T = 1), shipped model",
                Evaluate.TEST_ECE_NO_TTA, interval=False, what=on_test),
        _metric(record, "expected calibration error of the shipped ONNX file's `probabilities` output (calibrated)",
                Export.SHIPPED_PROBABILITIES_ECE, interval=False, what=on_test),
        _metric(record, "worst-class recall", Fairness.WORST_CLASS_RECALL, interval=True, what=on_test),
        _metric(record, "recall gap (best minus worst class)", Fairness.RECALL_GAP, interval=True, what=on_test),
        _metric(record, f"membership attack TPR at {fpr_text} FPR, strongest attack ({attack}; chance = {fpr_text})",
                Privacy.STRONGEST_TPR_AT_VERDICT_FPR, interval=True, what=attacked),
        _metric(record, f"membership attack AUC, strongest attack ({attack}; 0.5 = chance)", Privacy.STRONGEST_AUC,
                interval=True, what=attacked),
    ]  # fmt: skip
    int8_drop = _metric(record, "", Export.INT8_ACCURACY_DROP_POINTS, interval=True, what="")
    int8_verdict = record.tags.get(verdict_tag(Verdict.onnx("int8")), "not judged")
    speedups = Benchmark.by_batch_size(  # for the INT8 throughput at the largest batch timed
        record.stage_metrics.get(Stage.BENCHMARK, {}), "onnx-int8", "speedup_vs_eager"
    )
    int8_speed = number(record, Stage.BENCHMARK, speedups[max(speedups)]) if speedups else None
    tradeoffs = []
    if tta:
        tradeoffs.append(
            {
                "text": "Test-time augmentation raises accuracy but is not part of the ONNX graph: the shipped model "
                "scores the accuracy without TTA.",
                "numbers": {
                    "with_tta": number(record, Stage.EVALUATE, Evaluate.TEST_ACCURACY),
                    "shipped": number(record, Stage.EVALUATE, Evaluate.TEST_ACCURACY_NO_TTA),
                },
            }
        )
    if int8_drop["value"] is not None:
        low, high = int8_drop["interval"]
        tradeoffs.append(
            {
                "text": "The INT8 variant is smaller and faster on CPUs, at a cost in accuracy points against FP32 "
                f"(paired exact interval on the test split). Its checks: {int8_verdict}; only a variant that "
                "passes is recommended, and it does not change the overall verdict.",
                "numbers": {
                    "accuracy_points_lost": int8_drop["value"],
                    "interval_low": low,
                    "interval_high": high,
                    "throughput_vs_torch_eager": int8_speed,
                },
            }
        )
    return {
        "schema": "auditflow-model-card/1 (fields of the Model Card Toolkit and Hugging Face model cards)",
        "model_details": {
            "name": name,
            "version": version,
            "date": date,
            "owners": [card.get("owner", "unspecified")],
            "licence": card.get("licence", "unspecified"),
            "citation": card.get("citation")
            or f"{card.get('owner', 'unspecified')} ({date[:4]}). {name}, version {version}. "
            f"auditflow pipeline run {record.run_id}, MLflow experiment "
            f"{record.experiment_name or record.experiment_id}.",
            "architecture": train_cfg.get("model", ""),
            "parameters": number(record, Stage.TRAIN, Train.PARAMETERS),
            "training": f"{train_cfg.get('optimizer', '?')} with {train_cfg.get('schedule', '?')} schedule, "
            f"profile {cfg.get('profile', '?')}",
            # DP-SGD: the accountant's (epsilon, delta) actually spent, read back from the train stage
            "differential_privacy": {
                "epsilon": number(record, Stage.TRAIN, Train.DP_EPSILON),
                "delta": number(record, Stage.TRAIN, Train.DP_DELTA),
                "max_grad_norm": number(record, Stage.TRAIN, Train.DP_MAX_GRAD_NORM),
                "noise_multiplier": number(record, Stage.TRAIN, Train.DP_NOISE_MULTIPLIER),
            }
            if train_cfg.get("dp")
            else None,
            "mlflow": {
                "run_id": record.run_id,
                "run_name": record.name,
                "experiment": record.experiment_name,
                "url": url,
                "model_uri": export.get("model_uri", ""),
            },
        },
        "intended_use": {
            "primary_uses": list(card.get("intended_uses", [])),
            "out_of_scope_uses": list(card.get("out_of_scope_uses", [])),
        },
        "input": {
            "name": export.get("input_name", "pixels"),
            "dtype": "float32",
            "shape": ["batch", 3, height, width],
            "meaning": "RGB pixels scaled to [0, 1] (uint8 / 255), channels first; the model normalises internally",
        },
        "output": {
            "name": export.get("output_name", "logits"),
            "dtype": "float32",
            "shape": ["batch", len(classes)],
            "classes": classes,
            "meaning": "raw logits (uncalibrated); argmax is the predicted class",
            "probabilities": {
                "name": probabilities,
                "dtype": "float32",
                "shape": ["batch", len(classes)],
                "meaning": "calibrated class probabilities: softmax(logits / T), computed inside the graph; "
                "rows sum to 1, same argmax as the logits",
            },
            "postprocessing": {
                "temperature": temperature,
                "how": f"none needed: the ONNX graph's second output `{probabilities}` is softmax(logits / "
                "temperature), with the temperature folded into the graph (and written into the file's metadata "
                "`auditflow.temperature`). The first output stays the raw logits; the temperature changes "
                "confidences, not the predicted class.",
                "fitted_on": (evaluate.get("calibration") or {}).get("fitted_on", "not fitted"),
            },
        },
        "metrics": metrics,
        "transparency": _transparency(record),
        "tradeoffs": tradeoffs,
        "limitations": [
            {
                "limitation": "Measured on the test split only; other image sources may score much lower.",
                "mitigation": "Evaluate on data from the deployment before use; see the datasheet for what the "
                "data holds.",
            },
            {
                "limitation": "Fairness is per-class quality of service, not across groups of people, which the data "
                "does not record.",
                "mitigation": "Do not use on images of people without an audit over the relevant groups.",
            },
            {
                "limitation": "The membership attack is the loss-threshold baseline; stronger attacks find more "
                "(the AUC is a lower bound on the exposure).",
                "mitigation": "Treat the privacy verdict as a floor; run reference-model attacks before sharing "
                "the weights.",
            },
            {
                "limitation": "Confidences of the raw logits are miscalibrated by the amount shown under metrics.",
                "mitigation": f"Use the `{probabilities}` output for confidences: the temperature is folded in, "
                "and its calibration is what the calibration check judged.",
            },
        ],
        "checks": {
            "overall": record.tags.get(verdict_tag(Verdict.OVERALL)) or overall(_gating(verdicts)),
            "verdicts": verdicts,
            "not_gating": sorted(g for g in verdicts if not Verdict.gates(g)),  # e.g. optional ONNX variants
        },
        "how_to_use": SNIPPET.format(
            file=Path(shipped_file).name,
            h=height,
            w=width,
            k=len(classes),
            input=export.get("input_name", "pixels"),
            output=export.get("output_name", "logits"),
            probabilities=probabilities,
            t=t_value,
            classes=list(classes),
        ),
        "how_to_get": f"MLflow model `{export.get('model_uri', '')}`, or the artifact `{shipped_file}` of the "
        "export stage run.",
    }


def has_adjusted_file(record: RunRecord) -> bool:
    """Whether the run exported the logit-adjusted variant (`model.adjusted.onnx`)."""
    return bool((record.summaries.get(Stage.EXPORT) or {}).get("adjusted_model_uri"))


def adjusted_model_card(record: RunRecord) -> dict[str, Any]:
    """The model card of the run's logit-adjusted file, the one `auditflow promote --variant
    adjusted` registers: the plain card with that file's own numbers (its accuracy and what it
    costs against the plain file, its probabilities' calibration, the recalls after the offsets),
    its file, model URI and output, and its own checks. The privacy rows carry over: the offsets
    are a fixed post-processing of the audited model's outputs, tuned on validation images."""
    doc = build_model_card(record)
    export = record.summaries.get(Stage.EXPORT, {})
    variant = Verdict.ADJUSTED_VARIANT
    n_test = number(record, Stage.EVALUATE, Evaluate.TEST_IMAGES)
    on_test = f"test split ({n_test['value']:.0f} images)" if n_test else "test split"
    file = (export.get("files") or {}).get(variant, f"onnx/{Export.ADJUSTED_FILE}")

    def own(name: str) -> str:
        return Export.VARIANT.format(variant=variant, name=name)

    privacy = [m for m in doc["metrics"] if m["name"].startswith("membership attack")]
    doc["metrics"] = [
        _metric(record, f"top-1 accuracy, shipped model ({Export.ADJUSTED_FILE}, no TTA)", own("accuracy"),
                interval=False, what=on_test),
        _metric(record, "accuracy points lost against the plain model.onnx (paired exact interval)",
                own("accuracy_drop_points"), interval=True, what=on_test),
        _metric(record, "expected calibration error of this file's `probabilities` output", own("probabilities_ece"),
                interval=False, what=on_test),
        _metric(record, "worst-class recall after the logit offsets (interval: the report's mitigation section)",
                Fairness.MITIGATION_WORST_CLASS_RECALL_AFTER, interval=False, what=on_test),
        _metric(record, "recall gap after the logit offsets (interval: the report's mitigation section)",
                Fairness.MITIGATION_RECALL_GAP_AFTER, interval=False, what=on_test),
        *privacy,
    ]  # fmt: skip
    details = doc["model_details"]
    details["variant"] = (
        f"{Export.ADJUSTED_FILE}: the same weights, with the fairness audit's per-class logit offsets (fitted on "
        "the validation split) added to the logits inside the graph"
    )
    details["mlflow"]["model_uri"] = export.get("adjusted_model_uri", "")
    doc["output"]["meaning"] = "logits plus the per-class offsets (uncalibrated); argmax is the predicted class"
    post = doc["output"]["postprocessing"]
    post["how"] = (
        f"none needed: the ONNX graph's second output `{doc['output']['probabilities']['name']}` is "
        "softmax((logits + offsets) / temperature), with the offsets and the temperature folded into the graph "
        "(the temperature also in the file's metadata `auditflow.temperature`). The first output is the logits "
        "plus the offsets; the temperature changes confidences, not the predicted class."
    )
    doc["checks"]["this_file"] = {
        group: record.tags.get(verdict_tag(group), "not judged")
        for group in (Verdict.onnx(variant), Verdict.FAIRNESS_ADJUSTED)
    }
    doc["how_to_use"] = doc["how_to_use"].replace(
        Path((export.get("files") or {}).get("fp32", "onnx/model.onnx")).name, Path(file).name, 1
    )
    doc["how_to_get"] = (
        f"MLflow model `{details['mlflow']['model_uri']}`, or the artifact `{file}` of the export stage run."
    )
    return doc


def render_model_card(record: RunRecord, *, variant: str | None = None) -> tuple[str, str, dict[str, Any]]:
    """(Markdown, HTML, document) of the model card of the plain file, or with `variant`
    "adjusted" of the logit-adjusted one."""
    doc = adjusted_model_card(record) if variant == Verdict.ADJUSTED_VARIANT else build_model_card(record)
    which = " (logit-adjusted file)" if variant else ""
    title = f"Model card: {md_cell(doc['model_details']['name'])}{which}"
    md, html = render_document("model_card.md.j2", doc, title=title, figures={})
    return md, html, doc


def write_model_card(record: RunRecord, out: Path) -> dict[str, Path]:
    """`model_card.{md,html,json}`, and `model_card.adjusted.*` when the run exported the
    logit-adjusted file."""
    md, html, doc = render_model_card(record)
    files = write_document(out, "model_card", md=md, html=html, doc=doc)
    if has_adjusted_file(record):
        md, html, doc = render_model_card(record, variant=Verdict.ADJUSTED_VARIANT)
        adjusted = write_document(out, "model_card.adjusted", md=md, html=html, doc=doc)
        files |= {f"adjusted_{kind}": path for kind, path in adjusted.items()}
    return files
