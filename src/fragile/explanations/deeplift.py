"""DeepLIFT with the Rescale rule (Shrikumar et al. 2017; Ghorbani et al. 2019 sec. 2).

Contributions are differences from a reference input x' (default zeros). Through every
elementwise nonlinearity y = f(z) the multiplier is the secant slope

    m = (f(z) - f(z')) / (z - z')        (the gradient f'(z) where |z - z'| < eps)

linear layers keep their gradient, and max pooling assigns the output difference to the arg-max
positions of x and x' (as captum does). The map is (x - x') * m_total, and summation-to-delta holds:
sum_i h_i(x) = f_c(x) - f_c(x').

The network runs once on the stacked batch [x; x'] so each layer sees its reference activation
(see ``fragile.explanations.modified``).
All multipliers are differentiable torch expressions, so ``create_graph=True`` works (the secant
slope is smooth in z away from z = z', even for ReLU networks).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from fragile.explanations.base import Explainer, model_bounds
from fragile.explanations.integrated import resolve_baseline
from fragile.explanations.modified import (
    AVGPOOL,
    LINEAR,
    Layout,
    RuleModule,
    check_rules,
    derivative,
    elementwise,
    handles,
    is_activation,
    modified_input_grad,
    rule_surgery,
    track,
)


class Rescale:
    """Secant-slope multiplier of an elementwise ``f`` (the Rescale rule)."""

    def __init__(self, f, eps: float = 1e-7):
        self.f, self.eps = f, eps

    def forward(self, x):
        """``f(x)``: the activation's ordinary value, any shape."""
        return self.f(x)

    def backward(self, grad, x, x_ref, graph):
        """The incoming multiplier ``grad`` times the secant slope ``(f(x) - f(x')) / (x - x')``, elementwise.

        ``x`` is the layer input of the true copy and ``x_ref`` that of the reference x' (same shape); where
        ``|x - x'| < eps`` the derivative ``f'(x)`` is used instead. ``graph``: build a differentiable graph
        (``create_graph=True``).
        """
        xi = track(x, graph)
        dx = xi - x_ref
        small = dx.abs() < self.eps
        secant = (self.f(xi) - self.f(x_ref)) / torch.where(small, torch.ones_like(dx), dx)
        return grad * torch.where(small, derivative(self.f, x, graph), secant)


def _scatter_to_input(values: torch.Tensor, indices: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` into the flat spatial positions ``indices`` of a tensor shaped like ``like``
    (an unpooling that also adds up overlapping windows)."""
    flat = torch.zeros(*like.shape[:2], like.shape[2] * like.shape[3], dtype=values.dtype, device=values.device)
    return flat.scatter_add(2, indices.flatten(2), values.flatten(2)).view_as(like)


class MaxPoolRescale:
    """Max pooling: the output difference goes to the arg-max positions of x and x'."""

    def __init__(self, pool: nn.MaxPool2d, eps: float = 1e-7):
        self.pool, self.eps = pool, eps

    def _pool(self, x):
        p = self.pool
        return torch.nn.functional.max_pool2d(x, p.kernel_size, p.stride, p.padding, p.dilation,
                                              ceil_mode=p.ceil_mode, return_indices=True)

    def forward(self, x):
        """The pooling's ordinary output, ``(N, C, H, W) -> (N, C, H', W')``."""
        return self.pool(x)

    def backward(self, grad, x, x_ref, graph):
        """Multipliers at the pooling input ``(N, C, H, W)`` from those at its output, ``grad: (N, C, H', W')``.

        The output difference ``y - y'`` is split between the arg-max positions of ``x`` and of the reference ``x_ref``
        (``max(y, y') - y'`` to x's, ``y - max(y, y')`` to the reference's) and divided by ``x - x'``; where ``|x - x'| < eps``
        the gradient (``grad`` routed to x's arg-max) is used instead.
        """
        xi = track(x, graph)
        y, idx = self._pool(xi)
        y_ref, idx_ref = self._pool(x_ref)
        top = torch.maximum(y, y_ref)
        contrib = (_scatter_to_input(grad * (top - y_ref), idx, xi)
                   + _scatter_to_input(grad * (y - top), idx_ref, xi))
        dx = xi - x_ref
        small = dx.abs() < self.eps
        plain = _scatter_to_input(grad, idx, xi)
        return torch.where(small, plain, contrib / torch.where(small, torch.ones_like(dx), dx))


def deeplift_replacer(eps: float, layout: Layout):
    """Replacement factory for :func:`fragile.models.surgery.swapped`: activations get :class:`Rescale`, max
    pooling :class:`MaxPoolRescale` (each as a :class:`RuleModule` on the stacked batch ``layout``), every other
    module keeps its gradient.
    """
    def replace(module: nn.Module):
        if is_activation(module):
            return RuleModule(module, Rescale(elementwise(module), eps), layout)
        if isinstance(module, nn.MaxPool2d):
            return RuleModule(module, MaxPoolRescale(module, eps), layout)
        return None

    return replace


class DeepLift(Explainer):
    """DeepLIFT-Rescale with ``baseline`` x' ('zeros', a tensor, or a mean of ``reference_data``)."""

    name = "deeplift"
    needs_modules = True
    #: Linear layers keep their gradient (exact for differences); max pooling and activations get rules.
    supports = staticmethod(handles(*LINEAR, *AVGPOOL, nn.MaxPool2d))

    def __init__(self, model, *, baseline="zeros", reference_data=None, eps: float = 1e-7, **kw):
        super().__init__(model, **kw)
        self.baseline, self.reference_data, self.eps = baseline, reference_data, eps
        self._layout = Layout()
        check_rules(self, model)

    @contextlib.contextmanager
    def _surgery(self, model):
        with rule_surgery(self, model, deeplift_replacer(self.eps, self._layout)):
            yield model

    def _attribute(self, net, x, target, create_graph):
        ref = resolve_baseline(self.baseline, x, self.reference_data, model_bounds(self.model))
        xg = x if (create_graph and x.requires_grad) else x.detach()
        m = modified_input_grad(self, net, self._layout, xg, target, create_graph, extras=(ref,))
        return (xg - ref) * m

