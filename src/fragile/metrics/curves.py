"""Summaries of metric-vs-eps curves (Wang et al. 2020, Fig. 2a: area over log eps)."""

from __future__ import annotations

import torch

from fragile.errors import FragileError


def auc_log_eps(eps, values, normalize: bool = False) -> torch.Tensor:
    """Trapezoid area under ``values`` (E,) or (E, N) against log2(eps) (E,), eps increasing.

    ``normalize=True`` divides by log2(eps_max / eps_min), giving the curve's mean height.
    """
    e = torch.as_tensor(eps, dtype=torch.float64)
    v = torch.as_tensor(values, dtype=torch.float64)
    if e.dim() != 1 or e.numel() < 2 or v.shape[0] != e.numel():
        raise FragileError(f"need >= 2 eps values and one value (row) per eps, got eps {tuple(e.shape)}, "
                           f"values {tuple(v.shape)}")
    if bool((e <= 0).any()) or bool((e[1:] <= e[:-1]).any()):
        raise FragileError("eps must be positive and strictly increasing")
    x = torch.log2(e).view(-1, *[1] * (v.dim() - 1))
    area = ((v[1:] + v[:-1]) / 2 * (x[1:] - x[:-1])).sum(0)
    return area / (x[-1] - x[0]) if normalize else area
