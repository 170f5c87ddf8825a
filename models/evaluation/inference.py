"""Inference on uint8 images: logits with optional test-time augmentation.

`predict` returns logits; `metrics.evaluate` turns them into metrics. Training validation,
evaluation, the audits and the training benchmark all call it, so every number comes from the
same preprocessing (`training.presets.to_input`) and the same TTA.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditflow.models.training.presets import to_input
from auditflow.models.training.runtime import Runtime


def _batches(images: np.ndarray, runtime: Runtime, batch_size: int) -> Iterator[torch.Tensor]:
    """`images` as model input on the runtime's device and memory format, `batch_size` at a time."""
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size], runtime.device)
        yield x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def _flip_average(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (model(x).float() + model(x.flip(3)).float())


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    runtime: Runtime,
    *,
    batch_size: int = 1000,
    tta: bool = False,
    translate: int = 0,
) -> np.ndarray:
    """Logits (float32, N x classes) of uint8 N x H x W x 3 images.

    `tta` averages each image with its mirror; `translate` > 0 also averages in two shifted
    copies (up-left and down-right by that many pixels, reflect-padded), weighted as in
    airbench: 0.5 original + 0.25 each shift.
    """
    model.eval()
    out = []
    for x in _batches(images, runtime, batch_size):
        with runtime.autocast():
            if not tta:
                logits = model(x).float()
            elif translate == 0:
                logits = _flip_average(model, x)
            else:
                t, (h, w) = translate, x.shape[-2:]
                padded = F.pad(x, (t, t, t, t), mode="reflect")
                shifted = [padded[..., :h, :w], padded[..., 2 * t : 2 * t + h, 2 * t : 2 * t + w]]
                logits = 0.5 * _flip_average(model, x) + 0.25 * sum(_flip_average(model, v) for v in shifted)
        out.append(logits.cpu())  # sync point
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


# Augmented queries of the membership audit: (dy, dx) shifts in pixels, reflect-padded; the first
# is the image itself, so query 0 of `query_logits` equals `predict` without TTA.
QUERY_SHIFT = 2
_OFFSETS = (-QUERY_SHIFT, 0, QUERY_SHIFT)
QUERY_SHIFTS = ((0, 0), *((dy, dx) for dy in _OFFSETS for dx in _OFFSETS if (dy, dx) != (0, 0)))


@torch.no_grad()
def query_logits(
    model: nn.Module, images: np.ndarray, runtime: Runtime, *, queries: int, batch_size: int = 1000
) -> np.ndarray:
    """Logits (float32, queries x N x classes) of uint8 N x H x W x 3 images under `queries`
    augmented views: 1 = the image; 2 = the image and its mirror; 18 = each of the 9 shifts in
    `QUERY_SHIFTS`, as is and mirrored. Views are ordered (shift, mirrored?) with the plain image first."""
    if queries not in (1, 2, 18):
        raise ValueError(f"queries must be 1, 2 or 18, got {queries}")
    model.eval()
    chunks: list[list[torch.Tensor]] = [[] for _ in range(queries)]
    for x in _batches(images, runtime, batch_size):
        with runtime.autocast():
            for q, view in enumerate(_views(x, queries)):
                chunks[q].append(model(view).float().cpu())
    if not len(images):
        return np.zeros((queries, 0, 0), np.float32)
    return np.stack([torch.cat(c).numpy() for c in chunks])


def audit_logits(
    model: nn.Module, images: np.ndarray, runtime: Runtime, *, queries: int, batch_size: int = 1000
) -> tuple[np.ndarray, np.ndarray | None]:
    """(plain logits without TTA, the `query_logits` views or None for 1 query) of the audited
    images: with several queries the plain logits are view 0, so the images are scored once."""
    if queries == 1:
        return predict(model, images, runtime, batch_size=batch_size), None
    views = query_logits(model, images, runtime, queries=queries, batch_size=batch_size)
    return views[0], views


def _views(x: torch.Tensor, queries: int) -> Iterator[torch.Tensor]:
    """The `query_logits` views of a batch, in its order: per shift, the view then its mirror."""
    if queries == 1:
        yield x
        return
    s, (h, w) = QUERY_SHIFT, x.shape[-2:]
    padded = F.pad(x, (s, s, s, s), mode="reflect") if queries == 18 else x
    for dy, dx in QUERY_SHIFTS[: queries // 2]:
        view = padded[..., s + dy : s + dy + h, s + dx : s + dx + w] if queries == 18 else x
        yield view
        yield view.flip(3)
