"""Figures of the geometry analysis (Ghorbani Fig. 6a, Dombrowski Fig. 4-style curvature vs beta)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fragile.reporting.panels import _plt, save


def angle_histogram(angles, path: str | Path) -> Path:
    plt = _plt()
    a = np.asarray(angles, dtype=float)
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.hist(a, bins=np.linspace(0, 90, 31), color="tab:blue")
    ax.set_xlabel("angle between explanation- and prediction-fragile directions (deg)")
    ax.set_ylabel("images")
    ax.set_title(f"median {np.median(a):.1f} deg, n = {a.size}", fontsize=9)
    return save(fig, path)


def curvature_vs_beta(betas, curvatures, path: str | Path) -> Path:
    """``curvatures``: (B, N) max principal curvature per beta and image."""
    plt = _plt()
    c = np.asarray(curvatures, dtype=float)
    fig, ax = plt.subplots(figsize=(4, 3))
    med = np.median(c, axis=1)
    lo, hi = np.percentile(c, 10, axis=1), np.percentile(c, 90, axis=1)
    ax.fill_between(betas, lo, hi, alpha=0.3, label="10-90th percentile")
    ax.plot(betas, med, "o-", label="median")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("softplus beta")
    ax.set_ylabel("max principal curvature")
    ax.legend(fontsize=7)
    return save(fig, path)


def lipschitz_bars(table: dict[str, dict[str, float]], path: str | Path) -> Path:
    """``table[method] = {"sampled": median, "adversarial": median}``."""
    plt = _plt()
    names = list(table)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.bar(x - 0.2, [table[n]["sampled"] for n in names], 0.4, label="sampled")
    ax.bar(x + 0.2, [table[n]["adversarial"] for n in names], 0.4, label="adversarial")
    ax.set_xticks(x, names, fontsize=7)
    ax.set_ylabel("local Lipschitz estimate (median)")
    ax.legend(fontsize=7)
    return save(fig, path)
