"""Exact rewrites of a trained model for inference: fewer operators, same function.

`fold_for_inference` returns a copy of a fastnet in which
- the input normalisation is folded into the whitening convolution (it has no padding, so
  (x - mean) / std followed by the convolution is one convolution with new weights and bias);
- each conv-pool-BatchNorm group whose BatchNorm scales are all positive has that BatchNorm
  folded into the convolution before the max-pool. For a per-channel a > 0,
  max(a y + b) = a max(y) + b, so the pool commutes with the affine map. A channel with a <= 0
  would turn the max into a min, so a group with one is left as it is.

Every other model is returned unchanged (a copy). The export's parity check compares the
result with the original on real images, so a wrong fold cannot ship silently.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from auditflow.models.training.registry import FastNet, Normalize, _ConvGroup

log = logging.getLogger(__name__)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode BatchNorm: y = scale * x + shift."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def _fold_group(group: _ConvGroup) -> bool:
    if not isinstance(group.bn1, nn.BatchNorm2d):  # GroupNorm (DP-SGD models) is per image: no fold
        return False
    scale, shift = _bn_affine(group.bn1)
    if not bool((scale > 0).all()):
        return False
    conv = group.conv1
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    folded.weight.copy_(conv.weight * scale[:, None, None, None])
    folded.bias.copy_(shift if conv.bias is None else conv.bias * scale + shift)
    group.conv1, group.bn1 = folded, nn.Identity()  # type: ignore[assignment]
    return True


@torch.no_grad()
def _fold_normalize(norm: Normalize, net: FastNet) -> None:
    mean, std = norm.mean.reshape(-1), norm.std.reshape(-1)
    w = net.whiten.weight / std[None, :, None, None]
    net.whiten.bias.copy_(net.whiten.bias - (w * mean[None, :, None, None]).sum(dim=(1, 2, 3)))
    net.whiten.weight.copy_(w)


def fold_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` (CPU, fp32, eval) with the exact folds above applied where they hold."""
    model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().eval()
    if not (isinstance(model, nn.Sequential) and len(model) == 2 and isinstance(model[1], FastNet)):
        return model
    norm, net = model[0], model[1]
    if isinstance(norm, Normalize) and net.whiten.padding == (0, 0):
        _fold_normalize(norm, net)
        model[0] = nn.Identity()
    kept = [i for i, g in enumerate(net.groups) if not _fold_group(g)]
    if kept:
        log.info("fold: BatchNorm kept after the pool in group(s) %s (a non-positive scale)", kept)
    return model
