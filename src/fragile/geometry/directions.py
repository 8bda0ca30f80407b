"""Fragile directions (Ghorbani et al. 2019 sec. 5, App. I, Fig. 6a) and their chance controls.

Ghorbani et al. linearise the *gradient* of the score S (the logit of the predicted class):
grad S(x + delta) - grad S(x) ~ H delta with H = d^2 S / dx^2, and call the direction that changes it
most, argmax_{||delta|| = 1} ||H delta|| (App. I: delta_m), the first right singular vector of the Hessian
(sec. 5), the explanation-fragile direction; the prediction-fragile direction is grad S / ||grad S||.
Fig. 6a histograms the angle between the two for 1,000 CIFAR-10 images of a softplus network.

``definition="hessian"`` (the default) computes exactly that, on the softplus(beta) surrogate of a ReLU
network: the top eigenvector of H^T H = H^2 by power iteration (one Hessian-vector product through a
retained double-backward graph per product). ``definition="saliency_jacobian"`` is this package's
earlier reading: the top right-singular vector of the Jacobian of the channel-summed, sum-normalised
saliency map |grad S| / sum |grad S|; the absolute value and the normalisation make it another function.

A direction has no sign (a singular vector is defined up to +-1), so angles are folded into [0, 90] deg;
the paper's histogram (30-150 deg) keeps an arbitrary sign. In d dimensions two independent random
directions are at 90 +- about 57.3 / sqrt(d) deg (1.0 deg for CIFAR's d = 3,072), which is the control
(``chance_angles``) against which "nearly orthogonal" must be read.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from fragile.attacks.loop import saliency
from fragile.errors import FragileError
from fragile.explanations.base import Explainer, check_input
from fragile.geometry.hessian import _bdot, _normalize, gradient, power_iteration, score_fn, smooth_model
from fragile.models.smooth import softplus

DEFINITIONS = ("hessian", "saliency_jacobian")


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


def score_hessian_squared(f, x: torch.Tensor):
    """(grad S (N, ...), the batched operator v -> H^T H v = H (H v)) of the scores f: x -> (N,).

    The gradient's graph is built once and kept, so each product is one backward through it."""
    xg = x.detach().requires_grad_(True)
    g = gradient(f, xg, create_graph=True)

    def hv(v):
        (out,) = torch.autograd.grad(g, xg, v, retain_graph=True)
        return out

    return g.detach(), (lambda v: hv(hv(v)))


def fragile_directions(explainer: Explainer, x: torch.Tensor, target=None, *, iters: int = 30,
                       definition: str = "hessian", reduce: str = "abs_sum", seed: int = 0,
                       tol: float = 1e-6) -> dict[str, torch.Tensor]:
    """Per image of ``x: (N, C, H, W)``: the explanation-fragile direction, its singular value, the
    prediction-fragile direction (the score gradient, normalised) and the angle between them in degrees,
    folded into [0, 90] (directions have no sign).

    ``definition="hessian"`` (Ghorbani sec. 5 / App. I): the first right singular vector of the input
    Hessian of the target logit, on the explainer's model with its ``smooth_beta`` (a ReLU network needs
    one: its Hessian is zero almost everywhere). ``"saliency_jacobian"``: the top right-singular vector of
    d saliency(x) / dx for the explainer's map (the earlier definition). Power iteration: at most ``iters``
    products, stopping when every Rayleigh quotient changes by less than ``tol`` (relative)."""
    check_input(x)
    if definition not in DEFINITIONS:
        raise FragileError(f"unknown fragile-direction definition {definition!r}; choose one of {DEFINITIONS}")
    if target is None:
        target = explainer.predict(x)
    model, beta = explainer.model, explainer.smooth_beta
    if definition == "hessian":
        with smooth_model(model, beta) as net:  # refuses a piecewise-linear model without beta
            g, op = score_hessian_squared(score_fn(net, target), x)
            lam, v_expl = power_iteration(op, x, iters=iters, tol=tol, seed=seed)
    else:
        with (softplus(model, beta=beta) if beta is not None else contextlib.nullcontext(model)) as net:
            g = gradient(score_fn(net, target), x)
        lam, v_expl = power_iteration(saliency_jtj(explainer, x, target, reduce), x, iters=iters, tol=tol,
                                      seed=seed)
    g = _normalize(g)
    cos = _bdot(v_expl, g).abs().clamp(max=1.0)
    return {"explanation_direction": v_expl, "singular_value": lam.clamp(min=0).sqrt(),
            "prediction_direction": g, "angle_degrees": torch.rad2deg(torch.arccos(cos))}


def _angles(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Signed-direction angles in [0, 180] deg between matching rows of a and b, (N,)."""
    cos = _bdot(_normalize(a), _normalize(b)).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos))


def random_pair_angles(dim: int, pairs: int = 1000, seed: int = 0) -> torch.Tensor:
    """Control of Fig. 6a: ``pairs`` angles (deg, in [0, 180]) between two independent Gaussian vectors
    in ``dim`` dimensions, float64, drawn on the CPU from ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    a = torch.randn(pairs, dim, generator=gen, dtype=torch.float64)
    return _angles(a, torch.randn(pairs, dim, generator=gen, dtype=torch.float64))


def gradient_random_angles(prediction_directions: torch.Tensor, per_image: int = 1, seed: int = 0) -> torch.Tensor:
    """Control of Fig. 6a: per image, ``per_image`` angles (deg, in [0, 180]) between its score gradient
    (``prediction_directions``: (N, C, H, W)) and independent Gaussian vectors, (N, per_image), float64 on
    the CPU, drawn from ``seed``."""
    g = prediction_directions.detach().to("cpu", torch.float64).flatten(1)
    gen = torch.Generator().manual_seed(int(seed))
    r = torch.randn(g.shape[0], per_image, g.shape[1], generator=gen, dtype=torch.float64)
    return _angles(g[:, None].expand_as(r).reshape(-1, g.shape[1]), r.reshape(-1, g.shape[1])).view(-1, per_image)


def beyond_chance(folded_angles, control_angles, low: float = 5.0, high: float = 95.0) -> dict:
    """Whether fragile-direction angles are further from 90 deg than chance.

    ``control_angles`` (signed, [0, 180]) give the band [p_low, p_high]; a folded angle a (in [0, 90], its
    direction's sign unknown) lies outside the band whichever sign it takes iff 90 - a exceeds the band's
    larger half-width. Returns the band, that half-width, the fraction of angles beyond it with its 95%
    Wilson interval (under chance at most (100 - high + low) / 100: 0.10 for the 5-95% band), the median
    distances from 90 deg of both, and the verdict: ``"less orthogonal than chance"`` when the interval
    lies above the chance fraction, ``"more orthogonal than chance"`` when below, else ``"as orthogonal as
    chance"``."""
    c = np.asarray(control_angles, dtype=float).ravel()
    a = np.asarray(folded_angles, dtype=float).ravel()
    lo, hi = (float(np.percentile(c, q)) for q in (low, high))
    half = max(90.0 - lo, hi - 90.0)
    beyond = int(np.sum(90.0 - a > half))
    ci = wilson_interval(beyond, a.size)
    chance = (100.0 - high + low) / 100.0
    verdict = ("less orthogonal than chance" if ci[0] > chance else
               "more orthogonal than chance" if ci[1] < chance else "as orthogonal as chance")
    return {"band_deg": [lo, hi], "half_width_deg": half, "fraction_beyond": beyond / max(a.size, 1),
            "fraction_beyond_ci": list(ci), "expected_under_chance": chance,
            "median_distance_from_90_deg": float(np.median(90.0 - a)),
            "control_median_distance_from_90_deg": float(np.median(np.abs(c - 90.0))),
            "n": int(a.size), "control_n": int(c.size), "verdict": verdict}


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion k / n ((0, 1) for n = 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def chance_spread_deg(dim: int) -> float:
    """The standard deviation of the angle between two random directions in ``dim`` dimensions, about
    (180 / pi) / sqrt(dim) deg (their cosine has variance 1 / dim)."""
    return math.degrees(1.0 / math.sqrt(dim))
