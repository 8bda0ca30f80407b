"""Transfer figures (Wang et al. 2020 Fig. 5, Dombrowski et al. 2019 Fig. 4): how much an attack on one
explanation moves other explanations, as bars per explanation and as example maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fragile.reporting.panels import _plt, save

BARS = ("spearman_to_original", "pcc_to_original", "pcc_to_target")


def transfer_bars(result: dict, path: str | Path) -> Path:
    """Grouped bars: per explanation of the perturbed images, its similarity to its own original map and
    (manipulate) to the attack's target map; the attacked explanation comes first. Where the run drew an
    equal-norm random-noise control (``*_control``), a hatched bar beside each shows the same similarity
    under that noise: the attack's effect is the gap between the two."""
    plt = _plt()
    names = list(result["targets"])
    first = result["targets"][names[0]]
    bars = [(k, False) for k in BARS if k in first]
    bars = [b for k, _ in bars for b in ([(k, False), (k, True)] if f"{k}_control" in first else [(k, False)])]
    fig, ax = plt.subplots(figsize=(1.4 + 1.3 * len(names), 3.2))
    width = 0.8 / len(bars)
    colors = {}
    for j, (key, control) in enumerate(bars):
        values = [result["targets"][n].get(f"{key}_control" if control else key, np.nan) for n in names]
        color = colors.setdefault(key, f"C{len(colors)}")
        ax.bar(np.arange(len(names)) + j * width, values, width, color=color, alpha=0.45 if control else 1.0,
               hatch="//" if control else None, edgecolor=color if control else None,
               label=key.replace("_", " ") + (" (equal-norm noise)" if control else ""))
    ax.set_xticks(np.arange(len(names)) + width * (len(bars) - 1) / 2)
    ax.set_xticklabels([n.replace("(", "\n(") for n in names], fontsize=6)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_title(f"{result['attack']} attack on {names[0]} at eps {result['eps']:g} "
                 f"({result['successes']}/{result['images']} images)", fontsize=8)
    ax.legend(fontsize=6)
    return save(fig, path)


def transfer_map_grid(examples: dict, path: str | Path, source: str) -> Path:
    """One row per explanation: for the first image, map of x, map of x_adv (and the target map)."""
    plt = _plt()
    names = list(examples)
    has_target = "target_map" in examples[source]
    cols = 3 if has_target else 2
    fig, axes = plt.subplots(len(names), cols, figsize=(2.0 * cols, 1.9 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        panels = [examples[name]["map_before"][0], examples[name]["map_after"][0]]
        titles = [f"{name}\noriginal", "perturbed"]
        if has_target:
            panels.append(examples[source]["target_map"][0])
            titles.append("target")
        for ax, m, title in zip(axes[i], panels, titles):
            ax.imshow(m, cmap="inferno")
            ax.set_title(title, fontsize=6)
            ax.axis("off")
    return save(fig, path)
