"""Principal curvatures of the level surface {x' : g(x') = g(x)} (Dombrowski et al. 2019, sec. 3).

With n = grad g / ||grad g|| and the tangent projector P = I - n n^T, the shape operator is

    W = P H P / ||grad g||,

its eigenvalues on the tangent space are the principal curvatures. Dombrowski et al. bound the change
of the normalised gradient by the largest one times the geodesic distance, and show |lambda_max| <=
beta C for softplus(beta) networks (their Theorem 2), so beta-smoothing reduces it.
"""

from __future__ import annotations

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.explanations.base import check_input
from fragile.geometry.hessian import _bdot, gradient, hvp, power_iteration, score_fn, smooth_model
from fragile.models.outputs import model_output


def shape_operator(f, x: torch.Tensor, min_grad: float = 1e-12):
    """(v -> W v, ||grad g||) for the level surface of f at x, batched."""
    g = gradient(f, x).detach()
    norm = g.flatten(1).norm(dim=1)
    if bool((norm <= min_grad).any()):
        bad = torch.nonzero(norm <= min_grad).flatten().tolist()
        raise FragileError(f"zero gradient at images {bad}: the level surface is not defined there")
    view = (-1, *[1] * (x.dim() - 1))
    n = g / norm.view(view)

    def project(v):
        return v - _bdot(v, n).view(view) * n

    return (lambda v: project(hvp(f, x, project(v))) / norm.view(view)), norm


def max_curvature(model: nn.Module, x: torch.Tensor, target=None, *, beta: float | None = 10.0,
                  iters: int = 100, output: str = "logit", seed: int = 0) -> torch.Tensor:
    """Principal curvature of largest magnitude of the target score's level surface at x, (N,)."""
    check_input(x)
    if target is None:
        with torch.no_grad():
            target = model_output(model, x).argmax(1)
    with smooth_model(model, beta) as net:
        op, _ = shape_operator(score_fn(net, target, output), x)
        lam, _ = power_iteration(op, x, iters=iters, seed=seed)
    return lam.abs()
