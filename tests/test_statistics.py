"""Bootstrap intervals and paired comparisons (fragile.metrics.statistics), checked against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fragile.errors import FragileError
from fragile.metrics import Interval, bootstrap_ci, compare, paired_difference_ci


@pytest.mark.parametrize(("n", "dist"), [(16, "beta"), (50, "normal"), (200, "exponential")])
def test_bootstrap_ci_agrees_with_scipy_percentile_bootstrap(n, dist):
    """Our interval and scipy.stats.bootstrap(method='percentile') at 95% agree within Monte-Carlo error.

    Tolerance: each end is a 2.5% / 97.5% quantile of B resampled means. The bootstrap distribution of
    the mean is close to normal with sd s = std(x) / sqrt(n), whose density at those quantiles is
    phi(1.96) / s = 0.0584 / s, so the standard error of a quantile estimated from B draws is
    sqrt(0.025 * 0.975 / B) / (0.0584 / s) = 2.67 s / sqrt(B). The two estimates use independent seeds,
    so their difference has standard error sqrt(2) * 2.67 s / sqrt(B); we allow 5 of those (a 1-in-10^6
    false alarm per end for a normal error) to cover the non-normal shape at n = 16.
    """
    rng = np.random.default_rng(n)
    x = {"beta": lambda: rng.beta(2, 5, n), "normal": lambda: rng.normal(0.3, 1.0, n),
         "exponential": lambda: rng.exponential(1.0, n)}[dist]()
    B = 20_000
    ours = bootstrap_ci(x, level=0.95, n_resamples=B, seed=1)
    ref = stats.bootstrap((x,), np.mean, confidence_level=0.95, n_resamples=B, method="percentile",
                          rng=np.random.default_rng(2)).confidence_interval
    s = x.std() / np.sqrt(n)
    tol = 5 * np.sqrt(2) * 2.67 * s / np.sqrt(B)
    assert ours.mean == pytest.approx(x.mean(), abs=1e-12) and ours.n == n
    assert abs(ours.low - ref.low) < tol and abs(ours.high - ref.high) < tol
    assert ours.low < ours.mean < ours.high


def test_bootstrap_ci_at_another_level_agrees_with_scipy():
    """Same check at 80%: quantiles 0.1 / 0.9, density phi(1.28) / s = 0.175 / s, so the quantile standard
    error is sqrt(0.1 * 0.9 / B) * s / 0.175 = 1.71 s / sqrt(B); 5 standard errors of the difference."""
    x = np.random.default_rng(3).normal(size=40)
    B = 20_000
    ours = bootstrap_ci(x, level=0.8, n_resamples=B, seed=4)
    ref = stats.bootstrap((x,), np.mean, confidence_level=0.8, n_resamples=B, method="percentile",
                          rng=np.random.default_rng(5)).confidence_interval
    tol = 5 * np.sqrt(2) * 1.71 * (x.std() / np.sqrt(40)) / np.sqrt(B)
    assert abs(ours.low - ref.low) < tol and abs(ours.high - ref.high) < tol
    wide = bootstrap_ci(x, level=0.99, n_resamples=B, seed=4)
    assert wide.low < ours.low and wide.high > ours.high


def test_bootstrap_median_agrees_with_scipy_percentile_bootstrap():
    """statistic='median': the median itself, and an interval that agrees with scipy's percentile bootstrap of
    np.median. The bootstrap distribution of a median is discrete (its values are order statistics of x), so two
    estimates from independent draws may land on neighbouring order statistics: the tolerance is two of the largest
    gaps between consecutive sorted values in the central 60% of x."""
    x = np.random.default_rng(7).lognormal(size=51)
    B = 20_000
    ours = bootstrap_ci(x, n_resamples=B, seed=1, statistic="median")
    ref = stats.bootstrap((x,), np.median, confidence_level=0.95, n_resamples=B, method="percentile",
                          rng=np.random.default_rng(2)).confidence_interval
    xs = np.sort(x)
    tol = 2 * np.diff(xs[int(0.2 * x.size):int(0.8 * x.size)]).max()
    assert ours.mean == np.median(x) and ours.n == 51
    assert abs(ours.low - ref.low) <= tol and abs(ours.high - ref.high) <= tol
    assert ours.low < ours.mean < ours.high
    assert bootstrap_ci(x).mean == pytest.approx(x.mean())  # the default stays the mean
    with pytest.raises(FragileError, match="unknown statistic"):
        bootstrap_ci(x, statistic="mode")


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    """400 normal samples of n = 50 with true mean 0: the percentile interval covers 0 in about 94% of
    them (it undercovers slightly at small n). The binomial standard error of the rate is 0.011, so
    [0.90, 0.98] is a band of about 3.5 standard errors around 0.94."""
    rng = np.random.default_rng(6)
    covered = [bootstrap_ci(rng.normal(size=50), n_resamples=1000, seed=i) for i in range(400)]
    rate = np.mean([c.low <= 0 <= c.high for c in covered])
    assert 0.90 <= rate <= 0.98


def test_bootstrap_ci_hand_cases():
    const = bootstrap_ci(np.full(12, 0.3))
    assert const.mean == pytest.approx(0.3, abs=1e-15) and const.high - const.low == pytest.approx(0, abs=1e-15)
    with_nan = bootstrap_ci([0.1, np.nan, 0.5, np.nan, 0.9])
    assert with_nan.n == 3 and with_nan.mean == pytest.approx(0.5)
    assert with_nan == bootstrap_ci([0.1, 0.5, 0.9])  # NaNs are ignored, same seed, same interval
    assert 0.1 <= with_nan.low <= with_nan.high <= 0.9
    empty = bootstrap_ci([np.nan, np.nan])
    assert empty.n == 0 and np.isnan([empty.mean, empty.low, empty.high]).all() and empty.text() == "n/a"
    one = bootstrap_ci([np.nan, 0.7])
    assert (one.n, one.mean) == (1, 0.7) and np.isnan([one.low, one.high]).all()
    assert one.text() == "0.700 (n = 1)" and not one.excludes_zero()
    assert bootstrap_ci([0.41, 0.35, 0.47], seed=3) == bootstrap_ci([0.41, 0.35, 0.47], seed=3)  # seeded
    assert bootstrap_ci([0.25, 0.5]).text(".2f") == "0.38 [0.25, 0.50]"
    assert str(Interval(0.999, 0.998, 1.0, 9)) == "0.999 [0.998, 1.000]"  # one decimal set for all three
    assert str(Interval(1.23e-4, 1e-4, 1.5e-4, 5)) == "0.000123 [0.000100, 0.000150]"
    assert str(Interval(5.5e-18, 0.0, 1.46e-17, 61)) == "5.50e-18 [0.00e+00, 1.46e-17]"  # float rounding, not 19 decimals
    assert str(Interval(0.0, 0.0, 0.0, 4)) == "0.000 [0.000, 0.000]"
    assert str(Interval(12.34, 10.05, 14.5, 3)) == "12.3 [10.1, 14.5]"
    with pytest.raises(FragileError, match="one-dimensional"):
        bootstrap_ci(np.zeros((2, 3)))
    with pytest.raises(FragileError, match="level"):
        bootstrap_ci([1.0, 2.0], level=95)


def test_paired_difference_uses_the_pairing_and_drops_incomplete_pairs():
    """Two methods whose per-image values vary a lot but differ by exactly 0.02 on every image: unpaired
    intervals overlap, the paired one is [0.02, 0.02]."""
    rng = np.random.default_rng(7)
    b = rng.uniform(0, 1, 16)
    a = b + 0.02
    assert bootstrap_ci(a).low < bootstrap_ci(b).high  # unpaired: overlapping intervals
    d = paired_difference_ci(a, b)
    assert d.n == 16 and d.low == pytest.approx(0.02) and d.high == pytest.approx(0.02)
    a[3], b[5] = np.nan, np.nan
    d = paired_difference_ci(a, b)
    assert d.n == 14 and d.mean == pytest.approx(0.02)
    shuffled = paired_difference_ci(a, rng.permutation(b))
    assert shuffled.high - shuffled.low > 0.1  # pairing broken: wide
    with pytest.raises(FragileError, match="equal lengths"):
        paired_difference_ci([1.0, 2.0], [1.0])


def test_compare_names_a_winner_only_when_the_interval_excludes_zero():
    rng = np.random.default_rng(8)
    b = rng.uniform(0.2, 0.8, 16)
    v = compare(b + 0.02 + rng.normal(0, 0.005, 16), b, names=("gradient", "IG"))
    assert v.distinguishable and v.winner == "gradient" and v.difference.low > 0
    assert v.text.startswith("gradient is more robust than IG (mean difference 0.0") and "95% CI [" in v.text
    assert v.text.endswith("n = 16)")
    noisy = compare(b + 0.02 + rng.normal(0, 0.2, 16), b, names=("gradient", "IG"))
    assert not noisy.distinguishable and noisy.winner is None
    assert noisy.text.startswith("gradient and IG are not distinguishable at n = 16 (difference ")
    flipped = compare(b, b + 0.05, names=("A", "B"))  # B higher and higher is better: B wins
    assert flipped.winner == "B" and flipped.text.startswith("B is more robust than A (mean difference 0.050")
    shift = compare(b, b + 0.05, higher_is_better=False, names=("A", "B"))  # e.g. center_shift: lower wins
    assert shift.winner == "A" and shift.text.startswith("A is more robust than B (mean difference -0.050")
    single = compare([0.5, np.nan], [0.1, 0.2], names=("A", "B"))
    assert not single.distinguishable and "at n = 1" in single.text and "not available" in single.text
