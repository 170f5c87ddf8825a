"""`auditflow compare`: paired tests of two runs on the same test split (McNemar, per-class recall,
DeLong per attack, verdict changes), checked against brute force on small hand-made inputs; the
refusal of runs on different test splits; the gate's paired "vs champion" criteria; and the CLI
on two runs in a temporary MLflow store whose predictions differ by a planted amount."""

from __future__ import annotations

import json
from dataclasses import replace
from math import comb, factorial
from pathlib import Path

import numpy as np
import pytest
from conftest import planted_predictions
from scipy.stats import binomtest
from typer.testing import CliRunner

from auditflow.audits.compare import (
    AttackScores,
    ComparisonRefused,
    RunEvidence,
    compare,
    mcnemar_exact,
    paired_difference,
    paired_interval,
)
from auditflow.audits.gate import METRICS, TAGS, GateConfig, RunFacts, evaluate_gate, split_identity
from auditflow.audits.privacy import auc_difference, auc_variance, rate_at_fpr
from auditflow.core.errors import DataError

runner = CliRunner()
CLASSES = ("circle", "square", "stripes")
LABELS = np.repeat(np.arange(3), 100)  # 100 test images per class
DIGEST = "ab" * 32
SPLIT = split_identity(DIGEST, {})
# The planted difference: McNemar's exact p of 30 fixed vs 10 broken, 2 x P(Bin(40, 1/2) <= 10)
PLANTED_P = 2 * sum(comb(40, k) for k in range(11)) / 2**40  # 0.0022214...


def planted() -> tuple[np.ndarray, np.ndarray]:
    """A is wrong on 20 images of each class (accuracy 0.8); B fixes 10 of them in each class
    (30 fixed) and breaks 10 of A's right images, all of class `circle` (10 broken): accuracy
    0.8667, B - A = +20/300, recall +0 on circle, +0.1 on square and stripes."""
    right_a = np.ones(len(LABELS), bool)
    for k in range(3):
        right_a[k * 100 : k * 100 + 20] = False
    right_b = right_a.copy()
    for k in range(3):
        right_b[k * 100 : k * 100 + 10] = True
    right_b[50:60] = False
    return right_a, right_b


def attack_scores(seed: int, members: int = 150, shift: float = 1.0, offset: int = 0) -> AttackScores:
    rng = np.random.default_rng(seed)
    loss = np.concatenate([rng.normal(shift, 1, members), rng.normal(0, 1, members)])
    return AttackScores(
        member_index=np.arange(members, dtype=np.int64) + offset,
        nonmember_index=np.arange(members, dtype=np.int64),
        scores={"loss": loss},
        verdict_fpr=0.01,
        min_expected_false_positives=1,
    )


def evidence(run_id: str, right: np.ndarray, *, split: str = SPLIT, scores: AttackScores | None = None, **kw):
    return RunEvidence(
        run_id=run_id,
        test_split=split,
        train_split="train split",
        classes=CLASSES,
        predictions=planted_predictions(right, LABELS, len(CLASSES)),
        verdicts=kw.pop("verdicts", {}),
        attack_scores=scores,
        attack_note="" if scores else "no scores",
        **kw,
    )


# ------------------------------------------------------------------------------ paired shares
@pytest.mark.parametrize(("fixed", "broken"), [(30, 10), (0, 5), (7, 7), (1, 0), (12, 3), (0, 0)])
def test_mcnemar_exact_is_the_two_sided_binomial_sum(fixed: int, broken: int) -> None:
    d = fixed + broken
    brute = min(1.0, 2 * sum(comb(d, k) for k in range(min(fixed, broken) + 1)) / 2**d) if d else 1.0
    assert mcnemar_exact(fixed, broken) == pytest.approx(brute, rel=1e-12)


@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_the_paired_interval_covers_at_least_its_level_whatever_the_shares(confidence: float) -> None:
    """Exact coverage, every outcome of n = 12 pairs enumerated, on a grid of true shares
    (fixed share π10, broken share π01): never below the stated level."""
    n = 12
    outcomes = [(x, y) for x in range(n + 1) for y in range(n + 1 - x)]
    intervals = {o: paired_interval(*o, n, confidence=confidence) for o in outcomes}
    grid = (0.0, 0.02, 0.1, 0.25, 0.4, 0.6)
    for p10 in grid:
        for p01 in (q for q in grid if p10 + q <= 1):
            truth, coverage = p10 - p01, 0.0
            for (x, y), (low, high) in intervals.items():
                rest = n - x - y
                prob = factorial(n) / (factorial(x) * factorial(y) * factorial(rest))
                prob *= p10**x * p01**y * (1 - p10 - p01) ** rest
                coverage += prob if low - 1e-12 <= truth <= high + 1e-12 else 0.0
            assert coverage >= confidence - 1e-9, (p10, p01, coverage)


def test_the_planted_difference_gives_the_known_mcnemar_numbers() -> None:
    right_a, right_b = planted()
    d = paired_difference(right_a, right_b, level=0.95)
    assert (d.n, d.fixed, d.broken) == (300, 30, 10)
    assert d.a == pytest.approx(0.8) and d.b == pytest.approx(260 / 300)
    assert d.difference == pytest.approx(20 / 300)
    assert d.p_value == pytest.approx(PLANTED_P, rel=1e-12) and d.p_value == pytest.approx(0.0022214, abs=1e-7)
    # the interval, rebuilt from scipy's Clopper-Pearson intervals at 1 - 0.05/2 each
    pi = binomtest(40, 300).proportion_ci(0.975, method="exact")
    psi = binomtest(30, 40).proportion_ci(0.975, method="exact")
    assert d.low == pytest.approx(pi.low * (2 * psi.low - 1), rel=1e-9)
    assert d.high == pytest.approx(pi.high * (2 * psi.high - 1), rel=1e-9)
    assert (round(d.low, 4), round(d.high, 4)) == (0.0121, 0.1417)


def test_paired_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match=r"same length, got shapes \(3,\) and \(2,\)"):
        paired_difference(np.ones(3, bool), np.ones(2, bool), level=0.95)
    with pytest.raises(ValueError, match="fixed=5, broken=6, n=10"):
        paired_interval(5, 6, 10, confidence=0.95)
    # no discordant pair: the interval is +- the Clopper-Pearson upper bound of 0 of 1000 at 1 - 0.05/2
    low, high = paired_interval(0, 0, 1000, confidence=0.95)
    assert low == -high and high == pytest.approx(1 - 0.0125 ** (1 / 1000), rel=1e-9)


# ------------------------------------------------------------------------------ the comparison
def test_per_class_recall_differences_hold_together_over_the_classes() -> None:
    right_a, right_b = planted()
    found = compare(evidence("a", right_a), evidence("b", right_b), confidence=0.95)
    assert found.accuracy.fixed == 30 and found.accuracy.broken == 10
    assert found.class_level == pytest.approx(1 - 0.05 / 3)
    rows = {r.name: r.recall for r in found.classes}
    assert {name: (r.fixed, r.broken) for name, r in rows.items()} == {
        "circle": (10, 10),
        "square": (10, 0),
        "stripes": (10, 0),
    }
    assert rows["circle"].difference == 0 and rows["square"].difference == pytest.approx(0.1)
    assert (rows["square"].low, rows["square"].high) == paired_interval(10, 0, 100, confidence=1 - 0.05 / 3)
    assert rows["square"].p_value == pytest.approx(2 / 2**10)  # 10 of 10 discordant pairs fixed
    assert found.worst_class_of_b().name == "circle"  # B's recall: 0.8, 0.9, 0.9
    assert found.as_dict()["accuracy"]["fixed"] == 30  # JSON-able


def test_runs_on_different_test_splits_are_refused_in_one_line() -> None:
    right_a, right_b = planted()
    other = split_identity("cd" * 32, {})
    with pytest.raises(ComparisonRefused) as err:
        compare(evidence("a" * 8, right_a), evidence("b" * 8, right_b, split=other))
    assert str(err.value) == (
        f"cannot compare runs {'a' * 8} and {'b' * 8}: they were tested on different test splits "
        f"({'a' * 8}: {SPLIT}; {'b' * 8}: {other})"
    )
    assert "\n" not in str(err.value) and isinstance(err.value, DataError)
    # the same name but other labels (a store edited by hand): refused, naming the count
    b = evidence("b", right_b)
    shuffled = replace(b.predictions, test_labels=np.roll(b.predictions.test_labels, 1))
    with pytest.raises(ComparisonRefused, match=r"test splits differ \(3 of 300 labels differ\)"):
        compare(evidence("a", right_a), replace(b, predictions=shuffled))
    with pytest.raises(ComparisonRefused, match="run b records no test-split digest"):
        compare(evidence("a", right_a), evidence("b", right_b, split=""))
    with pytest.raises(ComparisonRefused, match="RUN_A and RUN_B are the same run"):
        compare(evidence("a", right_a), evidence("a", right_b))


def test_attacks_are_paired_on_the_same_points_and_unpaired_otherwise() -> None:
    right_a, right_b = planted()
    sa, sb = attack_scores(0), attack_scores(1, shift=1.5)
    found = compare(evidence("a", right_a, scores=sa), evidence("b", right_b, scores=sb))
    row = found.attack("loss")
    assert row is not None and row.paired and row.note == ""
    diff, low, high, p = auc_difference(sa.is_member, sb.scores["loss"], sa.scores["loss"], confidence=0.95)
    assert (row.auc_difference, row.low, row.high, row.p_value) == (diff, low, high, p)
    assert row.auc_a == pytest.approx(auc_variance(sa.is_member, sa.scores["loss"])[0])
    # TPR at 1% FPR: each run's own threshold, the same 150 members
    hits = []
    for s in (sa, sb):
        rate = rate_at_fpr(s.is_member, s.scores["loss"], fpr=0.01, confidence=0.95, min_expected_false_positives=1)
        hits.append(s.scores["loss"][s.is_member] >= rate.threshold)
    assert row.tpr == paired_difference(hits[0], hits[1], level=0.95)

    # other audited members: two independent samples, the DeLong variances added
    moved = attack_scores(1, shift=1.5, offset=1000)
    found = compare(evidence("a", right_a, scores=sa), evidence("b", right_b, scores=moved))
    row = found.attack("loss")
    assert not row.paired and row.tpr is None and row.note.startswith("not paired: the runs audited different points")
    (auc_a, var_a), (auc_b, var_b) = (auc_variance(s.is_member, s.scores["loss"]) for s in (sa, moved))
    assert row.auc_difference == pytest.approx(auc_b - auc_a)
    assert row.high - row.low == pytest.approx(2 * 1.959964 * np.sqrt(var_a + var_b), rel=1e-5)

    # a run without scores: no attack compared, and why
    found = compare(evidence("a", right_a, scores=sa), evidence("b", right_b))
    assert found.attacks == () and found.attacks_note == "run b: no scores"
    # an attack only one run ran
    only_a = replace(sa, scores={**sa.scores, "rmia": sa.scores["loss"]})
    row = compare(evidence("a", right_a, scores=only_a), evidence("b", right_b, scores=sb)).attack("rmia")
    assert row is not None and row.auc_difference is None and row.note == "run b did not run it"


def test_every_verdict_change_is_listed() -> None:
    right_a, right_b = planted()
    a = evidence("a", right_a, verdicts={"fairness": "pass", "privacy": "inconclusive", "onnx_parity": "pass"})
    b = evidence("b", right_b, verdicts={"fairness": "fail", "privacy": "pass", "learning": "pass"})
    rows = [(v.group, v.a, v.b, v.change) for v in compare(a, b).verdicts]
    assert rows == [
        ("fairness", "pass", "fail", "worse"),
        ("learning", None, "pass", "new in B"),
        ("onnx_parity", "pass", None, "not in B"),
        ("privacy", "inconclusive", "pass", "better"),
    ]


def test_attack_scores_read_back_exactly() -> None:
    scores = attack_scores(3)
    back = AttackScores.from_json(scores.as_json())
    assert np.array_equal(back.scores["loss"], scores.scores["loss"])  # bit for bit
    assert np.array_equal(back.member_index, scores.member_index) and back.verdict_fpr == 0.01
    with pytest.raises(DataError, match="attack scores has schema 9, this auditflow reads 1"):
        AttackScores.from_json(json.dumps({"schema": 9}))
    broken = json.loads(scores.as_json())
    broken["scores"]["loss"] = broken["scores"]["loss"][:5]
    with pytest.raises(DataError, match=r"attack 'loss' has \(5,\) scores, expected \(300,\)"):
        AttackScores.from_json(json.dumps(broken))


# ------------------------------------------------------------------------------ the gate, paired
def gate_facts(run_id: str, version: str, accuracy: float, worst: float) -> RunFacts:
    metrics = {METRICS["accuracy"]: accuracy, METRICS["worst_class_recall"]: worst, METRICS["privacy_tpr"]: 0.02}
    tags = {TAGS["strongest_attack"]: "loss"}
    return RunFacts(run_id=run_id, metrics=metrics, tags=tags, overall="pass", test_split=SPLIT, version=version)


@pytest.mark.parametrize(("allowance", "status"), [(0.01, "fail"), (0.05, "inconclusive"), (0.15, "pass")])
def test_the_gate_decides_accuracy_on_the_paired_interval(allowance: float, status: str) -> None:
    """The candidate is A's predictions, the champion B's: candidate - champion = -20/300, exact
    interval -0.1417 to -0.0121. Below -allowance entirely: fail; straddling: inconclusive."""
    right_a, right_b = planted()
    paired = compare(evidence("champ", right_b), evidence("cand", right_a))
    champion, candidate = gate_facts("champ", "1", 260 / 300, 0.8), gate_facts("cand", "2", 0.8, 0.8)
    record = evaluate_gate(candidate, champion, GateConfig(max_accuracy_drop=allowance), model_name="m", paired=paired)
    found = {c.key: c for c in record.criteria}["accuracy/regression"]
    assert found.status == status
    assert found.interval == (paired.accuracy.low, paired.accuracy.high)
    assert "paired on the same 300 test images: -0.06667, 0.95 interval -0.1417 to -0.01213" in found.reason
    assert "(+10/-30 discordant, McNemar p=0.0022)" in found.reason
    assert found.reason.endswith("; the interval straddles it") == (status == "inconclusive")
    # the raw difference (-0.067) would fail at 0.05; only the interval can say "not sure"
    raw = evaluate_gate(candidate, champion, GateConfig(max_accuracy_drop=allowance), model_name="m")
    raw_found = {c.key: c for c in raw.criteria}["accuracy/regression"]
    assert raw_found.status == ("pass" if allowance > 20 / 300 else "fail")
    assert raw_found.reason.endswith("; not paired: no paired evidence was given)")


def test_the_gate_judges_worst_class_recall_and_privacy_on_paired_tests() -> None:
    right_a, right_b = planted()
    paired = compare(
        evidence("champ", right_a, scores=attack_scores(0)), evidence("cand", right_b, scores=attack_scores(0))
    )
    champion, candidate = gate_facts("champ", "1", 0.8, 0.8), gate_facts("cand", "2", 260 / 300, 0.8)
    cfg = GateConfig(max_worst_class_recall_drop=0.02, max_privacy_tpr_increase=0.01)
    found = {c.key: c for c in evaluate_gate(candidate, champion, cfg, model_name="m", paired=paired).criteria}
    worst = found["worst_class_recall/regression"]
    # circle, the candidate's worst class: 10 fixed, 10 broken of 100: +0 with a wide simultaneous interval
    assert worst.status == "inconclusive"
    said = "paired on class 'circle' (this run's worst), its 100 test images; simultaneous over 3 classes"
    assert said in worst.reason
    # the same attack scores in both runs: the same members found; with 0 of 150 discordant the
    # interval is +-0.029 (Clopper-Pearson of 0/150 at 1 - 0.05/2): within 0.05, not within 0.01
    privacy = found["privacy/regression"]
    assert privacy.status == "inconclusive" and privacy.interval[1] == pytest.approx(1 - 0.0125 ** (1 / 150))
    assert "paired on the loss attack at 0.01 FPR, the same 150 members: +0, " in privacy.reason
    assert found["accuracy/regression"].status == "pass"
    loose = GateConfig(max_worst_class_recall_drop=0.5, max_privacy_tpr_increase=0.05)
    found = {c.key: c for c in evaluate_gate(candidate, champion, loose, model_name="m", paired=paired).criteria}
    assert found["worst_class_recall/regression"].status == "pass" and found["privacy/regression"].status == "pass"


# ------------------------------------------------------------------------------ the CLI, two runs
@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("compare")


def planted_run(workdir, name: str, right: np.ndarray, digest: str = DIGEST, verdicts: dict | None = None) -> str:
    """A finished pipeline run holding only what a comparison reads: the evaluate stage's
    predictions (right where `right` is), the privacy stage's attack scores, the data digest and
    verdict tags on the parent."""
    from auditflow.core.config import PipelineConfig
    from auditflow.core.names import Privacy, Stage, verdict_tag
    from auditflow.core.tracking import Tracker, open_pipeline_run

    ref = open_pipeline_run(PipelineConfig(), workdir, name, tags={})
    tracker = Tracker(ref.uri)
    with tracker.stage(ref, Stage.EVALUATE) as run:
        folder = workdir / name
        folder.mkdir()
        path = planted_predictions(right, LABELS, len(CLASSES)).save(folder / "predictions.npz")
        run.log_artifact(path, Stage.EVALUATE)
        run.log_summary(Stage.EVALUATE, {"classes": list(CLASSES)})
    with tracker.stage(ref, Stage.PRIVACY) as run:
        run.log_text(attack_scores(0).as_json(), Privacy.ATTACK_SCORES_JSON)
    tags = {verdict_tag(group): status for group, status in (verdicts or {}).items()}
    tracker.parent(ref).set_tags({TAGS["data_digest"]: digest} | tags)
    tracker.end_run(ref.run_id)
    return ref.run_id


def app():
    from auditflow.cli import app as cli_app

    return cli_app


def test_cli_compare_on_two_runs_that_differ_by_a_planted_amount(workdir) -> None:
    from auditflow.core.names import Compare
    from auditflow.core.tracking import Tracker

    right_a, right_b = planted()
    run_a = planted_run(workdir, "a", right_a, verdicts={"fairness": "pass", "privacy": "inconclusive"})
    run_b = planted_run(workdir, "b", right_b, verdicts={"fairness": "fail", "privacy": "pass"})
    out = runner.invoke(app(), ["compare", run_a, run_b, "--workdir", str(workdir)])
    assert out.exit_code == 0, out.output
    table = [line for line in out.output.splitlines() if "│" in line]
    assert table and max(len(line) for line in table) <= 80  # an 80-column terminal
    row = next(line for line in table if line.startswith("│ accuracy"))
    assert [cell.strip() for cell in row.strip("│").split("│")] == [
        "accuracy",
        "0.800",
        "0.867",
        "+0.067",
        "+0.012..+0.142",
        "0.0022",
    ]
    assert "accuracy: 30 images fixed by B, 10 broken (McNemar exact test)" in out.output
    assert any(line.startswith("│ fairness") and "worse" in line for line in table)

    tracker = Tracker(f"sqlite:///{workdir / 'mlflow.db'}")
    logged = {f.path for f in tracker.client.list_artifacts(run_b, "compare")}
    names = {name.format(run=run_a) for name in (Compare.MARKDOWN, Compare.HTML, Compare.JSON)}
    assert logged == names
    with_a = tracker.client.download_artifacts(run_b, Compare.JSON.format(run=run_a), str(workdir / "dl"))
    doc = json.loads(Path(with_a).read_text())
    assert (doc["accuracy"]["fixed"], doc["accuracy"]["broken"]) == (30, 10)
    assert doc["accuracy"]["p_value"] == pytest.approx(PLANTED_P, rel=1e-12)
    md = tracker.client.download_artifacts(run_b, Compare.MARKDOWN.format(run=run_a), str(workdir / "dl"))
    text = Path(md).read_text()
    assert "| accuracy | 0.8000 | 0.8667 | +0.0667 | +0.0121 to +0.1417 | 30 / 10 | 0.00222 |" in text
    assert "| `verdict/fairness` | pass | fail | worse |" in text

    # another test split: refused in one line on stderr, exit 2
    run_c = planted_run(workdir, "c", right_b, digest="cd" * 32)
    out = runner.invoke(app(), ["compare", run_a, run_c, "--workdir", str(workdir)])
    assert out.exit_code == 2
    lines = out.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: cannot compare runs {run_a} and {run_c}: they were tested on different test")
    assert not {f.path for f in tracker.client.list_artifacts(run_c, "compare")}
    out = runner.invoke(app(), ["compare", run_a, "0123abcd", "--workdir", str(workdir)])
    assert out.exit_code == 2 and "error: run id '0123abcd' not found" in out.output
