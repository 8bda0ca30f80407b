"""Map and image similarity, batched over N; every function returns one value per image, (N,).

Ghorbani et al. 2019 (sec. 4): Spearman rank correlation, top-k intersection, center-of-mass shift.
Dombrowski et al. 2019 (sec. 5): SSIM, Pearson correlation (PCC), mean squared error.
Wang et al. 2020 (sec. 5): cosine distance.

Conventions shared by every map metric (computed in float64):

- NaN or inf anywhere in a map is refused with a ``FragileError`` naming the metric.
- Two identical maps (bitwise equal values, per image) score as identical whatever the values, also
  when the metric is undefined for them (constant, all-zero, ~1e-30 or ~1e30 maps): Spearman 1,
  PCC 1, cosine distance 0, SSIM 1, top-k intersection 1, MSE 0, center shift 0.
- Where a metric is undefined for a *non-identical* pair (a constant map has no ranks or variance,
  an all-zero map no direction or center of mass), that image gets NaN and one
  ``DegenerateMapWarning`` per call says which metric and how many images.
- PCC, Spearman, cosine distance and top-k intersection are invariant to positive scaling of either
  map over the whole float64 range: each row is divided by its max-abs before any product is taken.
"""

from __future__ import annotations

import numbers
import re
import warnings

import numpy as np
import torch

from fragile.errors import FragileError


class DegenerateMapWarning(UserWarning):
    """A metric is undefined for some images (constant or all-zero maps); those images got NaN."""


def _check_finite(name: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if t.numel() and bool(torch.isfinite(t.amax()) & torch.isfinite(t.amin())):  # NaN propagates: one fast pass
            continue
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
        if bool(bad.any()):
            raise FragileError(f"{name}: maps must be finite, got NaN or inf in {int(bad.sum())} of "
                               f"{t.shape[0]} images")


def _warn_degenerate(name: str, bad: torch.Tensor, why: str, stacklevel: int = 3) -> None:
    """One warning for the images in ``bad``, pointing at the caller of the public metric."""
    n = int(bad.sum())
    if n:
        warnings.warn(f"{name}: undefined for {n} of {bad.numel()} images ({why}); their value is NaN",
                      DegenerateMapWarning, stacklevel=stacklevel)


def _finish(value: torch.Tensor, same: torch.Tensor, identical: float, bad: torch.Tensor) -> torch.Tensor:
    """``identical`` where the pair is identical, NaN where the metric is undefined, else ``value``."""
    value = torch.where(bad, torch.full_like(value, float("nan")), value)
    return torch.where(same, torch.full_like(value, identical), value)


def check_pair(name: str, a, b) -> None:
    """Both maps tensors of real numbers on one device (the public boundary of every map metric)."""
    for what, t in (("first", a), ("second", b)):
        if not isinstance(t, torch.Tensor):
            raise FragileError(f"{name}: the {what} map must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex():
            raise FragileError(f"{name}: maps must be real, got {t.dtype}")
    if a.device != b.device:
        raise FragileError(f"{name}: the maps are on different devices ({a.device} and {b.device}); move one")


def _flat_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, ...) pair -> two (N, D) float64 tensors, after the shape and finiteness checks."""
    check_pair(name, a, b)
    if a.shape != b.shape:
        raise FragileError(f"{name}: maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2 or a[0].numel() == 0:
        raise FragileError(f"{name}: expects a batch of non-empty maps (N, ...), got shape {tuple(a.shape)}")
    _check_finite(name, a, b)
    return a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Each row divided by its max-abs (all-zero rows unchanged): values in [-1, 1], so that products
    and norms neither overflow nor underflow whatever the scale of the map."""
    s = v.abs().amax(1, keepdim=True)
    return v / torch.where(s > 0, s, torch.ones_like(s))


def _constant_rows(v: torch.Tensor) -> torch.Tensor:
    return (v == v[:, :1]).all(1)


def _argsort_rows(v: torch.Tensor) -> torch.Tensor:
    """Ascending sort order of each row of a 2-D tensor, (N, D) int64, at the sort floor of its device:
    numpy's introsort on CPU tensors (4-5x faster than torch's CPU sort, ``benchmarks/rank_metrics.py``),
    torch's sort elsewhere. The order of equal values is unspecified (callers must not depend on it)."""
    if v.device.type == "cpu":
        return torch.from_numpy(np.argsort(v.detach().numpy(), axis=1))
    return v.argsort(dim=1)


def _ranks(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ranks (ties share the mean rank, as scipy.stats.rankdata), per row, float64 (0-based), and
    which rows are constant, (N,) bool.

    A run of equal values at sorted positions i..j gets (i + j) / 2. The runs are found on the flattened
    (N * D) sorted values (every row starts a run, so no run crosses rows): one ``nonzero`` for the run
    starts, one ``cumsum`` for each position's run -- O(D) per row after the sort, so tied maps (every real
    224x224 map has ties) cost about what untied ones do."""
    n, d = v.shape
    order = _argsort_rows(v)
    sorted_v = v.gather(1, order)
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    torch.ne(sorted_v[:, 1:], sorted_v[:, :-1], out=starts[:, 1:])
    constant = sorted_v[:, 0] == sorted_v[:, -1]
    if bool(starts.all()):  # no ties: the rank is the sorted position
        pos = torch.arange(d, dtype=torch.float64, device=v.device).expand(n, -1)
        return torch.empty((n, d), dtype=torch.float64, device=v.device).scatter_(1, order, pos), constant
    flat = starts.view(-1)
    first = flat.nonzero().squeeze(1)  # flat index of each run's first element
    last = torch.cat([first[1:], first.new_tensor([n * d])]) - 1
    middle = (first + last).double() / 2 - (first // d * d).double()  # the run's mean position in its row
    ranks = middle[flat.cumsum(0) - 1].view(n, d)
    return torch.empty_like(ranks).scatter_(1, order, ranks), constant


def _rank_correlation(ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two (N, D) rows of average ranks. Average ranks sum to D (D - 1) / 2 whatever
    the ties, so the centred sums are sum(ra rb) - D m^2 etc. with m = (D - 1) / 2; ranks are multiples of
    1/2, so every product and (for D < ~190,000) every sum is exact in float64: no cancellation error."""
    d = ra.shape[1]
    dm2 = d * ((d - 1) / 2) ** 2
    cov = (ra * rb).sum(1) - dm2
    return (cov / ((ra * ra).sum(1) - dm2).mul((rb * rb).sum(1) - dm2).sqrt()).clamp(-1, 1)


def _top_k_mask(v: torch.Tensor, k: int) -> torch.Tensor:
    """(N, D) bool: the k largest values of each row, ties at the k-th value broken by position (lower flat
    index first) -- the first k of a stable descending sort, found in O(D) from the k-th largest value
    (numpy's partition on CPU, torch's topk elsewhere) without sorting the row."""
    d = v.shape[1]
    if v.device.type == "cpu":
        kth = torch.from_numpy(np.partition(v.detach().numpy(), d - k, axis=1)[:, d - k]).to(v.dtype)
    else:
        kth = v.topk(k, dim=1).values[:, -1]
    kth = kth[:, None]
    above = v > kth
    need = k - above.sum(1, keepdim=True)
    at = v == kth
    return above | (at & (at.cumsum(1) <= need))


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Pearson correlation of rows of moderate size (ranks, or rows scaled into [-1, 1]);
    NaN (0/0) for a constant row."""
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return ((a * b).sum(1) / (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()).clamp(-1, 1)


def _correlation(name: str, fa: torch.Tensor, fb: torch.Tensor, ra: torch.Tensor, rb: torch.Tensor,
                 why: str) -> torch.Tensor:
    same = (fa == fb).all(1)
    r = _pearson_rows(ra, rb)
    bad = (_constant_rows(fa) | _constant_rows(fb) | torch.isnan(r)) & ~same
    _warn_degenerate(name, bad, why, stacklevel=4)
    return _finish(r, same, 1.0, bad)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties share their mean
    rank, as ``scipy.stats.spearmanr``). ``a, b``: (N, ...) maps -> (N,).

    Identical maps give 1 (also constant ones); a constant map against a different map has no ranks
    to correlate: NaN and a ``DegenerateMapWarning``."""
    fa, fb = _flat_pair(a, b, "spearman")
    same = (fa == fb).all(1)
    (ra, constant_a), (rb, constant_b) = _ranks(fa), _ranks(fb)
    r = _rank_correlation(ra, rb)
    bad = (constant_a | constant_b | torch.isnan(r)) & ~same
    _warn_degenerate("spearman", bad, "a constant map has no ranks")
    return _finish(r, same, 1.0, bad)


def pcc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation coefficient of the flattened maps, (N, ...) -> (N,), invariant to positive
    scaling of either map.

    Identical maps give 1 (also constant ones); a constant map against a different map has no
    variance: NaN and a ``DegenerateMapWarning``."""
    fa, fb = _flat_pair(a, b, "pcc")
    return _correlation("pcc", fa, fb, _unit_rows(fa), _unit_rows(fb), "a constant map has no variance")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the flattened maps, (N, ...) -> (N,); 0 for identical maps."""
    fa, fb = _flat_pair(a, b, "mse")
    d = fa - fb
    out = d.pow(2).mean(1)
    if not bool(torch.isfinite(out).all()):  # mean(d^2) = s^2 mean((d / s)^2) overflows only in the last product
        s = d.abs().amax(1, keepdim=True)
        out = s.squeeze(1).pow(2) * (d / torch.where(s > 0, s, torch.ones_like(s))).pow(2).mean(1)
    if not bool(torch.isfinite(out).all()):
        raise FragileError("mse: the mean squared difference exceeds the float64 range (maps of magnitude ~1e154 or "
                           "more); normalise the maps first (e.g. normalize_sum)")
    return out


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) of the flattened maps (Wang et al. 2020, "cosd"), in [0, 2], (N, ...) -> (N,),
    invariant to positive scaling of either map.

    Identical maps give 0 (also all-zero ones); an all-zero map against a different map has no
    direction: NaN and a ``DegenerateMapWarning``."""
    fa, fb = _flat_pair(a, b, "cosine_distance")
    same = (fa == fb).all(1)
    ua, ub = _unit_rows(fa), _unit_rows(fb)  # a non-zero row has norm >= 1 after scaling
    d = (1 - (ua * ub).sum(1) / (ua.pow(2).sum(1) * ub.pow(2).sum(1)).sqrt()).clamp(0, 2)
    bad = ((fa == 0).all(1) | (fb == 0).all(1) | torch.isnan(d)) & ~same
    _warn_degenerate("cosine_distance", bad, "an all-zero map has no direction")
    return _finish(d, same, 0.0, bad)


def topk_name(k: int) -> str:
    """The metric key of the top-k intersection, e.g. ``top100_intersection``."""
    return f"top{int(k)}_intersection"


def topk_names(keys) -> list[str]:
    """The top-k intersection keys among ``keys`` (any iterable of metric names), sorted by k."""
    found = {int(m.group(1)): key for key in keys if (m := _TOPK_NAME.fullmatch(key))}
    return [found[k] for k in sorted(found)]


_TOPK_NAME = re.compile(r"top(\d+)_intersection")


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """Fraction of the k largest features of ``a`` that are among the k largest of ``b``, (N, ...) ->
    (N,). Only the order of the values counts, so it is invariant to positive scaling. Ties at the
    k-th value are broken by position (lower flat index first), so the result is deterministic and
    identical maps give 1 (a constant map's top k are its first k features)."""
    fa, fb = _flat_pair(a, b, "topk_intersection")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise FragileError(f"topk_intersection: k must be an integer, got {k!r}")
    if not 0 < int(k) <= fa.shape[1]:
        raise FragileError(f"k must be in 1..{fa.shape[1]} (the number of features), got {k}")
    return (_top_k_mask(fa, int(k)) & _top_k_mask(fb, int(k))).sum(1).double() / int(k)


def _data_range(data_range, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    if data_range is None:
        both = torch.cat([x.reshape(n, -1), y.reshape(n, -1)], 1)
        return both.amax(1) - both.amin(1)
    r = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).reshape(-1)
    if r.numel() not in (1, n) or not bool(torch.isfinite(r).all()) or bool((r < 0).any()):
        raise FragileError(f"ssim: data_range must be None, a finite number >= 0 or one per image ({n}), "
                           f"got {data_range!r}")
    return r.expand(n)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float | torch.Tensor | None = None,
         win_size: int = 7, k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004, eq. 13) with scikit-image's defaults: uniform 7x7
    window, sample covariance, mean over the valid region (border of (win-1)/2 excluded), averaged over
    channels. ``a, b``: (N, H, W) maps or (N, C, H, W) images -> (N,). ``data_range``: a number, (N,),
    or None for the per-image range of both inputs together (then SSIM is invariant to a common
    positive scaling of both).

    Identical inputs give 1 (also constant ones, where data_range None is 0 and the formula 0/0).
    Different inputs follow the formula with c1 = (k1 R)^2, c2 = (k2 R)^2, e.g. two different
    constant maps score (2 u v + c1) / (u^2 + v^2 + c1); with R = 0 (only possible when given) the
    formula is undefined: NaN and a ``DegenerateMapWarning``."""
    check_pair("ssim", a, b)
    if a.shape != b.shape:
        raise FragileError(f"ssim: inputs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() not in (3, 4):
        raise FragileError(f"ssim expects (N, H, W) or (N, C, H, W), got {tuple(a.shape)}")
    x, y = (a.unsqueeze(1) if a.dim() == 3 else a).double(), (b.unsqueeze(1) if b.dim() == 3 else b).double()
    if min(x.shape[-2:]) < win_size:
        raise FragileError(f"images of size {tuple(x.shape[-2:])} are smaller than the SSIM window {win_size}")
    _check_finite("ssim", x, y)
    n = x.shape[0]
    same = (x == y).reshape(n, -1).all(1)
    r = _data_range(data_range, x, y)
    # SSIM is unchanged when x, y and R are divided by one positive number: bring values into [-1, 1]
    s = torch.maximum(x.abs().reshape(n, -1).amax(1), y.abs().reshape(n, -1).amax(1))
    s = torch.where(s > 0, s, torch.ones_like(s))
    x, y, r = x / s.view(-1, 1, 1, 1), y / s.view(-1, 1, 1, 1), (r / s).view(-1, 1, 1, 1)
    pool = lambda t: torch.nn.functional.avg_pool2d(t, win_size, stride=1)  # noqa: E731
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1)
    ux, uy = pool(x), pool(y)
    # (co)variances are shift-invariant: take them about the image mean to limit cancellation
    o = 0.5 * (x.mean(dim=(1, 2, 3), keepdim=True) + y.mean(dim=(1, 2, 3), keepdim=True))
    xc, yc = x - o, y - o
    uxc, uyc = ux - o, uy - o
    vx = cov_norm * (pool(xc * xc) - uxc * uxc)
    vy = cov_norm * (pool(yc * yc) - uyc * uyc)
    vxy = cov_norm * (pool(xc * yc) - uxc * uyc)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    out = (((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))).mean(dim=(1, 2, 3))
    bad = ((r.reshape(-1) == 0) | ~torch.isfinite(out)) & ~same
    _warn_degenerate("ssim", bad, "data_range 0: c1 = c2 = 0")
    return _finish(out, same, 1.0, bad)
