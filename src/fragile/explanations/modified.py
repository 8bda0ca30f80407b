"""Differentiable modified backward passes (LRP, DeepLIFT, guided backprop, PatternAttribution).

A *rule* gives a module a backward pass other than its gradient. Backward hooks cannot be
differentiated again, so each rule runs inside a custom ``torch.autograd.Function`` whose
``backward`` is written with ordinary differentiable torch operations.

Second derivatives need one more idea. The map h(x) is built from the activations z_l(x) of every
layer; its derivative dh/dx must follow the *true* Jacobian of the forward pass from x to z_l, not
the modified one. So the network runs on a stacked batch ``[x (chain); x (true); extras...]``:

- the *chain* copy carries the modified backward pass (the map is the backward signal at x);
- the *true* copy is an ordinary forward pass; every rule reads its activation from it, so the
  dependence of the map on x goes through ordinary autograd;
- extras (e.g. DeepLIFT's reference x') are further ordinary copies.

Without ``create_graph`` the true copy is the chain copy itself (no extra cost). With it, the chain copy's value
after a rule is the true copy's output, reused (the same numbers; only its backward differs), so a rule's forward
runs once per copy but the chain: modules without a rule still compute on the chain copy (for the backward they
leave there, e.g. a max pooling's arg-max, from values equal to the true copy's), modules with one do not (LRP: all
its convolutions).
Measured split of one attack iteration, ``benchmarks/iteration_cost.py --parts split``.

A rule implements::

    forward(x) -> output                             # the module's ordinary forward value
    backward(grad, x_true, *extras, graph) -> grad_input

and optionally ``output_nonnegative = True`` (its forward value is >= 0 by construction, e.g. a ReLU's),
``preserves_nonnegative = True`` (>= 0 on inputs >= 0, e.g. average pooling) and
``for_nonnegative_input() -> rule | None`` (the same rule, cheaper, for an input known to be >= 0, e.g. LRP's z+
without its x^- W^- term). A :class:`RuleModule` marks the output of the first kind and gives such an output
to the second kind's variant.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fragile.errors import UnsupportedModelError
from fragile.explanations.base import OUTPUTS, Explainer, check_target
from fragile.models.outputs import class_scores, run_model
from fragile.models.preprocessing import Normalize
from fragile.models.smooth import SoftplusReLU
from fragile.models.surgery import FragileModule, Replacer, check_coverage, covered_by, inside_fragile, swapped


def track(x: torch.Tensor, graph: bool) -> torch.Tensor:
    """``x`` itself when a graph is being built (keeps the dependence on the input), else a leaf."""
    if graph and x.requires_grad:
        return x
    return x.detach().requires_grad_(True)


def vjp(output: torch.Tensor, inputs: torch.Tensor, cotangent: torch.Tensor, graph: bool) -> torch.Tensor:
    """Vector-Jacobian product ``J^T v`` of ``output`` w.r.t. ``inputs``."""
    (g,) = torch.autograd.grad(output, inputs, cotangent, create_graph=graph, allow_unused=True)
    return torch.zeros_like(inputs) if g is None else g


def derivative(f, x: torch.Tensor, graph: bool) -> torch.Tensor:
    """Elementwise derivative f'(x) of an elementwise function, by autograd."""
    xi = track(x, graph)
    return vjp(f(xi), xi, torch.ones_like(x), graph)


class GradientRule:
    """The ordinary derivative of an elementwise ``f``, evaluated on the true copy (for activations
    between modified layers, e.g. PatternAttribution's ReLU gates)."""

    def __init__(self, f):
        self.f = f

    def forward(self, x):
        """``f(x)``: the activation's ordinary value, any shape."""
        return self.f(x)

    def backward(self, grad, x, graph):
        """``grad * f'(x)`` elementwise, ``f'`` evaluated on the true copy's input ``x``."""
        return grad * derivative(self.f, x, graph)


class _ModifiedFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rule, chain, true, value, *extras):
        """The chain copy's output: ``value`` (the true copy's output, already computed), or ``rule.forward(true)``
        when there is none (without a graph the true copy is the chain)."""
        ctx.rule = rule
        ctx.save_for_backward(true, *extras)
        return rule.forward(true) if value is None else value

    @staticmethod
    def backward(ctx, grad):
        true, *extras = ctx.saved_tensors
        graph = torch.is_grad_enabled()  # True exactly when the caller used create_graph=True
        with torch.enable_grad(), inside_fragile():
            grad_in = ctx.rule.backward(grad, true, *extras, graph=graph)
        if not graph:
            grad_in = grad_in.detach()
        return (None, grad_in, None, None) + (None,) * len(extras)


@dataclass
class Layout:
    """How the stacked batch is split: ``parts`` copies of ``batch`` images, the true copy at index
    ``true`` (``batch = 0``: not known, no check)."""

    parts: int = 1
    true: int = 0
    batch: int = 0


_NONNEGATIVE = "_fragile_nonnegative"


def mark_nonnegative(t: torch.Tensor) -> torch.Tensor:
    """Mark ``t`` (the output of a rule whose forward value is >= 0 by construction) as known to be >= 0."""
    setattr(t, _NONNEGATIVE, True)
    return t


def known_nonnegative(t: torch.Tensor) -> bool:
    """Whether ``t`` was marked by :func:`mark_nonnegative` (the tensor object itself: what a module computes
    from it is not marked)."""
    return getattr(t, _NONNEGATIVE, False)


class KeepsSign(FragileModule):
    """``module`` as it is (max pooling, Flatten, Dropout: its output's values are some of its input's), its output
    marked >= 0 when its input is (:func:`mark_nonnegative`)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``module(z)``, marked when ``z`` is."""
        out = self.module(z)
        return mark_nonnegative(out) if known_nonnegative(z) else out


class RuleModule(FragileModule):
    """Replacement module: the wrapped module's forward value, the rule's backward (on the chain
    copy); ordinary forward on the other copies.

    A rule with ``output_nonnegative`` marks its output (with ``preserves_nonnegative``: when its input is marked);
    an input so marked gets the rule's ``for_nonnegative_input()`` variant, when it has one (module docstring).
    """

    def __init__(self, module: nn.Module, rule, layout: Layout):
        super().__init__()
        self.module, self.rule, self.layout = module, rule, layout
        variant = getattr(rule, "for_nonnegative_input", None)
        self.rule_nonnegative = variant() if variant is not None else None
        self.output_nonnegative = bool(getattr(rule, "output_nonnegative", False))
        self.preserves_nonnegative = bool(getattr(rule, "preserves_nonnegative", False))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The wrapped module on the stacked batch ``z: (parts * N, ...)``: the rule's forward on every copy but the
        chain (the first ``N`` rows), whose value is the true copy's output, with the rule's backward attached.

        Raises :class:`UnsupportedModelError` when ``z``'s first dimension is not the stacked batch (an activation that
        is not batch-first).
        """
        if self.layout.parts > 1 and self.layout.batch and z.shape[0] != self.layout.parts * self.layout.batch:
            raise UnsupportedModelError(
                f"{type(self.module).__name__} receives a tensor of shape {tuple(z.shape)} whose first "
                f"dimension is not the batch ({self.layout.parts} x {self.layout.batch} stacked images); "
                "propagation rules need batch-first activations")
        nonnegative = known_nonnegative(z)
        rule = self.rule_nonnegative if self.rule_nonnegative is not None and nonnegative else self.rule
        chunks = z.chunk(self.layout.parts)
        rest = [rule.forward(c) for c in chunks[1:]]
        true = chunks[self.layout.true]
        extras = [c.detach() for i, c in enumerate(chunks) if i not in (0, self.layout.true)]
        # the chain's value is the true copy's (every rule reads the true copy): reused, not computed again
        value = rest[self.layout.true - 1].detach() if self.layout.true else None
        chain = _ModifiedFunction.apply(rule, chunks[0], true if self.layout.true else true.detach(), value, *extras)
        out = torch.cat([chain, *rest]) if rest else chain
        return mark_nonnegative(out) if self.output_nonnegative or (self.preserves_nonnegative and nonnegative) else out

    def extra_repr(self) -> str:
        """``rule=...``, the rule's class name, in the model's repr."""
        return f"rule={type(self.rule).__name__}"


def output_vjp(output: str, y_true: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """J_T(y_true)^T s for the output transform T, its Jacobian evaluated on the true copy."""
    if output == "logit":
        return s
    p = torch.softmax(y_true, dim=1)
    if output == "softmax":
        return p * (s - (p * s).sum(1, keepdim=True))
    return s - p * s.sum(1, keepdim=True)  # log_softmax


def modified_input_grad(explainer: Explainer, net: nn.Module, layout: Layout, x: torch.Tensor,
                        target, create_graph: bool, extras: tuple[torch.Tensor, ...] = (),
                        relevance_seed: bool = False) -> torch.Tensor:
    """Backward signal at x of the stacked network (see module docstring).

    The seed is one-hot at ``target`` (times the score value if ``relevance_seed``, for LRP), mapped
    through the output transform's Jacobian explicitly, so the backward pass runs only along the
    chain copy while every value it uses comes from the true copy.
    """
    n = x.shape[0]
    xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
    copies = [xg, xg] if create_graph else [xg]
    layout.parts, layout.true, layout.batch = len(copies) + len(extras), len(copies) - 1, n
    stacked = torch.cat([*copies, *[e.detach() for e in extras]])
    out = class_scores(run_model(net, stacked), stacked.shape[0], explainer.output_key)
    raw_chain, raw_true = out[:n], out[layout.true * n:(layout.true + 1) * n]
    y_true = OUTPUTS[explainer.output](raw_true)
    t = check_target(target, n, y_true.shape[1], x.device)
    seed = torch.zeros_like(y_true).scatter_(1, t[:, None], 1.0)
    if relevance_seed:
        seed = seed * y_true
    cotangent = output_vjp(explainer.output, raw_true, seed)
    if not create_graph:
        cotangent = cotangent.detach()
    (g,) = torch.autograd.grad(raw_chain, xg, cotangent, create_graph=create_graph)
    return g


def elementwise(module: nn.Module):
    """The out-of-place elementwise function of an activation module (in-place ReLU included)."""
    if isinstance(module, nn.ReLU):
        return lambda x: x.clamp(min=0)
    if isinstance(module, nn.Hardtanh):  # nn.ReLU6 included
        low, high = module.min_val, module.max_val
        return lambda x: x.clamp(min=low, max=high)
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return lambda x: torch.nn.functional.leaky_relu(x, slope)
    if isinstance(module, nn.ELU):
        alpha = module.alpha
        return lambda x: torch.nn.functional.elu(x, alpha)
    return module


#: Piecewise-linear monotone activations (and their softplus surrogates): every rule method handles them.
RELU_LIKE: tuple[type[nn.Module], ...] = (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, SoftplusReLU)
#: Elementwise activation modules the propagation rules know: monotone ones. Not GELU, SiLU, Mish,
#: Hardswish (not monotone) nor Hardsigmoid (a gate in practice; refused with the other gates).
ACTIVATIONS: tuple[type[nn.Module], ...] = RELU_LIKE + (nn.ELU, nn.Softplus, nn.Sigmoid, nn.Tanh)

LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
AVGPOOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
           nn.AdaptiveAvgPool3d)
MAXPOOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d)
#: Affine in eval mode, or a selection of inputs: the gradient is exact for every rule method.
STRUCTURAL = (nn.modules.batchnorm._BatchNorm, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Identity, Normalize)


def is_activation(module: nn.Module) -> bool:
    """``module`` is one of the elementwise activations the propagation rules know (:data:`ACTIVATIONS`)."""
    return isinstance(module, ACTIVATIONS)


def handles(*types: type[nn.Module]) -> Callable[[nn.Module], bool]:
    """``supports(module)`` of a rule method handling ``types``, activations and structural layers
    (and modules flagged ``selects_inputs = True``, e.g. the option-A ResNet shortcut)."""
    known = tuple(types) + ACTIVATIONS + STRUCTURAL

    def check(module: nn.Module) -> bool:
        return isinstance(module, known) or getattr(module, "selects_inputs", False)

    return check


def check_rules(explainer: Explainer, model: nn.Module) -> None:
    """Refuse, at construction, a model with a module ``explainer.supports`` has no rule for."""
    check_coverage(model, explainer.name, explainer.supports)


@contextlib.contextmanager
def rule_surgery(explainer: Explainer, model: nn.Module, replace: Replacer) -> Iterator[nn.Module]:
    """The rule method's model: coverage checked (modules now, functional calls as they run), then
    ``replace`` swapped in (and applied to functional activations)."""
    with covered_by(explainer.name, model, explainer.supports), swapped(model, replace):
        yield model
