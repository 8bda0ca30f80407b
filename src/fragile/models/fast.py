"""Cheaper attack iterations: BatchNorm folded into the preceding layers for the attack's gradient step.

An attack on an explanation differentiates the map, itself a gradient, so every iteration runs a forward, a
backward and a double backward through the network. In eval mode a BatchNorm after a convolution (or linear
layer) is an affine map that merges into that layer's weights and bias (``fragile.models.canonizers``, the
rewrite LRP uses): one layer fewer in each of the three passes, the same function up to float rounding
(relative differences of the objective's gradient ~3e-6 on ResNet-20, sign agreement 1.0).

Unlike LRP's canonizer, the residual blocks keep their own ``forward``: the merged layer and an identity stand
in for the (layer, BatchNorm) children in place, so no stack-and-sum is added (measured: that form costs more
than the merge saves). Pairs are taken where their data flow is known: consecutive children of an
``nn.Sequential``, the stem (``conv1``, ``bn1``), and the branches of the residual block forms the canonizer
recognises. Because a custom ``forward`` may use its children differently, the plan is verified once on the
attack's own images (the rewritten model's outputs must match the original's to sqrt(eps) of the dtype) and
dropped otherwise.

:func:`batch_norm_folding` returns a context manager factory; the attack loop enters it around its gradient
step only, never around the evaluation of an iterate, which stays on the original model exactly. Measured
with ``benchmarks/attacks.py`` (see the README).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fragile.models.canonizers import _child, _merged_pair, merge_pairs, mergeable, residual_form
from fragile.models.surgery import swapped


def _branch_pairs(block: nn.Module, names: tuple[str, ...]) -> list[tuple[nn.Module, nn.Module]]:
    pairs, i = [], 0
    while i + 1 < len(names):
        a, b = _child(block, names[i]), _child(block, names[i + 1])
        if mergeable(a, b):
            pairs.append((a, b))
            i += 2
        else:
            i += 1
    return pairs


def folding_plan(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """module -> replacement: each mergeable (layer, BatchNorm) pair -> (merged layer, identity), in place."""
    plan: dict[nn.Module, nn.Module] = {}
    for module in model.modules():
        form = residual_form(module) if module is not model else None
        pairs = _branch_pairs(module, form.branch) if form is not None else merge_pairs(module)
        for layer, batch_norm in pairs:
            if layer not in plan and batch_norm not in plan:
                plan[layer], plan[batch_norm] = _merged_pair(layer, batch_norm)
    return plan


def _same_outputs(model: nn.Module, plan: dict, x: torch.Tensor) -> bool:
    from fragile.models.outputs import model_output

    with torch.no_grad():
        ours = model_output(model, x)
        with swapped(model, plan.get):
            folded = model_output(model, x)
    tol = torch.finfo(ours.dtype).eps ** 0.5
    return folded.shape == ours.shape and bool(torch.allclose(folded, ours, rtol=tol, atol=tol * float(ours.abs().max())))


def batch_norm_folding(model: nn.Module, x: torch.Tensor) -> Callable[[], contextlib.AbstractContextManager]:
    """Plan the folding of ``model``'s BatchNorms once and check it on ``x: (N, C, H, W)``; returns ``enter()``:
    ``with enter():`` the model (in place) computes with the merged layers; restored on exit. ``enter()`` does
    nothing when nothing can be folded or the folded model's outputs differ from the original's on ``x``.

    The merged layers are computed from the weights at planning time: plan again after changing them.
    """
    plan = folding_plan(model)
    if plan and not _same_outputs(model, plan, x[:8]):
        plan = {}

    @contextlib.contextmanager
    def enter() -> Iterator[nn.Module]:
        if not plan:
            yield model
            return
        with swapped(model, plan.get):
            yield model

    enter.folded = len(plan) // 2  # how many (layer, BatchNorm) pairs were merged
    return enter


__all__ = ["batch_norm_folding", "folding_plan"]
