"""Paired comparisons of a sweep's rows: the numbers a verdict rests on.

A claim "attack A is stronger than its baseline" or "method A is more robust than method B" is read from
the mean per-image difference over the images both sides have (same image id, both label-preserving),
with its 95% percentile-bootstrap interval (``fragile.metrics.statistics.paired_difference_ci``); only an
interval that excludes 0 supports the claim. Two kinds of comparison, one table each:

- every attack minus its control on the same images, method, defence and eps (:data:`CONTROLS`: an
  attack's equal-norm noise control where the store has one, else the single random-sign draw);
- every pair of series (method + defence) under the same attack and eps, and every pair of attacks on
  the same series and eps (:func:`pairs_of`);
- the same (series, attack, eps) in two runs under other settings, e.g. a cheaper step schedule against the
  paper's (:func:`settings_pairs`).
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import numpy as np

from fragile.experiments.controls import SUFFIX
from fragile.metrics.statistics import Interval, paired_difference_ci
from fragile.reporting.figures import group_rows, image_id, iterations_text, value

#: The control an attack is compared with, in order of preference, given the attack's name as stored
#: (``name`` or ``name(params)``): its own equal-norm random-noise control (``name_noise_control(params)``),
#: else Ghorbani's random-sign baseline.
CONTROLS = (lambda attack: _base(attack) + SUFFIX + attack[len(_base(attack)):], lambda attack: "random_sign")
#: Attacks that are controls themselves (never compared with a control).
CONTROL_ATTACKS = ("random_sign", "random_sign_search")


def _base(attack: str) -> str:
    """The attack's name without its parameters: ``targeted(region=slic)`` -> ``targeted``."""
    return attack.split("(", 1)[0]


def is_control(attack: str) -> bool:
    """Whether a stored attack name is a control (random sign, or an equal-norm noise control)."""
    return _base(attack) in CONTROL_ATTACKS or _base(attack).endswith(SUFFIX)


def _by_image(rows) -> dict:
    """``{image id: row}`` of one group of rows."""
    return {image_id(r): r for r in rows}


def paired(a_rows, b_rows, metric: str) -> Interval:
    """Mean of ``metric(a) - metric(b)`` over the images in both groups where both succeeded, with its
    95% bootstrap interval (``n`` = those images)."""
    a, b = _by_image(a_rows), _by_image(b_rows)
    common = sorted(set(a) & set(b), key=str)

    def values(side):
        return np.array([value(side[i], metric) if side[i]["success"] else np.nan for i in common], dtype=float)

    return paired_difference_ci(values(a), values(b))


def attack_vs_control(rows, metrics) -> list[list]:
    """Rows ``[series, "attack - control", eps, *cells]`` of every non-control attack minus its control
    (:data:`CONTROLS`), one interval text per metric (``n/a`` where a side lacks the metric)."""
    groups = group_rows(rows)
    out = []
    for (name, attack, eps), rs in sorted(groups.items(), key=str):
        if is_control(attack):
            continue
        control = next((c(attack) for c in CONTROLS if (name, c(attack), eps) in groups), None)
        if control is None:
            continue
        cs = groups[(name, control, eps)]
        out.append([name, f"{attack} - {control}", eps,
                    *(_cell(rs, cs, m) for m in metrics)])
    return out


def pairs_of(rows, metrics, *, vary: str) -> list[list]:
    """Rows ``["A - B", fixed, eps, *cells]`` of every pair that differs only in ``vary``: 'series' (method +
    defence; ``fixed`` = the attack) or 'attack' (the non-control attacks; ``fixed`` = the series)."""
    groups = group_rows(rows)
    by_setting = defaultdict(dict)
    for (name, attack, eps), rs in groups.items():
        if vary == "attack" and is_control(attack):
            continue
        fixed, varied = (attack, name) if vary == "series" else (name, attack)
        by_setting[(fixed, eps)][varied] = rs
    out = []
    for (fixed, eps), group in sorted(by_setting.items(), key=str):
        for a, b in combinations(sorted(group), 2):
            out.append([f"{a} - {b}", fixed, eps, *(_cell(group[a], group[b], m) for m in metrics)])
    return out


def settings_pairs(rows, other_rows, metrics) -> list[list]:
    """Rows ``[series, attack, eps, iterations, s/image, *cells]`` for every (series, attack, eps) that both
    ``rows`` and ``other_rows`` (two runs of one experiment under other settings) hold: per metric ``rows`` minus
    ``other_rows`` paired per image (:func:`paired`); iterations and mean seconds per image as ``'ours / other'``."""
    groups, others = group_rows(rows), group_rows(other_rows)
    out = []
    for key in sorted(set(groups) & set(others), key=str):
        a, b = groups[key], others[key]
        secs = f"{np.mean([r['seconds'] for r in a]):.3g} / {np.mean([r['seconds'] for r in b]):.3g}"
        out.append([*key, f"{iterations_text(a)} / {iterations_text(b)}", secs, *(_cell(a, b, m) for m in metrics)])
    return out


def _cell(a_rows, b_rows, metric: str) -> str:
    if not any(metric in r for r in a_rows) or not any(metric in r for r in b_rows):
        return "n/a"
    d = paired(a_rows, b_rows, metric)
    return f"{d.text()} (n = {d.n})" if d.n else "n/a"
