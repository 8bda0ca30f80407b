"""Choosing the softplus surrogate for a model: ``beta="auto"``.

The attack differentiates the softplus(beta) version of a ReLU network (Dombrowski eq. 8). Which beta
is usable depends on the model's pre-activation scale, not on a constant: on SqueezeNet (inputs 0-255)
beta = 10 is practically a ReLU (its maps agree with the ReLU maps to PCC 0.999), so the second
derivative the attack needs nearly vanishes; on the CIFAR ResNet-20 (inputs normalised) beta = 1 gives
maps unrelated to the model's (PCC -0.03) and other labels.

Agreement grows with beta toward the ReLU limit, so "the best-agreeing beta" is always the largest one,
the least useful to an attack. The rule here is the smoothest faithful surrogate:

    beta* = min { beta in grid : labels of softplus_beta(f) == labels of f on every probe image,
                                 mean_n PCC(s_beta(x_n), s(x_n)) >= threshold }

with s the gradient saliency (normalised |grad| summed over channels) of the original model and s_beta
that of the surrogate, on a few clean images. The grid is log-spaced, 10^-2 ... 10^3 in half decades.
Measured here (8 images): ResNet-20 -> 10, SqueezeNet v1.0 -> 0.3 at threshold 0.8.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.models.outputs import OUTPUT_KEY, match_input, model_output
from fragile.models.smooth import softplus

#: 10^-2 ... 10^3 in half decades
GRID = tuple(round(10 ** (e / 2), 4) for e in range(-4, 7))
THRESHOLD = 0.8
PROBE_IMAGES = 8


@dataclass
class BetaChoice:
    """The chosen beta and, per grid value, the mean map PCC and the fraction of labels kept."""

    beta: float | None
    qualified: bool
    agreement: dict[float, float] = field(default_factory=dict)
    labels_kept: dict[float, float] = field(default_factory=dict)
    images: int = 0

    def describe(self) -> str:
        """One sentence for logs and results: the beta chosen, from how many images, and why."""
        if self.beta is None:
            return ("no surrogate (auto: the softplus swap leaves this model's outputs unchanged, it has no "
                    "piecewise-linear activation to smooth; it is differentiated as it is)")
        how = (f"the smallest beta whose gradient maps agree with the model's (mean PCC "
               f"{self.agreement[self.beta]:.3f} >= {THRESHOLD}) and that keeps every label")
        if not self.qualified:
            how = (f"no beta reached map PCC {THRESHOLD} with every label kept; the best-agreeing one "
                   f"(PCC {self.agreement[self.beta]:.3f}, labels kept {self.labels_kept[self.beta]:.0%})")
        return f"surrogate beta = {self.beta:g} (auto, from {self.images} clean images: {how})"


# Per model *object* (weakly held, so an entry dies with its model: an ``id`` can be reused by a new model that
# shares the old one's weights but not its behaviour), then per weights, images and settings.
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, BetaChoice]] = weakref.WeakKeyDictionary()


def choose_beta(model: nn.Module, x: torch.Tensor, *, grid=GRID, threshold: float = THRESHOLD,
                images: int = PROBE_IMAGES, output_key: str = OUTPUT_KEY) -> BetaChoice:
    """``beta="auto"``: see the module docstring. A model the softplus swap leaves unchanged (no ReLU-type
    activation: GELU, SiLU, tanh, ...) gets ``beta=None``. ``x: (N, C, H, W)`` clean images in the model's data
    range; the first ``images`` of them are probed. Cached per model object, weights and images."""
    from fragile.attacks.loop import saliency
    from fragile.experiments.parts import fingerprint
    from fragile.explanations import create
    from fragile.explanations.base import check_input
    from fragile.metrics import pcc

    xs = match_input(model, check_input(x))[:images].detach()
    key = (fingerprint(*list(model.parameters())[:4], xs), tuple(grid), threshold, output_key)
    cache = _CACHE.setdefault(model, {})
    if key in cache:
        return cache[key]
    grid = sorted(float(b) for b in grid)
    if not grid or any(not (math.isfinite(b) and b > 0) for b in grid):
        raise FragileError(f"the beta grid must hold positive numbers, got {grid}")
    explainer = create("gradient", model, output_key=output_key)
    with torch.no_grad():
        out = model_output(model, xs, output_key)
    labels = out.argmax(1)
    with softplus(model, beta=grid[0]) as smooth, torch.no_grad():  # (model itself is swapped inside)
        unchanged = torch.equal(model_output(smooth, xs, output_key), out)
    if unchanged:
        cache[key] = BetaChoice(None, True, {}, {}, len(xs))
        return cache[key]
    s0 = saliency(explainer.attribute(xs, target=labels))
    agreement, kept = {}, {}
    for beta in grid:
        s = saliency(explainer.smoothed(beta).attribute(xs, target=labels))
        agreement[beta] = float(torch.nan_to_num(pcc(s0, s), nan=0.0).mean())
        with softplus(model, beta=beta) as smooth, torch.no_grad():
            kept[beta] = float((model_output(smooth, xs, output_key).argmax(1) == labels).double().mean())
    good = [b for b in grid if kept[b] == 1.0 and agreement[b] >= threshold]
    if good:
        choice = BetaChoice(good[0], True, agreement, kept, len(xs))
    else:
        best = max(grid, key=lambda b: (kept[b], agreement[b]))
        choice = BetaChoice(best, False, agreement, kept, len(xs))
    cache[key] = choice
    return choice
