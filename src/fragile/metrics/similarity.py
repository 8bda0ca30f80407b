"""Map and image similarity, batched over N; every function returns one value per image, (N,).

Ghorbani et al. 2019 (sec. 4): Spearman rank correlation, top-k intersection, center-of-mass shift.
Dombrowski et al. 2019 (sec. 5): SSIM, Pearson correlation (PCC), mean squared error.
Wang et al. 2020 (sec. 5): cosine distance.
"""

from __future__ import annotations

import re

import torch

from fragile.errors import FragileError


def _flat_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise FragileError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank, as scipy.stats.rankdata), per row, float64."""
    sorted_v, order = v.sort(dim=1)
    pos = torch.arange(v.shape[1], dtype=torch.float64, device=v.device).expand(v.shape[0], -1)
    new_run = torch.ones_like(sorted_v, dtype=torch.bool)
    new_run[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    if not bool((~new_run).any()):  # no ties: the rank is the sorted position
        return torch.empty_like(pos).scatter_(1, order, pos)
    run_id = new_run.cumsum(1) - 1
    sums = torch.zeros_like(pos).scatter_add_(1, run_id, pos)
    counts = torch.zeros_like(pos).scatter_add_(1, run_id, torch.ones_like(pos))
    mean_pos = (sums / counts.clamp(min=1)).gather(1, run_id)
    return torch.empty_like(pos).scatter_(1, order, mean_pos)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-30)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation: Pearson correlation of the average ranks."""
    fa, fb = _flat_pair(a, b)
    return _pearson_rows(_ranks(fa), _ranks(fb))


def pcc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation coefficient."""
    fa, fb = _flat_pair(a, b)
    return _pearson_rows(fa.double(), fb.double())


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error."""
    fa, fb = _flat_pair(a, b)
    return (fa.double() - fb.double()).pow(2).mean(1)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) (Wang et al. 2020, "cosd")."""
    fa, fb = _flat_pair(a, b)
    fa, fb = fa.double(), fb.double()
    return 1 - (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp(min=1e-30)


def topk_name(k: int) -> str:
    """The metric key of the top-k intersection, e.g. ``top100_intersection``."""
    return f"top{int(k)}_intersection"


def topk_names(keys) -> list[str]:
    """The top-k intersection keys among ``keys`` (any iterable of metric names), sorted by k."""
    found = {int(m.group(1)): key for key in keys if (m := _TOPK_NAME.fullmatch(key))}
    return [found[k] for k in sorted(found)]


_TOPK_NAME = re.compile(r"top(\d+)_intersection")


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of the k largest features of ``a`` that are among the k largest of ``b``."""
    fa, fb = _flat_pair(a, b)
    if not 0 < int(k) <= fa.shape[1]:
        raise FragileError(f"k must be in 1..{fa.shape[1]} (the number of features), got {k}")
    ia, ib = fa.topk(int(k), dim=1).indices, fb.topk(int(k), dim=1).indices
    hit = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, ia, True)
    return hit.gather(1, ib).double().mean(1)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float | torch.Tensor | None = None,
         win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with scikit-image's defaults: uniform 7x7 window,
    sample covariance, mean over the valid region (border of (win-1)/2 excluded), averaged over
    channels. ``a, b``: (N, H, W) maps or (N, C, H, W) images. ``data_range``: a number, (N,), or
    None for the per-image range of both inputs together."""
    if a.shape != b.shape:
        raise FragileError(f"inputs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() not in (3, 4):
        raise FragileError(f"ssim expects (N, H, W) or (N, C, H, W), got {tuple(a.shape)}")
    x, y = (a.unsqueeze(1) if a.dim() == 3 else a).double(), (b.unsqueeze(1) if b.dim() == 3 else b).double()
    if min(x.shape[-2:]) < win_size:
        raise FragileError(f"images of size {tuple(x.shape[-2:])} are smaller than the SSIM window {win_size}")
    n = x.shape[0]
    if data_range is None:
        both = torch.cat([x.reshape(n, -1), y.reshape(n, -1)], 1)
        data_range = both.amax(1) - both.amin(1)
    r = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).reshape(-1, 1, 1, 1)
    pool = lambda t: torch.nn.functional.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1)
    ux, uy = pool(x), pool(y)
    vx = cov_norm * (pool(x * x) - ux * ux)
    vy = cov_norm * (pool(y * y) - uy * uy)
    vxy = cov_norm * (pool(x * y) - ux * uy)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))
