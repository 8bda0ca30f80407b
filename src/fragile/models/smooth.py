"""Softplus surrogate of ReLU networks (Dombrowski et al. 2019, sec. 4; Ghorbani et al. 2019).

ReLU has a vanishing second derivative almost everywhere, so a loss on a gradient map cannot be
back-propagated to the input. Replacing ``relu(x)`` by

    softplus_beta(x) = log(1 + exp(beta * x)) / beta            (Dombrowski eq. 8)

gives a network whose explanations are differentiable; softplus_beta -> relu as beta -> inf.
Every piecewise-linear activation is a sum of shifted ReLUs, and gets the same sum of softplus_beta
(sp below):

    relu6(x)           = relu(x) - relu(x - 6)         ->  sp(x) - sp(x - 6)
    hardtanh(x; a, b)  = a + relu(x - a) - relu(x - b) ->  a + sp(x - a) - sp(x - b)
    leaky_relu(x; s)   = s x + (1 - s) relu(x)         ->  s x + (1 - s) sp(x)
    hardsigmoid(x)     = relu6(x + 3) / 6              ->  (sp(x + 3) - sp(x - 3)) / 6
    hardswish(x)       = x hardsigmoid(x)              ->  x (sp(x + 3) - sp(x - 3)) / 6

Already smooth activations (GELU, SiLU, ELU, Softplus, Sigmoid, Tanh) are left as they are.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.models.surgery import FragileModule, Guarded, swapped


def softplus_beta(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Numerically stable softplus with inverse temperature ``beta`` (no overflow up to 1e4+).

    ``torch.nn.functional.softplus`` switches to the identity where ``beta * x > threshold``;
    with threshold 20 the error there is below exp(-20)/beta.
    """
    return torch.nn.functional.softplus(x, beta=beta, threshold=20.0)


def softplus_hardtanh(x: torch.Tensor, beta: float, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """``low + sp(x - low) - sp(x - high)``: the surrogate of ``clamp(x, low, high)``."""
    return low + softplus_beta(x - low, beta) - softplus_beta(x - high, beta)


def softplus_hardsigmoid(x: torch.Tensor, beta: float) -> torch.Tensor:
    """``(sp(x + 3) - sp(x - 3)) / 6``: the surrogate of ``relu6(x + 3) / 6``."""
    return softplus_hardtanh(x + 3.0, beta, 0.0, 6.0) / 6.0


class SmoothActivation(FragileModule):
    """Base of the softplus surrogates: an elementwise function with inverse temperature ``beta``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)

    def extra_repr(self) -> str:
        """``beta=...`` in the model's repr."""
        return f"beta={self.beta}"


class SoftplusReLU(SmoothActivation):
    """Drop-in for ``nn.ReLU``: softplus with inverse temperature ``beta``. Its subclasses are the
    surrogates of ReLU-like (piecewise-linear, monotone) activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``softplus_beta(x)`` elementwise (Dombrowski eq. 8), any shape."""
        return softplus_beta(x, self.beta)


class SoftplusReLU6(SoftplusReLU):
    """Drop-in for ``nn.ReLU6``: ``softplus_beta(x) - softplus_beta(x - 6)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``sp(x) - sp(x - 6)`` elementwise, any shape."""
        return softplus_beta(x, self.beta) - softplus_beta(x - 6.0, self.beta)


class SoftplusHardtanh(SoftplusReLU):
    """Drop-in for ``nn.Hardtanh(min_val, max_val)``: ``min + sp(x - min) - sp(x - max)``."""

    def __init__(self, beta: float, min_val: float = -1.0, max_val: float = 1.0):
        super().__init__(beta)
        self.min_val, self.max_val = float(min_val), float(max_val)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``min_val + sp(x - min_val) - sp(x - max_val)`` elementwise, any shape."""
        return softplus_hardtanh(x, self.beta, self.min_val, self.max_val)

    def extra_repr(self) -> str:
        """``beta``, ``min_val`` and ``max_val`` in the model's repr."""
        return f"beta={self.beta}, min_val={self.min_val}, max_val={self.max_val}"


class SoftplusLeakyReLU(SoftplusReLU):
    """Drop-in for ``nn.LeakyReLU(s)``: ``s x + (1 - s) sp(x)``."""

    def __init__(self, beta: float, negative_slope: float = 0.01):
        super().__init__(beta)
        self.negative_slope = float(negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``s x + (1 - s) sp(x)`` elementwise (``s`` the negative slope), any shape."""
        s = self.negative_slope
        return s * x + (1.0 - s) * softplus_beta(x, self.beta)

    def extra_repr(self) -> str:
        """``beta`` and ``negative_slope`` in the model's repr."""
        return f"beta={self.beta}, negative_slope={self.negative_slope}"


class SoftplusHardsigmoid(SmoothActivation):
    """Drop-in for ``nn.Hardsigmoid``: ``(sp(x + 3) - sp(x - 3)) / 6``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(sp(x + 3) - sp(x - 3)) / 6`` elementwise, any shape."""
        return softplus_hardsigmoid(x, self.beta)


class SoftplusHardswish(SmoothActivation):
    """Drop-in for ``nn.Hardswish``: ``x (sp(x + 3) - sp(x - 3)) / 6``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (sp(x + 3) - sp(x - 3)) / 6`` elementwise, any shape."""
        return x * softplus_hardsigmoid(x, self.beta)


_SMOOTH = {
    nn.ReLU: lambda m, beta: SoftplusReLU(beta),
    nn.ReLU6: lambda m, beta: SoftplusReLU6(beta),
    nn.Hardtanh: lambda m, beta: SoftplusHardtanh(beta, m.min_val, m.max_val),
    nn.LeakyReLU: lambda m, beta: SoftplusLeakyReLU(beta, m.negative_slope),
    nn.Hardsigmoid: lambda m, beta: SoftplusHardsigmoid(beta),
    nn.Hardswish: lambda m, beta: SoftplusHardswish(beta),
}


def smooth_replacer(beta: float):
    """Replacement factory for :func:`fragile.models.surgery.swapped` (also applied to the functional
    calls ``F.relu``, ``F.hardswish``, ... by its functional-activation guard)."""

    def replace(module: nn.Module):
        make = _SMOOTH.get(type(module))
        return None if make is None else make(module, beta)

    return replace


def check_beta(beta: float) -> float:
    """``beta`` as a float (a 0-d tensor is unwrapped); :class:`FragileError` unless it is a positive finite real
    number (bools refused).
    """
    if isinstance(beta, torch.Tensor) and beta.dim() == 0:
        beta = beta.item()
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise FragileError(f"softplus beta must be a positive finite number, got {beta!r}")
    beta = float(beta)
    if not (beta > 0 and beta < float("inf")):
        raise FragileError(f"softplus beta must be a positive finite number, got {beta}")
    return beta


@contextlib.contextmanager
def softplus(model: nn.Module, beta: float = 1.0) -> Iterator[nn.Module]:
    """``with softplus(model, beta=...) as smooth:`` a softplus(beta) version of ``model``.

    Every ``nn.ReLU``, ``nn.ReLU6``, ``nn.Hardtanh``, ``nn.LeakyReLU``, ``nn.Hardsigmoid`` and
    ``nn.Hardswish`` (in-place or not, nested anywhere) becomes its softplus surrogate (module
    docstring); so do the functional calls (``F.relu``, ``torch.relu``, ``Tensor.relu``,
    ``F.relu6``, ``F.hardtanh``, ``F.leaky_relu``, ``F.hardsigmoid``, ``F.hardswish`` and their
    in-place forms) that ``smooth``'s forward makes. Everything is restored on exit, also on
    exceptions; ``smooth`` is ``model`` run under the functional-activation guard.
    """
    beta = check_beta(beta)
    with swapped(model, smooth_replacer(beta)):
        yield Guarded(model)
