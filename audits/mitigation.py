"""Mitigation by per-class logit adjustment, tuned on validation, judged on the held-out test split.

A constant offset per class is added to the logits before the argmax: raising class k's offset
makes the model predict k more often, trading other classes' recall for k's. The offsets are
tuned on the *validation* split to maximise worst-class recall (ties: accuracy) by coordinate
ascent over a grid, and the before/after comparison is made on the *test* split, which played no
part in the tuning. Whatever the test split says is reported, including "it did not help".

The shipped model is unchanged. When the adjusted model passes a fairness check that the plain
one does not, and fails none (`worth_exporting`), the export stage ships it as an optional ONNX
variant (`model.adjusted.onnx`, the offsets folded into the graph), audited by the checks of
verdict group `fairness_adjusted` here and by parity and its accuracy cost at export; the
release gate says whether that file could ship in the plain model's place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from auditflow.audits.fairness import class_counts, decide, gap_interval
from auditflow.core.config import FairnessConfig
from auditflow.core.stats import bonferroni_level, wilson_interval

N_GRID = 41  # offsets tried per class and round
MAX_ROUNDS = 20  # coordinate-ascent sweeps over the classes (it usually stops after 2-4)


def _recalls(correct_by_class: np.ndarray, support: np.ndarray) -> np.ndarray:
    """(..., K) correct counts -> recall per class; classes without support are ignored (nan)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(support > 0, correct_by_class / support, np.nan)


def _default_span(logits: np.ndarray) -> float:
    """Grid half-width in logit units: the 95th percentile of the top-1 minus top-2 margin
    (offsets much beyond it flip nearly every prediction), at least 1."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return float(max(np.quantile(top2[:, 1] - top2[:, 0], 0.95), 1.0))


def fit_logit_offsets(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    n_classes: int,
    *,
    span: float | None = None,
    n_grid: int = N_GRID,
    max_rounds: int = MAX_ROUNDS,
) -> np.ndarray:
    """Per-class offsets (K,), logit units, to add to the logits before the argmax.

    Coordinate ascent: for each class in turn, try every offset on a grid over [-span, span]
    (default from the validation margins) with the others fixed, keep the one with the highest
    worst-class recall on validation, ties broken by accuracy and then by the smallest change;
    repeat until a sweep changes nothing. Deterministic. Returned with mean 0 (the argmax does
    not see a common shift)."""
    logits = np.asarray(val_logits, dtype=np.float64)
    labels = np.asarray(val_labels)
    if logits.ndim != 2 or logits.shape != (len(labels), n_classes) or len(labels) == 0:
        raise ValueError(f"need (N, {n_classes}) logits for N labels, got {logits.shape} for {labels.shape}")
    span = _default_span(logits) if span is None else float(span)
    grid = np.linspace(-span, span, n_grid)
    support = np.bincount(labels, minlength=n_classes)
    onehot = np.eye(n_classes, dtype=np.float64)[labels]  # (N, K)
    offsets = np.zeros(n_classes)
    rows = np.arange(len(labels))

    for _ in range(max_rounds):
        changed = False
        for k in range(n_classes):
            shifted = logits + offsets
            others = shifted.copy()
            others[:, k] = -np.inf
            best_other = others.argmax(1)
            margin = others[rows, best_other] - logits[:, k]  # class k wins when its offset exceeds this
            # (G, N): prediction under each candidate offset; ties go to the lower index, as argmax does
            wins = (grid[:, None] > margin) | ((grid[:, None] == margin) & (k < best_other))
            preds_correct_other = best_other == labels
            correct = np.where(wins, labels == k, preds_correct_other)  # (G, N)
            by_class = correct.astype(np.float64) @ onehot  # (G, K)
            worst = np.nanmin(_recalls(by_class, support), axis=1)
            accuracy = correct.mean(1)
            change = np.abs(grid - offsets[k])
            # lexicographic: max worst recall, then max accuracy, then the smallest move
            order = np.lexsort((change, -np.round(accuracy, 12), -np.round(worst, 12)))
            best = grid[order[0]]
            current = _score(logits + offsets, labels, support)
            candidate = (round(float(worst[order[0]]), 12), round(float(accuracy[order[0]]), 12))
            if candidate > current and best != offsets[k]:
                offsets[k] = best
                changed = True
        if not changed:
            break
    return offsets - offsets.mean()


def _score(logits: np.ndarray, labels: np.ndarray, support: np.ndarray) -> tuple[float, float]:
    preds = logits.argmax(1)
    by_class = np.bincount(labels[preds == labels], minlength=len(support))
    return round(float(np.nanmin(_recalls(by_class, support))), 12), round(float(np.mean(preds == labels)), 12)


@dataclass(frozen=True)
class MitigationResult:
    """Before/after logit adjustment on the test split. Recalls and accuracy are fractions 0..1,
    higher is better; gaps are best minus worst class recall, lower is better, 0 ideal.
    Intervals are Wilson, simultaneous over the classes at `confidence`."""

    offsets: tuple[float, ...]  # per class, logit units, mean 0
    per_class: list[dict[str, object]]  # class, support, offset, recall_before/after (+ci)
    accuracy_before: float
    accuracy_after: float
    worst_class_before: str
    worst_class_after: str
    worst_recall_before: float
    worst_recall_after: float
    worst_recall_ci_before: tuple[float, float]
    worst_recall_ci_after: tuple[float, float]
    worst_status_before: str  # verdict against min_class_recall, as in the fairness audit
    worst_status_after: str
    recall_gap_before: float
    recall_gap_after: float
    recall_gap_ci_before: tuple[float, float]
    recall_gap_ci_after: tuple[float, float]
    gap_status_before: str
    gap_status_after: str
    helped: bool  # worst-class recall is higher after than before on test (point estimates)
    reading: str  # one honest sentence on what the test split shows
    confidence: float


def _summary(labels: np.ndarray, preds: np.ndarray, n_classes: int, level: float) -> dict[str, object]:
    counts = class_counts(labels, preds, n_classes)
    low, high = wilson_interval(counts["tp"], counts["support"], level)
    recall = _recalls(counts["tp"].astype(float), counts["support"])
    return {
        "recall": recall,
        "low": low,
        "high": high,
        "accuracy": float(np.mean(labels == preds)),
        "worst": int(np.nanargmin(recall)),
        "worst_ci": (float(low.min()), float(high.min())),
        "gap": float(np.nanmax(recall) - np.nanmin(recall)),
        "gap_ci": gap_interval(low, high),
    }


def mitigation_effect(
    offsets: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    *,
    classes: tuple[str, ...],
    cfg: FairnessConfig,
) -> MitigationResult:
    """Compare the model with and without the per-class `offsets` on the held-out test split."""
    offsets = np.asarray(offsets, dtype=np.float64)
    k_classes = len(classes)
    if offsets.shape != (k_classes,):
        raise ValueError(f"need one offset per class ({k_classes}), got shape {offsets.shape}")
    logits, labels = np.asarray(test_logits, dtype=np.float64), np.asarray(test_labels)
    level = bonferroni_level(cfg.confidence, k_classes)
    before = _summary(labels, logits.argmax(1), k_classes, level)
    after = _summary(labels, (logits + offsets).argmax(1), k_classes, level)

    per_class = []
    for k, cls in enumerate(classes):
        per_class.append(
            {
                "class": cls,
                "support": int(np.sum(labels == k)),
                "offset": float(offsets[k]),
                "recall_before": _plain(before["recall"][k]),
                "recall_before_ci_low": float(before["low"][k]),
                "recall_before_ci_high": float(before["high"][k]),
                "recall_after": _plain(after["recall"][k]),
                "recall_after_ci_low": float(after["low"][k]),
                "recall_after_ci_high": float(after["high"][k]),
            }
        )
    wb, wa = before["recall"][before["worst"]], after["recall"][after["worst"]]
    helped = bool(wa > wb)
    overlap = after["worst_ci"][0] <= before["worst_ci"][1]
    pct = f"{cfg.confidence:.0%}"
    change = "raised" if wa > wb else "lowered" if wa < wb else "left unchanged"
    reading = (
        f"On the held-out test split, logit adjustment {change} worst-class recall from {wb:.3f} "
        f"({classes[before['worst']]}) to {wa:.3f} ({classes[after['worst']]}), with accuracy "
        f"{before['accuracy']:.3f} -> {after['accuracy']:.3f}"
    )
    if not helped:
        reading += "; it did not help on test."
    elif overlap:
        reading += f"; the simultaneous {pct} intervals overlap, so the improvement is not established."
    else:
        reading += f"; the simultaneous {pct} intervals do not overlap."
    t_min, t_gap = cfg.min_class_recall, cfg.max_recall_gap
    return MitigationResult(
        offsets=tuple(float(o) for o in offsets),
        per_class=per_class,
        accuracy_before=before["accuracy"],
        accuracy_after=after["accuracy"],
        worst_class_before=str(classes[before["worst"]]),
        worst_class_after=str(classes[after["worst"]]),
        worst_recall_before=float(wb),
        worst_recall_after=float(wa),
        worst_recall_ci_before=before["worst_ci"],
        worst_recall_ci_after=after["worst_ci"],
        worst_status_before=decide(*before["worst_ci"], t_min, higher_is_better=True),
        worst_status_after=decide(*after["worst_ci"], t_min, higher_is_better=True),
        recall_gap_before=before["gap"],
        recall_gap_after=after["gap"],
        recall_gap_ci_before=before["gap_ci"],
        recall_gap_ci_after=after["gap_ci"],
        gap_status_before=decide(*before["gap_ci"], t_gap, higher_is_better=False),
        gap_status_after=decide(*after["gap_ci"], t_gap, higher_is_better=False),
        helped=helped,
        reading=reading,
        confidence=cfg.confidence,
    )


def _plain(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def worth_exporting(m: MitigationResult) -> bool:
    """Whether the adjusted model passes a fairness check (worst-class recall, recall gap) that
    the plain model does not pass, and fails neither."""
    pairs = ((m.worst_status_before, m.worst_status_after), (m.gap_status_before, m.gap_status_after))
    return any(b != "pass" and a == "pass" for b, a in pairs) and "fail" not in (
        m.worst_status_after,
        m.gap_status_after,
    )
