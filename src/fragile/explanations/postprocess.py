"""Map post-processing: channel reduction and normalisation (batched, differentiable).

- ``reduce_channels(h, how)``: (N, C, H, W) -> (N, H, W) by 'abs_sum' (sum_c |h_c|, Ghorbani's
  saliency), 'sum', 'max_abs' (max_c |h_c|) or 'l2' (sqrt(sum_c h_c^2)).
- ``normalize_sum(m)``: m / sum(m) per image (Ghorbani: maps are distributions over pixels).
- ``scale_01(m)``: (m - min) / (max - min) per image.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError

REDUCTIONS = {
    "abs_sum": lambda h: h.abs().sum(1),
    "sum": lambda h: h.sum(1),
    "max_abs": lambda h: h.abs().amax(1),
    "l2": lambda h: h.pow(2).sum(1).clamp(min=1e-30).sqrt(),
}


def reduce_channels(h: torch.Tensor, how: str = "abs_sum") -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W)."""
    if how not in REDUCTIONS:
        raise FragileError(f"unknown channel reduction {how!r}; choose one of {sorted(REDUCTIONS)}")
    if h.dim() != 4:
        raise FragileError(f"map must be (N, C, H, W), got shape {tuple(h.shape)}")
    return REDUCTIONS[how](h)


def _flat(m: torch.Tensor) -> torch.Tensor:
    return m.reshape(m.shape[0], -1)


def normalize_sum(m: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """m / sum(m) per image (for non-negative maps: a distribution over pixels)."""
    return m / (_flat(m).sum(1).view(-1, *[1] * (m.dim() - 1)) + eps)


def scale_01(m: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Min-max scaling to [0, 1] per image."""
    lo = _flat(m).amin(1).view(-1, *[1] * (m.dim() - 1))
    hi = _flat(m).amax(1).view(-1, *[1] * (m.dim() - 1))
    return (m - lo) / (hi - lo + eps)
