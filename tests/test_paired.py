"""Paired comparisons in a sweep's summary: per-image differences over the images both sides kept."""

from __future__ import annotations

import numpy as np
import pytest

from fragile.reporting.paired import attack_vs_control, paired, pairs_of
from fragile.reporting.summary import sweep_summary


def _row(image, attack, spearman, *, method="gradient", success=True, eps=8.0):
    return {"image": image, "image_id": f"img{image}", "attack": attack, "method": method, "defence": "none",
            "eps": eps, "label": 3, "success": int(success), "spearman": spearman if success else float("nan"), "seconds": 1.0}


def test_paired_difference_is_over_the_images_both_sides_kept():
    rng = np.random.default_rng(0)
    a_vals, b_vals = rng.uniform(size=12), rng.uniform(size=12)
    a = [_row(i, "topk", a_vals[i], success=i != 3) for i in range(12)]
    b = [_row(i, "random_sign", b_vals[i], success=i != 5) for i in range(1, 12)]  # image 0 missing on this side
    d = paired(a, b, "spearman")
    keep = [i for i in range(1, 12) if i not in (3, 5)]
    assert d.n == len(keep)
    assert d.mean == pytest.approx(float(np.mean(a_vals[keep] - b_vals[keep])))
    assert d.low <= d.mean <= d.high


def test_each_attack_is_compared_with_its_noise_control_before_the_random_sign_draw():
    rows = [_row(i, attack, v + i * 0.01) for i in range(6)
            for attack, v in (("manipulate", 0.2), ("manipulate_noise_control", 0.5), ("random_sign", 0.9), ("topk", 0.1))]
    comparisons = {r[1]: r for r in attack_vs_control(rows, ["spearman"])}
    assert set(comparisons) == {"manipulate - manipulate_noise_control", "topk - random_sign"}
    assert comparisons["manipulate - manipulate_noise_control"][3].startswith("-0.300 ")
    assert comparisons["topk - random_sign"][3].startswith("-0.800 ")


def test_an_attack_with_parameters_finds_its_noise_control():
    """Stored names carry parameters after the name: ``targeted(region=slic)`` and its control
    ``targeted_noise_control(region=slic)``; the control is no attack to compare with other attacks."""
    rows = [_row(i, attack, v) for i in range(4)
            for attack, v in (("targeted(region=slic)", 0.1), ("targeted_noise_control(region=slic)", 0.4),
                              ("topk(k=100)", 0.2), ("random_sign", 0.9))]
    comparisons = {r[1] for r in attack_vs_control(rows, ["spearman"])}
    assert comparisons == {"targeted(region=slic) - targeted_noise_control(region=slic)", "topk(k=100) - random_sign"}
    assert {r[0] for r in pairs_of(rows, ["spearman"], vary="attack")} == {"targeted(region=slic) - topk(k=100)"}


def test_series_and_attack_pairs_and_the_summary_shows_them():
    rows = [_row(i, attack, base + (0.3 if method == "ig" else 0.0), method=method) for i in range(5)
            for method in ("gradient", "ig") for attack, base in (("topk", 0.1), ("mass_center", 0.4), ("random_sign", 0.7))]
    series = pairs_of(rows, ["spearman"], vary="series")
    assert {r[0] for r in series} == {"gradient - ig"} and all(r[3].startswith("-0.300 ") for r in series)
    attacks = pairs_of(rows, ["spearman"], vary="attack")  # controls are not attacks to compare
    assert {(r[0], r[1]) for r in attacks} == {("mass_center - topk", "gradient"), ("mass_center - topk", "ig")}
    assert all(r[3].startswith("0.300 ") for r in attacks)
    text = sweep_summary(rows)
    assert "Images: 5, by predicted label 1 class, 5 images each" in text
    assert "each attack minus its control" in text and "series minus series" in text and "attack minus attack" in text
