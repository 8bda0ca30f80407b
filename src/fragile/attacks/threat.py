"""Threat models: projection onto the eps-ball around x and clipping to the data range.

L-inf: delta_i <- clip(delta_i, -eps, eps) per coordinate (not a rescaling of the whole delta, the
bug of the Wang et al. reference code). L2: delta <- delta * min(1, eps / ||delta||_2) per image.
Then x + delta is clipped to [low, high].
"""

from __future__ import annotations

import torch


def project_linf(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """L-inf projection per coordinate: every entry of ``delta`` clipped to [-eps, eps]."""
    return delta.clamp(-eps, eps)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """L2 projection per image: ``delta * min(1, eps / ||delta||_2)``, ``delta: (N, ...)``."""
    norms = delta.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *[1] * (delta.dim() - 1))
    return delta * (eps / norms).clamp(max=1.0)


NORMS = {"linf": project_linf, "l2": project_l2}


def clip_to_bounds(x0: torch.Tensor, delta: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The delta that keeps x0 + delta inside [low, high]."""
    return (x0 + delta).clamp(low, high) - x0
