"""The gradient-sign attack on influence (Ghorbani et al. 2019 eq. 1 and footnote 1):

    delta = -eps * sign( grad_x sum_{i in top-3(x)} grad_theta L(z_t(x))^T H^-1 grad_theta L(z_i) )

differentiated through the frozen feature extractor to the pixels (softplus surrogate for ReLU
extractors); the label must not change. Random-sign perturbations at the same eps are the baseline.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fragile.influence.logistic import SOLVERS, influence_vectors, per_sample_grads
from fragile.metrics import spearman, topk_intersection
from fragile.models.smooth import softplus


class InfluenceModel:
    """Frozen extractor + logistic-regression head fitted on the training features."""

    def __init__(self, extractor: nn.Module, phi_train, y_train, theta, damping: float, bounds=(0.0, 1.0)):
        self.extractor, self.phi_train, self.y_train = extractor, phi_train, y_train
        self.theta, self.damping, self.bounds = theta, damping, bounds

    def features(self, x):
        """The extractor's features of ``x: (N, C, H, W)``, in float64, ``(N, d)``."""
        return self.extractor(x).double()

    def predict(self, x) -> torch.Tensor:
        """The head's predicted class (0 or 1) of every image, ``(N,)``."""
        with torch.no_grad():
            a = torch.cat([self.features(x), torch.ones(len(x), 1, dtype=torch.float64, device=x.device)], 1)
            return (a @ self.theta > 0).long()

    def helpfulness(self, x, y, solver: str = "exact") -> torch.Tensor:
        """Helpfulness -I(z_i, z_t) of every training point i for each test image t with label ``y``, ``(N, n)``
        (``solver``: "exact", "cg" or "lissa").
        """
        with torch.no_grad():
            return influence_vectors(self.phi_train, self.y_train, self.theta, self.features(x), y,
                                     self.damping, solver)


def influence_attack(im: InfluenceModel, x: torch.Tensor, y: torch.Tensor, *, eps: float, top: int = 3,
                     beta: float | None = 10.0, pixel_scale: float = 255.0, random: bool = False, seed: int = 0):
    """One sign step (or a random sign draw) of size eps (pixel units); returns (x_adv, kept label mask)."""
    low, high = im.bounds
    step = eps * (high - low) / pixel_scale
    if random:
        g = torch.Generator().manual_seed(seed)
        direction = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(x)  # drawn on the CPU: same on any device
    else:
        before = im.helpfulness(x, y)
        idx = before.topk(top, dim=1).indices
        v = SOLVERS["exact"](im.phi_train, im.theta, im.damping,
                             per_sample_grads(im.phi_train, im.y_train, im.theta))  # H^-1 grad L(z_i), (n, p)
        xg = x.detach().requires_grad_(True)
        ctx = softplus(im.extractor, beta) if beta is not None else contextlib.nullcontext(im.extractor)
        with ctx as net:
            g_t = per_sample_grads(net(xg).double(), y, im.theta)  # (T, p), differentiable in x
            objective = (g_t.unsqueeze(1) * v[idx]).sum()  # sum_t sum_{i in top(t)} g_t^T H^-1 g_i
            (grad,) = torch.autograd.grad(objective, xg)
        direction = -grad.sign()
    x_adv = (x + step * direction).clamp(low, high)
    return x_adv, im.predict(x_adv) == im.predict(x)


def compare(before: torch.Tensor, after: torch.Tensor, k: int = 5) -> dict[str, torch.Tensor]:
    """Spearman of influence vectors and top-k overlap (fraction), per test point."""
    return {"spearman": spearman(before, after), f"top{k}_overlap": topk_intersection(before, after, k)}
