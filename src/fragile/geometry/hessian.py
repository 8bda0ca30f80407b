"""Input Hessians of a class score: Hessian-vector products and top eigenpairs (batched).

    H(x) = d^2 f_c(x) / dx^2,   Hv = d/dx (grad f_c(x) . v)        (double backward)

On ReLU networks H = 0 almost everywhere; pass ``beta`` to use the softplus(beta) surrogate
(Ghorbani et al. sec. 5, Dombrowski et al. sec. 3). Images are independent, so one backward of the
summed scores gives every image's product at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fragile.errors import FragileError
from fragile.explanations.base import OUTPUTS, check_input, check_target
from fragile.models.outputs import model_output
from fragile.models.smooth import softplus

PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)


def smooth_model(model: nn.Module, beta: float | None):
    """Context: the softplus(beta) model, or the model itself after checking it has curvature."""
    if beta is None:
        bad = [name for name, m in model.named_modules() if isinstance(m, PIECEWISE_LINEAR)]
        if bad:
            raise FragileError(f"the model is piecewise linear ({type(model.get_submodule(bad[0])).__name__} at "
                               f"'{bad[0]}'): its input Hessian is zero almost everywhere. Pass beta=... to use "
                               "the softplus surrogate")
        return contextlib.nullcontext(model)
    return softplus(model, beta=beta)


def score_fn(net: nn.Module, target, output: str = "logit") -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> f_c(x) per image, (N,)."""
    def f(x):
        y = OUTPUTS[output](model_output(net, x))
        t = check_target(target, x.shape[0], y.shape[1], x.device)
        return y.gather(1, t[:, None]).squeeze(1)

    return f


def gradient(f, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """d f / d x for every image (``f: x -> (N,)`` scores), optionally with the graph kept."""
    xg = x if x.requires_grad else x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(f(xg).sum(), xg, create_graph=create_graph)
    return g


def hvp(f, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H(x) v for every image (f: x -> (N,) scores)."""
    xg = x.detach().requires_grad_(True)
    g = gradient(f, xg, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), xg)
    return hv


def _bdot(a, b):
    return (a * b).flatten(1).sum(1)


def _normalize(v):
    return v / v.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *[1] * (v.dim() - 1))


def power_iteration(op: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor, iters: int = 50,
                    tol: float = 1e-6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalue of largest magnitude of a symmetric batched operator and its unit eigenvector.

    Returns (lambda (N,) as the Rayleigh quotient, v with the shape of ``like``)."""
    g = torch.Generator(device=like.device).manual_seed(seed)
    v = _normalize(torch.randn(like.shape, generator=g, dtype=like.dtype, device=like.device))
    lam = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    for _ in range(int(iters)):
        w = op(v)
        new = _bdot(v, w)
        v = _normalize(w)
        done = bool(((new - lam).abs() <= tol * new.abs().clamp(min=1e-30)).all())
        lam = new
        if done:
            break
    return lam, v


def top_hessian_eigen(model: nn.Module, x: torch.Tensor, target=None, *, beta: float | None = 10.0,
                      k: int = 1, method: str = "power", iters: int = 100, output: str = "logit",
                      seed: int = 0, which: str = "LA") -> tuple[torch.Tensor, torch.Tensor]:
    """Top eigenpairs of the input Hessian of the target score.

    ``method='power'``: the eigenvalue of largest magnitude, batched ((N,), (N, C, H, W)), k must be 1.
    ``method='lanczos'``: k eigenpairs by ``scipy.sparse.linalg.eigsh`` per image, ``which='LA'``
    (algebraically largest) or ``'LM'`` (largest magnitude), sorted descending ((N, k), (N, k, C, H, W)).
    """
    check_input(x)
    if target is None:
        with torch.no_grad():
            target = model_output(model, x).argmax(1)
    with smooth_model(model, beta) as net:
        f = score_fn(net, target, output)
        if method == "power":
            if k != 1:
                raise FragileError("power iteration gives one eigenpair; use method='lanczos' for k > 1")
            return power_iteration(lambda v: hvp(f, x, v), x, iters=iters, seed=seed)
        if method != "lanczos":
            raise FragileError(f"unknown method {method!r}; choose 'power' or 'lanczos'")
        return _lanczos(lambda v: hvp(f, x, v), x, k, which)


def _lanczos(op, x, k, which):
    from scipy.sparse.linalg import LinearOperator, eigsh

    d = x[0].numel()
    vals, vecs = [], []
    for n in range(x.shape[0]):
        def matvec(v, n=n):
            full = torch.zeros_like(x)
            full[n] = torch.as_tensor(np.asarray(v).reshape(x.shape[1:]), dtype=x.dtype, device=x.device)
            return op(full)[n].detach().cpu().double().numpy().ravel()

        w, u = eigsh(LinearOperator((d, d), matvec=matvec, dtype=np.float64), k=k, which=which)
        order = np.argsort(-w)
        vals.append(torch.as_tensor(w[order]))
        vecs.append(torch.as_tensor(u[:, order].T.reshape(k, *x.shape[1:])))
    return torch.stack(vals).to(x), torch.stack(vecs).to(x)
