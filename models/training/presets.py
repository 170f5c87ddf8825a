"""Preprocessing, defined once and reused by training, evaluation, export, benchmark and audits.

Snapshots hold uint8 N x H x W x 3; every model takes float32 N x 3 x H x W in [0, 1] (the
model normalises internally). Augmentation runs batched on whatever device holds the batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_input(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W in [0, 1] on `device`."""
    batch = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    batch = batch.to(device, non_blocking=True)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def alternating_flips(n: int, *, seed: int, epoch: int) -> torch.Tensor:
    """Which of `n` training images epoch `epoch` (1-based) flips under `train.flip_mode:
    alternate`: a seeded draw per image, inverted on every even epoch (airbench's alternating
    flip, Jordan 2024, "94% on CIFAR-10 in 3.29 seconds on a single GPU", section 3.6). The same
    (seed, epoch) gives the same mask, so a resumed run flips as an uninterrupted one."""
    drawn = torch.rand(n, generator=torch.Generator().manual_seed(seed * 100_003 + 17)) < 0.5
    return drawn ^ (epoch % 2 == 0)


def draw_augmentation(
    sizes: list[int], *, flip: bool, crop_padding: int, generator: torch.Generator, device: torch.device | str
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One epoch's random draws for `augment`, for batches of `sizes` images, in the order
    `augment` would draw them batch by batch (so a seeded epoch augments exactly alike), copied
    to `device` once: (flip mask, N bool, or None without random flips; crop shifts, N x 2
    (dy, dx), or None without crops), N = sum(sizes), in batch order. On a GPU this saves two
    or three host-to-device copies per step, each of which waits for the GPU to finish."""
    masks, shifts = [], []
    for n in sizes:
        if flip:
            masks.append(torch.rand(n, generator=generator) < 0.5)
        if crop_padding > 0:
            span = 2 * crop_padding + 1
            dy = torch.randint(0, span, (n,), generator=generator)
            dx = torch.randint(0, span, (n,), generator=generator)
            shifts.append(torch.stack((dy, dx), 1))
    mask = torch.cat(masks).to(device) if masks else None
    shift = torch.cat(shifts).to(device) if shifts else None
    return mask, shift


def augment(
    batch: torch.Tensor,
    *,
    flip: bool | torch.Tensor,
    crop_padding: int,
    generator: torch.Generator | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Horizontal flip and random crop (reflect padding) of a float N x C x H x W batch.

    `flip`: True = each image with probability 1/2; a bool tensor of N = exactly those images.
    `shift`: each image's crop offset, N x 2 (dy, dx) in 0..2 `crop_padding` (`draw_augmentation`);
    None = drawn here from `generator`."""
    n, _, h, w = batch.shape
    if isinstance(flip, torch.Tensor):
        mask: torch.Tensor | None = flip
    else:
        mask = torch.rand(n, generator=generator, device="cpu") < 0.5 if flip else None
    if mask is not None:
        batch = torch.where(mask.to(batch.device)[:, None, None, None], batch.flip(3), batch)
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(batch, (p, p, p, p), mode="reflect")
        if shift is None:
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(batch.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(batch.device)
        else:
            dy, dx = shift[:, 0], shift[:, 1]
        rows = (dy[:, None] + torch.arange(h, device=batch.device))[:, None, :, None]  # N,1,H,1
        cols = (dx[:, None] + torch.arange(w, device=batch.device))[:, None, None, :]  # N,1,1,W
        idx_n = torch.arange(n, device=batch.device)[:, None, None, None]
        idx_c = torch.arange(batch.shape[1], device=batch.device)[None, :, None, None]
        batch = padded[idx_n, idx_c, rows, cols]
    return batch


def downscale(batch: torch.Tensor, size: int) -> torch.Tensor:
    """A float N x C x H x W batch resized to `size` x `size` (bilinear, antialiased: the area
    a pixel covers is averaged, not sampled), for progressive resizing's early epochs."""
    return F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
