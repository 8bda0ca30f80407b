"""Max-pool windows held fixed between two forward passes (the forward-difference Hessian-vector product).

A max-pool network (VGG, SqueezeNet) with a softplus surrogate is smooth only between the points where a pooling
window's maximum moves to another input. Autograd's double backward differentiates it with x's winners fixed
(max-pool's backward routes the gradient by the indices of the forward pass; the indices have no derivative), i.e.
it returns H_w(x) v, the Hessian of the smooth network g_w in which every window passes on the input that won at
x. A forward difference of two gradient maps, (h(x + s v) - h(x)) / s, differentiates a *different* function as
soon as one window's winner changes between x and x + s v (2.6-5.6% of SqueezeNet's windows at the steps tried,
``benchmarks/second_order.py``). With the winners of x replayed at x + s v both passes are of g_w:

    (grad g_w(x + s v) - grad g_w(x)) / s  ->  H_w(x) v   as s -> 0     (O(s), the surrogate's third derivative)

``FrozenPools`` is a torch function mode: ``with pools.recording():`` every max pool (modules and functional
calls: ``max_pool{1,2,3}d`` (with or without indices), ``adaptive_max_pool{1,2,3}d``, ``torch.max_pool{1,2,3}d``) runs as usual and its
indices are kept in call order; ``with pools.replaying():`` the same calls, in the same order, gather their input
at those indices instead of taking the maximum (differentiable: the gradient flows to the recorded winners, as
max-pool's own backward does). A replay whose calls or shapes differ from the recording raises ``FragileError``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from fragile.errors import FragileError


def _with_indices(pool: Callable) -> Callable:
    """``pool(*args, **kwargs)`` asked for its indices: ``(values, indices)``."""
    def call(*args, **kwargs):
        return pool(*args, **{**kwargs, "return_indices": True})
    return call


def _torch_max_pool(nd: int) -> Callable:
    """``torch.max_pool{nd}d(input, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False)`` by its
    functional twin with indices (an empty stride: the kernel size, as ``F.max_pool{nd}d``'s ``None``)."""
    functional = getattr(F, f"max_pool{nd}d")

    def call(input, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
        return functional(input, kernel_size, stride or None, padding, dilation, ceil_mode=ceil_mode,
                          return_indices=True)
    return call


#: func -> (spatial dims, the same pooling returning ``(values, indices)``)
MAX_POOLS: dict[Callable, tuple[int, Callable]] = {}
for _nd in (1, 2, 3):
    MAX_POOLS[getattr(F, f"max_pool{_nd}d")] = (_nd, _with_indices(getattr(F, f"max_pool{_nd}d")))
    MAX_POOLS[getattr(F, f"max_pool{_nd}d_with_indices")] = (_nd, _with_indices(getattr(F, f"max_pool{_nd}d")))
    for _name in (f"adaptive_max_pool{_nd}d", f"adaptive_max_pool{_nd}d_with_indices"):
        MAX_POOLS[getattr(F, _name)] = (_nd, _with_indices(getattr(F, f"adaptive_max_pool{_nd}d")))
    MAX_POOLS[getattr(torch, f"max_pool{_nd}d")] = (_nd, _torch_max_pool(_nd))


def gather_windows(x: torch.Tensor, indices: torch.Tensor, nd: int) -> torch.Tensor:
    """``x: (..., *spatial_in)`` read at max-pool ``indices: (..., *spatial_out)`` (flat positions in the
    ``nd`` spatial dims of ``x``, as ``return_indices=True`` gives them): the pooled values of those windows."""
    lead = x.shape[:-nd]
    if tuple(indices.shape[:-nd]) != tuple(lead):
        raise FragileError(f"frozen max pool: the input's leading shape {tuple(lead)} differs from the recorded "
                           f"{tuple(indices.shape[:-nd])}")
    flat = x.reshape(*lead, -1)
    return flat.gather(-1, indices.reshape(*lead, -1)).reshape(indices.shape)


class FrozenPools(TorchFunctionMode):
    """Record the max-pool winners of one forward pass, replay them in another (module docstring)."""

    def __init__(self):
        super().__init__()
        self.saved: list[tuple[Callable, tuple, torch.Tensor]] = []
        self.mode: str | None = None
        self.at = 0

    @contextlib.contextmanager
    def recording(self) -> Iterator[FrozenPools]:
        """Run max pools as usual, keep their indices (a new recording replaces the last)."""
        self.saved, self.mode = [], "record"
        try:
            with self:
                yield self
        finally:
            self.mode = None

    @contextlib.contextmanager
    def replaying(self) -> Iterator[FrozenPools]:
        """Max pools gather at the recorded indices, in the recorded order; every recorded call must be replayed."""
        self.mode, self.at = "replay", 0
        try:
            with self:
                yield self
            if self.at != len(self.saved):
                raise FragileError(f"frozen max pools: {len(self.saved)} recorded, {self.at} replayed (the forward "
                                   "pass took another path)")
        finally:
            self.mode = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        spec = MAX_POOLS.get(func)
        if spec is None or self.mode is None:
            return func(*args, **kwargs)
        nd, pooled = spec
        x = args[0] if args else kwargs["input"]
        wants_indices = bool(kwargs.get("return_indices", False))
        if self.mode == "record":
            values, indices = pooled(*args, **kwargs)
            self.saved.append((func, tuple(x.shape), indices.detach()))
            return (values, indices) if wants_indices else values
        if self.at >= len(self.saved):
            raise FragileError(f"frozen max pools: call {self.at + 1} was not recorded (the forward pass took another "
                               "path)")
        recorded_func, shape, indices = self.saved[self.at]
        if recorded_func is not func or shape != tuple(x.shape):
            raise FragileError(f"frozen max pools: call {self.at + 1} is {getattr(func, '__name__', func)} on "
                               f"{tuple(x.shape)}, recorded {getattr(recorded_func, '__name__', recorded_func)} "
                               f"on {shape}")
        self.at += 1
        values = gather_windows(x, indices, nd)
        return (values, indices) if wants_indices else values


__all__ = ["MAX_POOLS", "FrozenPools", "gather_windows"]
