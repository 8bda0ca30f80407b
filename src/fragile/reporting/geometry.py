"""Figures of the geometry analysis (Ghorbani Fig. 6a, Dombrowski Fig. 4-style curvature vs beta)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fragile.reporting.panels import _plt, save


CONTROL_LABELS = {"random_pairs": "random direction pairs", "gradient_random": "score gradient vs random vector"}


def angle_histogram(angles, path: str | Path, controls: dict | None = None) -> Path:
    """Ghorbani Fig. 6a: the fragile-direction angles (folded into [0, 90] deg) and, if given, the chance
    controls (``controls[name]``: signed angles in [0, 180], folded the same way) with the lower edge of
    each control's 5-95% band; the title says which fraction of the angles lies beyond it."""
    from fragile.geometry.directions import beyond_chance

    plt = _plt()
    a = np.asarray(angles, dtype=float)
    folded = {name: 90.0 - np.abs(np.asarray(c, dtype=float) - 90.0) for name, c in (controls or {}).items()}
    low = min([a.min(), *[c.min() for c in folded.values()]]) if a.size else 0.0
    bins = np.linspace(max(0.0, np.floor(low) - 1.0), 90.0, 46)
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.hist(a, bins=bins, color="tab:blue", density=True, label=f"fragile directions (n = {a.size})")
    title = f"median {np.median(a):.1f} deg, n = {a.size}"
    for (name, c), color in zip(folded.items(), ("tab:orange", "tab:green")):
        ax.hist(c, bins=bins, histtype="step", density=True, color=color, lw=1.2,
                label=f"control: {CONTROL_LABELS.get(name, name)} (n = {c.size})")
        test = beyond_chance(a, controls[name])
        ax.axvline(90.0 - test["half_width_deg"], color=color, ls="--", lw=0.8)
        title += f"\n{test['fraction_beyond']:.0%} beyond the {CONTROL_LABELS.get(name, name)} 5-95% band ({test['verdict']})"
    ax.set_xlabel("angle between explanation- and prediction-fragile directions (deg)", fontsize=7)
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=6)
    if folded:
        ax.legend(fontsize=5, loc="upper left")
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
