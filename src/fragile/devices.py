"""Device names checked at the public boundary: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""

from __future__ import annotations

import torch
from torch import nn

from fragile.errors import FragileError


def resolve_device(name: str | torch.device) -> torch.device:
    """A usable torch.device, or a FragileError naming what is missing (no CUDA build, no such GPU)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise FragileError(f"unknown device {name!r}; use cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
            raise FragileError(f"device {name!r} requested but CUDA is not available "
                               f"(torch {torch.__version__}, built for {build})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FragileError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FragileError(f"device {name!r} requested but MPS is not available")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise FragileError(f"unsupported device {name!r}; use cpu, cuda, cuda:N or mps")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter or buffer (CPU for a model without either)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")
