"""Attribution maps of the shipped model, and the two checks that say whether to trust them.

Maps come from Captum (`captum.attr`), never hand-written gradients. The default method is
Integrated Gradients (Sundararajan et al., ICML 2017) from a plain image of the test split's mean
colour: it works on any architecture, satisfies completeness (the attributions sum to the
logit's change from the baseline) and is per pixel. Grad-CAM on the last convolution is the
usual alternative for CNNs, but fastnet's last convolution sees a 3x3 grid of a 32x32 image, so
each cell covers about 11% of it: too coarse to point at a window of a few percent, which is
what the shortcut check must find. `saliency` (the plain input gradient) is offered as a
cheaper method.

A map is the positive part of the attribution summed over colour channels, per pixel (H x W):
the evidence *for* the class. Absolute values are the common display, but they fail the sanity
check below: on fastnet trained on digits, the absolute Integrated Gradients maps of the trained
model and of the same model with its top two layers re-initialised had a mean rank correlation
of 0.75 [0.74, 0.76] over 60 test images (the input's structure, multiplied in, dominates
them), the positive part 0.01 [-0.02, 0.05] (NOTES.md, eleventh session).

- **Sanity check** (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018): the maps
  of the trained model against those of the same model with its top layers re-initialised, as a
  Spearman rank correlation per image, with a t interval of the mean. A method that explains
  the image rather than the model (an edge detector) keeps its maps and fails.
- **Deletion** (Petsiuk et al., RISE, BMVC 2018): remove the most-attributed cells first (small
  squares of 1/16 of the image's side, filled with the mean colour) and follow the true class's
  probability; the area under that curve against the area when as many cells are removed at
  random, paired per image, with a t interval of the mean difference. Cells, not single pixels:
  fastnet's whitening stem turns scattered single-pixel holes into strong out-of-distribution
  input, and on digits 2% of pixels removed at random already sent the true class's
  probability to chance, so the two curves could not be told apart.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import softmax
from scipy.stats import rankdata
from scipy.stats import t as student_t
from torch import nn

Attribute = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(model, inputs N x C x H x W in [0, 1], targets N, baseline 1 x C x H x W) -> maps N x H x W (>= 0)."""

METHODS = ("integrated_gradients", "saliency")
PIXELS_PER_BATCH = 1 << 19  # images x height x width per forward pass: 512 images of 32x32, 10 of 224x224


def batch_for(height: int, width: int) -> int:
    """Images per forward (and backward) pass at this size, so that memory stays bounded."""
    return max(1, PIXELS_PER_BATCH // (height * width))


def logits_in_batches(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`model`'s fp32 logits for the images `x`, in passes of `batch_for` images (N x K; 0 x 1
    for no images)."""
    step = batch_for(*x.shape[-2:])
    parts = [model(x[i : i + step]).float() for i in range(0, len(x), step)]
    return torch.cat(parts) if parts else x.new_zeros(0, 1)


ROLES = ("confident correct", "confident wrong", "random")
RANDOMIZE_SEED = 0x5EED_0F_7A  # offset of the re-initialised layers' seed


def _integrated_gradients(steps: int) -> Attribute:
    def attribute(model: nn.Module, x: torch.Tensor, y: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        from captum.attr import IntegratedGradients

        attr = IntegratedGradients(model).attribute(
            x,
            baselines=baseline.expand_as(x),
            target=y,
            n_steps=steps,
            internal_batch_size=min(len(x) * steps, batch_for(*x.shape[-2:])),
        )
        return attr.sum(1).clamp(min=0)

    return attribute


def _saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    from captum.attr import Saliency

    return Saliency(model).attribute(x, target=y, abs=False).sum(1).clamp(min=0)


def explainer(method: str, *, steps: int = 16) -> Attribute:
    """The attribution function of `method` (one of `METHODS`)."""
    if method == "integrated_gradients":
        return _integrated_gradients(steps)
    if method == "saliency":
        return _saliency
    raise ValueError(f"unknown attribution method {method!r}; choose one of {METHODS}")


def attribution_maps(
    model: nn.Module,
    images: torch.Tensor,
    targets: np.ndarray,
    *,
    attribute: Attribute,
    baseline: torch.Tensor,
    batch_size: int = 32,
) -> np.ndarray:
    """Maps (float32, N x H x W, >= 0) of `images` (float N x C x H x W in [0, 1]) for the
    classes `targets`, `batch_size` images at a time."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].clone().requires_grad_(True)
        y = torch.as_tensor(targets[start : start + batch_size], dtype=torch.long)
        out.append(attribute(model, x, y, baseline).detach().float().cpu().numpy())
    h, w = images.shape[-2:]
    return np.concatenate(out) if out else np.zeros((0, h, w), np.float32)


# ---------------------------------------------------------------------------- the sample
@dataclass(frozen=True)
class Sample:
    """The test images explained: per class the most confident correct, the most confident
    wrong and random ones, drawn once (seeded)."""

    index: np.ndarray  # (n,) int64, into the test split
    role: np.ndarray  # (n,) int64, into `ROLES`


def choose_sample(labels: np.ndarray, logits: np.ndarray, *, per_class: int, confident: int, seed: int) -> Sample:
    """Per class, up to `confident` most confident correct and `confident` most confident wrong
    test images (by the shipped model's top probability), then random others up to `per_class`."""
    rng = np.random.default_rng(seed)
    predicted, top = logits.argmax(1), softmax(logits, axis=1).max(1)
    index, role = [], []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        right, wrong = members[predicted[members] == cls], members[predicted[members] != cls]
        chosen = [right[np.argsort(-top[right], kind="stable")][:confident]]
        chosen.append(wrong[np.argsort(-top[wrong], kind="stable")][:confident])
        taken = np.concatenate(chosen)
        rest = np.setdiff1d(members, taken)
        chosen.append(rng.permutation(rest)[: max(per_class - len(taken), 0)])
        for r, part in enumerate(chosen):
            index.extend(part.tolist())
            role.extend([r] * len(part))
    return Sample(np.asarray(index, np.int64), np.asarray(role, np.int64))


# ---------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class MeanInterval:
    """A mean over images with its t interval."""

    mean: float
    low: float
    high: float
    n: int


def mean_interval(values: np.ndarray, level: float) -> MeanInterval:
    """The mean of `values` with a two-sided t interval at `level` (nan for fewer than 2)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        mean = float(v.mean()) if len(v) else float("nan")
        return MeanInterval(mean, float("nan"), float("nan"), len(v))
    half = float(student_t.ppf(1 - (1 - level) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return MeanInterval(float(v.mean()), float(v.mean() - half), float(v.mean() + half), len(v))


# ---------------------------------------------------------------------------- the sanity check
def randomized_top(model: nn.Module, layers: int, *, seed: int) -> tuple[nn.Module, tuple[str, ...]]:
    """A copy of `model` with its top `layers` convolution and linear layers re-initialised
    (their own `reset_parameters`, seeded), counted from the output; and their names."""
    clone = copy.deepcopy(model)
    found = [(n, m) for n, m in clone.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    top = found[-layers:]
    with torch.random.fork_rng(devices=[]):  # the caller's random state is left as it was
        torch.manual_seed(
            RANDOMIZE_SEED + seed
        )  # not `seed` itself: a model built after manual_seed(seed) would come back
        for _, module in top:
            module.reset_parameters()
    return clone.eval(), tuple(n for n, _ in top)


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps a[i], b[i] (N x H x W each); nan where a
    map is constant."""
    ra = rankdata(a.reshape(len(a), -1), axis=1)
    rb = rankdata(b.reshape(len(b), -1), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ra * rb).sum(1) / np.sqrt((ra**2).sum(1) * (rb**2).sum(1))


# ---------------------------------------------------------------------------- deletion
DELETION_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)


@dataclass(frozen=True)
class Deletion:
    """True-class probability as cells are removed, most attributed first and at random."""

    fractions: tuple[float, ...]
    cell: int  # side of the square cells removed, in pixels
    attributed: np.ndarray  # (n, len(fractions))
    random: np.ndarray  # (n, len(fractions)), the same counts of cells removed at random

    def areas(self) -> tuple[np.ndarray, np.ndarray]:
        """Per image, the area under each curve (trapezoids over the fractions, divided by the
        largest fraction: the mean probability over the curve)."""
        x = np.asarray(self.fractions)
        attributed, random = (np.trapezoid(c, x, axis=1) / x[-1] for c in (self.attributed, self.random))
        return attributed, random


def cell_side(height: int, width: int) -> int:
    """The deletion cells' side: 1/16 of the image's shorter side, at least 1 pixel."""
    return max(1, round(min(height, width) / 16))


@torch.no_grad()
def deletion_curves(
    model: nn.Module,
    images: torch.Tensor,
    targets: np.ndarray,
    *,
    maps: np.ndarray,
    fill: torch.Tensor,
    seed: int,
    fractions: tuple[float, ...] = DELETION_FRACTIONS,
) -> Deletion:
    """`Deletion` of `images` (float N x C x H x W) for classes `targets`: at each fraction, that
    share of cells (all channels) set to `fill` (1 x C x 1 x 1), in order of `maps` summed per
    cell and at random."""
    model.eval()
    n, _, h, w = images.shape
    cell = cell_side(h, w)
    rows, cols = -(-h // cell), -(-w // cell)
    padded = np.zeros((n, rows * cell, cols * cell), np.float64)
    padded[:, :h, :w] = maps
    scores = padded.reshape(n, rows, cell, cols, cell).sum((2, 4)).reshape(n, -1)
    order = np.argsort(-scores, axis=1, kind="stable")
    rng = np.random.default_rng(seed)
    shuffled = np.stack([rng.permutation(rows * cols) for _ in range(n)]) if n else order
    y = torch.as_tensor(targets, dtype=torch.long)
    curves = []
    for ranking in (order, shuffled):
        columns = []
        for fraction in fractions:
            keep = np.ones((n, rows * cols), bool)
            np.put_along_axis(keep, ranking[:, : round(fraction * rows * cols)], False, axis=1)
            grid = keep.reshape(n, rows, 1, cols, 1)
            full = np.broadcast_to(grid, (n, rows, cell, cols, cell)).reshape(n, rows * cell, cols * cell)
            mask = torch.from_numpy(np.array(full[:, None, :h, :w]))
            x = torch.where(mask, images, fill)
            prob = torch.softmax(logits_in_batches(model, x), 1).gather(1, y[:, None])[:, 0]
            columns.append(prob.numpy())
        curves.append(np.stack(columns, 1) if columns else np.zeros((n, 0)))
    return Deletion(tuple(fractions), cell, curves[0], curves[1])
