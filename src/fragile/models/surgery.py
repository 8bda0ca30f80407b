"""Reversible model surgery: swap modules inside a ``with`` block, restore them on exit.

The user's model is never left modified: every replacement is undone in ``finally``, also when
the body raises. Replacement modules hold a reference to the module they replace, so parameters
are shared, not copied.

Functional calls. A ``forward`` may apply an activation functionally (``F.relu(x)``, ``x.relu()``,
``F.hardswish(x)``, ...), which no module swap can see. While :class:`FunctionalActivationGuard` (a
``TorchFunctionMode``) is active, each such call is turned into its equivalent module
(``F.leaky_relu(x, a)`` -> ``nn.LeakyReLU(a)``), the replacement factory of every active
:func:`swapped` block is applied to it (outermost block first, so smoothing then method rules), and
the replacement runs instead. Calls made by our own replacement modules (:class:`FragileModule`) pass
through. Inside the guard also:

- ``hardswish`` / ``hardsigmoid`` left unreplaced run as compositions of differentiable primitives
  (``aten::hardsigmoid_backward`` has no derivative, so ``create_graph=True`` would fail);
- scaled dot-product attention runs on the math backend (the flash CPU kernel has no double
  backward);
- inside :func:`covered_by` (a propagation-rule method: LRP, DeepLIFT, ...), modules and functional
  operations the method has no rule for raise :class:`UnsupportedModelError` naming the module,
  instead of giving a silently wrong map.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from fragile.errors import UnsupportedModelError

#: A replacement factory: given a module, return the module that replaces it, or ``None``.
Replacer = Callable[[nn.Module], "nn.Module | None"]

#: Methods that need no propagation rules (plain gradients through any differentiable model).
GRADIENT_METHODS = ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "uniform_gradient")

_INSIDE_FRAGILE = contextvars.ContextVar("inside_fragile_module", default=False)
_REPLACERS: contextvars.ContextVar[tuple[Replacer, ...]] = contextvars.ContextVar("replacers", default=())


@contextlib.contextmanager
def inside_fragile() -> Iterator[None]:
    """Mark the calls in this block as ours: the guard lets them pass unchanged."""
    token = _INSIDE_FRAGILE.set(True)
    try:
        yield
    finally:
        _INSIDE_FRAGILE.reset(token)


def _children_to_replace(model: nn.Module, replace: Replacer) -> list[tuple[nn.Module, str, nn.Module]]:
    found = []
    for parent in model.modules():
        # every slot, also a module registered twice (nn.Sequential(lin, relu, lin2, relu)): named_children()
        # would yield the shared module once and leave its second use unswapped
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            new = replace(child)
            if new is not None:
                found.append((parent, name, new))
    return found


@contextlib.contextmanager
def swapped(model: nn.Module, replace: Replacer) -> Iterator[nn.Module]:
    """Replace every submodule ``m`` for which ``replace(m)`` is not ``None``; undo on exit.

    Works for modules nested in ``nn.Sequential``, ``nn.ModuleList`` and custom blocks (any
    attribute registered as a child). The model itself (the root) is never replaced. While the
    block is active, :class:`FunctionalActivationGuard` applies ``replace`` to functional
    activations too.
    """
    plan = _children_to_replace(model, replace)
    done: list[tuple[nn.Module, str, nn.Module]] = []
    token = _REPLACERS.set(_REPLACERS.get() + (replace,))
    try:
        for parent, name, new in plan:
            old = parent._modules[name]
            parent._modules[name] = new
            done.append((parent, name, old))
        yield model
    finally:
        for parent, name, old in reversed(done):
            parent._modules[name] = old
        _REPLACERS.reset(token)


class FragileModule(nn.Module):
    """Base of our replacement modules; marks calls as ours for :class:`FunctionalActivationGuard`."""

    def __call__(self, *args, **kwargs):
        """Run the module with its calls marked as ours, so the guard passes them through unchanged."""
        with inside_fragile():
            return super().__call__(*args, **kwargs)


# -- functional calls and their equivalent modules ------------------------------------------------
_F = torch.nn.functional


def _act(cls, *names, **defaults):
    """Equivalent of ``f(input, *params, inplace=...)``: ``cls(**params)`` applied to ``input``."""
    def equivalent(input, *args, inplace=False, **kwargs):
        params = dict(defaults, **dict(zip(names, args)), **kwargs)
        return cls(**params), input
    return equivalent


def _max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    if return_indices:
        return None, input
    return nn.MaxPool2d(kernel_size, stride, padding, dilation, ceil_mode=ceil_mode), input


def _avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
    return nn.AvgPool2d(kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override), input


_RELU = _act(nn.ReLU)
#: function -> (args, kwargs) -> (equivalent module or None, input)
EQUIVALENT_MODULES: dict[Callable, Callable] = {
    _F.relu: _RELU, _F.relu_: _RELU, torch.relu: _RELU, torch.relu_: _RELU,
    torch.Tensor.relu: _RELU, torch.Tensor.relu_: _RELU,
    _F.relu6: _act(nn.ReLU6),
    _F.hardtanh: _act(nn.Hardtanh, "min_val", "max_val"), _F.hardtanh_: _act(nn.Hardtanh, "min_val", "max_val"),
    _F.leaky_relu: _act(nn.LeakyReLU, "negative_slope"), _F.leaky_relu_: _act(nn.LeakyReLU, "negative_slope"),
    _F.hardswish: _act(nn.Hardswish), _F.hardsigmoid: _act(nn.Hardsigmoid),
    _F.elu: _act(nn.ELU, "alpha"), _F.elu_: _act(nn.ELU, "alpha"),
    _F.softplus: _act(nn.Softplus, "beta", "threshold"),
    _F.gelu: _act(nn.GELU, "approximate"), _F.silu: _act(nn.SiLU), _F.mish: _act(nn.Mish),
    torch.sigmoid: _act(nn.Sigmoid), torch.Tensor.sigmoid: _act(nn.Sigmoid),
    torch.tanh: _act(nn.Tanh), torch.Tensor.tanh: _act(nn.Tanh),
    _F.max_pool2d: _max_pool2d, _F.avg_pool2d: _avg_pool2d,
    _F.adaptive_avg_pool2d: _act(nn.AdaptiveAvgPool2d, "output_size"),
}


def hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    """``relu6(x + 3) / 6`` from primitives with a double backward; value and first derivative
    equal PyTorch's (derivative 1/6 on the open interval (-3, 3), 0 elsewhere)."""
    inside = (x > -3) & (x < 3)
    return torch.where(inside, x / 6 + 0.5, (x >= 3).to(x.dtype))


def hardswish(x: torch.Tensor) -> torch.Tensor:
    """``x * relu6(x + 3) / 6`` from primitives with a double backward; derivative as PyTorch's
    (0 up to -3, x/3 + 1/2 on (-3, 3), 1 from 3 on)."""
    return torch.where(x <= -3, torch.zeros_like(x), torch.where(x < 3, x * (x + 3) / 6, x))


_TWICE_DIFFERENTIABLE = {nn.Hardswish: hardswish, nn.Hardsigmoid: hardsigmoid}

#: Operations that no propagation rule covers (refused inside :func:`covered_by` when they act on an
#: input-dependent tensor), by the name the error message gives.
_T = torch.Tensor
UNCOVERED: dict[Callable, str] = {
    f: name for name, fs in {
        "softmax": (_F.softmax, torch.softmax, _T.softmax, _F.log_softmax, torch.log_softmax, _T.log_softmax),
        "layer_norm": (_F.layer_norm, torch.layer_norm), "group_norm": (_F.group_norm, torch.group_norm),
        "rms_norm": (_F.rms_norm,), "instance_norm": (_F.instance_norm,), "normalize": (_F.normalize,),
        "local_response_norm": (_F.local_response_norm,),
        "scaled_dot_product_attention": (_F.scaled_dot_product_attention,),
        "multi_head_attention_forward": (_F.multi_head_attention_forward,),
        "a recurrent layer": (torch.lstm, torch.gru, torch.rnn_tanh, torch.rnn_relu, torch.lstm_cell,
                              torch.gru_cell, torch.rnn_tanh_cell, torch.rnn_relu_cell),
        "exp / log / pow / sqrt": (torch.exp, _T.exp, torch.log, _T.log, torch.pow, _T.pow, _T.__pow__,
                                   torch.sqrt, _T.sqrt, torch.rsqrt, _T.rsqrt, torch.reciprocal,
                                   _T.reciprocal, torch.logsumexp, _T.logsumexp),
        "max / min / abs": (torch.max, _T.max, torch.amax, _T.amax, torch.min, _T.min, torch.amin,
                            _T.amin, torch.abs, _T.abs),
    }.items() for f in fs
}
#: Products: refused inside :func:`covered_by` when two factors depend on the input (gates, attention).
PRODUCTS = frozenset({torch.mul, _T.mul, _T.mul_, _T.__mul__, _T.__rmul__, _T.__imul__, torch.div, _T.div,
                      _T.div_, _T.__truediv__, _T.__rtruediv__, torch.matmul, _T.matmul, _T.__matmul__,
                      torch.bmm, _T.bmm, torch.mm, _T.mm, torch.einsum, torch.baddbmm, _F.bilinear})


@dataclass
class Coverage:
    """What a propagation-rule method handles: ``supports(module)`` for every leaf module and for the
    equivalent module of a functional activation."""

    method: str
    model: nn.Module
    supports: Callable[[nn.Module], bool]

    def refuse(self, what: str) -> UnsupportedModelError:
        """The :class:`UnsupportedModelError` for ``what`` (a module or operation ``method`` has no rule for),
        naming the gradient methods that work instead.
        """
        return UnsupportedModelError(
            f"{self.method} has no propagation rule for {what}; it would return a wrong map. Methods "
            f"that work on this model: {', '.join(GRADIENT_METHODS)}.")

    def caller(self) -> str:
        """The innermost module of the model whose ``forward`` is on the call stack."""
        names = {id(m): n for n, m in self.model.named_modules()}
        frame = sys._getframe(1)
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, nn.Module) and id(owner) in names:
                name = names[id(owner)]
                return f"'{name}' ({type(owner).__name__})" if name else f"the model ({type(owner).__name__})"
            frame = frame.f_back
        return f"the model ({type(self.model).__name__})"


_COVERAGE: contextvars.ContextVar[Coverage | None] = contextvars.ContextVar("coverage", default=None)

#: Modules refused even though they have children (their forward is one opaque functional call).
OPAQUE = (nn.MultiheadAttention,)


def check_coverage(model: nn.Module, method: str, supports: Callable[[nn.Module], bool]) -> None:
    """Raise :class:`UnsupportedModelError` naming the first module ``method`` has no rule for:
    a leaf module with ``supports(m)`` false, or an opaque container (``nn.MultiheadAttention``)."""
    cov = Coverage(method, model, supports)
    for name, m in model.named_modules():
        leaf = next(m.children(), None) is None
        if isinstance(m, OPAQUE) or (leaf and name and not supports(m)):
            raise cov.refuse(f"module '{name}' ({type(m).__name__})")


@contextlib.contextmanager
def covered_by(method: str, model: nn.Module, supports: Callable[[nn.Module], bool]) -> Iterator[nn.Module]:
    """Within the block, ``model`` is explained by a propagation-rule ``method``: its modules are
    checked now, its functional operations as they run (under :class:`FunctionalActivationGuard`)."""
    check_coverage(model, method, supports)
    token = _COVERAGE.set(Coverage(method, model, supports))
    try:
        yield model
    finally:
        _COVERAGE.reset(token)


class FunctionalActivationGuard(TorchFunctionMode):
    """Route functional activations inside ``forward`` through the active surgery (module docstring).

    ``model``: act only on calls made while ``model`` runs its forward (not on the explainer's own
    computations around it); ``None``: on every call while the mode is active.
    """

    def __init__(self, model: nn.Module | None = None):
        super().__init__()
        self.model, self._depth, self._batch, self._hooks = model, 0, None, []

    # -- entering / leaving ------------------------------------------------------------------------
    def _pre(self, module, args):
        self._depth += 1
        if self._depth == 1:
            self._batch = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else None

    def _post(self, module, args, output):
        self._depth -= 1

    def __enter__(self):
        if self.model is not None:
            self._hooks = [self.model.register_forward_pre_hook(self._pre),
                           self.model.register_forward_hook(self._post, always_call=True)]
        self._math_attention = sdpa_kernel(SDPBackend.MATH)
        self._math_attention.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._math_attention.__exit__(*exc)
            for h in self._hooks:
                h.remove()
            self._hooks = []

    # -- the mode --------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _INSIDE_FRAGILE.get() or (self.model is not None and self._depth == 0):
            return func(*args, **kwargs)
        coverage = _COVERAGE.get()
        equivalent = EQUIVALENT_MODULES.get(func)
        if equivalent is not None:
            return self._activation(func, equivalent, args, kwargs, coverage)
        if coverage is not None:
            self._check(func, args, kwargs, coverage)
        return func(*args, **kwargs)

    def _activation(self, func, equivalent, args, kwargs, coverage):
        replacers = _REPLACERS.get()
        if not replacers and coverage is None and func not in (_F.hardswish, _F.hardsigmoid):
            return func(*args, **kwargs)
        module, x = equivalent(*args, **kwargs)
        if module is None:
            return func(*args, **kwargs)
        if coverage is not None and not coverage.supports(module):
            raise coverage.refuse(f"{getattr(func, '__name__', func)} (as {type(module).__name__}) called in "
                                  f"forward() of {coverage.caller()}")
        new = module
        for replace in replacers:
            new = replace(new) or new
        with inside_fragile():
            if new is not module:
                return new(x)
            twice = _TWICE_DIFFERENTIABLE.get(type(module))
            return twice(x) if twice is not None else func(*args, **kwargs)

    def _check(self, func, args, kwargs, coverage):
        what = UNCOVERED.get(func)
        if what is None and func not in PRODUCTS:
            return
        dependent = [a for a in (*args, *kwargs.values()) if self._input_dependent(a)]
        if what is not None and dependent:
            raise coverage.refuse(f"{what} ({getattr(func, '__name__', func)}) in forward() of {coverage.caller()}")
        if what is None and len(dependent) >= 2:
            raise coverage.refuse(f"a product of two input-dependent tensors ({func.__name__}: a gate or "
                                  f"attention) in forward() of {coverage.caller()}")

    def _input_dependent(self, a) -> bool:
        """A tensor computed from the model's input (batch-leading, with a history); parameters,
        buffers and constants are not."""
        if isinstance(a, (list, tuple)):
            return any(self._input_dependent(b) for b in a)
        return (isinstance(a, torch.Tensor) and a.grad_fn is not None and a.dim() > 0
                and (self._batch is None or a.shape[0] == self._batch))


class Guarded(nn.Module):
    """Run ``model`` under :class:`FunctionalActivationGuard`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        """``model(*args, **kwargs)`` under a fresh :class:`FunctionalActivationGuard` (acting on every call)."""
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
