"""Wang et al. 2020 Fig. 4 / Table 3 redrawn: robustness of the gradient maps of models trained with each
regulariser, against eps, beside their accuracy and training time per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fragile.metrics import topk_names
from fragile.reporting.panels import _plt, save


def training_comparison_figure(results: dict, path: str | Path) -> Path:
    """Mean Spearman, top-k intersection and cosine distance (Wang Fig. 4's metric) under attack vs eps
    (log2), one line per model; right: seconds per epoch, bars labelled with the test accuracy."""
    plt = _plt()
    models = results["models"]
    first = next(iter(models.values()))
    k_name = topk_names(first["per_eps"][next(iter(first["per_eps"]))])[0]
    keys = ("spearman", k_name, "cosine_distance")
    fig, axes = plt.subplots(1, len(keys) + 1, figsize=(14, 3.2))
    for name, row in models.items():
        eps = sorted(row["per_eps"], key=float)
        for ax, key in zip(axes, keys):
            ax.plot([float(e) for e in eps], [row["per_eps"][e][key] for e in eps], "o-", label=name)
    for ax, key in zip(axes, keys):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("eps (of 255)")
        ax.set_ylabel(f"{key.replace('_', ' ')} under attack")
    axes[0].legend(fontsize=6)
    names = list(models)
    bars = axes[-1].bar(np.arange(len(names)), [models[n]["seconds_per_epoch"] for n in names])
    for bar, n in zip(bars, names):
        axes[-1].annotate(f"acc {models[n]['test_accuracy']:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=7)
    axes[-1].set_xticks(np.arange(len(names)))
    axes[-1].set_xticklabels([n.replace("(", "\n(").replace(",", ",\n") for n in names], fontsize=5)
    axes[-1].set_ylabel("seconds per epoch")
    return save(fig, path)
