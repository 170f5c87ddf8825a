"""Waivers, the decision the report opens with, and whether a test split can settle the fairness
checks at all: pure functions, no Prefect or MLflow (the CLI's `promote --waive` on a stored run
is tested in test_release.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from test_release import GOOD_TAGS, TAGS, by_key, facts

from auditflow.audits.decision import decide
from auditflow.audits.fairness import audit_fairness, settleability
from auditflow.audits.gate import GateConfig, evaluate_gate
from auditflow.audits.waivers import honoured, make_waiver, waivers_from_tags
from auditflow.core.config import FairnessConfig

VERDICTS = {"fairness": "inconclusive", "privacy": "pass", "privacy_strength": "fail", "onnx_int8": "inconclusive"}
NOW = datetime(2026, 12, 3, tzinfo=UTC)


def waiver(check: str = "fairness"):
    return make_waiver(check, reason="8 test images per class", by="A. Reviewer", verdicts=VERDICTS, now=NOW)


# ------------------------------------------------------------------------------ waivers
def test_only_an_inconclusive_check_that_gates_can_be_waived() -> None:
    made = waiver()
    assert (made.check, made.verdict, made.by, made.at) == ("fairness", "inconclusive", "A. Reviewer", NOW.isoformat())
    with pytest.raises(ValueError, match=r"'privacy': the check is pass, .* the inconclusive ones are: fairness$"):
        waiver("privacy")
    with pytest.raises(ValueError, match=r"'privacy_strength': the check is fail"):
        waiver("privacy_strength")  # a measured fault is not waived
    with pytest.raises(ValueError, match=r"'onnx_int8': this run has no such check"):
        waiver("onnx_int8")  # an optional variant never gates: nothing to waive
    with pytest.raises(ValueError, match=r"--reason is empty"):
        make_waiver("fairness", reason="  ", by="me", verdicts=VERDICTS)


def test_a_waiver_round_trips_through_its_tag_and_lapses_once_the_check_is_settled() -> None:
    key, value = waiver().as_tag()
    assert key == "release/waiver/fairness"
    found = waivers_from_tags({key: value, "release/waiver/privacy": "{not json", "other": "x"})
    assert found == (waiver(),)  # the damaged one is not half-read
    assert honoured(found, {"fairness": "inconclusive"}) == {"fairness": waiver()}
    assert honoured(found, {"fairness": "pass"}) == {}  # a rerun settled it: the waiver no longer applies


def test_the_gate_honours_a_waiver_of_an_inconclusive_verdict_and_only_that() -> None:
    open_fairness = facts("b", "2")
    open_fairness = replace(open_fairness, tags={**GOOD_TAGS, TAGS["fairness"]: "inconclusive"}, overall="inconclusive")
    record = evaluate_gate(open_fairness, None, GateConfig(), model_name="m")
    assert record.verdict == "fail" and by_key(record)["fairness/verdict"].status == "fail"

    # what `facts_from_record` builds for a run holding the waiver: the overall verdict without it
    waived = replace(open_fairness, overall="pass", waivers=(waiver(),))
    record = evaluate_gate(waived, None, GateConfig(), model_name="m")
    criterion = by_key(record)["fairness/verdict"]
    assert record.verdict == "pass", record.reasons
    assert criterion.status == "waived"
    assert criterion.reason == "inconclusive, waived by A. Reviewer on 2026-12-03: 8 test images per class"
    assert record.as_dict()["waivers"][0]["by"] == "A. Reviewer"
    assert "1 waived" in record.summary()

    # a waiver never turns a fail into a pass
    failing = replace(waived, tags={**GOOD_TAGS, TAGS["fairness"]: "fail"})
    assert evaluate_gate(failing, None, GateConfig(), model_name="m").verdict == "fail"


# ------------------------------------------------------------------------------ the decision
CHECKS = [
    {"verdict": "fairness", "title": "Recall gap", "status": "inconclusive", "note": "passes at 0.418", "value": 0.0,
     "threshold": 0.3},
    {"verdict": "onnx_int8", "title": "INT8 kept", "status": "inconclusive", "note": "", "value": 0, "threshold": 0.5},
    {"verdict": "learning", "title": "Model learned", "status": "pass", "note": "", "value": 0.9, "threshold": 0.3},
]  # fmt: skip


def test_a_failed_gate_says_do_not_ship_and_how_to_decide_the_open_check() -> None:
    gate = {"verdict": "fail", "model_name": "m", "candidate": {"version": "3"}, "reasons": ["Fairness verdict: x"]}
    d = decide(run_id="r1", overall="inconclusive", gate=gate, checks=CHECKS)
    assert (d.status, d.outcome) == ("fail", "do not ship")
    assert d.headline == "Do not ship: m v3 failed the release gate; audit verdict inconclusive."
    assert d.reasons == ("Fairness verdict: x",)
    [step] = d.next_steps  # the INT8 variant's open check only decides its recommendation: no step
    assert "passes at 0.418" in step and step.endswith("`auditflow promote r1 --waive fairness --reason WHY`.")


def test_a_passed_gate_says_ship_and_lists_its_waivers() -> None:
    gate = {"verdict": "pass", "model_name": "m", "candidate": {"version": "3"}}
    d = decide(run_id="r1", overall="inconclusive", gate=gate, checks=CHECKS, waivers=(waiver(),))
    assert (d.status, d.outcome) == ("pass", "ship")
    assert d.headline == "Ship: m v3 passed the release gate with 1 waived check; audit verdict inconclusive."
    assert d.reasons == ("`fairness` waived by A. Reviewer on 2026-12-03: 8 test images per class",)
    ungated = decide(run_id="r1", overall="pass", gate=None, checks=CHECKS[2:])
    assert ungated.outcome == "not gated yet" and "`auditflow promote r1`" in ungated.next_steps[-1]


# ------------------------------------------------------------------------------ settleability
def test_a_test_split_too_small_for_the_recall_gap_is_named_before_any_audit() -> None:
    """8 test images per class, 3 classes: even a perfect model's recall-gap interval reaches
    0.417, above the 0.3 policy. The bound is the one the audit itself then reports."""
    classes = ("circle", "square", "stripes")
    cfg = FairnessConfig()
    worst, gap, groups = settleability([8, 8, 8], classes, cfg)
    assert worst.can_pass and not gap.can_pass
    assert not groups.can_pass and "fairness.min_group_count=2 or fewer" in groups.text  # 8 // 3 per group
    labels = np.repeat(np.arange(3), 8)
    perfect = audit_fairness(labels, labels, classes, cfg=cfg)
    assert perfect.gap_status == "inconclusive"
    assert gap.best_bound == pytest.approx(perfect.recall_gap_ci[1], abs=1e-12)
    assert gap.text.startswith("recall gap ≤ 0.3 cannot pass on this test split")
    assert "fairness.max_recall_gap=0.418 or more" in gap.text
    # at the named value the perfect model's gap check passes
    assert audit_fairness(labels, labels, classes, cfg=cfg.model_copy(update={"max_recall_gap": 0.418})).gap_status == (
        "pass"
    )
    # 200 per class: every check can pass
    assert all(s.can_pass for s in settleability([200, 300, 200], classes, cfg))


def test_a_privacy_verdict_the_splits_cannot_reach_is_named_before_training() -> None:
    """24 test images cannot state a TPR at 1% FPR (0.24 expected false positives, the audit's own
    "not stated"); 1,000 can, and then even 1,000 members with none found bound the TPR far
    below 5%. A limit that no attack could meet on 1,000 members is named too."""
    from auditflow.audits.privacy_stage import settleability as privacy_settleability
    from auditflow.core.config import PrivacyConfig

    def splits(n_test: int, n_train: int) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(n_train) % 3, np.arange(n_test) % 3

    [toy] = privacy_settleability(*reversed(splits(24, 48)), PrivacyConfig())
    assert not toy.can_pass and toy.text.startswith("membership attack TPR at 1% FPR cannot be stated")
    assert "with 1,000 test images or more" in toy.text and "privacy.verdict_fpr=0.417 or more" in toy.text
    [enough] = privacy_settleability(*reversed(splits(1000, 5000)), PrivacyConfig())
    assert enough.can_pass and enough.best_bound < 0.004
    [strict] = privacy_settleability(*reversed(splits(1000, 5000)), PrivacyConfig(max_tpr_at_fpr=0.003))
    assert not strict.can_pass and "exact upper bound of 0.004 on 1,000 members" in strict.text
    assert "privacy.max_tpr_at_fpr=0.004 or more" in strict.text
