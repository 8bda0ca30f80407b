"""Means with percentile-bootstrap confidence intervals, and paired comparisons of two methods.

Every number a report shows is a mean over images with a 95% interval from these functions, and a
verdict "A is more robust than B" is only written when the paired interval of the difference excludes 0.

Conventions (Efron & Tibshirani 1993, ch. 13, the percentile interval):

- NaN values are ignored (a failed attack stores NaN metrics); ``n`` is the number of values used.
- ``n = 0``: mean, low and high are NaN.
- ``n = 1``: the mean is the value and low = high = NaN. A bootstrap of one value resamples it every
  time and would claim a zero-width interval, i.e. certainty from a single image; we report "no interval".
- Resampling is vectorised: one ``(n_resamples, n)`` index draw from ``numpy.random.default_rng(seed)``,
  the mean of each row, then the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (numpy's default
  linear interpolation) of those means. The same seed gives the same interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fragile.errors import FragileError


class Interval(NamedTuple):
    """The mean of ``n`` values and its bootstrap interval ``[low, high]`` at ``level``."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def excludes_zero(self) -> bool:
        """Whether the interval lies strictly on one side of 0 (False when its bounds are NaN)."""
        return bool(self.low > 0 or self.high < 0)  # False when the bounds are NaN

    def text(self, fmt: str | None = None) -> str:
        """``0.412 [0.353, 0.470]``; ``0.412 (n = 1)`` without an interval; ``n/a`` without values. By
        default all three get the decimals that give the largest of them 3 significant digits, and at
        least 3 decimals below 2 (similarities near 1: ``0.999 [0.998, 1.000]``); below 1e-4 in scientific
        notation with 3 significant digits (``5.50e-18 [0.00e+00, 1.46e-17]``, float rounding)."""
        if self.n == 0:
            return "n/a"
        if fmt is None:
            top = max((abs(v) for v in (self.mean, self.low, self.high) if np.isfinite(v)), default=0.0)
            fmt = (".2e" if 0 < top < 1e-4 else
                   f".{max(3 if top < 2 else 0, 2 - int(np.floor(np.log10(top))) if top > 0 else 3)}f")
        if not np.isfinite(self.low):
            return f"{self.mean:{fmt}} (n = {self.n})"
        return f"{self.mean:{fmt}} [{self.low:{fmt}}, {self.high:{fmt}}]"

    def __str__(self) -> str:
        return self.text()


def _clean(values, name: str = "values") -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim > 1:
        raise FragileError(f"{name} must be one-dimensional (one value per image), got shape {x.shape}")
    return x.reshape(-1)


def _check(level: float, n_resamples: int) -> None:
    if not 0 < level < 1:
        raise FragileError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise FragileError(f"n_resamples must be positive, got {n_resamples}")


#: What :func:`bootstrap_ci` can estimate: name -> function of an array along ``axis``.
STATISTICS = {"mean": np.mean, "median": np.median}


def bootstrap_ci(values, *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0,
                 statistic: str = "mean") -> Interval:
    """Mean (or ``statistic='median'``; :data:`STATISTICS`) of the non-NaN ``values: (n,)`` with its
    percentile-bootstrap interval (see the module docstring for n = 0 and n = 1); the returned ``Interval.mean``
    holds the statistic asked for."""
    _check(level, n_resamples)
    if statistic not in STATISTICS:
        raise FragileError(f"unknown statistic {statistic!r}; choose one of {sorted(STATISTICS)}")
    stat = STATISTICS[statistic]
    x = _clean(values)
    x = x[~np.isnan(x)]
    n = int(x.size)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, level)
    centre = float(stat(x))
    if n == 1:
        return Interval(centre, float("nan"), float("nan"), 1, level)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    resampled = stat(x[idx], axis=1)
    low, high = np.quantile(resampled, [(1 - level) / 2, (1 + level) / 2])
    return Interval(centre, float(low), float(high), n, level)


def paired_difference_ci(a, b, *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean of ``a - b`` over paired samples ``a, b: (n,)`` (entry i of both belongs to the same image),
    with its bootstrap interval; pairs with a NaN on either side are dropped and ``n`` counts the rest."""
    a, b = _clean(a, "a"), _clean(b, "b")
    if a.shape != b.shape:
        raise FragileError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return bootstrap_ci(a[keep] - b[keep], level=level, n_resamples=n_resamples, seed=seed)


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`compare`. ``difference`` is ``winner - loser`` when one is distinguishable
    (then ``winner`` is its name), else ``a - b`` and ``winner`` is None."""

    names: tuple[str, str]
    difference: Interval
    winner: str | None
    text: str

    @property
    def distinguishable(self) -> bool:
        """Whether the comparison names a winner (its paired interval excludes 0)."""
        return self.winner is not None

    def __str__(self) -> str:
        return self.text


def compare(a, b, *, higher_is_better: bool = True, names: tuple[str, str] = ("A", "B"), level: float = 0.95,
            n_resamples: int = 2000, seed: int = 0, better: str = "more robust", fmt: str = ".3f") -> Verdict:
    """Paired comparison of ``a, b: (n,)`` (one value per image for two methods). The verdict names a
    winner only when the bootstrap interval of the mean paired difference excludes 0:

    "A is more robust than B (mean difference d, 95% CI [lo, hi], n = 16)", d = winner - loser, or
    "A and B are not distinguishable at n = 16 (difference d, 95% CI [lo, hi])", d = a - b.
    """
    d = paired_difference_ci(a, b, level=level, n_resamples=n_resamples, seed=seed)
    pct = f"{level * 100:g}% CI"
    first, second = names
    if d.excludes_zero():
        a_wins = (d.mean > 0) == higher_is_better
        if not a_wins:
            first, second = second, first
            d = Interval(-d.mean, -d.high, -d.low, d.n, d.level)
        text = (f"{first} is {better} than {second} (mean difference {d.mean:{fmt}}, {pct} "
                f"[{d.low:{fmt}}, {d.high:{fmt}}], n = {d.n})")
        return Verdict((names[0], names[1]), d, first, text)
    ci = f"[{d.low:{fmt}}, {d.high:{fmt}}]" if d.n >= 2 else "not available"
    text = f"{first} and {second} are not distinguishable at n = {d.n} (difference {d.mean:{fmt}}, {pct} {ci})"
    return Verdict((names[0], names[1]), d, None, text)
