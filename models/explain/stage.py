"""The transparency stage as one pure function: the shipped model's weights and the test split
in, a `StageReport` and the pictures' data out.

It explains a seeded sample of test images per class with Captum (`attribution.py`), checks the
maps against the same model with its top layers re-initialised (Adebayo et al. 2018) and by
deletion against random deletion, and runs the shortcut check per class (`shortcut.py`). The
shortcut check gates (`verdict/transparency`); the two checks of the method are advisory
(`verdict/transparency_method`): they judge the explanation, not the model. A method that fails
its sanity check has its maps withheld, and a class it clears is only `inconclusive` (its search
for a window may have missed the real one); a class flagged stays flagged, since both causal
tests hold whatever proposed the window.

The model is the shipped one as PyTorch weights in fp32: attributions need gradients, which the
ONNX file does not give; the export stage checks that the file computes the same function.
The figures are drawn by the task (`auditflow.audits.plots`), which `models` does not import.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from auditflow.core.checks import Check, judge_interval, worst
from auditflow.core.config import TransparencyConfig
from auditflow.core.names import Stage, Transparency, Verdict, per_class
from auditflow.core.stage import AuditOutcome, StageReport
from auditflow.core.stats import bonferroni_level
from auditflow.models.explain.attribution import (
    DELETION_FRACTIONS,
    ROLES,
    Attribute,
    Deletion,
    MeanInterval,
    Sample,
    attribution_maps,
    choose_sample,
    deletion_curves,
    explainer,
    mean_interval,
    randomized_top,
    rank_correlations,
)
from auditflow.models.explain.shortcut import (
    Effect,
    Window,
    best_window,
    decide,
    images_to_settle,
    necessity,
    sufficiency,
    window_side,
)
from auditflow.models.training.presets import to_input

DESCRIPTION = (
    "Transparency: what the shipped model looks at. Captum attributions of a seeded sample of test images per "
    "class, checked against the same model with its top layers re-initialised (Adebayo et al. 2018) and by "
    "deletion against random deletion; per class, the small window where attribution concentrates, tested "
    "causally both ways (occluded on the class's images, pasted onto other classes') against a random window."
)
METHOD_REASONS = {
    "integrated_gradients": (
        "Integrated Gradients (Captum) from a plain image of the test split's mean colour: per pixel, for any "
        "architecture, and its attributions add up to the logit's change from that baseline. Grad-CAM on the "
        "last convolution is the usual choice for CNNs, but a small CNN's last convolution sees a coarse grid "
        "(fastnet: 3x3 cells of about 11% of a 32x32 image each), too coarse to point at a window of a few percent."
    ),
    "saliency": "The plain input gradient (Captum Saliency): one backward pass per image, noisier than Integrated "
    "Gradients.",
}


@dataclass(frozen=True)
class ClassShortcut:
    """The shortcut check of one class."""

    cls: int
    window: Window
    necessary: Effect
    sufficient: Effect
    status: str  # fail (flagged) | pass | inconclusive
    note: str


@dataclass(frozen=True)
class Explanations:
    """What the figures draw: per class the mean map and its window, the sample's maps, the
    deletion curves. `shown` is False when the maps failed their sanity check."""

    classes: tuple[str, ...]
    mean_maps: np.ndarray  # (K, H, W), each map normalised to sum 1 before averaging
    windows: tuple[Window | None, ...]  # per class; None for a class without test images
    statuses: tuple[str, ...]  # per class
    images: np.ndarray  # (n, H, W, C) uint8, the sample
    maps: np.ndarray  # (n, H, W)
    labels: np.ndarray  # (n,)
    predicted: np.ndarray  # (n,)
    roles: np.ndarray  # (n,) into ROLES
    deletion: Deletion
    shown: bool


@dataclass(frozen=True)
class TransparencyStage:
    outcome: AuditOutcome
    explanations: Explanations


def _normalised(maps: np.ndarray) -> np.ndarray:
    total = maps.reshape(len(maps), -1).sum(1)
    return maps / np.where(total > 0, total, 1.0)[:, None, None]


def _cap(index: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.permutation(index)[:limit]) if len(index) > limit else index


def _wanted(effect: Effect, threshold: float, level: float, available: int, cap: int, what: str) -> str | None:
    """What would settle an open effect at its observed rates: more test images, or a larger
    `transparency.max_images_per_test` when the split already has them."""
    if judge_interval(effect.low, effect.high, threshold, higher_is_better=True) != "inconclusive":
        return None
    k = images_to_settle(effect, threshold, level=level)
    if k is None:
        return None
    if effect.n >= cap and k <= available:
        return f"transparency.max_images_per_test={k} ({what}: the split has {available:,})"
    return f"about {k:,} {what}"


def _class_note(
    name: str, row: ClassShortcut, cfg: TransparencyConfig, level: float, available: tuple[int, int], *, doubted: bool
) -> str:
    w, n, s = row.window, row.necessary, row.sufficient
    where = f"window {w.side}x{w.side} at (row {w.top}, column {w.left})"
    pasted = (
        f"pasted, {s.window_rate:.1%} of other classes' images classified as it against {s.random_rate:.1%} "
        f"(rise {s.effect:.2f} [{s.low:.2f}, {s.high:.2f}], {s.n} images)"
        if s.n
        else "no other class's test images to paste onto"
    )
    effects = (
        f"occluded, recall {n.window_rate:.2f} against {n.random_rate:.2f} with a random window "
        f"(drop {n.effect:.2f} [{n.low:.2f}, {n.high:.2f}], {n.n} images); {pasted}"
    )
    if row.status == "fail":
        return f"class {name!r} owes its recall to a {where}: {effects}"
    if row.status == "pass":
        return f"class {name!r}: {where}; {effects}"
    if doubted:
        return f"class {name!r} not cleared (the maps failed their sanity check): {where}; {effects}"
    cap = cfg.max_images_per_test
    found = (
        _wanted(n, cfg.min_necessity_drop, level, available[0], cap, f"test images of {name!r}"),
        _wanted(s, cfg.min_sufficiency_rise, level, available[1], cap, "other classes' test images"),
    )
    wanted = [w for w in found if w]
    settle = f"; {' and '.join(wanted)} would settle it at these rates" if wanted else ""
    return f"class {name!r} not settled: {where}; {effects}{settle}"


def _shortcut(
    model: nn.Module,
    test_x: np.ndarray,
    test_y: np.ndarray,
    cls: int,
    mean_map: np.ndarray,
    side: int,
    fill: torch.Tensor,
    cfg: TransparencyConfig,
    level: float,
) -> ClassShortcut | None:
    rng = np.random.default_rng([cfg.seed, cls])
    own = _cap(np.flatnonzero(test_y == cls), cfg.max_images_per_test, rng)
    others = _cap(np.flatnonzero(test_y != cls), cfg.max_images_per_test, rng)
    if not len(own):
        return None
    window = best_window(mean_map, side)
    donors = to_input(test_x[own])
    needed = necessity(model, donors, cls, window=window, fill=fill, rng=rng, level=level)
    enough = sufficiency(model, to_input(test_x[others]), donors, cls=cls, window=window, rng=rng, level=level)
    status = decide(needed, enough, min_drop=cfg.min_necessity_drop, min_rise=cfg.min_sufficiency_rise)
    return ClassShortcut(cls, window, needed, enough, status, "")


def _checks(
    rows: list[ClassShortcut | None],
    classes: tuple[str, ...],
    sanity: MeanInterval,
    sane: str,
    gap: MeanInterval,
    faithful: str,
    side: int,
    cfg: TransparencyConfig,
) -> tuple[Check, ...]:
    flagged = [classes[r.cls] for r in rows if r and r.status == "fail"]
    unsettled = [r for r in rows if r and r.status == "inconclusive"]
    missing = [classes[k] for k, r in enumerate(rows) if r is None]
    status = worst([r.status if r else "inconclusive" for r in rows])
    notes = [r.note for r in rows if r and r.status == "fail"] + [r.note for r in unsettled]
    if missing:
        notes.append(f"no test images of {', '.join(map(repr, missing))}")
    if sane == "fail" and status != "fail":
        notes.insert(
            0,
            "the maps failed their sanity check, so the window each class was tested on may not be "
            "the one it relies on",
        )
    if not notes:
        notes.append("no class's window is both necessary and sufficient beyond a random window")
    shortcut = Check(
        key=Transparency.SHORTCUT,
        verdict=Verdict.TRANSPARENCY,
        title="No class owes its recall to a small window (shortcut)",
        condition=(
            f"no class whose {side}x{side}-pixel window of most attribution, occluded, removes at least "
            f"{cfg.min_necessity_drop:g} of its recall and, pasted onto other classes' images, turns at least "
            f"{cfg.min_sufficiency_rise:g} of them into it, each beyond a random window (paired exact intervals, "
            f"{cfg.confidence:.0%} over the classes together)"
        ),
        stage=Stage.TRANSPARENCY,
        metric=Transparency.SHORTCUT_CLASSES,
        value=float(len(flagged)),
        threshold=0.0,
        status=status,
        evidence="#transparency",
        note="; ".join(notes),
    )
    sanity_check = Check(
        key=Transparency.SANITY_CHECK,
        verdict=Verdict.TRANSPARENCY_METHOD,
        title="Explanations depend on the model (randomisation sanity check)",
        condition=(
            f"mean rank correlation between the trained model's maps and those with the top "
            f"{cfg.randomized_layers} layers re-initialised ≤ {cfg.max_sanity_correlation:g}, on its "
            f"{cfg.confidence:.0%} t interval"
        ),
        stage=Stage.TRANSPARENCY,
        metric=Transparency.SANITY_SPEARMAN,
        value=sanity.mean,
        threshold=cfg.max_sanity_correlation,
        status=sane,
        evidence="#transparency",
        note="" if sane == "pass" else "the maps are not shown as explanations" if sane == "fail" else "",
        interval=(sanity.low, sanity.high) if sanity.low == sanity.low else None,
    )
    deletion = Check(
        key=Transparency.DELETION_CHECK,
        verdict=Verdict.TRANSPARENCY_METHOD,
        title="Explanations are faithful (deletion beats random deletion)",
        condition=(
            f"removing the most-attributed cells first lowers the true class's probability faster than removing "
            f"as many at random: area between the curves > 0, paired, on its {cfg.confidence:.0%} t interval"
        ),
        stage=Stage.TRANSPARENCY,
        metric=Transparency.DELETION_GAP,
        value=gap.mean,
        threshold=0.0,
        status=faithful,
        evidence="#transparency",
        interval=(gap.low, gap.high) if gap.low == gap.low else None,
    )
    return shortcut, sanity_check, deletion


def _judge(interval: MeanInterval, threshold: float, *, higher_is_better: bool) -> str:
    if interval.low != interval.low:  # fewer than 2 images
        return "inconclusive"
    return judge_interval(interval.low, interval.high, threshold, higher_is_better=higher_is_better)


def _row(r: ClassShortcut, name: str) -> dict[str, object]:
    return {
        "class": name,
        "status": r.status,
        "window": {"top": r.window.top, "left": r.window.left, "side": r.window.side},
        "area_share": r.window.area_share,
        "mass_share": r.window.mass_share,
        "concentration": r.window.concentration,
        "necessity": asdict(r.necessary),
        "sufficiency": asdict(r.sufficient),
        "note": r.note,
    }


def transparency_stage(
    model: nn.Module,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    shipped_logits: np.ndarray,
    classes: tuple[str, ...],
    cfg: TransparencyConfig,
    train_seconds: float,
    attribute: Attribute | None = None,
) -> TransparencyStage:
    """Explain the model (fp32, on the CPU) on its test split (`test_x` uint8 N x H x W x C,
    `test_y`), sampled by the shipped model's no-TTA logits; `attribute` replaces the configured
    method (the tests give it an edge detector, which must fail the sanity check)."""
    start = time.perf_counter()
    model = model.eval()
    k, (h, w) = len(classes), test_x.shape[1:3]
    fill = torch.as_tensor(test_x.reshape(-1, test_x.shape[-1]).mean(0) / 255.0, dtype=torch.float32)
    fill = fill.view(1, -1, 1, 1)
    baseline = fill.expand(1, -1, h, w)
    per = max(2, min(cfg.per_class, cfg.max_explained // max(k, 1)))
    sample: Sample = choose_sample(
        test_y, shipped_logits, per_class=per, confident=min(cfg.confident, per // 2), seed=cfg.seed
    )
    xs, ys = to_input(test_x[sample.index]), test_y[sample.index]
    method = cfg.method if attribute is None else "custom"
    attribute = attribute or explainer(cfg.method, steps=cfg.steps)
    maps = attribution_maps(model, xs, ys, attribute=attribute, baseline=baseline)
    randomized, layers = randomized_top(model, cfg.randomized_layers, seed=cfg.seed)
    random_maps = attribution_maps(randomized, xs, ys, attribute=attribute, baseline=baseline)
    sanity = mean_interval(rank_correlations(maps, random_maps), cfg.confidence)
    sane = _judge(sanity, cfg.max_sanity_correlation, higher_is_better=False)
    deletion = deletion_curves(model, xs, ys, maps=maps, fill=fill, seed=cfg.seed)
    attributed, random = deletion.areas()
    gap = mean_interval(random - attributed, cfg.confidence)
    faithful = _judge(gap, 0.0, higher_is_better=True)

    level = bonferroni_level(cfg.confidence, k)
    side = window_side(h, w, cfg.window_fraction)
    normalised = _normalised(maps)
    mean_maps = np.stack([normalised[ys == c].mean(0) if (ys == c).any() else np.zeros((h, w)) for c in range(k)])
    rows: list[ClassShortcut | None] = []
    for c in range(k):
        row = _shortcut(model, test_x, test_y, c, mean_maps[c], side, fill, cfg, level)
        if row is not None:
            doubted = sane == "fail" and row.status == "pass"  # the window tested may not be the one it uses
            available = (int((test_y == c).sum()), int((test_y != c).sum()))
            row = dataclasses.replace(row, status="inconclusive" if doubted else row.status)
            note = _class_note(classes[c], row, cfg, level, available, doubted=doubted)
            row = dataclasses.replace(row, note=note)
        rows.append(row)
    checks = _checks(rows, classes, sanity, sane, gap, faithful, side, cfg)
    seconds = time.perf_counter() - start
    flagged = [classes[r.cls] for r in rows if r and r.status == "fail"]
    headline = {Transparency.SHORTCUT_CLASSES: float(len(flagged)), Transparency.SANITY_SPEARMAN: sanity.mean}
    metrics = {
        **headline,
        Transparency.SANITY_SPEARMAN_CI_LOW: sanity.low,
        Transparency.SANITY_SPEARMAN_CI_HIGH: sanity.high,
        Transparency.DELETION_AUC_ATTRIBUTED: float(attributed.mean()) if len(attributed) else float("nan"),
        Transparency.DELETION_AUC_RANDOM: float(random.mean()) if len(random) else float("nan"),
        Transparency.DELETION_GAP: gap.mean,
        Transparency.DELETION_GAP_CI_LOW: gap.low,
        Transparency.DELETION_GAP_CI_HIGH: gap.high,
        Transparency.SHORTCUT_INCONCLUSIVE: float(sum(1 for r in rows if r is None or r.status == "inconclusive")),
        Transparency.IMAGES_EXPLAINED: float(len(sample.index)),
        Transparency.AUDIT_S: seconds,
        Transparency.AUDIT_COST_VS_TRAINING: seconds / train_seconds if train_seconds > 0 else float("nan"),
    }
    for r in rows:
        if r is not None:
            name = classes[r.cls]
            metrics[per_class(Transparency.NECESSITY_DROP, name)] = r.necessary.effect
            metrics[per_class(Transparency.SUFFICIENCY_RISE, name)] = r.sufficient.effect
            metrics[per_class(Transparency.CONCENTRATION, name)] = r.window.concentration
    table = [_row(r, classes[r.cls]) for r in rows if r is not None]
    status = worst(c.status for c in checks if c.verdict == Verdict.TRANSPARENCY)
    predicted = shipped_logits[sample.index].argmax(1)
    summary = {
        "audited_model": "the shipped model's weights in PyTorch, fp32 (the ONNX file computes the same function: "
        "export parity)",
        "method": method,
        "method_reason": METHOD_REASONS.get(method, "a method given by the caller"),
        "steps": cfg.steps,
        "baseline": "a plain image of the test split's mean colour (also the fill of occlusion and deletion)"
        if method == "integrated_gradients"
        else "none; the fill of occlusion and deletion is a plain image of the test split's mean colour",
        "fill": [float(v) for v in fill.flatten()],
        "per_class": per,
        "images_explained": len(sample.index),
        "roles": {role: int((sample.role == i).sum()) for i, role in enumerate(ROLES)},
        "sanity": {
            **asdict(sanity),
            "status": sane,
            "threshold": cfg.max_sanity_correlation,
            "layers": list(layers),
            "shown": sane != "fail",
        },
        "deletion": {
            "fractions": list(DELETION_FRACTIONS),
            "attributed": deletion.attributed.mean(0).tolist() if len(sample.index) else [],
            "random": deletion.random.mean(0).tolist() if len(sample.index) else [],
            "gap": asdict(gap),
            "status": faithful,
        },
        "window": {"side": side, "area_share": side * side / (h * w), "fraction": cfg.window_fraction},
        "thresholds": {
            "min_necessity_drop": cfg.min_necessity_drop,
            "min_sufficiency_rise": cfg.min_sufficiency_rise,
            "confidence": cfg.confidence,
            "per_class_level": level,
        },
        "shortcut": table,
        "flagged": flagged,
        "status": status,
        "seconds": seconds,
        "train_seconds": train_seconds,
    }
    report = StageReport(
        Stage.TRANSPARENCY,
        metrics=metrics,
        headline=headline,
        checks=checks,
        tables={Transparency.SHORTCUT_JSON: [_flat(row) for row in table]},
        summary=summary,
    )
    reasons = tuple(c.note for c in checks if c.verdict == Verdict.TRANSPARENCY and c.status != "pass")
    explanations = Explanations(
        classes=classes,
        mean_maps=mean_maps,
        windows=tuple(r.window if r else None for r in rows),
        statuses=tuple(r.status if r else "inconclusive" for r in rows),
        images=np.asarray(test_x[sample.index]),
        maps=maps,
        labels=ys,
        predicted=predicted,
        roles=sample.role,
        deletion=deletion,
        shown=sane != "fail",
    )
    return TransparencyStage(AuditOutcome(report, status, reasons, float(len(flagged))), explanations)


def _flat(row: dict[str, object]) -> dict[str, object]:
    """A shortcut row as one flat table row (MLflow's table view)."""
    n, s, w = row["necessity"], row["sufficiency"], row["window"]
    return {
        "class": row["class"],
        "status": row["status"],
        "window": f"{w['side']}x{w['side']} at ({w['top']}, {w['left']})",  # type: ignore[index]
        "concentration": row["concentration"],
        "necessity_drop": n["effect"],  # type: ignore[index]
        "necessity_ci_low": n["low"],  # type: ignore[index]
        "necessity_ci_high": n["high"],  # type: ignore[index]
        "sufficiency_rise": s["effect"],  # type: ignore[index]
        "sufficiency_ci_low": s["low"],  # type: ignore[index]
        "sufficiency_ci_high": s["high"],  # type: ignore[index]
    }
