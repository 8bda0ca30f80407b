"""Maps that are sums over chunks (integrated gradients' path points, SmoothGrad's noise samples):
chunk sizes chosen by image size, and differentiation through the map in memory of one chunk.

A method whose map is ``finish(x, T(x))`` with ``T(x) = sum_i t_i(x)`` (chunk i of path points or noise
samples, each one model forward and backward) describes the chunks as a generator function
``terms(net, *inputs)`` yielding, in order, one callable per chunk, ``chunk(create_graph) -> t_i``, and
calls :func:`chunk_sum`. With ``create_graph=True`` and ``replay=True`` the sum is a :class:`ChunkSum`
node (two-pass differentiation): its forward computes T without a graph, except for the last chunk whose
graph is kept; its backward, given v = dL/dT, back-propagates v through the kept chunk, then recomputes
every other chunk with ``create_graph`` and accumulates ``sum_i v . dt_i/d(inputs, parameters)``, freeing
chunk i's graph before chunk i+1: exactly the one-pass gradient, in the memory of one chunk instead of all
of them. A map of one chunk costs what one pass costs.

The replay happens inside the explainer's ``context()`` (the softplus surrogate, the method's surgery),
and ``terms`` must yield the same t_i on every call: noise-averaged methods replay from the noise
generator's state at the start of the call. Gradients reach ``inputs`` and the model's parameters
(training-time regularisers); parameters are only differentiated when the backward asks for them.
Higher-order derivatives (a backward with ``create_graph``) recompute every chunk into one graph, as the
one-pass map would hold.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fragile.errors import FragileError

#: Model inputs per call (images x path points or noise samples) for ``batch_size="auto"``, in elements:
#: five ImageNet-size points (3 x 224 x 224) per call, 245 CIFAR-size (3 x 32 x 32) ones. SqueezeNet at
#: 224x224, one image, IG(20) attack gradient, 1 thread: chunks of 5 take 0.78x the time of chunks of 10
#: (and 0.73x of chunks of 2; 10 were 0.44x one chunk of 100, issue 17), and an attack iteration peaks at
#: 1.0 GB of RSS instead of 1.7 GB.
CHUNK_ELEMENTS = 5 * 3 * 224 * 224

Terms = Callable[..., Iterator[torch.Tensor]]


def chunk_param(value, name: str = "batch_size") -> int | str | None:
    """``"auto"`` (images per call from the image size, :data:`CHUNK_ELEMENTS`), an integer >= 1, or None
    (every point at once)."""
    if value is None or value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise FragileError(f"{name} must be 'auto', an integer >= 1 or None, got {value!r}")
    return int(value)


def points_per_chunk(batch_size: int | str | None, x: torch.Tensor, points: int) -> int:
    """Points (path points, noise samples) of the whole batch ``x: (N, C, H, W)`` per model call, so that a
    call sees at most ``batch_size`` images (``"auto"``: :data:`CHUNK_ELEMENTS` / (C H W)); at least one."""
    n = x.shape[0]
    if batch_size is None:
        return points
    images = max(1, CHUNK_ELEMENTS // x[0].numel()) if batch_size == "auto" else batch_size
    return max(1, min(points, images // n))


def chunk_sum(explainer, net: nn.Module, terms: Terms, inputs: tuple[torch.Tensor, ...], create_graph: bool,
              replay: bool = True) -> torch.Tensor:
    """``sum_i t_i`` over the chunks of ``terms(net, *inputs)``: without a graph, with the graph of every chunk
    (``replay=False``, one pass), or as a :class:`ChunkSum` node recomputing one chunk at a time in the backward."""
    if create_graph and not replay:
        return _total(chunk(True) for chunk in terms(net, *inputs))
    if not create_graph:
        return _total(chunk(False).detach() for chunk in terms(net, *(i.detach() for i in inputs)))
    leaves = [i.detach().requires_grad_(i.requires_grad) for i in inputs]
    total, kept, count = None, None, 0
    chunks = terms(net, *leaves)
    chunk = next(chunks)
    for following in chunks:  # pass 1 without a graph, but for the last chunk
        total, chunk, count = _add(total, chunk(False).detach()), following, count + 1
    kept = chunk(True)
    total = _add(total, kept.detach())
    params = [p for p in explainer.model.parameters() if p.requires_grad]
    replay = _Replay(explainer, terms, len(inputs), params, total, (kept, leaves), count)
    # the parameters enter as views: whether a backward needs their gradient can be asked of a view's node
    return ChunkSum.apply(replay, *inputs, *(p.view_as(p) for p in params))


def _add(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else a + b


def _total(terms: Iterator[torch.Tensor]) -> torch.Tensor:
    total = None
    for t in terms:
        total = _add(total, t)
    return total


class _Replay:
    """What :class:`ChunkSum` needs: the sum from pass 1 (handed over once), the last chunk with its graph and
    the leaves it was computed from (used once), how many chunks precede it, the explainer (its
    ``context()``), ``terms``, how many of the node's inputs are ``terms``'s, and the model's parameters (the
    node's other inputs are their views)."""

    def __init__(self, explainer, terms: Terms, n_inputs: int, params: list[torch.Tensor], total: torch.Tensor,
                 kept: tuple[torch.Tensor, list[torch.Tensor]], count: int):
        self.explainer, self.terms, self.n_inputs, self.params = explainer, terms, n_inputs, params
        self.total: torch.Tensor | None = total
        self.kept: tuple[torch.Tensor, list[torch.Tensor]] | None = kept
        self.count = count


def _will_execute(node) -> bool:
    """Whether the running backward executes autograd ``node`` (True when that cannot be told)."""
    if node is None:
        return True
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except (AttributeError, RuntimeError):
        return True


class ChunkSum(torch.autograd.Function):
    """``sum_i t_i(inputs)``, computed without a graph by :func:`chunk_sum`; the backward replays the chunks one
    at a time (``apply(replay, *inputs, *parameter_views)``)."""

    @staticmethod
    def forward(ctx, replay: _Replay, *tensors):
        """The sum pass 1 computed (``replay.total``); saves the inputs and the parameters' graph nodes."""
        ctx.replay = replay
        ctx.save_for_backward(*tensors[:replay.n_inputs])
        ctx.param_nodes = [p.grad_fn for p in tensors[replay.n_inputs:]]
        total, replay.total = replay.total, None
        return total

    @staticmethod
    def backward(ctx, v):
        """Vector-Jacobian products of ``v`` (dLoss/dmap) with every chunk, one chunk's graph at a time."""
        replay = ctx.replay
        needs = ctx.needs_input_grad[1:]
        higher = torch.is_grad_enabled()  # a backward with create_graph: keep the replayed graphs
        kept, replay.kept = replay.kept, None
        wanted = [i for i, need in enumerate(needs[:replay.n_inputs]) if need]
        wanted_params = [j for j, need in enumerate(needs[replay.n_inputs:]) if need and _will_execute(ctx.param_nodes[j])]
        params = [replay.params[j] for j in wanted_params]
        acc: list[torch.Tensor | None] = [None] * (len(wanted) + len(params))
        with torch.enable_grad():
            inputs = [t if higher else t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs)]
            rest = None  # a second backward (retain_graph) or a differentiable one: replay every chunk
            if not higher and kept is not None:  # the last chunk's graph from pass 1, then the others
                acc = _accumulate(acc, kept[0], [kept[1][i] for i in wanted] + params, v, False)
                rest = replay.count
            del kept
            if acc and rest != 0:
                with replay.explainer.context() as net:
                    for k, chunk in enumerate(replay.terms(net, *inputs)):
                        if rest is not None and k == rest:
                            break
                        acc = _accumulate(acc, chunk(True), [inputs[i] for i in wanted] + params, v, higher)
        out: list[torch.Tensor | None] = [None] * len(needs)
        for slot, g in zip(wanted + [replay.n_inputs + j for j in wanted_params], acc):
            out[slot] = g
        return (None, *out)


def _accumulate(acc: list, term: torch.Tensor, sources: list[torch.Tensor], v: torch.Tensor, higher: bool) -> list:
    """``acc + v . d term / d sources`` (None: no contribution yet)."""
    if not sources or not term.requires_grad:
        return acc
    grads = torch.autograd.grad(term, sources, v, create_graph=higher, allow_unused=True)
    return [a if g is None else _add(a, g) for a, g in zip(acc, grads)]
