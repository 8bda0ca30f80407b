"""Ghorbani Fig. 4: a test image before/after the attack, its top-3 helpful training images with their
influence values, and the scatter of influences before vs after."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fragile.reporting.panels import _plt, _show


def influence_figure(example, x_train, path: str | Path, eps: float) -> Path:
    """Save Ghorbani Fig. 4 to ``path`` (PNG) and return it.

    ``example`` is ``(x, x_adv, before, after, kept)``: a test image and its perturbed version, ``(C, H, W)`` in
    [0, 1], the helpfulness of every training image for it before and after the attack, ``(n_train,)`` each, and
    whether the label was kept. Row one shows the image and its three most helpful training images
    (``x_train: (n_train, C, H, W)``) with their values, row two the same after the attack of size ``eps`` (pixel
    units of 255); beside them the scatter of helpfulness before vs after.
    """
    plt = _plt()
    x, x_adv, before, after, kept = example
    fig, axes = plt.subplots(2, 5, figsize=(11, 4.6))
    for row, (img, vals, title) in enumerate(((x, before, "original"), (x_adv, after, f"eps {eps:g}"))):
        axes[row, 0].imshow(_show(img.detach()))
        axes[row, 0].set_title(title + ("" if kept or row == 0 else " (label changed)"), fontsize=8)
        for j, i in enumerate(np.argsort(-vals.numpy())[:3]):
            axes[row, j + 1].imshow(_show(x_train[i]))
            axes[row, j + 1].set_title(f"train #{i}: {float(vals[i]):.3g}", fontsize=7)
        axes[row, 4].axis("off")
    for ax in axes[:, :4].flat:
        ax.axis("off")
    sc = fig.add_subplot(1, 5, 5)
    sc.scatter(before.numpy(), after.numpy(), s=4)
    sc.set_xlabel("helpfulness before", fontsize=7)
    sc.set_ylabel("after", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
