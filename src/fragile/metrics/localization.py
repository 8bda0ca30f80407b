"""Center of mass of a saliency map and its shift (Ghorbani et al. 2019, sec. 4 and footnote a).

Degenerate maps follow the conventions of ``fragile.metrics.similarity``: NaN or inf is refused, a
map of total mass 0 has no center (NaN and a ``DegenerateMapWarning``), identical maps shift by 0.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError
from fragile.metrics.similarity import _check_finite, _finish, _warn_degenerate, check_pair

_NO_MASS = "a map of total mass 0 has no center of mass"


def _center(m: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) -> float64 centers (N, 2), NaN where the mass is 0, and that mask (N,)."""
    if not isinstance(m, torch.Tensor):
        raise FragileError(f"{name} expects an (N, H, W) tensor, got {type(m).__name__}")
    if m.dim() != 3:
        raise FragileError(f"{name} expects (N, H, W) maps, got shape {tuple(m.shape)}")
    _check_finite(name, m)
    md = m.double()
    # C(m) = C(m / s) for any s > 0: dividing by the (detached) max-abs keeps the sums in range
    s = md.detach().abs().reshape(md.shape[0], -1).amax(1)
    md = md / torch.where(s > 0, s, torch.ones_like(s)).view(-1, 1, 1)
    h, w = m.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64, device=m.device)
    cols = torch.arange(w, dtype=torch.float64, device=m.device)
    total = md.sum((1, 2))
    empty = total == 0
    safe = torch.where(empty, torch.ones_like(total), total)  # keeps the gradient of those images 0, not NaN
    c = torch.stack([(md.sum(2) * rows).sum(1) / safe, (md.sum(1) * cols).sum(1) / safe], dim=1)
    return torch.where(empty[:, None], torch.full_like(c, float("nan")), c), empty


def center_of_mass(m: torch.Tensor) -> torch.Tensor:
    """(N, H, W) non-negative map -> (N, 2) center (row, column) in pixels:
    C(m) = sum_{ij} m_ij (i, j) / sum_ij m_ij, computed in float64 and returned in ``m``'s floating
    dtype (differentiable: the mass-center attack uses it as its loss).

    A map of total mass 0 (all-zero) has no center: NaN (with zero gradient) and a
    ``DegenerateMapWarning``. NaN or inf maps are refused."""
    c, empty = _center(m, "center_of_mass")
    _warn_degenerate("center_of_mass", empty, _NO_MASS)
    return c.to(m.dtype) if m.is_floating_point() else c


def center_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L2 distance in pixels between the centers of mass of two (N, H, W) maps, (N,) float64.

    Identical maps shift by 0 (also all-zero ones); an all-zero map against a different map has no
    center: NaN and a ``DegenerateMapWarning``. Maps of different shapes are refused."""
    check_pair("center_shift", a, b)
    if a.shape != b.shape:
        raise FragileError(f"center_shift: maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    (ca, ea), (cb, eb) = _center(a, "center_shift"), _center(b, "center_shift")
    same = (a.double() == b.double()).reshape(a.shape[0], -1).all(1)
    bad = (ea | eb) & ~same
    _warn_degenerate("center_shift", bad, _NO_MASS)
    return _finish((ca - cb).norm(dim=1), same, 0.0, bad)
