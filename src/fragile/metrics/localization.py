"""Center of mass of a saliency map and its shift (Ghorbani et al. 2019, sec. 4 and footnote a)."""

from __future__ import annotations

import torch

from fragile.errors import FragileError


def center_of_mass(m: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-negative map -> (N, 2) center (row, column) in pixels:
    C(m) = sum_{ij} m_ij (i, j) / sum_ij m_ij."""
    if m.dim() != 3:
        raise FragileError(f"center_of_mass expects (N, H, W) maps, got shape {tuple(m.shape)}")
    h, w = m.shape[-2:]
    rows = torch.arange(h, dtype=m.dtype, device=m.device)
    cols = torch.arange(w, dtype=m.dtype, device=m.device)
    total = m.sum((1, 2)).clamp(min=1e-30)
    return torch.stack([(m.sum(2) * rows).sum(1) / total, (m.sum(1) * cols).sum(1) / total], dim=1)


def center_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L2 distance in pixels between the centers of mass of two (N, H, W) maps, (N,)."""
    return (center_of_mass(a) - center_of_mass(b)).norm(dim=1)
