"""PatternAttribution (Kindermans et al. 2018; Dombrowski et al. 2019 sec. 2).

For every conv/linear layer with weights w_k (output unit k) a *pattern* a_k is estimated from data
with the two-component estimator for ReLU networks (Kindermans et al. eq. for A_{+-}, positive regime):

    a_k = (E+[x y_k] - E+[x] E+[y_k]) / (w_k^T (E+[x y_k] - E+[x] E+[y_k]))

where y_k = w_k^T x over the layer inputs x (image patches for convolutions) and E+ averages over the
samples where the unit is active (pre-activation > 0). PatternAttribution backpropagates the one-hot
output through the network with every weight w replaced by w * a (elementwise) and biases dropped,
ReLUs gating as in the gradient:  h(x) = backward_{w * a}(e_c).

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
from fragile.explanations.modified import RuleModule, vjp
from fragile.models.surgery import swapped

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
    """Running sums for the two-component estimator of one layer, float64."""

    def __init__(self):
        self.n = self.sx = self.sy = self.sxy = None

    def add(self, rows: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
        rows = rows.double()
        y = rows @ w.T  # (S, K), y = w^T x
        active = ((y + (0 if b is None else b)) > 0).double()
        ya = y * active
        parts = (active.sum(0), active.T @ rows, ya.sum(0), ya.T @ rows)
        if self.n is None:
            self.n, self.sx, self.sy, self.sxy = parts
        else:
            self.n, self.sx, self.sy, self.sxy = (s + p for s, p in zip((self.n, self.sx, self.sy, self.sxy), parts))

    def pattern(self, w: torch.Tensor) -> torch.Tensor:
        n = self.n.clamp(min=1)[:, None]
        cov = self.sxy / n - (self.sx / n) * (self.sy[:, None] / n)
        denom = (w * cov).sum(1, keepdim=True)
        return torch.where(denom.abs() > 1e-12, cov / torch.where(denom.abs() > 1e-12, denom, 1.0), 0.0)


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
    return {name: stats[name].pattern(m.weight.reshape(m.weight.shape[0], -1).double())
            .reshape(m.weight.shape).to(m.weight.dtype) for name, m in layers.items()}


class PatternRule:
    """Backward through a linear layer with weights w * a and no bias."""

    def __init__(self, module: nn.Module, pattern: torch.Tensor):
        self.module, self.pattern = module, pattern

    def forward(self, x):
        return self.module(x)

    def backward(self, grad, x, graph):
        params = {n: (p * self.pattern.to(p) if n == "weight" else torch.zeros_like(p))
                  for n, p in self.module.named_parameters(recurse=False)}
        u = torch.zeros_like(x, requires_grad=True)
        return vjp(functional_call(self.module, params, (u,)), u, grad, graph)


class PatternAttribution(Explainer):
    """PatternAttribution with ``patterns`` (from :func:`estimate_patterns`) or ``data`` to estimate them."""

    name = "pattern_attribution"

    def __init__(self, model, *, patterns: dict[str, torch.Tensor] | None = None, data=None, **kw):
        super().__init__(model, **kw)
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

    @contextlib.contextmanager
    def _surgery(self, model):
        def replace(m):
            p = self._by_module.get(id(m))
            return None if p is None else RuleModule(m, PatternRule(m, p))

        with swapped(model, replace):
            yield model

    def _attribute(self, net, x, target, create_graph):
        return self._input_grad(net, x, target, create_graph)
