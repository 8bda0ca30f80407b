"""Differentiable modified backward passes (LRP, DeepLIFT, guided backprop, PatternAttribution).

A *rule* gives a module a backward pass other than its gradient. Backward hooks cannot be
differentiated again, so each rule runs inside a custom ``torch.autograd.Function`` whose
``backward`` is written with ordinary differentiable torch operations. When the caller asks for
``create_graph=True``, autograd records that backward, and a loss on the explanation map can be
back-propagated to the input (and to the weights).

A rule implements::

    forward(*inputs) -> output          # the module's ordinary forward value
    backward(grad, *inputs, graph) -> grad_input   # the modified backward signal
"""

from __future__ import annotations

import torch
from torch import nn

from fragile.models.surgery import FragileModule


def track(x: torch.Tensor, graph: bool) -> torch.Tensor:
    """``x`` itself when a graph is being built (keeps the dependence on the input), else a leaf."""
    if graph and x.requires_grad:
        return x
    return x.detach().requires_grad_(True)


def vjp(output: torch.Tensor, inputs, cotangent: torch.Tensor, graph: bool):
    """Vector-Jacobian product ``J^T v`` of ``output`` w.r.t. ``inputs`` (a tensor or tuple)."""
    single = isinstance(inputs, torch.Tensor)
    grads = torch.autograd.grad(output, (inputs,) if single else tuple(inputs), cotangent,
                                create_graph=graph, allow_unused=True)
    grads = tuple(torch.zeros_like(i) if g is None else g for g, i in zip(grads, (inputs,) if single else inputs))
    return grads[0] if single else grads


class _ModifiedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rule, *inputs):
        ctx.rule = rule
        ctx.save_for_backward(*inputs)
        return rule.forward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        inputs = ctx.saved_tensors
        graph = torch.is_grad_enabled()  # True exactly when the caller used create_graph=True
        with torch.enable_grad():
            grad_in = ctx.rule.backward(grad, *inputs, graph=graph)
        if not graph:
            grad_in = grad_in.detach()
        return (None, grad_in) + (None,) * (len(inputs) - 1)


def apply_rule(rule, *inputs: torch.Tensor) -> torch.Tensor:
    """Forward value of ``rule``; its backward is the rule's (the gradient flows to ``inputs[0]``)."""
    return _ModifiedFunction.apply(rule, *inputs)


class RuleModule(FragileModule):
    """Replacement module: the wrapped module's forward value, the rule's backward."""

    def __init__(self, module: nn.Module, rule):
        super().__init__()
        self.module = module
        self.rule = rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_rule(self.rule, x)

    def extra_repr(self) -> str:
        return f"rule={type(self.rule).__name__}"


def elementwise(module: nn.Module):
    """The out-of-place elementwise function of an activation module (in-place ReLU included)."""
    # clamp, not F.relu: our own calls must not trip the functional-activation guard.
    if isinstance(module, nn.ReLU):
        return lambda x: x.clamp(min=0)
    if isinstance(module, nn.ReLU6):
        return lambda x: x.clamp(min=0, max=6)
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return lambda x: torch.nn.functional.leaky_relu(x, slope)
    if isinstance(module, nn.ELU):
        alpha = module.alpha
        return lambda x: torch.nn.functional.elu(x, alpha)
    return module


#: Elementwise activation modules the propagation rules know (ours are added by fragile.models).
ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU,
)


def is_activation(module: nn.Module) -> bool:
    from fragile.models.smooth import SoftplusReLU

    return isinstance(module, ACTIVATIONS + (SoftplusReLU,))


def derivative(f, x: torch.Tensor, graph: bool) -> torch.Tensor:
    """Elementwise derivative f'(x) of an elementwise function, by autograd."""
    xi = track(x, graph)
    return vjp(f(xi), xi, torch.ones_like(x), graph)
