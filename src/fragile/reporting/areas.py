"""Wang et al. Fig. 3 / Table 2 per image: the area under a metric over log2 eps, with intervals and pairs.

Wang et al. compare methods by the area under a robustness metric against log eps. Taken from the mean curve it is
one number without an interval; here every image gets its own area (the normalised trapezoid area of its values
at the series' eps, ``fragile.metrics.auc_log_eps(normalize=True)``: the curve's mean height), so the table gives
the mean area over images with its 95% bootstrap interval, and two methods are compared by the paired per-image
difference of their areas (``fragile.metrics.statistics.paired_difference_ci``). An image has an area only where
its attack kept the label at every eps of the series: a failure at any eps leaves its curve incomplete, and it is
left out (never counted as robust).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np

from fragile.metrics.curves import auc_log_eps
from fragile.metrics.statistics import Interval, bootstrap_ci, paired_difference_ci
from fragile.reporting.figures import group_rows, image_id, value


def image_areas(rows, metric: str) -> dict[tuple[str, str], dict]:
    """``{(series, attack): {image id: area}}``: each image's normalised area under ``metric`` over log2 eps, for the
    images that succeeded (and have the metric) at every eps of their series; series with fewer than two eps are
    left out."""
    curves: dict[tuple[str, str], dict[float, dict]] = defaultdict(dict)
    for (name, attack, eps), rs in group_rows(rows).items():
        curves[(name, attack)][float(eps)] = {image_id(r): (value(r, metric) if r["success"] else np.nan) for r in rs}
    out = {}
    for key, by_eps in curves.items():
        eps = sorted(by_eps)
        if len(eps) < 2:
            continue
        images = sorted(set.intersection(*(set(by_eps[e]) for e in eps)), key=str)
        values = np.array([[by_eps[e][i] for i in images] for e in eps], dtype=float)
        complete = ~np.isnan(values).any(0)
        areas = auc_log_eps(eps, values[:, complete], normalize=True).numpy() if complete.any() else []
        out[key] = dict(zip([i for i, c in zip(images, complete) if c], map(float, areas)))
    return out


def area_intervals(rows, metric: str) -> dict[tuple[str, str], Interval]:
    """``{(series, attack): mean area over images with its 95% bootstrap interval}`` (:func:`image_areas`)."""
    return {key: bootstrap_ci(np.array(list(a.values()), dtype=float))
            for key, a in image_areas(rows, metric).items()}


def area_pairs(rows, metric: str) -> dict[tuple[str, str, str], Interval]:
    """``{(series A, series B, attack): mean of area(A) - area(B) over the images both have, 95% interval}`` for
    every pair of series under the same attack."""
    areas = image_areas(rows, metric)
    by_attack = defaultdict(dict)
    for (name, attack), a in areas.items():
        by_attack[attack][name] = a
    out = {}
    for attack, series in sorted(by_attack.items()):
        for a, b in combinations(sorted(series), 2):
            common = sorted(set(series[a]) & set(series[b]), key=str)
            out[(a, b, attack)] = paired_difference_ci(np.array([series[a][i] for i in common], dtype=float),
                                                       np.array([series[b][i] for i in common], dtype=float))
    return out


def _cell(interval: Interval | None) -> str:
    return "n/a" if interval is None or interval.n == 0 else f"{interval.text()} (n = {interval.n})"


def area_tables(rows, metrics) -> tuple[list[list], list[list]]:
    """(rows ``[series, attack, *cells]`` of the mean areas, rows ``["A - B", attack, *cells]`` of the paired
    differences), one interval text per metric (``n/a`` where a side has no complete image)."""
    intervals = {m: area_intervals(rows, m) for m in metrics}
    pairs = {m: area_pairs(rows, m) for m in metrics}
    keys = sorted(set().union(*(i.keys() for i in intervals.values())))
    pair_keys = sorted(set().union(*(p.keys() for p in pairs.values())), key=lambda k: (k[2], k[0], k[1]))
    means = [[name, attack, *(_cell(intervals[m].get((name, attack))) for m in metrics)] for name, attack in keys]
    diffs = [[f"{a} - {b}", attack, *(_cell(pairs[m].get((a, b, attack))) for m in metrics)] for a, b, attack in pair_keys]
    return means, diffs
