"""Canonizers: rewrite a model into an equivalent form that LRP can propagate through, reversibly.

Two rewrites (as zennit's ``SequentialMergeBatchNorm`` and ``ResNetCanonizer``), both applied by
:func:`swapped` inside a ``with`` block and undone on exit, also on exceptions:

1. **BatchNorm merged into the preceding conv/linear layer** (eval mode, running statistics):

       w' = w * gamma / sqrt(var + eps),   b' = (b - mean) * gamma / sqrt(var + eps) + beta

   The layer is replaced by a copy with (w', b') and the BatchNorm by an identity (:class:`Merged`).
   The user's modules are never modified; the merged parameters are fixed copies (maps stay
   differentiable in x, not in the weights). Pairs are merged where the data flow is known without
   running the model: consecutive children of an ``nn.Sequential`` (VGG-style stacks, torchvision's
   ``downsample``), the ``conv1``/``bn1`` stem of a ResNet (the first two children of a module that
   has a ``layer1``: torchvision's ResNet, fragile's CIFAR ResNet), and the conv/BN pairs of the
   residual blocks below.
2. **Residual additions as an explicit sum.** A residual block ``after(f(x) + shortcut(x))`` is
   replaced by :class:`CanonicalBlock`, which computes ``after(Sum(stack(f(x), shortcut(x))))`` with
   the block's own modules (BatchNorms merged). LRP gives :class:`Sum` a rule of its own (the z rule
   R_i = a_i / (a_1 + a_2) R, or z+; see ``fragile.explanations.lrp``), so relevance is split between
   the two contributions instead of being copied to both branches. Blocks are recognised by the names
   of their children (:data:`FORMS`: torchvision's ``BasicBlock`` and ``Bottleneck``, fragile's CIFAR
   ``BasicBlock``, kuangliu/pytorch-cifar's blocks with ``F.relu``, and look-alikes); on its first
   call each block's canonical output is compared with its own ``forward`` (no gradient, tolerance
   sqrt(machine eps) relative), and a block that computes something else (e.g. a pre-activation
   block with the same children) is left as it is, with a warning, rather than explained wrongly.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fragile.errors import UnsupportedModelError
from fragile.models.surgery import swapped

#: Layers a BatchNorm can be merged into (exact types: a subclass may compute its weight otherwise).
MERGEABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_BN = nn.modules.batchnorm._BatchNorm


class Sum(nn.Module):
    """``z.sum(1)`` of stacked summands ``z: (N, K, ...)``: an addition as a module LRP can give a rule.

    The summands are stacked after the batch dimension, not last: each is then one contiguous block per image, so the
    stack, the sum and the rule's products are plain additions of blocks (stacked last, ``(..., K)``, stack and sum of
    two (32, 16, 32, 32) summands took 4.8x as long on one CPU thread, 30 interleaved repeats, medians: a
    strided reduction over K = 2).
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, K, ...) -> (N, ...)``: the sum of the K stacked summands."""
        return z.sum(1)


class Merged(nn.Identity):
    """Stands for a BatchNorm merged into the layer before it; checks that it sees that layer's output."""

    def __init__(self, batch_norm: nn.Module, after_linear: bool):
        super().__init__()
        self.num_features, self.after_linear = batch_norm.num_features, after_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` unchanged (the BatchNorm's scale and shift are in the preceding layer's weights).

        Raises :class:`UnsupportedModelError` unless ``x`` is ``(N, C)`` after a linear layer or ``(N, C, ...)`` after a
        conv, ``C`` the BatchNorm's ``num_features``: merging is exact only on the layer's own output.
        """
        if (self.after_linear and x.dim() != 2) or x.dim() < 2 or x.shape[1] != self.num_features:
            raise UnsupportedModelError(
                f"a BatchNorm merged into the layer before it receives shape {tuple(x.shape)}; merging is "
                f"exact only on (N, {self.num_features}{'' if self.after_linear else ', ...'}) inputs; "
                "explain with canonize=False")
        return x

    def extra_repr(self) -> str:
        """``merged BatchNorm(C)`` in the model's repr."""
        return f"merged BatchNorm({self.num_features})"


def mergeable(layer: nn.Module, batch_norm: nn.Module) -> bool:
    """``batch_norm`` (eval mode, running statistics) directly after ``layer`` can be folded into it."""
    return (type(layer) in MERGEABLE and isinstance(batch_norm, _BN) and not batch_norm.training
            and batch_norm.running_var is not None and not layer._forward_pre_hooks
            and batch_norm.num_features == layer.weight.shape[0])


def own_copy(module: nn.Module) -> nn.Module:
    """A shallow copy (same type, settings, parameter tensors) with its own containers (parameters,
    children, hooks), so nothing done to the copy reaches ``module``."""
    twin = copy.copy(module)
    twin.__dict__.update({k: type(v)(v) for k, v in module.__dict__.items() if isinstance(v, dict)})
    return twin


def merge_batch_norm(layer: nn.Module, batch_norm: nn.Module) -> nn.Module:
    """A copy of ``layer`` computing ``batch_norm(layer(x))`` (module docstring, rewrite 1)."""
    with torch.no_grad():
        scale = (batch_norm.running_var + batch_norm.eps).rsqrt()
        if batch_norm.weight is not None:
            scale = scale * batch_norm.weight
        bias = -batch_norm.running_mean if layer.bias is None else layer.bias - batch_norm.running_mean
        bias = bias * scale + (0.0 if batch_norm.bias is None else batch_norm.bias)
        weight = layer.weight * scale.view(-1, *(1,) * (layer.weight.dim() - 1))
    merged = own_copy(layer)
    merged._parameters = {"weight": nn.Parameter(weight, requires_grad=False),
                          "bias": nn.Parameter(bias.to(weight.dtype), requires_grad=False)}
    return merged


def _merged_pair(layer, batch_norm) -> tuple[nn.Module, nn.Module]:
    return merge_batch_norm(layer, batch_norm), Merged(batch_norm, isinstance(layer, nn.Linear))


def _sequential_pairs(module: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    children = list(module.children())
    return [(a, b) for a, b in zip(children, children[1:]) if mergeable(a, b)]


def _stem_pairs(module: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    names = list(module._modules)
    if names[:2] == ["conv1", "bn1"] and "layer1" in names and mergeable(module.conv1, module.bn1):
        return [(module.conv1, module.bn1)]
    return []


def merge_pairs(module: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(layer, BatchNorm) children of ``module`` whose data flow is known (module docstring)."""
    if type(module) is nn.Sequential:
        return _sequential_pairs(module)
    return _stem_pairs(module)


# -- residual blocks ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResidualForm:
    """A residual block ``after(branch(x) + shortcut(x))``: children named ``branch`` applied in order,
    the optional child ``shortcut`` (identity when absent or None), the activation ``after``;
    :data:`RELU` stands for ``F.relu`` called in ``forward`` (no child)."""

    name: str
    branch: tuple[str, ...]
    after: str
    shortcut: str

    def matches(self, block: nn.Module) -> bool:
        """``block``'s (non-None) children are exactly this form's branch and ``after`` modules, plus optionally
        ``shortcut``, and its ``conv*`` branch children are of a :data:`MERGEABLE` type.
        """
        names = {n for n, m in block._modules.items() if m is not None}
        required = (set(self.branch) | {self.after}) - {RELU}
        if names - {self.shortcut} != required:
            return False
        return all(type(getattr(block, n)) in MERGEABLE for n in self.branch if n.startswith("conv"))


RELU = "F.relu"

#: The residual blocks the canonizer recognises (by the names of their children; see CanonicalBlock).
FORMS = (
    ResidualForm("torchvision BasicBlock", ("conv1", "bn1", "relu", "conv2", "bn2"), "relu", "downsample"),
    ResidualForm("torchvision Bottleneck",
                 ("conv1", "bn1", "relu", "conv2", "bn2", "relu", "conv3", "bn3"), "relu", "downsample"),
    ResidualForm("CIFAR BasicBlock", ("conv1", "bn1", "relu1", "conv2", "bn2"), "relu2", "shortcut"),
    ResidualForm("pytorch-cifar BasicBlock", ("conv1", "bn1", RELU, "conv2", "bn2"), RELU, "shortcut"),
    ResidualForm("pytorch-cifar Bottleneck",
                 ("conv1", "bn1", RELU, "conv2", "bn2", RELU, "conv3", "bn3"), RELU, "shortcut"),
)


def residual_form(module: nn.Module) -> ResidualForm | None:
    """The first of :data:`FORMS` whose children ``module`` has, or ``None`` (not a recognised residual block)."""
    return next((f for f in FORMS if f.matches(module)), None)


#: block -> whether its canonical form computes its forward (checked once per block, on its first call)
_VERDICTS: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


def _child(block: nn.Module, name: str) -> nn.Module:
    return nn.ReLU() if name == RELU else getattr(block, name)


def _branch(block: nn.Module, names: tuple[str, ...]) -> list[nn.Module]:
    """The branch's modules in order, (layer, BN) pairs merged. A module used twice (the Bottleneck's
    ``relu``) appears as a copy the second time: surgery replaces each child of a container once."""
    steps, i = [], 0
    while i < len(names):
        m = _child(block, names[i])
        nxt = _child(block, names[i + 1]) if i + 1 < len(names) else None
        if nxt is not None and mergeable(m, nxt):
            steps += _merged_pair(m, nxt)
            i += 2
        else:
            steps.append(own_copy(m) if any(m is s for s in steps) else m)
            i += 1
    return steps


class CanonicalBlock(nn.Module):
    """``after(Sum(stack(branch(x), shortcut(x))))`` with the modules of ``block`` (module docstring)."""

    def __init__(self, block: nn.Module, form: ResidualForm, name: str = ""):
        super().__init__()
        self.branch = nn.Sequential(*_branch(block, form.branch))  # first: the first layer stays first
        shortcut = getattr(block, form.shortcut, None)
        self.shortcut = nn.Identity() if shortcut is None else shortcut
        self.sum = Sum()
        self.after = _child(block, form.after)
        self.block = block  # its own forward: the check, and the fallback
        self.form, self.block_name = form, name

    def canonical(self, x: torch.Tensor) -> torch.Tensor:
        """``after(Sum(stack(branch(x), shortcut(x))))``: the rewritten data flow, unchecked."""
        return self.after(self.sum(torch.stack([self.branch(x), self.shortcut(x)], dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The canonical computation if it reproduces the block's own ``forward``, else that ``forward``.

        The comparison is made once per block, on its first call (no gradient, relative tolerance sqrt(eps) of the
        dtype), and remembered; a block that fails it is left as it is, with a warning.
        """
        verdict = _VERDICTS.get(self.block)
        if verdict is None:
            verdict = _VERDICTS[self.block] = self._computes_forward(x)
        return self.canonical(x) if verdict else self.block(x)

    def _computes_forward(self, x: torch.Tensor) -> bool:
        with torch.no_grad():
            theirs = self.block(x)
            try:
                ours = self.canonical(x)
            except RuntimeError:  # e.g. shapes that do not fit the assumed data flow
                ours = None
        tol = torch.finfo(theirs.dtype).eps ** 0.5 if theirs.is_floating_point() else 0.0
        same = (ours is not None and ours.shape == theirs.shape
                and torch.allclose(ours, theirs, rtol=tol, atol=tol * float(theirs.abs().max())))
        if not same:
            warnings.warn(f"canonizer: '{self.block_name}' ({type(self.block).__name__}) has the children of a "
                          f"{self.form.name} but computes something else; left as it is (LRP copies relevance "
                          "to both branches of its residual addition)", stacklevel=2)
        return same

    def extra_repr(self) -> str:
        """``form='...'``, the recognised block form, in the model's repr."""
        return f"form={self.form.name!r}"


# -- the canonizer ------------------------------------------------------------------------------
def canonical_plan(model: nn.Module) -> dict[nn.Module, nn.Module]:
    """module -> its replacement: residual blocks -> :class:`CanonicalBlock`, merged (layer, BN)
    pairs -> (merged layer, :class:`Merged`). The root itself is never replaced."""
    plan: dict[nn.Module, nn.Module] = {}
    for name, module in model.named_modules():
        form = residual_form(module) if module is not model else None
        if form is not None:
            plan[module] = CanonicalBlock(module, form, name)
            continue
        for layer, batch_norm in merge_pairs(module):
            plan[layer], plan[batch_norm] = _merged_pair(layer, batch_norm)
    return plan


@contextlib.contextmanager
def canonized(model: nn.Module) -> Iterator[nn.Module]:
    """``with canonized(model) as m:`` ``m`` computes the same function with BatchNorms merged and
    residual additions as :class:`Sum` modules (module docstring); restored on exit."""
    plan = canonical_plan(model)
    with swapped(model, plan.get):
        yield model
