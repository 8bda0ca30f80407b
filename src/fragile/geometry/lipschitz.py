"""Local Lipschitz estimates of an explanation (Wang et al. 2020, sec. 4 and 6):

    L(x) = max_{x' in B_eps(x)} ||s(x') - s(x)||_2 / ||x' - x||_2

for the processed saliency s. ``sampled``: the maximum over uniform samples of the L-inf ball
(Quantus / captum sensitivity-max style, which Wang et al. argue underestimates L). ``adversarial``:
the attack engine maximises ||s(x') - s(x)|| inside the ball, and the ratio is taken at its result.
"""

from __future__ import annotations

import torch

from fragile import attacks
from fragile.explanations.base import Explainer
from fragile.metrics.robustness import local_lipschitz_estimate


def _ratio(s0, s1, x0, x1):
    return (s1 - s0).flatten(1).norm(dim=1) / (x1 - x0).flatten(1).norm(dim=1).clamp(min=1e-30)


def lipschitz_sampled(explainer: Explainer, x: torch.Tensor, *, eps: float, samples: int = 50,
                      target=None, reduce: str = "abs_sum", pixel_scale: float = 255.0, seed: int = 0,
                      batch_size: int = 8) -> torch.Tensor:
    """Max ratio over ``samples`` uniform draws in the L-inf ball of radius eps (pixel units), clipped to
    the data range, (N,): ``fragile.metrics.robustness.local_lipschitz_estimate`` of the saliency."""
    return local_lipschitz_estimate(explainer, x, eps=eps, samples=samples, target=target, reduce=reduce,
                                    pixel_scale=pixel_scale, seed=seed, batch_size=batch_size)


def lipschitz_adversarial(explainer: Explainer, x: torch.Tensor, *, eps: float, steps: int = 20,
                          scales: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0), beta: float | None = 10.0,
                          target=None, reduce: str = "abs_sum", seed: int = 0) -> torch.Tensor:
    """Max over radii r = eps * scales of the ratio at the attack engine's maximiser of
    ||s(x') - s(x)|| in the L-inf ball of radius r (sign steps of r / 4), (N,).

    The attack maximises the numerator at a fixed radius; the ratio also depends on ||x' - x||, so
    several radii are searched (a single full-radius search can miss large ratios close to x)."""
    best = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for scale in scales:
        r = eps * scale
        result = attacks.run(explainer.model, explainer, x, "map_distance", eps=r, steps=steps, step_size=r / 4,
                             beta=beta, target=target, seed=seed, reduce=reduce)
        ratio = _ratio(result.maps, result.maps_adv, result.x, result.x_adv).double()
        best = torch.maximum(best, torch.where(result.success, ratio, torch.zeros_like(ratio)))
    return best
