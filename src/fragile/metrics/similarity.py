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
        if t.numel() and bool(torch.isfinite(t.sum())):  # NaN and inf propagate: one fast pass (an overflow
            continue  # to inf only sends the tensor to the exact check below)
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
        if bool(bad.any()):
            raise FragileError(f"{name}: maps must be finite, got NaN or inf in {int(bad.sum())} of "
                               f"{t.shape[0]} images")


def _warn_degenerate(name: str, bad: torch.Tensor, why: str, stacklevel: int = 3) -> None:
    """One warning for the images in ``bad``, pointing at the caller of the public metric."""
    n = int(bad.sum())
    if n:
        warnings.warn(f"{name}: undefined for {n} of {len(bad)} images ({why}); their value is NaN",
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


def _flat_rows(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, ...) pair -> two (N, D) tensors of their own dtype, after the shape and finiteness checks."""
    check_pair(name, a, b)
    if a.shape != b.shape:
        raise FragileError(f"{name}: maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2 or a[0].numel() == 0:
        raise FragileError(f"{name}: expects a batch of non-empty maps (N, ...), got shape {tuple(a.shape)}")
    _check_finite(name, a, b)
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


def _flat_pair(a: torch.Tensor, b: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, ...) pair -> two (N, D) float64 tensors, after the shape and finiteness checks."""
    fa, fb = _flat_rows(a, b, name)
    return fa.double(), fb.double()


def _unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Each row divided by its max-abs (all-zero rows unchanged): values in [-1, 1], so that products
    and norms neither overflow nor underflow whatever the scale of the map."""
    s = v.abs().amax(1, keepdim=True)
    return v / torch.where(s > 0, s, torch.ones_like(s))


def _same_rows(fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rows of two (N, D) tensors are equal element by element. Compared in full only where
    64 evenly spaced columns agree (different maps nearly always differ there: one cheap pass)."""
    step = max(1, fa.shape[1] // 64)
    same = (fa[:, ::step] == fb[:, ::step]).all(1)
    rows = same.nonzero().squeeze(1)
    if rows.numel():
        same[rows] = (fa[rows] == fb[rows]).all(1)
    return same


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


def _sort_carrying(v: np.ndarray, low: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``v`` (N, D) sorted, with ``low`` ((N, D) non-negative integers < 2**bits) carried along:
    (sorted values as float64, exact up to ties; the carried integers, int64), both (N, D).

    No argsort: each integer is OR-ed into the low ``bits`` mantissa bits of its float64 value and the rows
    are sorted once by numpy's float64 sort (SIMD, ~2.5x faster than its argsort, and no gather after it).
    Where those bits are zero (always for float32 values, which leave 29 of the 52 zero) distinct values keep
    their order and equal ones stay adjacent: within one sign the carried bits move a value by less than the
    spacing of the values, and the zeros of either sign become tiny subnormals either side of 0. Otherwise
    the values are first truncated to their high bits (a monotone map): a row is kept if that merged no two
    distinct values (as many distinct values as its plain sort has), else it is redone by argsort + gathers.
    The carried bits are cleared again before the values are compared."""
    keep = -(1 << bits)
    exact = v.dtype in (np.float32, np.float16) and bits <= 29
    keyed = v.astype(np.float64)  # a copy (also of float64 rows): the sort is in place
    ints = keyed.view(np.int64)
    if not exact:
        exact = not (ints & ~keep).any()
        if not exact:
            ints &= keep
    ints |= low
    keyed.sort(axis=1)
    carried = ints & ~keep
    ints &= keep
    if not exact:
        plain = np.sort(v.astype(np.float64, copy=False), axis=1)
        merged = np.flatnonzero(_distinct(keyed) != _distinct(plain))
        if merged.size:  # values closer than ~2**(bits - 52) relative: sort these rows with argsort
            rows = v[merged].astype(np.float64, copy=False)
            order = np.argsort(rows, axis=1)
            keyed[merged] = np.take_along_axis(rows, order, 1)
            carried[merged] = np.take_along_axis(low[merged], order, 1)
    return keyed, carried


def _distinct(s: np.ndarray) -> np.ndarray:
    """Number of distinct values in each sorted row, (N,)."""
    return 1 + np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1)


class _Runs:
    """The runs of equal values in sorted rows (N, D): the run at positions i..j of a row has average 0-based
    rank (i + j) / 2, kept doubled as the integer i + j, so that all rank sums are exact in int64.

    Found in O(N D) after the sort, vectorised over the flattened rows (a row's first position never
    continues a run). Heavily tied rows (most positions continue a run, e.g. maps of 50 levels) keep every
    run; nearly untied ones only the runs of two or more, the rest of the ranks being the positions."""

    def __init__(self, s: np.ndarray):
        n, d = self.n, self.d = s.shape
        eq = np.empty((n, d), dtype=bool)
        eq[:, 0] = False
        np.equal(s[:, 1:], s[:, :-1], out=eq[:, 1:])
        flat_eq = eq.reshape(-1)
        self.dense = 2 * np.count_nonzero(flat_eq) > n * d
        if self.dense:
            self.start = np.flatnonzero(~flat_eq)  # flat first position of every run
            self.count = np.diff(self.start, append=n * d)
            first = self.start % d
            self.row_first = np.flatnonzero(first == 0)  # each row's first run
            self.value = 2 * first + self.count - 1
            self.constant = np.diff(self.row_first, append=self.start.size) == 1
            return
        self.tied = np.flatnonzero(flat_eq)  # positions that continue a run
        self.constant = np.full(n, d == 1)  # a single value is constant
        if self.tied.size:
            new = np.empty(self.tied.size, dtype=bool)
            new[0] = True
            np.not_equal(self.tied[1:], self.tied[:-1] + 1, out=new[1:])
            head = np.flatnonzero(new)
            self.start = self.tied[head] - 1
            self.count = np.diff(head, append=self.tied.size) + 1
            self.row, self.first = np.divmod(self.start, d)
            self.value = 2 * self.first + self.count - 1
            self.constant[self.row[self.count == d]] = True

    def ranks2(self) -> np.ndarray:
        """The doubled average rank of every sorted position, (N, D) int32."""
        n, d = self.n, self.d
        if self.dense:
            return np.repeat(self.value.astype(np.int32), self.count).reshape(n, d)
        r2 = np.empty((n, d), dtype=np.int32)
        r2[:] = np.arange(0, 2 * d, 2, dtype=np.int32)
        if self.tied.size:
            flat = r2.reshape(-1)
            flat[self.tied] = np.repeat(self.value, self.count - 1)
            flat[self.start] = self.value
        return r2

    def squares(self) -> np.ndarray:
        """The sum of the squared doubled ranks of each row, (N,) int64, from the runs alone."""
        if self.dense:
            return np.add.reduceat(self.count * self.value * self.value, self.row_first)
        d = self.d
        sq = np.full(self.n, 2 * (d - 1) * d * (2 * d - 1) // 3, dtype=np.int64)  # sum of (2 i)^2, i < D
        if self.tied.size:  # a run's (2 i)^2, i = first..last, become count * value^2
            cube = lambda m: m * (m + 1) * (2 * m + 1) // 6  # noqa: E731  sum of i^2 for i <= m
            last = self.first + self.count - 1
            np.add.at(sq, self.row, self.count * self.value * self.value - 4 * (cube(last) - cube(self.first - 1)))
        return sq

    def dot(self, x: np.ndarray) -> np.ndarray:
        """Sum over each row of ``x`` ((N, D) integers in the same sorted order) times the doubled ranks, (N,)
        int64; heavily tied rows by run sums, without the ranks."""
        if self.dense:
            per_run = np.add.reduceat(x.reshape(-1), self.start, dtype=np.int64)
            return np.add.reduceat(self.value * per_run, self.row_first)
        return np.einsum("ij,ij->i", x, self.ranks2(), dtype=np.int64)


def _spearman_numpy(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spearman of the rows of two (N, D) float arrays, (N,) float64, and which pairs have a constant row,
    (N,) bool; N D < 2**29.

    Two sorts and no argsort (``_sort_carrying``): a is sorted carrying its flat positions, its doubled ranks
    are scattered back to positions, and b is sorted carrying them, so both rank vectors come out in b's order
    and their products need no further permutation. With doubled ranks R (mean D - 1 whatever the ties),
    4 D cov = sum(Ra Rb) - D (D - 1)^2 and likewise the variances: all integers, exact in int64 for
    D <= 2**20 (sums < 4 D^3), so the correlation has one rounding step, no cancellation."""
    n, d = a.shape
    bits_a, bits_b = max(n * d - 1, 1).bit_length(), max(2 * d - 2, 1).bit_length()
    sa, pos = _sort_carrying(a, np.arange(n * d, dtype=np.int64).reshape(n, d), bits_a)
    runs_a = _Runs(sa)
    ra_at = np.empty(n * d, dtype=np.int32)
    ra_at[pos.reshape(-1)] = runs_a.ranks2().reshape(-1)
    sb, ra_b = _sort_carrying(b, ra_at.reshape(n, d), bits_b)
    runs_b = _Runs(sb)
    c = d * (d - 1) ** 2
    cov, var_a, var_b = runs_b.dot(ra_b) - c, runs_a.squares() - c, runs_b.squares() - c
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant row: 0 / 0, flagged as constant
        r = cov / np.sqrt(var_a.astype(np.float64) * var_b.astype(np.float64))
    return np.clip(r, -1, 1), runs_a.constant | runs_b.constant


def _host(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor as a numpy array: float32, float16 and float64 as they are, other dtypes as float64."""
    t = t.detach()
    return (t if t.dtype in (torch.float32, torch.float16, torch.float64) else t.double()).numpy()


_CHUNK = 1 << 16  # elements per block of rows: a block's arrays (~35 bytes an element) stay in a 2 MiB L2 cache


def _spearman_cpu(fa: torch.Tensor, fb: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spearman of two (N, D) CPU tensors (D <= 2**20) in numpy, in blocks of rows of ~``_CHUNK`` elements:
    (value, undefined, identical), each (N,), the identical and undefined pairs not yet set."""
    a, b = _host(fa), _host(fb)
    n, d = a.shape
    same = _same_rows(fa, fb).numpy()
    block = max(1, _CHUNK // d)
    parts = [_spearman_numpy(a[i:i + block], b[i:i + block]) for i in range(0, n, block)]
    r, constant = (np.concatenate(p) for p in zip(*parts))
    return r, (constant | np.isnan(r)) & ~same, same


def _top_k_mask_numpy(v: np.ndarray, k: int) -> np.ndarray:
    """``_top_k_mask`` of a (N, D) array on CPU: the k-th largest value by numpy's partition (O(D)), the
    values >= it, and, only in the rows where ties at it give more than k, the last surplus ones dropped."""
    n, d = v.shape
    kth = np.partition(v, d - k, axis=1)[:, d - k:d - k + 1]
    mask = v >= kth
    surplus = np.count_nonzero(mask, axis=1) - k
    rows = np.flatnonzero(surplus)
    if rows.size:  # ties at the k-th value: keep its first (count - surplus) positions
        at = v[rows] == kth[rows]
        keep = np.count_nonzero(at, axis=1) - surplus[rows]
        pos = np.flatnonzero(at)
        first = np.searchsorted(pos, np.arange(rows.size) * d)
        last = pos[first + keep - 1] % d  # the last kept position of each row
        mask[rows] &= (v[rows] > kth[rows]) | (np.arange(d) <= last[:, None])
    return mask


def _top_k_mask(v: torch.Tensor, k: int) -> torch.Tensor:
    """(N, D) bool: the k largest values of each row, ties at the k-th value broken by position (lower flat
    index first) -- the first k of a stable descending sort, found in O(D) from the k-th largest value
    (torch's topk; ``_top_k_mask_numpy`` on CPU) without sorting the row."""
    kth = v.topk(k, dim=1).values[:, -1:]
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
    fa, fb = _flat_rows(a, b, "spearman")
    if fa.device.type == "cpu" and fa.shape[1] <= 1 << 20:  # two numpy sorts, no argsort (_spearman_numpy)
        r, bad, same = _spearman_cpu(fa, fb)
        _warn_degenerate("spearman", bad, "a constant map has no ranks")
        r[bad], r[same] = np.nan, 1.0
        return torch.from_numpy(r)
    same = _same_rows(fa, fb)  # torch's sort (CUDA, or rows too long to carry ranks in the mantissa)
    (ra, constant_a), (rb, constant_b) = _ranks(fa.double()), _ranks(fb.double())
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
    fa, fb = _flat_rows(a, b, "topk_intersection")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise FragileError(f"topk_intersection: k must be an integer, got {k!r}")
    k = int(k)
    if not 0 < k <= fa.shape[1]:
        raise FragileError(f"k must be in 1..{fa.shape[1]} (the number of features), got {k}")
    if fa.device.type == "cpu":  # in the maps' own dtype (comparisons are exact in it)
        both = _top_k_mask_numpy(_host(fa), k) & _top_k_mask_numpy(_host(fb), k)
        return torch.from_numpy(np.count_nonzero(both, axis=1) / k)
    return (_top_k_mask(fa.double(), k) & _top_k_mask(fb.double(), k)).sum(1).double() / k


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
