"""Checkpoints: plain dicts of tensors and JSON-like data, written atomically, read safely.

A checkpoint holds the raw weights (`state_dict`), the weight average when one was kept
(`ema_state_dict`), which of the two the run ships (`kept`), the resolved training config and
the class names. A DP run's config has `train.dp`: `load_model` then rebuilds the GroupNorm
architecture it trained (`registry.build_model(dp_compatible=True)`); its checkpoints also hold
the privacy accountant's history (`privacy`) for resuming. Reading uses
`torch.load(weights_only=True)`: `train.init_from` and `train.teacher` accept paths from users,
and full unpickling would run whatever code a crafted file carries.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auditflow.core.config import TrainConfig
from auditflow.core.errors import ModelError
from auditflow.models.training.registry import build_model

FORMAT = 2  # 2: `kept` names the weights to ship ("raw" or "ema")


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_payload(
    model: nn.Module, cfg: TrainConfig, classes: tuple[str, ...], *, epoch: int, **extra: Any
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "state_dict": model.state_dict(),
        "config": cfg.model_dump(mode="json"),
        "classes": list(classes),
        "epoch": epoch,
        **extra,
    }


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The payload of a checkpoint file; `ModelError` naming the file when it cannot be read
    or holds anything but tensors and plain data."""
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # junk, truncated or hostile files fail in many types (KeyError, EOFError, ...)
        raise ModelError(f"cannot read checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]}") from err
    if not isinstance(payload, dict):
        raise ModelError(f"{path} is not an auditflow checkpoint (a {type(payload).__name__}, not a dict)")
    return payload


def shipped_state(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights the run ships: the ones `kept` names (format 2), else the average when present."""
    kept = payload.get("kept")
    if kept == "raw":
        return payload["state_dict"]
    return payload.get("ema_state_dict") or payload["state_dict"]


def load_model(checkpoint: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Model in eval mode from a checkpoint (the weights it ships), plus the payload."""
    payload = read_checkpoint(checkpoint, device)
    try:
        cfg = TrainConfig.model_validate(payload["config"])
        classes = payload["classes"]
    except (KeyError, TypeError, ValueError) as err:  # ValidationError is a ValueError
        raise ModelError(f"{checkpoint} is not an auditflow checkpoint (no valid config/classes): {err}") from err
    model = build_model(cfg.model, len(classes), width=cfg.width, dropout=cfg.dropout, dp_compatible=cfg.dp is not None)
    try:
        model.load_state_dict(shipped_state(payload))
    except RuntimeError as err:
        raise ModelError(f"checkpoint {checkpoint} does not fit model {cfg.model!r}: {err}") from err
    return model.to(device).eval(), payload
