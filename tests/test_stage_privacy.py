"""The privacy stage as a pure function (`audits/privacy_stage.py`) on hand-made predictions and
reference logits: its verdicts, the tier check, the canary bound and the names its report carries."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from auditflow.audits.privacy_stage import ReferenceInputs, privacy_stage, run_attacks
from auditflow.core.config import FairnessConfig, PrivacyConfig
from auditflow.core.names import Privacy, Stage, Verdict, per_class
from auditflow.core.predictions import AuditPoints, CanaryScores, Predictions

CLASSES = ("a", "b")
N = 1000  # members and non-members each: 1% FPR rests on 10 expected false positives


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


def _logits(labels: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Two-class logits whose true-class margin is `confidence` (higher = more sure)."""
    logits = np.zeros((len(labels), 2), np.float32)
    logits[np.arange(len(labels)), labels] = confidence
    return logits


def _predictions(separable: bool, canaries: CanaryScores | None = None, seed: int = 0) -> Predictions:
    """Members are training images the model is sure of; non-members test images with margins
    drawn from the same range (not separable) or well below every member's (separable)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % 2
    member_margin = rng.uniform(5.0, 10.0, N)
    nonmember_margin = rng.uniform(0.0, 4.0, N) if separable else rng.uniform(5.0, 10.0, N)
    test_labels = np.arange(2 * N) % 2
    test_logits = _logits(test_labels, np.concatenate([nonmember_margin, rng.uniform(0.0, 10.0, N)]))
    audit = AuditPoints(
        member_index=np.arange(N),
        member_labels=labels,
        member_logits=_logits(labels, member_margin),
        nonmember_index=np.arange(N),  # the first N test images
        nonmember_wanted=np.array([N // 2, N // 2]),
    )
    val_labels = np.arange(20) % 2
    return Predictions(
        test_logits, test_logits, test_labels, _logits(val_labels, np.ones(20)), val_labels, audit, canaries
    )


def _loss_tier() -> ReferenceInputs:
    empty = np.zeros((0, N), bool)
    return ReferenceInputs("loss", "loss attack only: privacy.references = 0", None, empty, empty, 0.0)


def _run(predictions: Predictions, refs: ReferenceInputs | None = None, **cfg: object):
    return privacy_stage(
        predictions,
        references=refs or _loss_tier(),
        target_train_s=10.0,
        classes=CLASSES,
        cfg=PrivacyConfig(**cfg),  # type: ignore[arg-type]
        fairness_cfg=FairnessConfig(n_bootstrap=100),
    )


def test_separable_members_fail_the_verdict() -> None:
    outcome = _run(_predictions(separable=True), attacks=("loss",))
    assert outcome.status == "fail" and outcome.attack == "loss" and outcome.headline == 1.0
    checks = {c.key: c for c in outcome.report.checks}
    assert checks[Privacy.STRONGEST_TPR].status == "fail" and checks[Privacy.STRONGEST_TPR].verdict == Verdict.PRIVACY
    assert checks[Privacy.AUDIT_BALANCE].status == "pass"
    assert checks[Privacy.ATTACK_STRENGTH].status == "warn"  # the loss attack alone
    # 500 non-members per class: 5 expected false positives at 1% FPR, too few to state a class's rate
    assert checks[Privacy.PER_CLASS_TPR].status == "inconclusive"
    assert outcome.reasons and "lower bound exceeds the limit" in outcome.reasons[0]


def test_indistinguishable_members_pass_and_the_report_holds_the_expected_names() -> None:
    outcome = _run(_predictions(separable=False), attacks=("loss",))
    assert outcome.status == "pass" and outcome.reasons == ()
    report = outcome.report
    assert report.stage == Stage.PRIVACY
    assert {
        Privacy.STRONGEST_AUC,
        Privacy.STRONGEST_AUC_CI_LOW,
        Privacy.STRONGEST_TPR_AT_VERDICT_FPR,
        Privacy.STRONGEST_TPR_AT_VERDICT_FPR_CI_HIGH,
        Privacy.LOSS_AUC,
    } <= set(report.headline)
    loss = Privacy.ATTACK_BASE.format(attack="loss")
    expected = {
        Privacy.ATTACK.format(attack="loss", name="auc"),
        Privacy.ATTACK.format(attack="loss", name="advantage"),
        Privacy.ATTACK.format(attack="loss", name="tpr_at_1pct_fpr"),
        Privacy.ATTACK.format(attack="loss", name="tpr_at_1pct_fpr_ci_low"),
        per_class(loss, "a", "auc"),
        Privacy.N_MEMBERS,
        Privacy.REFERENCES_COUNT,
        Privacy.AUDIT_COST_VS_TRAINING,
        Privacy.JOINT_SPEARMAN,
    }
    assert expected <= set(report.metrics)
    assert report.metrics[Privacy.N_MEMBERS] == N and report.metrics[Privacy.REFERENCES_COUNT] == 0
    assert Privacy.CANARIES_COUNT not in report.metrics  # no canaries in this run
    assert report.tags[Privacy.TIER] == "loss" and report.parent_tags[Privacy.STRONGEST_ATTACK] == "loss"
    assert set(report.tables) == {Privacy.PER_CLASS_JOINT_JSON, Privacy.ATTACK_PER_CLASS_JSON.format(attack="loss")}
    assert set(report.figures) == {Privacy.ROC_LOGLOG_PNG, Privacy.LOSS_HISTOGRAM_PNG, Privacy.EXPOSURE_BY_CLASS_PNG}
    assert report.summary is not None and report.summary["verdict"] == "pass" and report.summary["one_run"] is None
    assert report.params["privacy.verdict_fpr"] == 0.01


def test_too_few_nonmembers_for_the_verdict_fpr_is_inconclusive() -> None:
    outcome = _run(_predictions(separable=True), attacks=("loss",), min_expected_false_positives=20)
    assert outcome.status == "inconclusive" and np.isnan(outcome.headline)
    assert Privacy.STRONGEST_TPR_AT_VERDICT_FPR not in outcome.report.headline  # not stated: not logged


def test_reference_attacks_run_on_the_reference_logits() -> None:
    predictions = _predictions(separable=True)
    rng = np.random.default_rng(1)
    labels = np.concatenate([predictions.audit.member_labels, predictions.nonmember_labels()])
    ref_logits = _logits(labels, rng.uniform(0.0, 10.0, 2 * N))[None, None].repeat(2, axis=1)  # (Q=1, R=2, n, K)
    ref_logits[0, 1] += rng.normal(0, 0.5, ref_logits.shape[2:]).astype(np.float32)
    models = tuple({"key": f"r{i}", "cached": i == 0, "train_seconds": 3.0} for i in range(2))
    no = np.zeros((2, N), bool)
    refs = ReferenceInputs("reference", "RMIA and LiRA offline", ref_logits, no, no, 4.0, models)
    outcome = _run(predictions, refs, references=2)
    report = outcome.report
    assert {Privacy.ATTACK.format(attack=a, name="auc") for a in ("loss", "rmia", "lira")} <= set(report.metrics)
    assert Privacy.ATTACK.format(attack="rmia", name="auc_gain_over_loss_ci_low") in report.metrics
    assert report.metrics[Privacy.REFERENCES_COUNT] == 2 and report.metrics[Privacy.REFERENCES_CACHED] == 1
    assert report.metrics[Privacy.REFERENCES_TRAIN_S] == 3.0  # the uncached model only
    assert {c.key: c for c in report.checks}[Privacy.ATTACK_STRENGTH].status == "pass"
    assert outcome.status == "fail"
    scores = run_attacks(
        np.concatenate([predictions.audit.member_logits, predictions.nonmember_logits()])[None],
        labels,
        n_members=N,
        ref_logits=None,
        ref_in=np.zeros((0, 2 * N), bool),
        cfg=PrivacyConfig(),
    )
    assert set(scores) == {"loss"}  # without reference logits only the loss attack runs


def test_canaries_give_the_one_run_bound() -> None:
    m = 200
    included = np.arange(m) % 2 == 0
    labels = np.arange(m) % 2
    canaries = CanaryScores(np.arange(m), included, labels, _logits(labels, np.where(included, 9.0, 0.0)))
    report = _run(_predictions(separable=False, canaries=canaries), attacks=("loss",)).report
    assert report.metrics[Privacy.CANARIES_COUNT] == m
    assert report.headline[Privacy.CANARIES_EPSILON_LOWER_BOUND] > 0
    assert report.summary is not None and report.summary["one_run"]["score"] == "negative loss of the shipped model"
