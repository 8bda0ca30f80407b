"""Softplus surrogate of ReLU networks (Dombrowski et al. 2019, sec. 4; Ghorbani et al. 2019).

ReLU has a vanishing second derivative almost everywhere, so a loss on a gradient map cannot be
back-propagated to the input. Replacing ``relu(x)`` by

    softplus_beta(x) = log(1 + exp(beta * x)) / beta            (Dombrowski eq. 8)

gives a network whose explanations are differentiable; softplus_beta -> relu as beta -> inf.
``relu6(x) = relu(x) - relu(x - 6)`` becomes ``softplus_beta(x) - softplus_beta(x - 6)``.
"""

from __future__ import annotations

import contextlib
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


class SoftplusReLU(FragileModule):
    """Drop-in for ``nn.ReLU``: softplus with inverse temperature ``beta``."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softplus_beta(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class SoftplusReLU6(SoftplusReLU):
    """Drop-in for ``nn.ReLU6``: ``softplus_beta(x) - softplus_beta(x - 6)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softplus_beta(x, self.beta) - softplus_beta(x - 6.0, self.beta)


_SMOOTH = {nn.ReLU: SoftplusReLU, nn.ReLU6: SoftplusReLU6}


def smooth_replacer(beta: float):
    """Replacement factory for :func:`fragile.models.surgery.swapped`."""

    def replace(module: nn.Module):
        cls = _SMOOTH.get(type(module))
        return None if cls is None else cls(beta)

    return replace


def check_beta(beta: float) -> float:
    beta = float(beta)
    if not (beta > 0 and beta < float("inf")):
        raise FragileError(f"softplus beta must be a positive finite number, got {beta}")
    return beta


@contextlib.contextmanager
def softplus(model: nn.Module, beta: float = 1.0) -> Iterator[nn.Module]:
    """``with softplus(model, beta=...) as smooth:`` a softplus(beta) version of ``model``.

    Every ``nn.ReLU`` (in-place or not, nested anywhere) becomes softplus(beta), every
    ``nn.ReLU6`` becomes its softplus difference. The original modules are restored on exit, also
    on exceptions. ``smooth`` raises :class:`~fragile.errors.UnsupportedModelError` if the forward
    pass applies ReLU functionally (which cannot be swapped module-wise).
    """
    beta = check_beta(beta)
    with swapped(model, smooth_replacer(beta)):
        yield Guarded(model)
