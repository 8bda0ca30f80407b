"""Reversible model surgery: swap modules inside a ``with`` block, restore them on exit.

The user's model is never left modified: every replacement is undone in ``finally``, also when
the body raises. Replacement modules hold a reference to the module they replace, so parameters
are shared, not copied.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fragile.errors import UnsupportedModelError

#: A replacement factory: given a module, return the module that replaces it, or ``None``.
Replacer = Callable[[nn.Module], "nn.Module | None"]

_INSIDE_FRAGILE = contextvars.ContextVar("inside_fragile_module", default=False)


def _children_to_replace(model: nn.Module, replace: Replacer) -> list[tuple[nn.Module, str, nn.Module]]:
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            new = replace(child)
            if new is not None:
                found.append((parent, name, new))
    return found


@contextlib.contextmanager
def swapped(model: nn.Module, replace: Replacer) -> Iterator[nn.Module]:
    """Replace every submodule ``m`` for which ``replace(m)`` is not ``None``; undo on exit.

    Works for modules nested in ``nn.Sequential``, ``nn.ModuleList`` and custom blocks (any
    attribute registered as a child). The model itself (the root) is never replaced.
    """
    plan = _children_to_replace(model, replace)
    done: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent, name, new in plan:
            old = parent._modules[name]
            parent._modules[name] = new
            done.append((parent, name, old))
        yield model
    finally:
        for parent, name, old in reversed(done):
            parent._modules[name] = old


class FragileModule(nn.Module):
    """Base of our replacement modules; marks calls as ours for :class:`FunctionalActivationGuard`."""

    def __call__(self, *args, **kwargs):
        token = _INSIDE_FRAGILE.set(True)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            _INSIDE_FRAGILE.reset(token)


_F = torch.nn.functional
_FUNCTIONAL_ACTIVATIONS = {
    _F.relu: "torch.nn.functional.relu",
    _F.relu_: "torch.nn.functional.relu_",
    _F.relu6: "torch.nn.functional.relu6",
    _F.hardtanh: "torch.nn.functional.hardtanh",
    torch.relu: "torch.relu",
    torch.relu_: "torch.relu_",
    torch.Tensor.relu: "Tensor.relu",
    torch.Tensor.relu_: "Tensor.relu_",
}


class FunctionalActivationGuard(TorchFunctionMode):
    """Raise when ``forward`` applies ReLU functionally, outside an ``nn.ReLU`` module.

    Module-wise surgery (softplus, guided backprop, DeepLIFT) cannot see such calls; silently
    continuing would give zero second derivatives or wrong maps.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _FUNCTIONAL_ACTIVATIONS.get(func)
        if name is not None and not _INSIDE_FRAGILE.get():
            raise UnsupportedModelError(
                f"the model calls {name} inside forward(); module-wise surgery (softplus "
                "smoothing, guided backprop, DeepLIFT) cannot replace it. Use nn.ReLU modules "
                "(one per use) instead of functional ReLU."
            )
        return func(*args, **(kwargs or {}))


class Guarded(nn.Module):
    """Run ``model`` under :class:`FunctionalActivationGuard`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        with FunctionalActivationGuard():
            return self.model(*args, **kwargs)


def check_eval_mode(model: nn.Module) -> None:
    """Explanations assume per-sample computation; BatchNorm/Dropout in training mode break it."""
    for name, module in model.named_modules():
        if module.training and isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            raise UnsupportedModelError(
                f"module '{name}' ({type(module).__name__}) is in training mode; call model.eval() "
                "before explaining (batch statistics and dropout make maps depend on the batch)."
            )
