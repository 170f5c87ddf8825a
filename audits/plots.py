"""Matplotlib figures for the report and the tracking store, returned as figure objects.

Uses the non-interactive Agg backend; callers save or log the figure and then `close` it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from scipy.ndimage import gaussian_filter
from scipy.special import softmax

# With more classes than this a figure shows what a reader can use (the worst classes, the largest
# confusions) and says so in its title; the full tables are logged as data beside it. With 120
# classes the whole confusion matrix was a 7,480 x 6,358 px image with unreadable labels.
MAX_CLASSES_SHOWN = 20


def confused_classes(confusion: np.ndarray, limit: int = MAX_CLASSES_SHOWN) -> list[int]:
    """The classes of the largest confusions (off-diagonal shares of the true class, largest
    first), both sides of each, then the lowest recalls, until `limit` classes; in class order."""
    norm = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    recall = np.diag(norm).copy()
    np.fill_diagonal(norm, 0.0)
    chosen: list[int] = []
    for cell in np.argsort(norm, axis=None, kind="stable")[::-1]:
        if norm.flat[cell] <= 0 or len(chosen) >= limit:
            break
        chosen += [int(k) for k in np.unravel_index(cell, norm.shape) if int(k) not in chosen][: limit - len(chosen)]
    for k in np.argsort(recall, kind="stable"):
        if len(chosen) >= limit:
            break
        if int(k) not in chosen:
            chosen.append(int(k))
    return sorted(chosen)


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Row-normalised confusion matrix (rows = true class) with counts annotated; with more than
    `MAX_CLASSES_SHOWN` classes, the rows and columns of the classes in the largest confusions."""
    full = np.asarray(confusion, dtype=float)
    title = "Confusion matrix (test)"
    if len(classes) > MAX_CLASSES_SHOWN:
        keep = confused_classes(full)
        full, classes = full[np.ix_(keep, keep)], [classes[k] for k in keep]
        title += f": the {len(keep)} classes of the largest confusions, of {len(confusion)} (all: confusion_matrix.csv)"
    cm = full
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(classes) <= 20:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    ax.set_title(title, fontsize=9 if len(title) > 40 else None, wrap=True)
    fig.tight_layout()
    return fig


def curves_figure(history: dict[str, Sequence[tuple[int, float]]]) -> Figure:
    """Training loss and train/validation accuracy per epoch."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, ax in (("train_loss", left), ("val_loss", left), ("train_accuracy", right), ("val_accuracy", right)):
        points = history.get(key) or []
        if points:
            steps, values = zip(*points, strict=True)
            label = key.replace("_", " ") + (" (augmented, smoothed)" if key.startswith("train") else "")
            ax.plot(steps, values, marker="o", ms=3, label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend()
    left.set_title("Loss")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.legend()
    right.set_title("Accuracy")
    fig.tight_layout()
    return fig


def roc_figure(curves: dict[str, tuple[Sequence[float], Sequence[float], float]]) -> Figure:
    """Membership-attack ROCs on log-log axes (attack name -> (fpr, tpr, auc)), with chance."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    for name, (fpr, tpr, auc) in curves.items():
        f, t = np.asarray(fpr), np.asarray(tpr)
        keep = (f > 0) & (t > 0)
        ax.loglog(f[keep], t[keep], label=f"{name} (AUC {auc:.3f})")
    grid = np.logspace(-5, 0, 50)
    ax.loglog(grid, grid, "--", color="grey", label="chance")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(1e-4, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("Membership inference ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def exposure_figure(exposure: dict, attack: str) -> Figure:
    """One point per class: how badly it is served (error rate) against how exposed its
    members are (attack AUC), from `auditflow.audits.joint.exposure_correlation`."""
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    names = exposure.get("class_names", exposure["classes"])
    errors, aucs = np.asarray(exposure["error_rate"], float), np.asarray(exposure["attack_auc"], float)
    ax.scatter(errors, aucs, color="tab:blue", s=14 if len(names) > MAX_CLASSES_SHOWN else 36)
    named = set(range(len(names)))
    if len(names) > MAX_CLASSES_SHOWN:  # name only the most exposed and the worst served, or the labels pile up
        half = MAX_CLASSES_SHOWN // 4
        named = set(np.argsort(-aucs)[:half].tolist()) | set(np.argsort(-errors)[:half].tolist())
    for k in sorted(named):
        ax.annotate(str(names[k]), (errors[k], aucs[k]), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set_xlabel("error rate (1 - recall), lower is better")
    ax.set_ylabel(f"{attack} attack AUC within the class (0.5 ideal)")
    rho = exposure.get("rho")
    title = "Per class: served badly vs exposed" + (f" (Spearman {rho:.2f})" if rho is not None else "")
    if len(names) > MAX_CLASSES_SHOWN:
        title += f"\n{len(names)} classes; the {len(named)} most exposed or worst served named"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def per_class_figure(
    classes: Sequence[str],
    values: Sequence[float],
    lows: Sequence[float] | None,
    *,
    highs: Sequence[float] | None,
    label: str,
    reference: float | None = None,
) -> Figure:
    """Horizontal bars of one per-class metric with CI whiskers and an optional reference line."""
    fig, ax = plt.subplots(figsize=(6, 0.32 * len(classes) + 1.2))
    v = np.asarray(values)
    err = None
    if lows is not None and highs is not None:
        err = np.vstack([v - np.asarray(lows), np.asarray(highs) - v]).clip(min=0)
    ax.barh(range(len(classes)), v, xerr=err, color="#4c72b0", capsize=2)
    ax.set_yticks(range(len(classes)), classes)
    ax.invert_yaxis()
    if reference is not None:
        ax.axvline(reference, color="#c44e52", ls="--", lw=1)
    ax.set_xlabel(label)
    fig.tight_layout()
    return fig


def recall_figure(per_class: Sequence[dict], min_class_recall: float) -> Figure:
    """Per-class recall of a fairness result, with CI whiskers when present; with more than
    `MAX_CLASSES_SHOWN` classes, the lowest recalls (all of them are in per_class.json)."""
    rows = list(per_class)
    label = "recall (true-positive rate), higher is better"
    if len(rows) > MAX_CLASSES_SHOWN:
        rows = sorted(rows, key=lambda r: r["recall"])[:MAX_CLASSES_SHOWN]
        label += f"\nthe {len(rows)} lowest of {len(per_class)} classes (all: per_class.json)"
    has_ci = "recall_ci_low" in rows[0]
    return per_class_figure(
        [r["class"] for r in rows],
        [r["recall"] for r in rows],
        [r["recall_ci_low"] for r in rows] if has_ci else None,
        highs=[r["recall_ci_high"] for r in rows] if has_ci else None,
        label=label,
        reference=min_class_recall,
    )


def reliability_figure(before: dict, after: dict, temperature: float) -> Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin, before and
    after temperature scaling (dicts of `models.evaluation.calibration.Reliability`); the diagonal is
    perfect calibration, bars below it are overconfident."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, bins, title in ((left, before, "as trained (T = 1)"), (right, after, f"temperature T = {temperature:.2f}")):
        edges = np.asarray(bins["edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        acc = np.nan_to_num(np.asarray(bins["accuracy"], dtype=float))
        ax.bar(centres, acc, width=width, edgecolor="#1d2329", color="#4c72b0", label="accuracy")
        conf = np.asarray(bins["confidence"], dtype=float)
        ax.bar(centres, np.nan_to_num(conf - acc), bottom=acc, width=width, color="#c44e52", alpha=0.35, label="gap")
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(f"{title}: ECE {bins['ece']:.3f}")
    left.set_ylabel("accuracy in bin")
    left.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def loss_histogram_figure(edges: Sequence[float], members: Sequence[int], nonmembers: Sequence[int]) -> Figure:
    """Per-example loss of members (training images) and non-members (test images) on shared
    bins: the further apart, the more a loss threshold reveals membership."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    e = np.asarray(edges)
    for counts, label, colour in (
        (members, "members (train)", "#c44e52"),
        (nonmembers, "non-members (test)", "#4c72b0"),
    ):
        c = np.asarray(counts, dtype=float)
        ax.stairs(c / max(c.sum(), 1), e, label=label, color=colour, fill=True, alpha=0.45)
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_xlabel("cross-entropy loss, nats (log scale above 0.001)")
    ax.set_ylabel("share of images")
    ax.set_title("Loss of members vs non-members")
    ax.legend()
    fig.tight_layout()
    return fig


def examples_figure(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], *, per_class: int) -> Figure:
    """A grid of the first `per_class` images of each class (rows), uint8 N x H x W x C; with
    more than `MAX_CLASSES_SHOWN` classes, the rarest ones in the training split (the counts of
    all are in class_counts.json)."""
    shown = list(enumerate(classes))
    if len(classes) > MAX_CLASSES_SHOWN:
        counts = np.bincount(labels, minlength=len(classes))
        rarest = sorted(np.argsort(counts, kind="stable")[:MAX_CLASSES_SHOWN].tolist())
        shown = [(k, classes[k]) for k in rarest]
    rows = len(shown)
    fig, axes = plt.subplots(rows, per_class, figsize=(per_class * 0.9 + 1.6, rows * 0.9 + 0.2), squeeze=False)
    if len(shown) < len(classes):
        fig.suptitle(f"the {rows} rarest of {len(classes)} classes", fontsize=8)
    for row, (k, name) in enumerate(shown):
        picks = np.flatnonzero(labels == k)[:per_class]
        for j in range(per_class):
            _thumbnail(axes[row, j], images[picks[j]] if j < len(picks) else None)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def _thumbnail(ax: Any, img: np.ndarray | None) -> None:
    """One grid cell: no ticks or frame, and the image (H x W x C uint8; gray when C is 1), if any."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if img is not None:
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)


def confident_mistakes(logits: np.ndarray, labels: np.ndarray, *, per_class: int) -> dict[int, list[int]]:
    """True class -> indices of its images the model got wrong, most confident first (by the
    softmax probability of the wrong prediction), at most `per_class` each."""
    p = softmax(logits, axis=1)
    preds = p.argmax(1)
    out: dict[int, list[int]] = {}
    for k in np.unique(labels):
        wrong = np.flatnonzero((labels == k) & (preds != k))
        out[int(k)] = wrong[np.argsort(-p[wrong, preds[wrong]], kind="stable")][:per_class].tolist()
    return out


def mistakes_figure(
    images: np.ndarray, labels: np.ndarray, logits: np.ndarray, *, classes: Sequence[str], per_class: int = 4
) -> Figure:
    """Per true class (rows; the `MAX_CLASSES_SHOWN` with the lowest recall when there are more),
    the model's most confident mistakes as thumbnails titled with the prediction and its
    probability; a class with none says so."""
    picks = confident_mistakes(logits, labels, per_class=per_class)
    prob = softmax(logits, axis=1)
    preds = prob.argmax(1)
    shown = sorted(picks)
    if len(shown) > MAX_CLASSES_SHOWN:
        recall = {k: float((preds[labels == k] == k).mean()) for k in shown}
        shown = sorted(sorted(shown, key=lambda k: recall[k])[:MAX_CLASSES_SHOWN])
    fig, axes = plt.subplots(
        len(shown), per_class, figsize=(per_class * 1.1 + 1.6, len(shown) * 1.15 + 0.3), squeeze=False
    )
    for row, k in enumerate(shown):
        for j in range(per_class):
            ax = axes[row, j]
            i = picks[k][j] if j < len(picks[k]) else None
            _thumbnail(ax, None if i is None else images[i])
            if i is not None:
                ax.set_title(f"{classes[preds[i]]} {prob[i, preds[i]]:.2f}", fontsize=6, pad=2)
            elif j == 0:
                ax.text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        axes[row, 0].set_ylabel(classes[k], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(
        "true class (rows): the shipped model's most confident mistakes, titled predicted class, probability",
        fontsize=7,
    )
    fig.tight_layout(pad=0.3)
    return fig


def _unverified(rows: Sequence[dict]) -> bool:
    return any(r.get("verdict", "pass") != "pass" for r in rows)


def throughput_figure(rows: Sequence[dict]) -> Figure:
    """Inference benchmark: images/s by batch size (left) and latency of one batch, p50 with a
    p99 whisker (right), one line per backend; both axes logarithmic."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["batch_size"])
        bs = [r["batch_size"] for r in mine]
        style = "--" if _unverified(mine) else "-"
        left.plot(bs, [r["images_per_second"] for r in mine], style, marker="o", ms=3, label=backend)
        p50 = np.array([r["p50_ms"] for r in mine])
        right.errorbar(
            bs,
            p50,
            yerr=[np.zeros_like(p50), np.array([r["p99_ms"] for r in mine]) - p50],
            fmt="o" + style,
            ms=3,
            capsize=2,
            label=backend,
        )
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (images)")
    left.set_ylabel("images per second (higher is better)")
    left.set_title("Throughput")
    right.set_ylabel("ms per batch: p50, whisker to p99")
    right.set_title("Latency")
    left.legend(fontsize=7, title="dashed: failed or unchecked accuracy", title_fontsize=7)
    fig.tight_layout()
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------- transparency
_STATUS_COLOURS = {"fail": "#d62728", "inconclusive": "#ff7f0e", "pass": "#2ca02c"}


def _shown_classes(statuses: Sequence[str], limit: int = MAX_CLASSES_SHOWN) -> list[int]:
    """Every class, or with more than `limit` the flagged, then the unsettled, then the rest, in class order."""
    rank = {"fail": 0, "inconclusive": 1}
    order = sorted(range(len(statuses)), key=lambda k: (rank.get(statuses[k], 2), k))
    return sorted(order[:limit])


def mean_maps_figure(
    mean_maps: np.ndarray,
    *,
    windows: Sequence[tuple[int, int, int] | None],
    statuses: Sequence[str],
    classes: Sequence[str],
) -> Figure:
    """Per class, the mean attribution map over its explained images, with the shortcut check's
    window (top, left, side) outlined in the colour of its status (red: flagged)."""
    shown = _shown_classes(statuses)
    cols = min(len(shown), 5)
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.7, rows * 1.9 + 0.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, k in zip(axes.flat, shown, strict=False):
        ax.imshow(mean_maps[k], cmap="magma", interpolation="nearest")
        if windows[k] is not None:
            top, left, side = windows[k]  # type: ignore[misc]
            colour = _STATUS_COLOURS.get(statuses[k], "white")
            ax.add_patch(plt.Rectangle((left - 0.5, top - 0.5), side, side, fill=False, lw=1.6, ec=colour))
        ax.set_title(f"{classes[k]}\n{statuses[k]}", fontsize=7, pad=2, color=_STATUS_COLOURS.get(statuses[k], "k"))
    more = ""
    if len(shown) < len(classes):
        more = f" ({len(shown)} of {len(classes)} classes: flagged and unsettled first)"
    fig.suptitle(f"mean attribution per class; box: the window tested for a shortcut{more}", fontsize=7)
    fig.tight_layout(pad=0.3)
    return fig


def attribution_examples_figure(
    images: np.ndarray,
    maps: np.ndarray,
    labels: np.ndarray,
    *,
    predicted: np.ndarray,
    roles: np.ndarray,
    classes: Sequence[str],
    statuses: Sequence[str],
    per_class: int = 4,
) -> Figure:
    """Per class (rows), up to `per_class` explained images: the first the most confident right,
    then the most confident wrong, then random ones; each image with its map laid over it,
    titled with the prediction and whether it was right."""
    shown = _shown_classes(statuses)
    height = len(shown) * 1.2 + 0.6
    fig, axes = plt.subplots(len(shown), per_class, figsize=(per_class * 1.15 + 1.6, height), squeeze=False)
    for row, k in enumerate(shown):
        mine = np.flatnonzero(labels == k)
        mine = mine[np.argsort(roles[mine], kind="stable")][:per_class]
        for j in range(per_class):
            ax = axes[row, j]
            _thumbnail(ax, images[mine[j]] if j < len(mine) else None)
            if j >= len(mine):
                continue
            i = mine[j]
            # per-pixel attributions are speckled: shown smoothed (a Gaussian of 1/32 of the side),
            # more opaque where the evidence is stronger
            heat = gaussian_filter(maps[i].astype(float), sigma=max(maps[i].shape) / 32)
            heat = heat / (heat.max() or 1.0)
            ax.imshow(heat, cmap="magma", alpha=0.75 * heat, interpolation="bilinear")
            mark = "✓" if predicted[i] == labels[i] else "✗"
            ax.set_title(f"{mark} {classes[predicted[i]]}", fontsize=6, pad=2)
        axes[row, 0].set_ylabel(classes[k], rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(
        "true class (rows): most confident right, most confident wrong, random;\n"
        "over each image, the evidence for its true class (smoothed), titled ✓/✗ with the prediction",
        fontsize=7,
    )
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.4 / height))  # room for the two-line title
    return fig


def deletion_figure(fractions: Sequence[float], attributed: Sequence[float], random: Sequence[float]) -> Figure:
    """Mean true-class probability as cells are removed: most attributed first, and at random."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    ax.plot(fractions, attributed, marker="o", ms=3, label="most attributed first")
    ax.plot(fractions, random, marker="o", ms=3, ls="--", label="at random")
    ax.set_xlabel("share of the image removed (mean-colour fill)")
    ax.set_ylabel("true class probability (mean)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
