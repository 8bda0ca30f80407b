"""Pixel-flipping curves (Dombrowski Fig. 7) and the robustness-vs-faithfulness scatter."""

from __future__ import annotations

from pathlib import Path

from fragile.reporting.panels import _plt, save


def deletion_curves(results: dict, path: str | Path) -> Path:
    """Save Dombrowski Fig. 7 to ``path`` (PNG): the accuracy against the fraction of pixels set to the baseline,
    one line per method (random order dashed), each labelled with its deletion AUC. ``results``: the dict of
    :func:`fragile.experiments.faithfulness.run_faithfulness`. Returns ``path``.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, acc in results["accuracy_curves"].items():
        auc = results["methods"][name]["deletion_auc_accuracy"]
        ax.plot(results["fractions"], acc, "--" if name == "random" else "-", label=f"{name} (AUC {auc:.3f})")
    ax.set_xlabel(f"ratio of pixels set to {results['baseline']}")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=6)
    return save(fig, path)


def robustness_vs_faithfulness(results: dict, path: str | Path) -> Path:
    """x: deletion AUC (lower = more faithful), y: top-k intersection under attack (higher = more robust)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, row in results["methods"].items():
        key = next((k for k in row if k.endswith("_under_topk_attack")), None)
        if key is None:
            ax.axvline(row["deletion_auc_accuracy"], color="gray", ls="--", lw=0.8)
            ax.text(row["deletion_auc_accuracy"], 0.02, " random order", fontsize=6, color="gray")
            continue
        ax.scatter(row["deletion_auc_accuracy"], row[key])
        ax.annotate(name, (row["deletion_auc_accuracy"], row[key]), fontsize=6)
    ax.set_xlabel("deletion AUC of accuracy (lower = more faithful)")
    ax.set_ylabel("top-k intersection under attack (higher = more robust)")
    return save(fig, path)
