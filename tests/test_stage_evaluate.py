"""The evaluate stage as a pure function (`models/evaluation/stage.py`) on hand-made logits:
its checks at their thresholds' edges, the names its report carries, and the scoring of the
splits into a `Predictions` container (the canaries it is given are the ones it scores)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest

from auditflow.core.config import EvalConfig
from auditflow.core.data import Splits
from auditflow.core.names import Evaluate, Stage, Verdict, per_class
from auditflow.core.predictions import AuditPoints, Predictions
from auditflow.models.evaluation.stage import AuditDraw, evaluate_stage, score_splits
from auditflow.models.training.canaries import Canaries, choose_canaries
from auditflow.models.training.runtime import resolve_runtime

CLASSES = ("a", "b", "c")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _predictions(correct: int, n: int = 300, scale: float = 4.0) -> Predictions:
    """`n` balanced test images over 3 classes, the first `correct` called right, the others
    called the next class; validation and audited members alike."""
    k = len(CLASSES)
    labels = np.arange(n) % k
    preds = labels.copy()
    preds[correct:] = (labels[correct:] + 1) % k
    logits = (np.eye(k, dtype=np.float32)[preds] * scale).astype(np.float32)
    members = np.arange(30, dtype=np.int64)
    audit = AuditPoints(
        member_index=members,
        member_labels=labels[:30].astype(np.int64),
        member_logits=logits[:30],
        nonmember_index=members,
        nonmember_wanted=np.full(k, 10, np.int64),
    )
    return Predictions(logits, logits, labels.astype(np.int64), logits, labels.astype(np.int64), audit)


def _stage(predictions: Predictions, **cfg: float):
    return evaluate_stage(predictions, classes=CLASSES, cfg=EvalConfig(**cfg), tta=False, tta_translate=0)


def _checks(stage) -> dict[str, object]:
    return {c.verdict: c for c in stage.report.checks}


def test_the_report_holds_every_name_it_logged_before() -> None:
    stage = _stage(_predictions(270))
    report = stage.report
    assert report.stage == Stage.EVALUATE
    assert set(report.headline) == {
        Evaluate.TEST_ACCURACY,
        Evaluate.TEST_ACCURACY_NO_TTA,
        Evaluate.TEST_ECE_NO_TTA,
        Evaluate.TEST_ECE_CALIBRATED,
        Evaluate.TEMPERATURE,
    }
    expected = {
        Evaluate.CHANCE_ACCURACY,
        Evaluate.MEMBER_ACCURACY,
        Evaluate.TEMPERATURE_FIT_IMAGES,
        Evaluate.TEST_ACCURACY_CI99_LOW,
        Evaluate.TEST_ACCURACY_CI_HIGH,
        Evaluate.TEST_ACCURACY_CI_LOW,
        Evaluate.TEST_ACCURACY_NO_TTA_CI_HIGH,
        Evaluate.TEST_ACCURACY_NO_TTA_CI_LOW,
        Evaluate.TEST_ECE,
        Evaluate.TEST_IMAGES,
        Evaluate.TEST_MACRO_F1,
        Evaluate.TEST_MACRO_F1_NO_TTA,
        Evaluate.TEST_NLL,
        Evaluate.TEST_NLL_CALIBRATED,
        Evaluate.TEST_NLL_NO_TTA,
    } | {per_class(m, c) for m in (Evaluate.RECALL, Evaluate.PRECISION, Evaluate.F1) for c in CLASSES}
    assert set(report.metrics) == expected
    assert report.headline[Evaluate.TEST_ACCURACY] == pytest.approx(0.9) == stage.accuracy == stage.accuracy_no_tta
    assert report.metrics[Evaluate.TEST_IMAGES] == 300 and report.metrics[Evaluate.MEMBER_ACCURACY] == 1.0
    assert set(report.tables) == {Evaluate.PER_CLASS_JSON} and len(report.tables[Evaluate.PER_CLASS_JSON]) == 3
    assert set(report.texts) == {Evaluate.CONFUSION_MATRIX_CSV}
    assert set(report.documents) == {Evaluate.TEMPERATURE_JSON}
    assert {c.verdict for c in report.checks} == {Verdict.LEARNING}  # calibration is judged at export
    assert {c.stage for c in report.checks} == {Stage.EVALUATE}
    assert report.figures == {} and report.files == ()  # drawn and added by the task
    assert report.summary is not None and report.summary["accuracy_no_tta"] == pytest.approx(0.9)


def test_the_confusion_matrix_csv_has_the_class_header_and_counts() -> None:
    csv = _stage(_predictions(270)).report.texts[Evaluate.CONFUSION_MATRIX_CSV].splitlines()
    assert csv[0] == "a,b,c"
    rows = np.array([[int(v) for v in line.split(",")] for line in csv[1:]])
    assert rows.sum() == 300 and np.trace(rows) == 270
    assert rows.tolist() == [[90, 10, 0], [0, 90, 10], [10, 0, 90]]


def _last_failing_count(n: int, chance: float) -> int:
    """Brute force: the largest number correct whose 99% Wilson lower bound is not above chance."""
    return max(c for c in range(n + 1) if binomtest(c, n).proportion_ci(0.99, method="wilson").low <= chance)


def test_the_learning_check_flips_at_the_wilson_bound() -> None:
    edge = _last_failing_count(300, 1 / 3)
    at, above = _checks(_stage(_predictions(edge))), _checks(_stage(_predictions(edge + 1)))
    assert at[Verdict.LEARNING].status == "fail" and above[Verdict.LEARNING].status == "pass"
    assert above[Verdict.LEARNING].metric == Evaluate.TEST_ACCURACY_CI99_LOW
    assert above[Verdict.LEARNING].threshold == pytest.approx(1 / 3)
    assert above[Verdict.LEARNING].value > 1 / 3 >= at[Verdict.LEARNING].value


def test_a_model_at_chance_fails_and_says_so() -> None:
    stage = _stage(_predictions(100))
    assert stage.learning == "fail" and "at chance" in stage.learning_message
    assert _checks(stage)[Verdict.LEARNING].note == stage.learning_message


def test_the_temperature_goes_to_export_with_where_it_was_fitted() -> None:
    """The calibration check is the export stage's (on the shipped file's `probabilities` output):
    evaluate fits T, reports the raw and calibrated figures, and says where T was fitted."""
    test, val = _predictions(240, scale=3.0), _predictions(300, scale=3.0)
    stage = _stage(replace(test, val_logits=val.val_logits, val_labels=val.val_labels))
    assert Verdict.CALIBRATION not in _checks(stage)
    report = stage.report
    assert {Evaluate.TEST_ECE_NO_TTA, Evaluate.TEST_ECE_CALIBRATED} <= set(report.headline)  # raw and calibrated
    assert stage.fitted_on == "the validation split (300 images)"
    document = report.documents[Evaluate.TEMPERATURE_JSON]
    assert document["temperature"] == report.headline[Evaluate.TEMPERATURE] == stage.calibration.temperature
    assert "probabilities" in document["shipped"] and document["fitted_on"] == stage.fitted_on
    unfitted = _stage(replace(test, val_logits=val.val_logits[:0], val_labels=val.val_labels[:0]))
    assert unfitted.calibration.temperature == 1.0 and unfitted.fitted_on == "nothing (no validation split), so T = 1"


class _Tiny:
    """A linear model over 4x4x3 uint8 images (as `predict` feeds them)."""

    @staticmethod
    def make():
        import torch
        from torch import nn

        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()


def _splits(n: int = 40) -> Splits:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(n) % 3
    return Splits(images, labels, images[:12], labels[:12], images[:9], labels[:9], CLASSES)


def test_score_splits_scores_the_canaries_it_is_given_and_nothing_else() -> None:
    """The canaries are drawn once (by the train stage) and passed along: the scoring takes
    whatever `Canaries` it is handed, not a fresh draw of its own."""
    splits, model, runtime = _splits(), _Tiny.make(), resolve_runtime("cpu", "fp32")
    drawn = choose_canaries(40, 6, seed=1)
    other = Canaries(np.array([0, 5, 7], np.int64), np.array([True, False, True]))
    assert not np.array_equal(drawn.index, other.index)
    audit = AuditDraw(np.array([1, 2, 3], np.int64), np.array([0, 1, 2], np.int64), np.ones(3, np.int64))
    scored = score_splits(
        model, splits, runtime, cfg=EvalConfig(batch_size=8), tta=False, tta_translate=0, audit=audit, canaries=other
    )
    assert scored.canaries is not None
    assert scored.canaries.index.tolist() == [0, 5, 7] and scored.canaries.included.tolist() == [True, False, True]
    assert scored.canaries.labels.tolist() == splits.train_y[[0, 5, 7]].tolist()
    assert scored.canaries.logits.shape == (3, 3)
    np.testing.assert_array_equal(scored.test_logits, scored.test_logits_no_tta)  # no TTA: scored once
    scored.validate()
    none = score_splits(model, splits, runtime, cfg=EvalConfig(), tta=False, tta_translate=0, audit=audit)
    assert none.canaries is None and none.audit.member_query_logits is None
    views = score_splits(
        model,
        splits,
        runtime,
        cfg=EvalConfig(),
        tta=True,
        tta_translate=0,
        audit=audit,
        queries=2,
        canaries=Canaries.none(),
    )
    assert views.canaries is None and views.audit.member_query_logits.shape == (2, 3, 3)
    np.testing.assert_allclose(views.audit.member_query_logits[0], views.audit.member_logits, atol=1e-6)


def test_canaries_are_drawn_at_one_place_in_the_package() -> None:
    calls = []
    for folder in ("auditflow", "models", "audits", "tasks", "flows"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                func = getattr(node, "func", None)
                if isinstance(node, ast.Call) and getattr(func, "id", getattr(func, "attr", None)) == "choose_canaries":
                    calls.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert len(calls) == 1 and calls[0].startswith("models/training/canaries.py"), calls
