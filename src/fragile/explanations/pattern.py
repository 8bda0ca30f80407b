"""PatternAttribution (Kindermans et al. 2018; Dombrowski et al. 2019 sec. 2).

For every conv/linear layer with weights w_k (output unit k) a *pattern* a_k is estimated from data
with the two-component estimator for ReLU networks (Kindermans et al. eq. for A_{+-}, positive regime):

    a_k = (E+[x y_k] - E+[x] E+[y_k]) / (w_k^T (E+[x y_k] - E+[x] E+[y_k]))

where y_k = w_k^T x over the layer inputs x (image patches for convolutions) and E+ averages over the
samples where the unit is active (pre-activation > 0). PatternAttribution backpropagates the one-hot
output through the network with every weight w replaced by w * a (elementwise) and biases dropped,
ReLUs gating as in the gradient:  h(x) = backward_{w * a}(e_c).

The output layer (the last conv/linear layer, not followed by a ReLU) uses the linear estimator
a_k = cov(x, y_k) / (w_k^T cov(x, y_k)) over all samples, as does any unit that was never active.

``estimate_patterns(model, data)`` returns ``{layer name: pattern}`` (same shapes as the weights), to
be saved with the model (``torch.save``) and passed as ``patterns=``.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call

from fragile.errors import FragileError, UnsupportedModelError
from fragile.explanations.base import Explainer, check_input
from fragile.explanations.modified import (
    AVGPOOL,
    MAXPOOL,
    GradientRule,
    Layout,
    RuleModule,
    check_rules,
    elementwise,
    handles,
    is_activation,
    modified_input_grad,
    rule_surgery,
    vjp,
)

LAYERS = (nn.Conv2d, nn.Linear)


def _as_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Layer inputs as rows (samples, D): image patches for a Conv2d, vectors for a Linear."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise UnsupportedModelError(f"pattern estimation supports plain Conv2d only, got {module}")
    cols = torch.nn.functional.unfold(x, module.kernel_size, dilation=module.dilation,
                                      padding=module.padding, stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


class _Stats:
    """Running sums (float64) for the pattern estimators of one layer: over the samples where a
    unit is active (two-component estimator) and over all samples (linear estimator)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, rows: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
        rows = rows.double()
        y = rows @ w.T  # (S, K), y = w^T x
        regimes = {"pos": ((y + (0 if b is None else b)) > 0).double(), "all": torch.ones_like(y)}
        for key, active in regimes.items():
            ya = y * active
            parts = {"n": active.sum(0), "sx": active.T @ rows, "sy": ya.sum(0), "sxy": ya.T @ rows}
            for k, v in parts.items():
                self.sums[key + k] = self.sums[key + k] + v if key + k in self.sums else v

    def pattern(self, w: torch.Tensor, regime: str) -> torch.Tensor:
        """``regime='pos'``: two-component estimator, falling back to the linear one for units
        that were never active; ``'all'``: the linear estimator (Kindermans et al. S_a)."""
        def estimate(key):
            n = self.sums[key + "n"].clamp(min=1)[:, None]
            cov = self.sums[key + "sxy"] / n - (self.sums[key + "sx"] / n) * (self.sums[key + "sy"][:, None] / n)
            denom = (w * cov).sum(1, keepdim=True)
            ok = denom.abs() > 1e-12
            return torch.where(ok, cov / torch.where(ok, denom, 1.0), 0.0)

        linear = estimate("all")
        if regime == "all":
            return linear
        never = (self.sums["posn"] < 2)[:, None]
        return torch.where(never, linear, estimate("pos"))


@torch.no_grad()
def estimate_patterns(model: nn.Module, data, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Patterns of every Conv2d/Linear layer from ``data``: a tensor (M, C, H, W) or an iterable
    of batches (tensors or (x, y) tuples)."""
    if isinstance(data, torch.Tensor):
        check_input(data)
        data = data.split(batch_size)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LAYERS)}
    stats = {name: _Stats() for name in layers}

    def hook(name):
        def record(m, inputs, output):
            w = m.weight.reshape(m.weight.shape[0], -1).double()
            b = None if m.bias is None else m.bias.double()
            stats[name].add(_as_rows(m, inputs[0]), w, b)
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        for batch in data:
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for h in handles:
            h.remove()
    last = list(layers)[-1] if layers else None
    return {name: stats[name].pattern(m.weight.reshape(m.weight.shape[0], -1).double(),
                                      "all" if name == last else "pos")
            .reshape(m.weight.shape).to(m.weight.dtype) for name, m in layers.items()}


class PatternRule:
    """Backward through a linear layer with weights w * a and no bias."""

    def __init__(self, module: nn.Module, pattern: torch.Tensor):
        self.module, self.pattern = module, pattern

    def forward(self, x):
        """The layer's ordinary output ``module(x)``."""
        return self.module(x)

    def backward(self, grad, x, graph):
        """``grad`` back through the layer with weights ``w * a`` (``a`` the pattern) and no bias: ``J_{w*a}^T grad``,
        shaped like the layer input ``x``.
        """
        params = {n: (p * self.pattern.to(p) if n == "weight" else torch.zeros_like(p))
                  for n, p in self.module.named_parameters(recurse=False)}
        u = torch.zeros_like(x, requires_grad=True)
        return vjp(functional_call(self.module, params, (u,)), u, grad, graph)


_HANDLES = handles(*LAYERS, *AVGPOOL, *MAXPOOL)


def _supports(module: nn.Module) -> bool:
    """Rules for plain Conv2d (the estimator unfolds patches: no groups, zero padding) and Linear."""
    plain = not isinstance(module, nn.Conv2d) or (
        module.groups == 1 and module.padding_mode == "zeros" and not isinstance(module.padding, str))
    return plain and _HANDLES(module)


class PatternAttribution(Explainer):
    """PatternAttribution with ``patterns`` (from :func:`estimate_patterns`) or ``data`` to estimate them."""

    name = "pattern_attribution"
    needs_modules = True
    supports = staticmethod(_supports)

    def __init__(self, model, *, patterns: dict[str, torch.Tensor] | None = None, data=None, **kw):
        super().__init__(model, **kw)
        check_rules(self, model)
        if patterns is None:
            if data is None:
                raise FragileError("pattern_attribution needs patterns=... or data=... to estimate them")
            patterns = estimate_patterns(model, data)
        layers = {name: m for name, m in model.named_modules() if isinstance(m, LAYERS)}
        missing = sorted(set(layers) - set(patterns))
        if missing:
            raise FragileError(f"no pattern for layers {missing}")
        for name, m in layers.items():
            if patterns[name].shape != m.weight.shape:
                raise FragileError(f"pattern of layer '{name}' has shape {tuple(patterns[name].shape)}, "
                                   f"weight has {tuple(m.weight.shape)}")
        self.patterns = patterns
        self._by_module = {id(m): patterns[name] for name, m in layers.items()}
        self._layout = Layout()

    @contextlib.contextmanager
    def _surgery(self, model):
        def replace(m):
            if is_activation(m):
                return RuleModule(m, GradientRule(elementwise(m)), self._layout)
            p = self._by_module.get(id(m))
            return None if p is None else RuleModule(m, PatternRule(m, p), self._layout)

        with rule_surgery(self, model, replace):
            yield model

    def _attribute(self, net, x, target, create_graph):
        return modified_input_grad(self, net, self._layout, x, target, create_graph)
