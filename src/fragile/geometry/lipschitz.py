"""Local Lipschitz estimates of an explanation (Wang et al. 2020, sec. 4 and 6):

    L(x) = max_{x' in B_eps(x)} ||s(x') - s(x)||_2 / ||x' - x||_2

for the processed saliency s. ``sampled``: the maximum over uniform samples of the L-inf ball
(Quantus / captum sensitivity-max style, which Wang et al. argue underestimates L). ``adversarial``:
the attack engine maximises ||s(x') - s(x)|| inside the ball, and the ratio is taken at its result.
"""

from __future__ import annotations

import torch

from fragile import attacks
from fragile.attacks.loop import saliency
from fragile.explanations.base import Explainer, check_input, model_bounds
from fragile.explanations.gradient import chunked


def _ratio(s0, s1, x0, x1):
    return (s1 - s0).flatten(1).norm(dim=1) / (x1 - x0).flatten(1).norm(dim=1).clamp(min=1e-30)


def lipschitz_sampled(explainer: Explainer, x: torch.Tensor, *, eps: float, samples: int = 50,
                      target=None, reduce: str = "abs_sum", pixel_scale: float = 255.0, seed: int = 0,
                      batch_size: int = 8) -> torch.Tensor:
    """Max ratio over ``samples`` uniform draws in the L-inf ball of radius eps (pixel units), (N,)."""
    check_input(x)
    if target is None:
        target = explainer.predict(x)
    low, high = model_bounds(explainer.model)
    r = eps * (high - low) / pixel_scale
    gen = torch.Generator(device=x.device).manual_seed(seed)
    s0 = saliency(explainer.attribute(x, target=target), reduce)
    best = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    t = torch.as_tensor(target, device=x.device)
    for sl in chunked(samples, batch_size):
        m = sl.stop - sl.start
        noise = (2 * torch.rand((m, *x.shape), generator=gen, dtype=x.dtype, device=x.device) - 1) * r
        xs = (x.unsqueeze(0) + noise).clamp(low, high)
        flat = xs.reshape(-1, *x.shape[1:])
        tt = t if t.dim() == 0 else t.repeat(m)
        s = saliency(explainer.attribute(flat, target=tt), reduce)
        ratios = _ratio(s0.repeat(m, 1, 1), s, x.repeat(m, 1, 1, 1), flat).view(m, -1)
        best = torch.maximum(best, ratios.amax(0).double())
    return best


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
