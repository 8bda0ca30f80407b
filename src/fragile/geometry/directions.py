"""Fragile directions (Ghorbani et al. 2019 sec. 5, Fig. 6a).

The direction in which the (normalised) explanation changes fastest is the top right-singular vector
of the Jacobian J = ds/dx of the saliency map s(x); the direction in which the prediction changes
fastest is the gradient of the score. Ghorbani et al. find the two nearly orthogonal. Both are
computed batched: J^T J v by a Jacobian-vector product (the double-VJP trick) and a VJP.
"""

from __future__ import annotations

import torch

from fragile.attacks.loop import saliency
from fragile.explanations.base import Explainer, check_input
from fragile.geometry.hessian import _bdot, _normalize, gradient, power_iteration, score_fn
from fragile.models.smooth import softplus


def saliency_jtj(explainer: Explainer, x: torch.Tensor, target, reduce: str = "abs_sum"):
    """The batched operator v -> J^T J v of the saliency map s(x) (N, H, W)."""
    def op(v):
        xg = x.detach().requires_grad_(True)
        s = saliency(explainer.attribute(xg, target=target, create_graph=True), reduce)
        u = torch.zeros_like(s, requires_grad=True)
        (jtu,) = torch.autograd.grad(s, xg, u, create_graph=True)
        (jv,) = torch.autograd.grad(jtu, u, v, create_graph=True)  # J v (linear in u: exact)
        (jtjv,) = torch.autograd.grad(s, xg, jv)
        return jtjv

    return op


def fragile_directions(explainer: Explainer, x: torch.Tensor, target=None, *, iters: int = 30,
                       reduce: str = "abs_sum", seed: int = 0) -> dict[str, torch.Tensor]:
    """Per image: the explanation-fragile direction (top singular vector of ds/dx), its singular value,
    the prediction-fragile direction (the score gradient, normalised), and the angle between them in
    degrees, folded to [0, 90] (directions have no sign)."""
    check_input(x)
    if target is None:
        target = explainer.predict(x)
    lam, v_expl = power_iteration(saliency_jtj(explainer, x, target, reduce), x, iters=iters, seed=seed)
    model = explainer.model
    if explainer.smooth_beta is not None:
        with softplus(model, beta=explainer.smooth_beta) as net:
            g = gradient(score_fn(net, target), x)
    else:
        g = gradient(score_fn(model, target), x)
    g = _normalize(g)
    cos = _bdot(v_expl, g).abs().clamp(max=1.0)
    return {"explanation_direction": v_expl, "singular_value": lam.clamp(min=0).sqrt(),
            "prediction_direction": g, "angle_degrees": torch.rad2deg(torch.arccos(cos))}
