"""Guided backpropagation (Springenberg et al. 2015; Dombrowski et al. 2019 sec. 2).

Through every ReLU y = relu(z) only positive signals that pass the forward gate flow back:

    d_in = relu(d_out) * f'(z)          (f'(z) = 1[z > 0], or sigmoid(beta z) after smoothing)

Written as a differentiable rule, so with ``smooth_beta`` the map has non-zero second derivatives.
"""

from __future__ import annotations

import contextlib

from torch import nn

from fragile.explanations.base import Explainer
from fragile.explanations.modified import (
    AVGPOOL,
    LINEAR,
    MAXPOOL,
    Layout,
    RuleModule,
    check_rules,
    derivative,
    elementwise,
    handles,
    is_activation,
    modified_input_grad,
    rule_surgery,
)


class GuidedRule:
    """Guided-backprop rule of an elementwise activation ``f``: ``d_in = relu(d_out) * f'(z)`` (module docstring)."""
    def __init__(self, f):
        self.f = f

    def forward(self, x):
        """``f(x)``: the activation's ordinary value, any shape."""
        return self.f(x)

    def backward(self, grad, x, graph):
        """``relu(grad) * f'(x)`` elementwise: only positive signals pass, gated by the activation's derivative at the
        true copy's input ``x``. ``graph``: build a differentiable graph (``create_graph=True``).
        """
        return grad.clamp(min=0) * derivative(self.f, x, graph)


def guided_replacer(layout: Layout):
    """Replacement factory for :func:`fragile.models.surgery.swapped`: every activation becomes a
    :class:`RuleModule` with :class:`GuidedRule` on the stacked batch ``layout``; other modules keep their gradient.
    """
    def replace(module: nn.Module):
        return RuleModule(module, GuidedRule(elementwise(module)), layout) if is_activation(module) else None

    return replace


class GuidedBackprop(Explainer):
    """Guided backprop map ``d_in`` at the input (same shape as x)."""

    name = "guided_backprop"
    needs_modules = True
    supports = staticmethod(handles(*LINEAR, *AVGPOOL, *MAXPOOL))

    def __init__(self, model, **kw):
        super().__init__(model, **kw)
        self._layout = Layout()
        check_rules(self, model)

    @contextlib.contextmanager
    def _surgery(self, model):
        with rule_surgery(self, model, guided_replacer(self._layout)):
            yield model

    def _attribute(self, net, x, target, create_graph):
        return modified_input_grad(self, net, self._layout, x, target, create_graph)
