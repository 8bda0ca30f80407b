"""Integrated gradients (Sundararajan et al. 2017; Ghorbani et al. 2019 sec. 2, eq. of IG).

    IG(x) = (x - x') * (1/M) * sum_{k=1..M} d f_c(x' + (k/M)(x - x')) / dx        (Riemann right sum)

as written by Ghorbani et al. with M = 100 steps. ``rule="trapezoid"`` uses the trapezoid rule
over k = 0..M instead. Completeness: sum_i IG_i(x) -> f_c(x) - f_c(x') as M grows.
"""

from __future__ import annotations

import copy
import functools

import torch

from fragile.errors import FragileError
from fragile.explanations.base import Explainer, int_param, model_bounds
from fragile.explanations.chunks import chunk_param, chunk_sum, points_per_chunk
from fragile.explanations.gradient import chunked, repeat_target

RULES = ("right", "trapezoid")
BASELINES = ("zeros", "pixel_mean", "channel_mean")


def path_weights(steps: int, rule: str, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolation points alpha_k and quadrature weights w_k with sum_k w_k = 1."""
    if rule == "right":
        alphas = torch.arange(1, steps + 1, dtype=dtype, device=device) / steps
        return alphas, torch.full((steps,), 1.0 / steps, dtype=dtype, device=device)
    alphas = torch.arange(0, steps + 1, dtype=dtype, device=device) / steps
    w = torch.full((steps + 1,), 1.0 / steps, dtype=dtype, device=device)
    w[0] = w[-1] = 0.5 / steps
    return alphas, w


def resolve_baseline(baseline, x: torch.Tensor, reference_data: torch.Tensor | None,
                     bounds: tuple[float, float] | None = None) -> torch.Tensor:
    """Baseline broadcast to ``x``: 'zeros', 'pixel_mean' / 'channel_mean' of ``reference_data``,
    a number, or a tensor of shape (C, H, W), (1 or N, C, H, W) or (1, C, 1, 1)."""
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise FragileError(f"unknown baseline {baseline!r}; choose one of {BASELINES} or a tensor")
        if baseline == "zeros":
            return torch.zeros_like(x)
        if reference_data is None:
            raise FragileError(f"baseline {baseline!r} needs reference_data: (M, C, H, W) images")
        if not isinstance(reference_data, torch.Tensor):
            raise FragileError(f"reference_data must be a tensor (M, C, H, W), got {type(reference_data).__name__}")
        ref = reference_data.to(x.device, x.dtype)
        if ref.dim() != 4 or ref.shape[1:] != x.shape[1:] or ref.shape[0] == 0:
            raise FragileError(f"reference_data must be (M, {', '.join(map(str, x.shape[1:]))}) with M >= 1, "
                               f"got {tuple(ref.shape)}")
        _check_finite_baseline(ref, "reference_data")
        dims = (0,) if baseline == "pixel_mean" else (0, 2, 3)
        return ref.mean(dim=dims, keepdim=True).expand_as(x)
    try:
        b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
    except (TypeError, ValueError, RuntimeError):
        raise FragileError(f"baseline must be one of {BASELINES}, a number or a tensor, got {baseline!r}") from None
    _check_finite_baseline(b, "the baseline", bounds)
    if b.dim() == 3:
        b = b.unsqueeze(0)
    try:
        return torch.broadcast_to(b, x.shape)
    except RuntimeError:
        raise FragileError(f"baseline of shape {tuple(b.shape)} does not broadcast to x of shape "
                           f"{tuple(x.shape)}") from None


def _check_finite_baseline(b: torch.Tensor, what: str, bounds: tuple[float, float] | None = None) -> None:
    """Finite, and (with the model's data ``bounds``) within one data range of them: a baseline far outside
    the data overflows the network (NaN maps or NaN map gradients)."""
    b = b.detach()
    if not bool(torch.isfinite(b).all()):
        raise FragileError(f"{what} contains NaN or inf values; every map from it would be NaN")
    if bounds is not None and b.numel():
        low, high = bounds
        span = high - low
        if float(b.min()) < low - span or float(b.max()) > high + span:
            raise FragileError(f"{what} lies far outside the model's data range [{low:g}, {high:g}] (values "
                               f"{float(b.min()):.3g} to {float(b.max()):.3g}); give it in raw pixel units")


class IntegratedGradients(Explainer):
    """IG with ``steps`` M (default 100, Ghorbani), ``baseline`` and quadrature ``rule``.

    ``batch_size`` bounds how many images (path points x batch) go through the model at once: ``"auto"``
    (default) from the image size (``fragile.explanations.chunks.CHUNK_ELEMENTS``: 5 path points at
    224x224), an integer, or None (all at once). ``replay`` (default True): differentiating through the
    map (``create_graph=True``) recomputes one chunk of path points at a time in the backward, so an attack
    needs the memory of one chunk, not of all M points (``False``: keep every chunk's graph; the same
    gradient).
    """

    name = "integrated_gradients"
    plain_autograd = True
    smooth_in_input = True  # a path integral of the gradient: smooth in x on a ReLU net (as steps grow)

    def __init__(self, model, *, steps: int = 100, baseline="zeros", rule: str = "right",
                 reference_data: torch.Tensor | None = None, batch_size: int | str | None = "auto",
                 replay: bool = True, **kw):
        super().__init__(model, **kw)
        steps = int_param(steps, "steps")
        batch_size = chunk_param(batch_size)
        if rule not in RULES:
            raise FragileError(f"unknown rule {rule!r}; choose one of {RULES}")
        self.steps, self.baseline, self.rule = int(steps), baseline, rule
        self.reference_data, self.batch_size, self.replay = reference_data, batch_size, bool(replay)

    #: Indices of the path points a subsampled copy uses (:meth:`subsampled`); None: all of them.
    _subset: torch.Tensor | None = None

    def average_points(self) -> int:
        """The quadrature's points: M for the right sum, M + 1 for the trapezoid rule."""
        return self.steps + (self.rule == "trapezoid")

    def subsampled(self, points: int, generator: torch.Generator) -> IntegratedGradients:
        """A copy on a uniformly random subset S of ``points`` = m of the P path points (without replacement, from
        ``generator``), each weight w_k scaled by P / m: sum_{k in S} (P / m) w_k grad f(x' + alpha_k (x - x')). Each
        point is in S with probability m / P, so its expectation is the full sum exactly, and so is that of the map
        (x - x') times it (for the right sum, (x - x') times the mean of the m gradients)."""
        clone = copy.copy(self)
        clone._subset = torch.randperm(self.average_points(), generator=generator)[:points].sort().values
        return clone

    def _attribute(self, net, x, target, create_graph):
        base = resolve_baseline(self.baseline, x, self.reference_data, model_bounds(self.model))
        xg = x if (create_graph and x.requires_grad) else x.detach()
        total = chunk_sum(self, net, self._terms(target), (xg, base), create_graph, self.replay)
        return (xg - base) * total

    def _terms(self, target):
        """The chunks of sum_k w_k grad f(x' + alpha_k (x - x')), one model call each."""
        def terms(net, x, base):
            alphas, weights = path_weights(self.steps, self.rule, x.dtype, x.device)
            if self._subset is not None:  # an unbiased estimate from a subset (subsampled)
                idx = self._subset.to(x.device)
                alphas, weights = alphas[idx], weights[idx] * (len(weights) / len(idx))
            for sl in chunked(len(alphas), points_per_chunk(self.batch_size, x, len(alphas))):
                yield functools.partial(self._path_chunk, net, x, base, target, alphas[sl], weights[sl])

        return terms

    def _path_chunk(self, net, x, base, target, alphas, weights, create_graph):
        """sum_{k in chunk} w_k grad f(x' + alpha_k (x - x')): (N, C, H, W)."""
        a = alphas.view(-1, 1, 1, 1, 1)
        path = (base + a * (x - base)).reshape(-1, *x.shape[1:])
        t = repeat_target(target, x.shape[0], a.shape[0], x.device)
        g = self._input_grad(net, path, t, create_graph).view(a.shape[0], *x.shape)
        return (weights.view(-1, 1, 1, 1, 1) * g).sum(0)
