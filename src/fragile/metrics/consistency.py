"""Local consistency of explanations (Dasgupta et al. 2022, sec. 3; Quantus 0.6 ``Consistency``).

An explanation is consistent when inputs that get the same explanation get the same prediction. With a
discretisation D of the maps (continuous maps are never exactly equal) and the model's predicted class f,
the local consistency of image i, estimated over the batch x (the population sample; Dasgupta et al. eq. 2,
m(x) = Pr_{x'}[f(x') = f(x) | D(e(x')) = D(e(x))]), is::

    m_i = #{j != i : D_j = D_i and f(x_j) = f(x_i)} / #{j != i : D_j = D_i}

in [0, 1], higher is more consistent; its mean over the batch is the global consistency. NaN for an image
whose discretised map no other image shares (no estimate; Quantus returns 0 there, 0 / (0 + 1e-9)).

Discretisations (``discretise``): ``"top_n_sign"`` (Quantus' default): the signs of the first ``n`` entries
of the flattened map, in memory order, not its n largest (after ``abs`` these are 0 / 1: which of the first n
pixels have any attribution); ``"top_k"``: the set of positions of the ``n`` largest entries (ties broken by
``torch.topk``); or a callable ``(N, D) float64 maps -> (N, ...) codes``, equal rows being the same
explanation. The estimate is over the whole ``x`` (Quantus' is over each of its ``batch_size`` batches:
give it ``batch_size >= N`` to compare). ``abs`` / ``normalise`` (per-image max) as Quantus' defaults; signs
and the top-k set do not depend on the normalisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.explanations.base import Explainer, check_input, check_target, int_param
from fragile.metrics.continuity import _unit
from fragile.metrics.robustness import ExplainFn, explain_function, processed
from fragile.models.outputs import match_input, model_output

DISCRETISERS = ("top_n_sign", "top_k")


def top_n_sign(maps: torch.Tensor, n: int = 5) -> torch.Tensor:
    """Quantus' ``top_n_sign``: the signs of the first ``n`` entries of each flattened map, (N, D) -> (N, n)."""
    return torch.sign(maps.reshape(maps.shape[0], -1)[:, :n])


def top_k(maps: torch.Tensor, n: int = 5) -> torch.Tensor:
    """The sorted positions of the ``n`` largest entries of each flattened map, (N, D) -> (N, n)."""
    flat = maps.reshape(maps.shape[0], -1)
    return flat.topk(min(n, flat.shape[1]), dim=1).indices.sort(dim=1).values


def same_explanation(codes: torch.Tensor) -> torch.Tensor:
    """(N, ...) discretised maps -> (N, N) bool: row i equals row j, the diagonal excluded."""
    c = codes.reshape(codes.shape[0], -1)
    same = (c.unsqueeze(0) == c.unsqueeze(1)).all(2)
    return same & ~torch.eye(len(c), dtype=torch.bool, device=c.device)


def consistency(explain: Explainer | ExplainFn, x: torch.Tensor, *, model: nn.Module | None = None, target=None,
                discretise: str | Callable[[torch.Tensor], torch.Tensor] = "top_n_sign", n: int = 5,
                reduce: str | None = None, abs: bool = True, normalise: bool = True, batch_size: int = 64,
                seed: int = 0) -> torch.Tensor:
    """Local consistency m_i of each image of ``x: (N, C, H, W)``, N >= 2 (the module docstring), (N,) float64
    in [0, 1] or NaN. ``explain``: an Explainer or a callable ``f(model, x, target)`` with ``model=``;
    ``target``: the explained class (default the predicted one); ``batch_size`` images explained per call
    (noise-averaged explainers reseeded with ``seed`` before each). Quantus' ``Consistency`` on the same
    batch gives the same values where one is defined."""
    check_input(x)
    n = int_param(n, "n")
    batch_size = int_param(batch_size, "batch_size")
    if isinstance(discretise, str):
        if discretise not in DISCRETISERS:
            raise FragileError(f"unknown discretise {discretise!r}; choose one of {DISCRETISERS} or a callable")
        fn = {"top_n_sign": top_n_sign, "top_k": top_k}[discretise]
        discretiser = lambda maps: fn(maps, n)  # noqa: E731
    elif callable(discretise):
        discretiser = discretise
    else:
        raise FragileError(f"discretise must be one of {DISCRETISERS} or a callable, got {discretise!r}")
    if x.shape[0] < 2:
        raise FragileError(f"consistency compares images with each other: it needs N >= 2, got {x.shape[0]}")
    model, g = explain_function(explain, model, seed=seed)
    x = match_input(model, x)
    with torch.no_grad():
        out = model_output(model, x)
    pred = out.argmax(1)
    t = pred if target is None else check_target(target, x.shape[0], out.shape[1], x.device)
    maps = torch.cat([_unit(processed(g(xb, tb), reduce), abs, normalise)
                      for xb, tb in zip(x.split(batch_size), t.split(batch_size))])
    codes = torch.as_tensor(discretiser(maps), device=x.device)
    if codes.shape[0] != x.shape[0]:
        raise FragileError(f"discretise returned {tuple(codes.shape)} for {x.shape[0]} maps: it must return one row per map")
    same = same_explanation(codes)
    agree = same & (pred.unsqueeze(0) == pred.unsqueeze(1))
    count = same.sum(1)
    ratio = agree.sum(1).double() / count.clamp(min=1)
    return torch.where(count > 0, ratio, torch.full_like(ratio, float("nan")))
