"""Subgroups within classes: does the classifier serve some kinds of image worse inside a class?

Attributes are either derived from pixels (brightness, colourfulness; cut into quantile groups)
or read from a metadata CSV. For each attribute, fairlearn's `MetricFrame` runs on the
one-vs-rest stacked table with the attribute as the sensitive feature and the class k of each
one-vs-rest copy as the control feature, so every cell is (class, group): its TPR is the recall
of class k among images of that group (higher is better, 1 ideal) and its FPR the share of the
group's other-class images called k (lower is better, 0 ideal).

Gaps are max - min over the groups of one class (0 ideal, lower is better, fraction 0..1).
Cells with fewer than `min_group_count` positives (negatives for FPR) are shown but not judged.
Wilson intervals are simultaneous over the judged cells of the whole audit (Bonferroni), so the
three-valued verdict on the largest TPR gap holds at `confidence`.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from fairlearn.metrics import MetricFrame

from auditflow.audits.fairness import (
    Verdict,
    class_counts,
    decide,
    gap_interval,
    one_vs_rest_table,
)
from auditflow.core.config import FairnessConfig
from auditflow.core.errors import ConfigError, DataError
from auditflow.core.stats import bonferroni_level, wilson_interval

UNKNOWN = "unknown"
LUMA = np.array([0.299, 0.587, 0.114])  # Rec. 601


RG = np.array([1.0, -1.0, 0.0])  # red-green opponent channel
YB = np.array([0.5, 0.5, -1.0])  # yellow-blue opponent channel


def _moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image channel means (N, 3) and channel covariance (N, 3, 3), 0..255 units.

    Every attribute here is a linear channel combination, so these moments are all that is
    needed: one pass over the pixels instead of one per attribute (10k 32x32 images: ~0.1 s)."""
    x = images.reshape(len(images), -1, 3).astype(np.float32)
    # matmul with ones, not x.mean(1): a strided reduction is ~10x slower. float32 sums of
    # integers below 2**24 are exact, so this loses nothing up to 65k pixels per image.
    mean = (np.ones(x.shape[1], np.float32) @ x).astype(np.float64) / x.shape[1]
    second = np.einsum("npc,npd->ncd", x, x, optimize=True).astype(np.float64) / x.shape[1]
    return mean, second - mean[:, :, None] * mean[:, None, :]


def _brightness(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Mean Rec. 601 luma per image, 0..255 (luma is linear: mean luma = luma of channel means)."""
    return mean @ LUMA


def _colourfulness(mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Hasler & Suesstrunk (2003) colourfulness: sigma_rgyb + 0.3 mu_rgyb with rg = R - G and
    yb = (R + G) / 2 - B; 0 for grey images, above about 100 "extremely colourful"."""
    var_rg = np.einsum("c,ncd,d->n", RG, cov, RG)
    var_yb = np.einsum("c,ncd,d->n", YB, cov, YB)
    sigma = np.sqrt(np.maximum(var_rg, 0) + np.maximum(var_yb, 0))
    return sigma + 0.3 * np.hypot(mean @ RG, mean @ YB)


ATTRIBUTES = {"brightness": _brightness, "colourfulness": _colourfulness}


def bin_labels(bins: int) -> tuple[str, ...]:
    """Group names: low/mid/high for terciles, else q1..qB (q1 lowest)."""
    return ("low", "mid", "high") if bins == 3 else tuple(f"q{i + 1}" for i in range(bins))


def quantile_groups(values: np.ndarray, bins: int) -> np.ndarray:
    """Cut values into `bins` quantile groups (like pandas.qcut: a value on an edge goes below)."""
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.asarray(bin_labels(bins))[np.searchsorted(edges, values, side="left")]


def derived_attributes(images: np.ndarray, names: tuple[str, ...], bins: int) -> dict[str, np.ndarray]:
    """Pixel-derived attributes of (N, H, W, 3) uint8 images, each cut into `bins` quantile
    groups over these images. Returns name -> (N,) array of group labels."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) == 0:
        raise DataError(f"need a non-empty (N, H, W, 3) uint8 image array, got shape {images.shape} {images.dtype}")
    if bins < 2:
        raise ConfigError(f"attribute bins must be at least 2, got {bins}")
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown:
        raise ConfigError(f"unknown derived attribute(s) {unknown}; accepted: {', '.join(ATTRIBUTES)}")
    moments = _moments(images)
    return {name: quantile_groups(ATTRIBUTES[name](*moments), bins) for name in names}


def _normalise(path: str) -> str:
    path = str(path).strip().replace("\\", "/")
    return posixpath.normpath(path) if path else path  # also strips a leading "./"


def read_metadata(csv_path: str | Path, image_names: list[str]) -> dict[str, np.ndarray]:
    """Attribute columns of a metadata CSV, aligned to `image_names` by its `path` column.

    Paths on both sides are compared as POSIX paths without a leading "./". Images without a row,
    and empty cells, get "unknown". Returns attribute -> (len(image_names),) array of str."""
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise DataError(f"metadata {csv_path}: could not be read as CSV ({err})") from err
    if "path" not in table.columns:
        raise DataError(f"metadata {csv_path}: no `path` column (columns: {', '.join(map(str, table.columns))})")
    attributes = [c for c in table.columns if c != "path"]
    if not attributes:
        raise DataError(f"metadata {csv_path}: no attribute column besides `path`")
    keys = table["path"].map(_normalise)
    duplicated = keys[keys.duplicated()].unique()
    if len(duplicated):
        raise DataError(f"metadata {csv_path}: duplicate paths {', '.join(duplicated[:3])}")
    wanted = [_normalise(n) for n in image_names]
    position = pd.Series(np.arange(len(table)), index=keys.to_numpy())
    rows = position.reindex(wanted).to_numpy()
    found = ~np.isnan(rows)
    if not found.any():
        raise DataError(
            f"metadata {csv_path}: no row matches any image; metadata paths look like "
            f"{', '.join(keys[:3])}; image paths look like {', '.join(wanted[:3])}"
        )
    out = {}
    for col in attributes:
        values = np.full(len(wanted), UNKNOWN, dtype=object)
        values[found] = table[col].to_numpy(dtype=object)[rows[found].astype(int)]
        values[values == ""] = UNKNOWN
        out[col] = values.astype(str)
    return out


def _count(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.sum(sample_weight))


def _positives(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.sum(sample_weight[y_true == 1]))


def _tp(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.sum(sample_weight[(y_true == 1) & (y_pred == 1)]))


def _fp(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    return float(np.sum(sample_weight[(y_true == 0) & (y_pred == 1)]))


# TPR and FPR written out rather than fairlearn's true_/false_positive_rate: those go through
# scikit-learn's validated confusion_matrix (~10 ms a call, 100+ calls per audit) for a ratio
# of two sums. NaN (not 0) when the cell has no positives / negatives.
def _tpr(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    pos = np.sum(sample_weight[y_true == 1])
    return float(np.sum(sample_weight[(y_true == 1) & (y_pred == 1)]) / pos) if pos else float("nan")


def _fpr(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray) -> float:
    neg = np.sum(sample_weight[y_true == 0])
    return float(np.sum(sample_weight[(y_true == 0) & (y_pred == 1)]) / neg) if neg else float("nan")


CELL_METRICS = {"tpr": _tpr, "fpr": _fpr, "count": _count, "positives": _positives, "tp": _tp, "fp": _fp}


def _group_key(group: object) -> tuple[int, float, str]:
    """Quantile groups in their natural order (low, mid, high; q1..q10), other groups by name."""
    g = str(group)
    if g in ("low", "mid", "high"):
        return 0, ("low", "mid", "high").index(g), g
    if g[:1] == "q" and g[1:].isdigit():
        return 0, int(g[1:]), g
    return 1, 0, g


def cell_table(
    labels: np.ndarray, preds: np.ndarray, attribute: np.ndarray, *, classes: tuple[str, ...]
) -> pd.DataFrame:
    """MetricFrame by (class, group) on the one-vs-rest stacked table (sensitive feature: the
    attribute group; control feature: the class k of each one-vs-rest copy): tpr, fpr and image
    counts (count, positives, negatives, tp, fp). Index (class, group), classes in order."""
    table = one_vs_rest_table(labels, preds, classes, groups=attribute)
    weight = {"sample_weight": table["weight"].to_numpy()}
    mf = MetricFrame(
        metrics=CELL_METRICS,
        y_true=table["y_true"].to_numpy(),
        y_pred=table["y_pred"].to_numpy(),
        sensitive_features=table["group"],
        control_features=table["class"],
        sample_params={m: weight for m in CELL_METRICS},
    )
    cells = mf.by_group.dropna(subset=["count"])  # combinations absent from the data come back as NaN
    order = sorted(cells.index, key=lambda ix: (list(classes).index(ix[0]), _group_key(ix[1])))
    cells = cells.reindex(pd.MultiIndex.from_tuples(order, names=["class", "group"]))
    return cells.assign(negatives=cells["count"] - cells["positives"])


@dataclass(frozen=True)
class SubgroupResult:
    """Subgroups within classes. Rows are plain JSON values (floats, str, bool, None)."""

    cells: list[dict[str, object]]  # attribute, class, group, positives, negatives, tp, fp, tpr(+ci), fpr(+ci),
    #                                 judged, fpr_judged, reason
    gaps: list[dict[str, object]]  # attribute, class, tpr_gap(+ci), tpr_status, best/worst_group, fpr_gap(+ci),
    #                                n_groups_judged, judged, reason
    worst: dict[str, object] | None  # attribute, class, gap, ci_low, ci_high, status: largest judged TPR gap
    status: Verdict  # pass: every judged TPR gap within max_subgroup_gap; fail: some gap surely beyond it
    reasons: tuple[str, ...]
    confidence: float  # simultaneous level over the judged cells
    cell_level: float  # level of each cell's interval (Bonferroni over judged TPR cells)
    threshold: float  # max_subgroup_gap
    min_group_count: int
    attributes: tuple[str, ...]


def _f(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _gap(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[float | None, float | None, float | None]:
    if len(values) < 2:
        return None, None, None
    lo, hi = gap_interval(low, high)
    return float(values.max() - values.min()), lo, hi


def audit_subgroups(
    labels: np.ndarray,
    preds: np.ndarray,
    attributes: dict[str, np.ndarray],
    *,
    classes: tuple[str, ...],
    cfg: FairnessConfig,
) -> SubgroupResult:
    """TPR and FPR per (attribute, class, group), within-class gaps with simultaneous intervals,
    and a three-valued verdict on the largest TPR gap against `cfg.max_subgroup_gap`."""
    class_counts(labels, preds, len(classes))  # validates shapes and label ranges
    labels, preds = np.asarray(labels), np.asarray(preds)
    for name, values in attributes.items():
        if len(values) != len(labels):
            raise DataError(f"attribute {name!r} has {len(values)} values for {len(labels)} test images")
    m = cfg.min_group_count
    tables = {name: cell_table(labels, preds, values, classes=classes) for name, values in attributes.items()}
    n_tpr = sum(int((t["positives"] >= m).sum()) for t in tables.values())
    n_fpr = sum(int((t["negatives"] >= m).sum()) for t in tables.values())
    tpr_level, fpr_level = bonferroni_level(cfg.confidence, n_tpr), bonferroni_level(cfg.confidence, n_fpr)

    cells: list[dict[str, object]] = []
    gaps: list[dict[str, object]] = []
    for name, table in tables.items():
        t_lo, t_hi = wilson_interval(table["tp"].to_numpy(), table["positives"].to_numpy(), tpr_level)
        f_lo, f_hi = wilson_interval(table["fp"].to_numpy(), table["negatives"].to_numpy(), fpr_level)
        frame = table.assign(tpr_lo=t_lo, tpr_hi=t_hi, fpr_lo=f_lo, fpr_hi=f_hi)
        for cls in classes:
            if cls not in frame.index.get_level_values("class"):
                continue
            sub = frame.xs(cls, level="class")
            judged_t, judged_f = sub["positives"] >= m, sub["negatives"] >= m
            for group, r in sub.iterrows():
                pos, neg = int(r["positives"]), int(r["negatives"])
                why = []
                if pos < m:
                    why.append(f"{pos} images of the class < min_group_count {m}")
                if neg < m:
                    why.append(f"{neg} other-class images < min_group_count {m} (FPR)")
                cells.append(
                    {
                        "attribute": name,
                        "class": cls,
                        "group": str(group),
                        "positives": pos,
                        "negatives": neg,
                        "tp": int(r["tp"]),
                        "fp": int(r["fp"]),
                        "tpr": _f(r["tpr"]),
                        "tpr_ci_low": float(r["tpr_lo"]),
                        "tpr_ci_high": float(r["tpr_hi"]),
                        "fpr": _f(r["fpr"]),
                        "fpr_ci_low": float(r["fpr_lo"]),
                        "fpr_ci_high": float(r["fpr_hi"]),
                        "judged": bool(pos >= m),
                        "fpr_judged": bool(neg >= m),
                        "reason": "; ".join(why) or None,
                    }
                )
            jt, jf = sub[judged_t], sub[judged_f]
            tpr_gap, tpr_lo, tpr_hi = _gap(jt["tpr"].to_numpy(), jt["tpr_lo"].to_numpy(), jt["tpr_hi"].to_numpy())
            fpr_gap, fpr_lo, fpr_hi = _gap(jf["fpr"].to_numpy(), jf["fpr_lo"].to_numpy(), jf["fpr_hi"].to_numpy())
            judged = tpr_gap is not None
            gaps.append(
                {
                    "attribute": name,
                    "class": cls,
                    "tpr_gap": tpr_gap,
                    "tpr_gap_ci_low": tpr_lo,
                    "tpr_gap_ci_high": tpr_hi,
                    "tpr_status": decide(tpr_lo, tpr_hi, cfg.max_subgroup_gap, higher_is_better=False)
                    if judged
                    else None,
                    "best_group": str(jt["tpr"].idxmax()) if judged else None,
                    "worst_group": str(jt["tpr"].idxmin()) if judged else None,
                    "fpr_gap": fpr_gap,
                    "fpr_gap_ci_low": fpr_lo,
                    "fpr_gap_ci_high": fpr_hi,
                    "n_groups_judged": int(judged_t.sum()),
                    "judged": judged,
                    "reason": None if judged else f"fewer than 2 groups with at least {m} images of the class",
                }
            )

    judged_gaps = [g for g in gaps if g["judged"]]
    t = cfg.max_subgroup_gap
    pct = f"{cfg.confidence:.0%}"
    reasons: list[str] = []
    if not judged_gaps:
        status: Verdict = "inconclusive"
        worst = None
        reasons.append(f"no class has two attribute groups with at least {m} test images each, so no gap is judged.")
    else:
        status = decide(
            max(g["tpr_gap_ci_low"] for g in judged_gaps),  # type: ignore[type-var]
            max(g["tpr_gap_ci_high"] for g in judged_gaps),  # type: ignore[type-var]
            t,
            higher_is_better=False,
        )
        w = max(judged_gaps, key=lambda g: g["tpr_gap"])  # type: ignore[arg-type, return-value]
        worst = {
            "attribute": w["attribute"],
            "class": w["class"],
            "gap": w["tpr_gap"],
            "ci_low": w["tpr_gap_ci_low"],
            "ci_high": w["tpr_gap_ci_high"],
            "best_group": w["best_group"],
            "worst_group": w["worst_group"],
            "status": w["tpr_status"],
        }
        for g in judged_gaps:
            if g["tpr_status"] == "pass":
                continue
            verb = "exceeds" if g["tpr_status"] == "fail" else "straddles"
            reasons.append(
                f"recall gap within class {g['class']} by {g['attribute']} ({g['best_group']} minus "
                f"{g['worst_group']}) is {g['tpr_gap']:.3f}, simultaneous {pct} interval "
                f"[{g['tpr_gap_ci_low']:.3f}, {g['tpr_gap_ci_high']:.3f}], which {verb} the threshold {t}."
            )
    return SubgroupResult(
        cells=cells,
        gaps=gaps,
        worst=worst,
        status=status,
        reasons=tuple(reasons),
        confidence=cfg.confidence,
        cell_level=tpr_level,
        threshold=t,
        min_group_count=m,
        attributes=tuple(attributes),
    )
