"""Example panels: image / perturbed image / map before / map after (Ghorbani Fig. 1, Dombrowski Fig. 2)."""

from __future__ import annotations

from pathlib import Path

from fragile.attacks.result import AttackResult
from fragile.metrics import topk_names


def _plt():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("figures need matplotlib: pip install 'fragile[report]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path) -> Path:
    """Write a figure as PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return Path(path)


def _show(t):
    return t.permute(1, 2, 0).clamp(0, 1).numpy() if t.shape[0] == 3 else t[0].numpy()


def attack_panel(result: AttackResult, path: str | Path, n: int = 4, class_names=None) -> Path:
    """Save a grid with one row per image: original, perturbed, map before, map after."""
    plt = _plt()
    n = min(n, result.x.shape[0])
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), squeeze=False)
    def name(c):
        return class_names[c] if class_names else str(c)

    metric_k = next(iter(topk_names(result.metrics)), None)
    for i in range(n):
        img, adv = result.x[i].detach().cpu(), result.x_adv[i].detach().cpu()
        axes[i, 0].imshow(_show(img), cmap=None if img.shape[0] == 3 else "gray")
        axes[i, 0].set_title(f"original: {name(int(result.label[i]))}", fontsize=7)
        axes[i, 1].imshow(_show(adv), cmap=None if img.shape[0] == 3 else "gray")
        status = name(int(result.label_adv[i])) if bool(result.success[i]) else "no qualifying iterate"
        axes[i, 1].set_title(f"eps {result.eps:g}: {status}", fontsize=7)
        axes[i, 2].imshow(result.maps[i].detach().cpu().numpy(), cmap="inferno")
        axes[i, 2].set_title(f"{result.method} map", fontsize=7)
        axes[i, 3].imshow(result.maps_adv[i].detach().cpu().numpy(), cmap="inferno")
        extra = f"{metric_k.replace('_intersection', '')} {float(result.metrics[metric_k][i]):.2f}, " if metric_k else ""
        axes[i, 3].set_title(f"after {result.attack}: {extra}rho {float(result.metrics['spearman'][i]):.2f}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
