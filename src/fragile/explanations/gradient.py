"""Simple gradient (Simonyan et al. 2014; Ghorbani et al. 2019 "simple gradient") and gradient x input.

    gradient:          h(x) = d f_c(x) / dx
    gradient_x_input:  h(x) = x * d f_c(x) / dx        (elementwise)
"""

from __future__ import annotations

import torch

from fragile.explanations.base import Explainer


class Gradient(Explainer):
    """``d f_c / dx``; with ``smooth_beta`` the gradient of the softplus(beta) network."""

    name = "gradient"
    plain_autograd = True
    map_is_gradient = True  # h = grad F: its Jacobian is the (symmetric) Hessian (attacks.second_order)

    def _attribute(self, net, x, target, create_graph):
        return self._input_grad(net, x, target, create_graph)

    def _attribute_with_output(self, net, x, target):
        if self.smooth_beta is not None:  # the output must be the unmodified model's
            return super()._attribute_with_output(net, x, target)
        return self._input_grad(net, x, target, False, with_output=True)

    def _attribute_with_step_output(self, net, x, target):
        return self._input_grad(net, x, target, True, with_output=True)


class GradientXInput(Explainer):
    """``x * d f_c / dx`` (Shrikumar et al. 2016; Dombrowski et al. 2019 sec. 2)."""

    name = "gradient_x_input"
    plain_autograd = True

    def _attribute(self, net, x, target, create_graph):
        return x * self._input_grad(net, x, target, create_graph)

    def _attribute_with_output(self, net, x, target):
        if self.smooth_beta is not None:
            return super()._attribute_with_output(net, x, target)
        g, out = self._input_grad(net, x, target, False, with_output=True)
        return x * g, out

    def _attribute_with_step_output(self, net, x, target):
        g, out = self._input_grad(net, x, target, True, with_output=True)
        return x * g, out


def chunked(total: int, size: int | None):
    """Slices covering range(total) in chunks of ``size`` (all at once if None)."""
    size = total if not size else int(size)
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


def repeat_target(target, n: int, times: int, device) -> torch.Tensor | int:
    """Target for ``times`` stacked copies of a batch of ``n``."""
    t = torch.as_tensor(target, device=device)
    return t if t.dim() == 0 else t.repeat(times)
