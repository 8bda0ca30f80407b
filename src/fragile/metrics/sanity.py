"""Sanity checks for saliency methods (Adebayo et al. 2018, sec. 3): does the map depend on the model?

Model-parameter randomisation, on a deep copy of the model (the user's model is never touched):

- ``cascading``: layers are re-initialised top-down, from the logits to the input, cumulatively; after
  step g the top g groups of layers are random.
- ``independent``: one group at a time is re-initialised, the rest keeps the trained weights.

At each step the maps of the randomised model (for the class the original model predicts) are compared
with the original maps: Spearman rank correlation and SSIM (Wang et al. 2004) of |map|, channels summed
(``reduce='abs_sum'``; ``None`` compares the raw maps, flattened, as Quantus' MPRT), each map divided by its
max before SSIM (data range 1; Adebayo et al. normalise to [0, 1]). A map that stays similar to the
original after every layer was randomised does not depend on what the model learned: the method fails.

A "layer" is every module with a ``reset_parameters`` method (conv, linear, batch norm, ...), as in
Quantus; a layer is re-initialised by its own ``reset_parameters`` (PyTorch's default initialisation;
batch norm back to identity statistics), under ``torch.random.fork_rng`` with the seed ``seed + 1 + i`` for
the i-th layer from the top, so the global random state is left alone. Quantus 0.6 seeds every layer with
the same ``seed + 1`` (layers of one shape then get identical weights); with that one difference, its
MPRT gives our Spearman values (``tests/test_sanity.py``). ``groups`` cuts the top-down list of layers into
that many consecutive groups of near-equal size (fewer explanation passes: a cheap check).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.explanations.base import Explainer, check_input, check_target
from fragile.metrics.robustness import ExplainFn, processed
from fragile.metrics.similarity import spearman, ssim
from fragile.models.outputs import match_input, model_output

MODES = ("cascading", "independent")


def randomizable_layers(model: nn.Module) -> list[str]:
    """Names of the modules that can be re-initialised (``reset_parameters``), top-down (output first)."""
    return [name for name, m in model.named_modules() if hasattr(m, "reset_parameters") and name][::-1]


def layer_groups(names: Sequence[str], groups: int | None = None) -> list[list[str]]:
    """The top-down layer names in ``groups`` consecutive groups of near-equal size (None: one per layer)."""
    if not names:
        raise FragileError("the model has no layer with parameters to randomise (no module has reset_parameters)")
    if groups is None:
        return [[n] for n in names]
    if int(groups) < 1:
        raise FragileError(f"groups must be >= 1, got {groups}")
    g = min(int(groups), len(names))
    bounds = [round(i * len(names) / g) for i in range(g + 1)]
    return [list(names[bounds[i]:bounds[i + 1]]) for i in range(g)]


def _reinitialise(model: nn.Module, names: Sequence[str], order: Sequence[str], seed: int) -> None:
    for name in names:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1 + order.index(name))
            model.get_submodule(name).reset_parameters()


def _copy(explain, model, seed: int):
    """(explanation function on the copy, the copied model). An Explainer is deep-copied with its model
    (every reference to the model, e.g. SmoothGrad's inner method, points to the one copy) and reseeded
    before every call, so noise-averaged methods see the same noise on every model (common random numbers)."""
    if isinstance(explain, Explainer):
        clone = copy.deepcopy(explain)

        def g(x, t):
            clone.reseed(seed)
            return clone.attribute(x, target=t)
        return g, clone.model
    twin = copy.deepcopy(model)
    return (lambda x, t: torch.as_tensor(explain(twin, x, t)).detach()), twin


def _similarities(m0: torch.Tensor, m1: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {"spearman": spearman(m0, m1)}
    if m0.dim() == 3 and min(m0.shape[-2:]) >= 7:
        unit = lambda m: m / m.flatten(1).amax(1).clamp(min=1e-30).view(-1, 1, 1)  # noqa: E731
        out["ssim"] = ssim(unit(m0), unit(m1), data_range=1.0)
    else:
        out["ssim"] = torch.full_like(out["spearman"], float("nan"))
    return out


def model_parameter_randomisation(explain: Explainer | ExplainFn, x: torch.Tensor, *, model: nn.Module | None = None,
                                  target=None, mode: str = "cascading", groups: int | None = None, seed: int = 0,
                                  reduce: str | None = "abs_sum") -> dict:
    """Adebayo et al.'s model-parameter randomisation test of ``explain`` (an Explainer, or a callable
    ``f(model, x, target) -> map`` with ``model=``) on ``x: (N, C, H, W)``.

    Returns ``{"mode", "layers": [names per group], "randomised": [layers random at each step],
    "spearman": (G, N), "ssim": (G, N)}`` (float64; step g: cascading = the top g + 1 groups random,
    independent = group g alone). Similarity 1 = the map did not change; a sane method falls toward 0."""
    if mode not in MODES:
        raise FragileError(f"mode must be one of {MODES}, got {mode!r}")
    check_input(x)
    if isinstance(explain, Explainer):
        model = explain.model
    elif not (callable(explain) and isinstance(model, nn.Module)):
        raise FragileError("explain must be an Explainer, or a callable f(model, x, target) with model=<nn.Module>")
    order = randomizable_layers(model)
    grouped = layer_groups(order, groups)
    x = match_input(model, x)
    with torch.no_grad():
        out0 = model_output(model, x)
    t = out0.argmax(1) if target is None else check_target(target, x.shape[0], out0.shape[1], x.device)
    g0, _ = _copy(explain, model, seed)
    m0 = processed(g0(x, t), reduce)
    scores = {"spearman": [], "ssim": []}
    counts = []
    g, twin = _copy(explain, model, seed)
    for i, names in enumerate(grouped):
        if mode == "independent" and i:
            g, twin = _copy(explain, model, seed)
        _reinitialise(twin, names, order, seed)
        for k, v in _similarities(m0, processed(g(x, t), reduce)).items():
            scores[k].append(v)
        counts.append(sum(len(n) for n in grouped[: i + 1]) if mode == "cascading" else len(names))
    return {"mode": mode, "layers": grouped, "randomised": counts,
            **{k: torch.stack(v) for k, v in scores.items()}}
