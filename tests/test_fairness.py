"""Per-class quality of service, subgroups within classes, mitigation and the fairness x privacy
view, against brute-force recomputation on small hand-made inputs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax
from scipy.stats import binomtest, norm

from auditflow.audits.fairness import (
    audit_fairness,
    class_counts,
    decide,
    gap_interval,
    smallest_settling_n,
)
from auditflow.audits.joint import class_ece, exposure_correlation, joint_rows, joint_table, rank_auc, weighted_auc
from auditflow.audits.mitigation import fit_logit_offsets, mitigation_effect
from auditflow.audits.subgroups import audit_subgroups, cell_table, derived_attributes, read_metadata
from auditflow.core.config import FairnessConfig
from auditflow.core.errors import ConfigError, DataError
from auditflow.core.stats import bonferroni_level, wilson_interval

CLASSES = ("a", "b", "c")


def wilson_by_hand(x: int, n: int, level: float) -> tuple[float, float]:
    z = norm.ppf(1 - (1 - level) / 2)
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.fixture
def predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3))
    logits[np.arange(300), labels] += np.array([2.5, 1.0, 0.2])[labels]  # class a easy, c hard
    return labels, logits.argmax(1)


def _cfg(**kw: float) -> FairnessConfig:
    return FairnessConfig(**{"min_class_recall": 0.0, "max_recall_gap": 1.0, **kw})


# --- per-class quality of service -----------------------------------------------------------------


@pytest.mark.parametrize(("x", "n", "level"), [(0, 10, 0.95), (3, 10, 0.99), (10, 10, 0.9), (57, 91, 0.983)])
def test_wilson_matches_formula_and_scipy(x: int, n: int, level: float) -> None:
    low, high = wilson_interval(np.array([x]), np.array([n]), level)
    assert (low[0], high[0]) == pytest.approx(wilson_by_hand(x, n, level), abs=1e-12)
    ci = binomtest(x, n).proportion_ci(level, method="wilson")
    assert (low[0], high[0]) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_without_data_is_the_unit_interval() -> None:
    low, high = wilson_interval(np.array([0]), np.array([0]), 0.95)
    assert (low[0], high[0]) == (0.0, 1.0)
    with pytest.raises(ValueError, match=r"need 0 <= successes <= n, got successes \[5\] and n \[3\]"):
        wilson_interval(np.array([5]), np.array([3]), 0.95)


def test_per_class_rates_and_intervals_brute_force(predictions) -> None:
    labels, preds = predictions
    result = audit_fairness(labels, preds, CLASSES, cfg=_cfg())
    level = 1 - 0.05 / 3
    assert result.per_class_level == pytest.approx(level)
    lows, highs, recalls = [], [], []
    for k, row in enumerate(result.per_class):
        tp = int(np.sum((preds == k) & (labels == k)))
        fp = int(np.sum((preds == k) & (labels != k)))
        support, negatives = int(np.sum(labels == k)), int(np.sum(labels != k))
        assert row["class"] == CLASSES[k] and row["support"] == support
        assert row["recall"] == pytest.approx(tp / support)
        assert row["precision"] == pytest.approx(tp / (tp + fp))
        assert row["false_positive_rate"] == pytest.approx(fp / negatives)
        for name, (x, n) in {
            "recall": (tp, support),
            "precision": (tp, tp + fp),
            "false_positive_rate": (fp, negatives),
        }.items():
            assert (row[f"{name}_ci_low"], row[f"{name}_ci_high"]) == pytest.approx(wilson_by_hand(x, n, level))
        lows.append(row["recall_ci_low"])
        highs.append(row["recall_ci_high"])
        recalls.append(tp / support)
    assert result.worst_class == CLASSES[int(np.argmin(recalls))]
    assert result.worst_recall == pytest.approx(min(recalls))
    assert result.worst_recall_ci == pytest.approx((min(lows), min(highs)))
    assert result.recall_gap == pytest.approx(max(recalls) - min(recalls))
    assert result.recall_gap_ci == pytest.approx((max(0.0, max(lows) - min(highs)), max(highs) - min(lows)))
    assert result.worst_status == result.gap_status == "pass" and result.reasons == () and result.settle_n == {}
    json.dumps(asdict(result))  # rows and fields are plain JSON values


def test_simultaneous_coverage_by_simulation() -> None:
    """All K intervals together (and so the worst-class claim) cover at >= nominal level - tolerance."""
    rng = np.random.default_rng(0)
    p = np.array([0.55, 0.7, 0.8, 0.9, 0.95])
    n = np.array([60, 80, 100, 120, 150])
    tp = rng.binomial(n, p, size=(4000, len(p)))
    low, high = wilson_interval(tp, np.broadcast_to(n, tp.shape), bonferroni_level(0.9, len(p)))
    all_cover = np.all((low <= p) & (p <= high), axis=1).mean()
    worst_cover = np.mean((low.min(1) <= p.min()) & (p.min() <= high.min(1)))
    gap_lo = np.maximum(0, low.max(1) - high.min(1))
    gap_hi = high.max(1) - low.min(1)
    gap_cover = np.mean((gap_lo <= np.ptp(p)) & (np.ptp(p) <= gap_hi))
    assert all_cover >= 0.9 - 0.015
    assert worst_cover >= all_cover and gap_cover >= all_cover  # implied by the simultaneous claim
    # without Bonferroni the joint claim falls short: the correction is doing its job
    low1, high1 = wilson_interval(tp, np.broadcast_to(n, tp.shape), 0.9)
    assert np.all((low1 <= p) & (p <= high1), axis=1).mean() < 0.85


def test_decide_at_its_edges() -> None:
    assert decide(0.5, 0.7, 0.5, higher_is_better=True) == "pass"  # reaching the threshold is good
    assert decide(0.3, 0.4999, 0.5, higher_is_better=True) == "fail"
    assert decide(0.3, 0.5, 0.5, higher_is_better=True) == "inconclusive"
    assert decide(0.1, 0.3, 0.3, higher_is_better=False) == "pass"
    assert decide(0.3001, 0.5, 0.3, higher_is_better=False) == "fail"
    assert decide(0.3, 0.5, 0.3, higher_is_better=False) == "inconclusive"
    with pytest.raises(ValueError, match=r"need low <= high, got low 0\.6 and high 0\.5"):
        decide(0.6, 0.5, 0.5, higher_is_better=True)


def _two_classes(tp: tuple[int, int], n: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Labels/preds with class k found tp[k] times out of n[k] (misses go to the other class)."""
    labels = np.repeat([0, 1], n)
    preds = labels.copy()
    preds[tp[0] : n[0]] = 1
    preds[n[0] + tp[1] :] = 0
    return labels, preds


def test_worst_recall_verdict_at_the_edges() -> None:
    labels, preds = _two_classes((80, 90), (100, 100))
    level = bonferroni_level(0.95, 2)
    low_a, high_a = wilson_by_hand(80, 100, level)

    at_edge = audit_fairness(
        labels, preds, ("a", "b"), cfg=_cfg(min_class_recall=float(wilson_interval(80, 100, level)[0]))
    )
    assert at_edge.worst_status == "pass" and at_edge.worst_class == "a"

    above = audit_fairness(labels, preds, ("a", "b"), cfg=_cfg(min_class_recall=high_a + 1e-9))
    assert above.worst_status == "fail"
    assert above.reasons == (
        f"worst-class recall fails: 1 class(es) are below the threshold {high_a + 1e-9} with simultaneous "
        f"95% confidence: a 0.800 [{low_a:.3f}, {high_a:.3f}].",
    )
    assert "worst_class_recall" not in above.settle_n

    straddle = audit_fairness(labels, preds, ("a", "b"), cfg=_cfg(min_class_recall=0.75))
    assert straddle.worst_status == "inconclusive"
    n = straddle.settle_n["worst_class_recall"]
    assert n is not None and n > 100
    # brute force of the definition: at n images with recall 0.8 the interval clears 0.75, at n - 1 not
    assert wilson_by_hand(0.8 * n, n, level)[0] >= 0.75 > wilson_by_hand(0.8 * (n - 1), n - 1, level)[0]
    assert straddle.reasons[0].startswith(
        "worst-class recall is inconclusive: the simultaneous 95% intervals of a 0.800"
    )
    assert straddle.reasons[0].endswith(
        f"about {n} test images per class would settle it if recall stayed where it is."
    )


def test_no_settle_n_when_recall_sits_on_the_threshold() -> None:
    labels, preds = _two_classes((80, 90), (100, 100))
    result = audit_fairness(labels, preds, ("a", "b"), cfg=_cfg(min_class_recall=0.8))
    assert result.worst_status == "inconclusive" and result.settle_n == {"worst_class_recall": None}
    assert "no realistic test-set size would settle it" in result.reasons[0]


def test_recall_gap_verdicts() -> None:
    labels, preds = _two_classes((60, 95), (200, 200))
    level = bonferroni_level(0.95, 2)
    (la, ha), (lb, hb) = wilson_by_hand(60, 200, level), wilson_by_hand(95, 200, level)
    gap_lo, gap_hi = lb - ha, hb - la
    assert audit_fairness(labels, preds, ("a", "b"), cfg=_cfg(max_recall_gap=gap_hi)).gap_status == "pass"
    fail = audit_fairness(labels, preds, ("a", "b"), cfg=_cfg(max_recall_gap=gap_lo - 1e-9))
    assert fail.gap_status == "fail" and fail.recall_gap == pytest.approx(0.175)
    assert fail.reasons[0].startswith("recall gap 0.175 (best b 0.475 minus worst a 0.300), simultaneous 95% interval")
    mid = audit_fairness(labels, preds, ("a", "b"), cfg=_cfg(max_recall_gap=0.2))
    assert mid.gap_status == "inconclusive" and mid.settle_n["recall_gap"] > 200
    n = mid.settle_n["recall_gap"]
    lo, hi = wilson_interval(np.array([0.3, 0.475]) * n, np.array([n, n]), level)
    assert decide(*gap_interval(lo, hi), 0.2, higher_is_better=False) == "pass"


def test_smallest_settling_n_is_the_smallest() -> None:
    assert smallest_settling_n(lambda n: n >= 37, start=5) == 37
    assert smallest_settling_n(lambda n: n >= 5, start=5) == 5
    assert smallest_settling_n(lambda n: False, start=5) is None


def test_fairness_rejects_bad_inputs() -> None:
    with pytest.raises(
        ValueError, match=r"need equal, non-zero numbers of labels and predictions, got \(2,\) and \(3,\)"
    ):
        audit_fairness(np.zeros(2, int), np.zeros(3, int), CLASSES, cfg=_cfg())
    with pytest.raises(ValueError, match=r"labels must be integers in 0..2, got values \[0 5\]"):
        class_counts(np.array([0, 5]), np.array([0, 0]), 3)


# --- subgroups --------------------------------------------------------------------------------------


def _grey_images(values: np.ndarray, size: int = 4) -> np.ndarray:
    return np.broadcast_to(values.astype(np.uint8)[:, None, None, None], (len(values), size, size, 3)).copy()


def test_brightness_terciles_sorted() -> None:
    rng = np.random.default_rng(1)
    values = rng.permutation(np.arange(30) * 8)
    groups = derived_attributes(_grey_images(values), ("brightness",), 3)["brightness"]
    expected = np.where(values < 80, "low", np.where(values < 160, "mid", "high"))
    assert list(groups) == list(expected)
    quartiles = derived_attributes(_grey_images(values), ("brightness",), 4)["brightness"][np.argsort(values)]
    assert sorted(quartiles, key=lambda g: int(g[1:])) == list(quartiles)  # darker images never in a later group
    assert set(quartiles) == {"q1", "q2", "q3", "q4"}


def test_colourfulness_matches_formula() -> None:
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)
    images[:5] = images[:5, :, :, :1]  # grey images: colourfulness 0, the lowest group
    x = images.astype(float)
    rg = (x[..., 0] - x[..., 1]).reshape(20, -1)
    yb = (0.5 * (x[..., 0] + x[..., 1]) - x[..., 2]).reshape(20, -1)
    c = np.hypot(rg.std(1), yb.std(1)) + 0.3 * np.hypot(rg.mean(1), yb.mean(1))
    groups = derived_attributes(images, ("colourfulness",), 2)["colourfulness"]
    assert list(groups) == list(np.where(c <= np.median(c), "q1", "q2"))
    assert set(groups[:5]) == {"q1"}


def test_derived_attributes_errors() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown derived attribute\(s\) \['hue'\]; accepted: brightness, colourfulness"
    ):
        derived_attributes(_grey_images(np.arange(4)), ("hue",), 3)
    with pytest.raises(
        DataError, match=r"need a non-empty \(N, H, W, 3\) uint8 image array, got shape \(4, 4, 4\) uint8"
    ):
        derived_attributes(np.zeros((4, 4, 4), np.uint8), ("brightness",), 3)


def _subgroup_data(rng: np.random.Generator, n_per_class: int, accuracy: float) -> tuple[np.ndarray, ...]:
    labels = np.repeat(np.arange(3), n_per_class)
    brightness = rng.permutation(np.tile(np.arange(0, 240, 240 / n_per_class), 3).astype(np.uint8))
    wrong = rng.random(len(labels)) > accuracy
    preds = np.where(wrong, (labels + 1) % 3, labels)
    return labels, preds, brightness


def test_planted_subgroup_gap_is_found_and_fails() -> None:
    rng = np.random.default_rng(3)
    labels, preds, values = _subgroup_data(rng, 300, 0.9)
    attrs = derived_attributes(_grey_images(values), ("brightness",), 3)
    preds = np.where((labels == 1) & (attrs["brightness"] == "low"), 2, preds)  # dark class-b images: always wrong
    result = audit_subgroups(labels, preds, attrs, classes=CLASSES, cfg=FairnessConfig())
    assert result.status == "fail"
    assert result.worst["attribute"] == "brightness" and result.worst["class"] == "b"
    assert result.worst["worst_group"] == "low" and result.worst["gap"] > 0.8 and result.worst["ci_low"] > 0.2
    assert any(r.startswith("recall gap within class b by brightness") and "exceeds" in r for r in result.reasons)
    json.dumps(asdict(result))


def test_no_planted_gap_with_large_n_passes() -> None:
    rng = np.random.default_rng(4)
    labels, preds, values = _subgroup_data(rng, 3000, 0.85)
    attrs = derived_attributes(_grey_images(values, size=2), ("brightness", "colourfulness"), 3)
    result = audit_subgroups(labels, preds, attrs, classes=CLASSES, cfg=FairnessConfig())
    assert result.status == "pass" and result.reasons == ()
    assert result.cell_level == pytest.approx(1 - 0.05 / 12)  # 9 brightness + 3 colourfulness cells
    assert all(g["tpr_gap_ci_high"] <= 0.2 for g in result.gaps if g["judged"])


def test_small_cells_are_shown_but_not_judged() -> None:
    labels = np.repeat([0, 1, 2], [100, 100, 100])
    preds = labels.copy()
    group = np.array(["x"] * 300, dtype=object)
    group[:10] = "y"  # 10 class-a images in group y: below min_group_count
    result = audit_subgroups(labels, preds, {"site": group}, classes=CLASSES, cfg=FairnessConfig(min_group_count=30))
    small = next(c for c in result.cells if c["class"] == "a" and c["group"] == "y")
    assert small["judged"] is False and small["positives"] == 10
    assert small["reason"].startswith("10 images of the class < min_group_count 30")
    gap_a = next(g for g in result.gaps if g["class"] == "a")
    assert gap_a["judged"] is False and gap_a["tpr_gap"] is None
    assert gap_a["reason"] == "fewer than 2 groups with at least 30 images of the class"
    assert result.status == "inconclusive" and result.worst is None


def test_cell_table_matches_groupby_brute_force() -> None:
    rng = np.random.default_rng(5)
    labels, preds = rng.integers(0, 3, 400), rng.integers(0, 3, 400)
    group = rng.choice(["p", "q", "r"], 400)
    table = cell_table(labels, preds, group, classes=CLASSES)
    stacked = pd.DataFrame(
        {
            "class": np.repeat(CLASSES, 400),
            "group": np.tile(group, 3),
            "t": np.concatenate([labels == k for k in range(3)]),
            "p": np.concatenate([preds == k for k in range(3)]),
        }
    )
    for (cls, g), cell in stacked.groupby(["class", "group"]):
        row = table.loc[(cls, g)]
        assert row["positives"] == cell["t"].sum() and row["count"] == len(cell)
        assert row["tp"] == (cell["t"] & cell["p"]).sum() and row["fp"] == (~cell["t"] & cell["p"]).sum()
        assert row["tpr"] == pytest.approx(cell.loc[cell["t"], "p"].mean())
        assert row["fpr"] == pytest.approx(cell.loc[~cell["t"], "p"].mean())
    assert len(table) == 9


# --- metadata CSV --------------------------------------------------------------------------------


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "meta.csv"
    path.write_text(text)
    return path


def test_metadata_join(tmp_path: Path) -> None:
    path = _csv(tmp_path, "path,site,camera\n./test/cat/0001.png,north,x\ntest\\dog\\0002.png,south,\n")
    names = ["test/cat/0001.png", "test/dog/0002.png", "test/dog/0003.png"]
    meta = read_metadata(path, names)
    assert list(meta["site"]) == ["north", "south", "unknown"]
    assert list(meta["camera"]) == ["x", "unknown", "unknown"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("file,site\na.png,n\n", "no `path` column (columns: file, site)"),
        ("path\ntest/a.png\n", "no attribute column besides `path`"),
        ("path,site\ntest/a.png,n\n./test/a.png,s\n", "duplicate paths test/a.png"),
        (
            "path,site\nx/1.png,n\nx/2.png,n\nx/3.png,n\nx/4.png,n\n",
            "no row matches any image; metadata paths look like x/1.png, x/2.png, x/3.png; "
            "image paths look like test/a.png, test/b.png, test/c.png",
        ),
    ],
)
def test_metadata_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as err:
        read_metadata(path, ["test/a.png", "test/b.png", "test/c.png", "test/d.png"])
    assert str(err.value) == f"metadata {path}: {message}"


# --- mitigation ----------------------------------------------------------------------------------


def _biased_logits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), labels] += 2.0
    logits[:, 2] -= 2.0  # class 2 is under-predicted
    return logits, labels


def test_logit_adjustment_raises_the_biased_class_on_test() -> None:
    val_logits, val_labels = _biased_logits(2000, 6)
    test_logits, test_labels = _biased_logits(2000, 7)
    offsets = fit_logit_offsets(val_logits, val_labels, 4)
    assert np.argmax(offsets) == 2 and offsets.mean() == pytest.approx(0.0)
    assert np.array_equal(offsets, fit_logit_offsets(val_logits, val_labels, 4))  # deterministic
    result = mitigation_effect(offsets, test_logits, test_labels, classes=("w", "x", "y", "z"), cfg=FairnessConfig())
    row = result.per_class[2]
    brute_before = np.mean(test_logits[test_labels == 2].argmax(1) == 2)
    brute_after = np.mean((test_logits[test_labels == 2] + offsets).argmax(1) == 2)
    assert row["recall_before"] == pytest.approx(brute_before) and row["recall_after"] == pytest.approx(brute_after)
    assert brute_after > brute_before + 0.2
    assert result.worst_class_before == "y" and result.worst_recall_after > result.worst_recall_before
    assert result.accuracy_before == pytest.approx(np.mean(test_logits.argmax(1) == test_labels))
    assert result.helped and result.reading.startswith("On the held-out test split, logit adjustment raised")
    json.dumps(asdict(result))


def test_mitigation_that_does_not_help_says_so() -> None:
    test_logits, test_labels = _biased_logits(500, 8)
    result = mitigation_effect(
        np.zeros(4), test_logits, test_labels, classes=("w", "x", "y", "z"), cfg=FairnessConfig()
    )
    assert not result.helped and result.reading.endswith("it did not help on test.")
    assert result.worst_recall_ci_before == result.worst_recall_ci_after


# --- fairness x privacy ----------------------------------------------------------------------------


def test_class_ece_brute_force() -> None:
    rng = np.random.default_rng(9)
    logits, labels = rng.normal(size=(300, 3)) * 2, rng.integers(0, 3, 300)
    probs = softmax(logits, axis=1)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    expected = []
    for k in range(3):
        c, ok = conf[labels == k], correct[labels == k]
        ece = 0.0
        for b in range(10):
            inside = (c > b / 10) & (c <= (b + 1) / 10)
            if inside.any():
                ece += inside.mean() * abs(ok[inside].mean() - c[inside].mean())
        expected.append(ece)
    assert class_ece(logits, labels, 3, n_bins=10) == pytest.approx(expected)
    assert np.isnan(class_ece(logits, np.zeros(300, int), 3, n_bins=10)[1])


def test_rank_auc_and_weighted_auc_brute_force() -> None:
    rng = np.random.default_rng(10)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 40).astype(float)  # many ties
    diff = pos[:, None] - neg[None, :]
    assert rank_auc(pos, neg) == pytest.approx(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))
    w, v = rng.integers(0, 3, (4, 30)), rng.integers(0, 3, (4, 40))
    got = weighted_auc(pos, neg, w=w, v=v)
    for b in range(4):
        p, n = np.repeat(pos, w[b]), np.repeat(neg, v[b])
        d = p[:, None] - n[None, :]
        assert got[b] == pytest.approx(np.mean(d > 0) + 0.5 * np.mean(d == 0))


def _exposure_data(rng: np.random.Generator, planted: bool) -> dict[str, np.ndarray]:
    k, n = 8, 400
    error = np.linspace(0.05, 0.6, k)
    test_labels = np.repeat(np.arange(k), n)
    test_preds = np.where(rng.random(k * n) < error[test_labels], (test_labels + 1) % k, test_labels)
    labels = np.repeat(np.arange(k), n)
    shift = error[labels] if planted else 0.0
    return {
        "test_labels": test_labels,
        "test_preds": test_preds,
        "member_scores": rng.normal(size=k * n) + shift,
        "member_labels": labels,
        "nonmember_scores": rng.normal(size=k * n),
        "nonmember_labels": labels,
    }


def test_exposure_correlation_planted_and_random() -> None:
    rng = np.random.default_rng(11)
    planted = exposure_correlation(**_exposure_data(rng, True), n_classes=8, n_boot=300, seed=0, confidence=0.95)
    assert planted["answer"] == "yes" and planted["ci"][0] > 0 and planted["n_classes"] == 8
    assert planted["reading"].startswith("yes: classes the model serves worse are also more exposed")
    random = exposure_correlation(**_exposure_data(rng, False), n_classes=8, n_boot=300, seed=0, confidence=0.95)
    assert random["ci"][0] <= 0 <= random["ci"][1] and random["answer"] == "inconclusive"
    json.dumps(planted)


def test_joint_table_rows() -> None:
    rng = np.random.default_rng(12)
    logits, labels = rng.normal(size=(90, 3)), np.repeat([0, 1, 2], 30)
    attack = [
        {"class": "b", "auc": 0.7, "tpr": 0.1, "tpr_ci_low": 0.05, "tpr_ci_high": 0.2, "stated": True, "reason": None}
    ]
    member_loss, member_labels = rng.random(60), np.repeat([0, 1], 30)
    rows = joint_table(
        test_logits=logits,
        test_labels=labels,
        classes=CLASSES,
        attack_per_class=attack,
        member_loss=member_loss,
        member_labels=member_labels,
        nonmember_loss=rng.random(60) + 1,
        nonmember_labels=member_labels,
        confidence=0.95,
        n_bins=10,
    )
    preds = logits.argmax(1)
    assert rows[1].recall == pytest.approx(np.mean(preds[labels == 1] == 1))
    assert rows[1].attack_auc == 0.7 and rows[0].attack_auc is None
    assert rows[0].member_loss_mean == pytest.approx(member_loss[:30].mean())
    assert rows[2].n_members == 0 and rows[2].member_loss_mean is None
    assert rows[0].ece == pytest.approx(class_ece(logits, labels, 3, n_bins=10)[0])
    table = joint_rows(rows)
    assert [r["class"] for r in table] == list(CLASSES) and list(table[0])[:2] == ["class", "support"]
    json.dumps(table)
