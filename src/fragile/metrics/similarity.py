"""Map similarity, batched over N (Ghorbani et al. 2019, sec. 4 "Metrics").

Maps are (N, ...) tensors compared per image over all remaining dimensions.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError


def _flat_pair(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise FragileError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share the mean rank, as scipy.stats.rankdata), per row, float64."""
    v = v.double()
    sorted_v, order = v.sort(dim=1)
    n = v.shape[1]
    pos = torch.arange(n, dtype=torch.float64, device=v.device).expand_as(v)
    # mean position within each run of equal values
    new_run = torch.ones_like(sorted_v, dtype=torch.bool)
    new_run[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    run_id = new_run.cumsum(1) - 1
    sums = torch.zeros_like(pos).scatter_add_(1, run_id, pos)
    counts = torch.zeros_like(pos).scatter_add_(1, run_id, torch.ones_like(pos))
    mean_pos = (sums / counts.clamp(min=1)).gather(1, run_id)
    return torch.empty_like(v).scatter_(1, order, mean_pos)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per image, (N,): Pearson correlation of the average ranks."""
    fa, fb = _flat_pair(a, b)
    ra, rb = _ranks(fa), _ranks(fb)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp(min=1e-30)


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of the k largest features of ``a`` that are among the k largest of ``b``, (N,)."""
    fa, fb = _flat_pair(a, b)
    if not 0 < k <= fa.shape[1]:
        raise FragileError(f"k must be in 1..{fa.shape[1]}, got {k}")
    ia, ib = fa.topk(k, dim=1).indices, fb.topk(k, dim=1).indices
    hit = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, ia, True)
    return hit.gather(1, ib).double().mean(1)
