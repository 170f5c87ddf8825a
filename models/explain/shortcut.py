"""The shortcut check: does a class owe its recall to a small fixed window rather than to the object?

Per class, the window (a square of `side` pixels, a few percent of the image) where the class's
mean attribution map holds the most mass is tested causally, both ways, each time paired per
image against a window of the same size at a random place that does not overlap it:

- *necessary*: occluding the window (mean-colour fill) on the class's test images removes
  recall; the recall lost to the window minus the recall lost to the random window, on the
  same images;
- *sufficient*: pasting a random test image of the class's pixels from the window into the same
  place on other classes' test images turns them into the class; the share turned by the window
  minus the share turned by the random window (the donor's pixels from the random place, pasted
  there), on the same images.

Necessity alone is no evidence: an object that sits in the middle of the frame loses recall when
the middle is occluded. A class is flagged only when both effects clear the policy on their
paired exact intervals (`models/export/paired.py`: McNemar's conditional model with
Clopper-Pearson bounds). It passes when either interval lies wholly below its threshold, and is
inconclusive otherwise, with the test size that would settle it at the observed rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditflow.core.checks import judge_interval
from auditflow.models.explain.attribution import logits_in_batches
from auditflow.models.export.paired import loss_interval


@dataclass(frozen=True)
class Window:
    """A square window: its top-left pixel and side, and how much of the class's mean
    attribution it holds against its share of the image."""

    top: int
    left: int
    side: int
    mass_share: float  # of the mean map's total mass, 0..1
    area_share: float  # of the image's pixels, 0..1

    @property
    def concentration(self) -> float:
        """Mass share over area share: 1 = no more than its share."""
        return self.mass_share / self.area_share if self.area_share else float("nan")


def window_side(height: int, width: int, fraction: float) -> int:
    """The side of the largest square window covering at most `fraction` of an image (>= 1, and
    no longer than the image's shorter side)."""
    return max(1, min(int(np.floor(np.sqrt(fraction * height * width))), height, width))


def best_window(mean_map: np.ndarray, side: int) -> Window:
    """The `side` x `side` window of `mean_map` (H x W, >= 0) holding the most mass (the first,
    in row order, among ties)."""
    h, w = mean_map.shape
    m = torch.as_tensor(np.asarray(mean_map, np.float64))[None, None]
    sums = F.avg_pool2d(m, side, stride=1)[0, 0].numpy() * side * side
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    total = float(mean_map.sum())
    share = float(sums[top, left] / total) if total > 0 else float("nan")
    return Window(int(top), int(left), side, share, side * side / (h * w))


def random_places(window: Window, height: int, width: int, *, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) top-left corners of windows of the same side that do not overlap `window`
    (anywhere, if the image leaves no room)."""
    s = window.side
    tops, lefts = np.mgrid[: height - s + 1, : width - s + 1]
    apart = (np.abs(tops - window.top) >= s) | (np.abs(lefts - window.left) >= s)
    places = np.stack([tops[apart], lefts[apart]], 1) if apart.any() else np.stack([tops.ravel(), lefts.ravel()], 1)
    return places[rng.integers(0, len(places), n)]


def _mask(n: int, height: int, width: int, corners: np.ndarray, side: int) -> torch.Tensor:
    mask = np.zeros((n, 1, height, width), bool)
    for i, (top, left) in enumerate(corners):
        mask[i, :, top : top + side, left : left + side] = True
    return torch.as_tensor(mask)


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    return logits_in_batches(model, x).argmax(1).numpy()


@dataclass(frozen=True)
class Effect:
    """One causal test: the window's effect minus a random window's on the same images, as
    counts and a paired exact interval (fractions 0..1)."""

    n: int  # paired images
    window_rate: float  # recall kept (necessity) or share turned (sufficiency) with the window
    random_rate: float  # the same with the random window
    more: int  # images the window moved and the random window did not (b)
    fewer: int  # the other way round (c)
    effect: float  # (b - c) / n
    low: float
    high: float

    @classmethod
    def of(
        cls, moved_by_window: np.ndarray, moved_by_random: np.ndarray, *, rates: tuple[float, float], level: float
    ) -> Effect:
        b = int((moved_by_window & ~moved_by_random).sum())
        c = int((moved_by_random & ~moved_by_window).sum())
        n = len(moved_by_window)
        low, high = loss_interval(b, c, n, level=level) if n else (-100.0, 100.0)
        rate = tuple(float(r) if n else float("nan") for r in rates)
        return cls(n, rate[0], rate[1], b, c, (b - c) / n if n else float("nan"), low / 100, high / 100)


def necessity(
    model: nn.Module,
    images: torch.Tensor,
    cls: int,
    *,
    window: Window,
    fill: torch.Tensor,
    rng: np.random.Generator,
    level: float,
) -> Effect:
    """Recall of class `cls` on its `images` (float N x C x H x W) lost to occluding `window`
    (filled with `fill`, 1 x C x 1 x 1) beyond what a random window of the same side loses."""
    n, _, h, w = images.shape
    here = np.tile([[window.top, window.left]], (n, 1))
    there = random_places(window, h, w, n=n, rng=rng)
    right_here = _predict(model, torch.where(_mask(n, h, w, here, window.side), fill, images)) == cls
    right_there = _predict(model, torch.where(_mask(n, h, w, there, window.side), fill, images)) == cls
    return Effect.of(~right_here, ~right_there, rates=(right_here.mean(), right_there.mean()), level=level)


def sufficiency(
    model: nn.Module,
    others: torch.Tensor,
    donors: torch.Tensor,
    *,
    cls: int,
    window: Window,
    rng: np.random.Generator,
    level: float,
) -> Effect:
    """Share of `others` (other classes' images) turned into class `cls` by pasting a random
    donor's (`donors`: the class's images) pixels from `window` into the same place, beyond the
    share a random window turns (the donor's pixels from the random place, pasted there)."""
    n, _, h, w = others.shape
    donor = donors[torch.as_tensor(rng.integers(0, len(donors), n))]
    here = _mask(n, h, w, np.tile([[window.top, window.left]], (n, 1)), window.side)
    there = _mask(n, h, w, random_places(window, h, w, n=n, rng=rng), window.side)
    turned_here = _predict(model, torch.where(here, donor, others)) == cls
    turned_there = _predict(model, torch.where(there, donor, others)) == cls
    rates = (turned_here.mean(), turned_there.mean()) if n else (0.0, 0.0)
    return Effect.of(turned_here, turned_there, rates=rates, level=level)


def decide(necessary: Effect, sufficient: Effect, *, min_drop: float, min_rise: float) -> str:
    """`fail` (a shortcut) when both intervals clear their thresholds, `pass` when either lies
    wholly below its threshold, `inconclusive` otherwise."""
    a = judge_interval(necessary.low, necessary.high, min_drop, higher_is_better=True)
    b = judge_interval(sufficient.low, sufficient.high, min_rise, higher_is_better=True)
    if a == "pass" and b == "pass":
        return "fail"
    if "fail" in (a, b):
        return "pass"
    return "inconclusive"


def images_to_settle(effect: Effect, threshold: float, *, level: float, limit: int = 1 << 20) -> int | None:
    """About how many paired images would decide `effect` against `threshold` at its observed
    rates (its discordant shares kept), or None when more than `limit` would not."""
    if effect.n == 0:
        return None
    n = effect.n
    while n <= limit:
        n *= 2
        scale = n / effect.n
        low, high = loss_interval(round(effect.more * scale), round(effect.fewer * scale), n, level=level)
        if judge_interval(low / 100, high / 100, threshold, higher_is_better=True) != "inconclusive":
            return n
    return None
