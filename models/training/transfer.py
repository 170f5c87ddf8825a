"""Starting from another model: fine-tuning (`load_matching`) and distillation (`distillation_loss`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): KL(teacher || student) on temperature-softened logits, scaled by
    T^2 so its gradients keep their size as T changes."""
    t = temperature
    return (
        F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)
        * t
        * t
    )


def load_matching(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of `state` whose name and shape fit `model`; returns the names left
    at their fresh initialisation (e.g. the classifier when the classes differ)."""
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    return sorted(k for k in own if k not in fitting)
