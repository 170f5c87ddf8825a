"""Device and precision, chosen in one place from the training config.

Nothing is probed at import time; call `resolve_runtime` when work starts.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from auditflow.core.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None = plain fp32
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def describe(self) -> dict[str, str]:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {
            "device": str(self.device),
            "device_name": name,
            "precision": "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32",
            "channels_last": str(self.channels_last),
            "torch_threads": str(torch.get_num_threads()),
        }


def resolve_runtime(device: str = "auto", precision: str = "auto", num_threads: int | None = None) -> Runtime:
    """CUDA when asked or available. `precision="auto"` is bf16 autocast on CUDA; on a CPU it
    starts as fp32 and `fit` times both precisions and keeps the faster (`precision.py`: no rule
    on CPU flags holds on every CPU seen). channels_last on CUDA only: on a Zen 4 CPU it slowed
    bf16 convolutions."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise ConfigError("train.device='cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"train.device={device!r}; expected 'auto', 'cpu' or 'cuda'")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu")
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"train.precision={precision!r}; expected 'auto', 'fp32' or 'bf16'")
    use_bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    return Runtime(device=dev, autocast_dtype=torch.bfloat16 if use_bf16 else None, channels_last=dev.type == "cuda")
