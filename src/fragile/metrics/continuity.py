"""Explanation continuity under translations (Montavon et al. 2018, sec. 5.1; Quantus 0.6 ``Continuity``).

Montavon et al. call an explanation continuous when nearly identical inputs get nearly identical
explanations, and measure its strongest variation, ``max_{x != x'} ||R(x) - R(x')||_1 / ||x - x'||_2``, over
inputs x' obtained from x by a family of small changes: translations, as in their Fig. 7, here. Per image::

    C(x) = max_k ||R~(x) - R~(t_k x)||_1 / ||x - t_k x||_2,    R~ = |R| / max |R|  (per image)

t_k shifts the image by d_k pixels along its width (``direction="x"``) or height (``"y"``), the vacated
columns / rows filled with the ``baseline`` ("black": the image's minimum over all pixels and channels, as
Quantus; "white": its maximum; "mean"; or a number). The shifts follow Quantus' schedule: with S the
translated size, dx = (2 S + 1) // nr_steps and d_k = -S + dx (k + 1), k = 0 .. nr_steps - 1 (capped at S: the
all-baseline image). Lower is more continuous; norms of the flattened map (N, C*H*W or H*W) and image
(N, C*H*W), so C is in map units (of the max-normalised map) per unit of pixel value.

Conventions, and where they differ from Quantus 0.6 (checked in ``tests/test_stability_quantus.py``):

- ``normalise``: per image (Quantus' ``normalise_by_max`` divides the whole batch by its one maximum:
  give it ``normalise_func_kwargs={"normalise_axes": (1, 2, 3)}`` for ours). A zero map stays zero.
- A shift that leaves x unchanged (d_k = 0, or an image constant along the shift) has no ratio (0 / 0): it is
  skipped (Quantus adds 1e-9 to the denominator and counts 0 for a deterministic method; the two maxima
  differ only when every shift leaves x unchanged: NaN here, 0 there).
- ``return_nan_when_prediction_changes``: NaN for an image whose predicted class any shift changes
  (Quantus compares with ``y_batch``, we with the class predicted for x).
- Quantus 0.6 ignores its ``perturb_func`` and ``perturb_baseline`` (black, x direction always) and fails
  when a shift exceeds the width (e.g. ``nr_steps=1``); its ``return_nan_when_prediction_changes=True``
  writes ``np.NaN``, gone in NumPy 2. Earlier Quantus releases (with ``patch_size`` and ``similarity_func``)
  correlated patch-wise attribution sums with the output; this follows 0.6 and the paper's ratio.
"""

from __future__ import annotations

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.metrics._perturb import check_baseline, fill_value
from fragile.explanations.base import Explainer, check_input, check_target, int_param
from fragile.metrics.robustness import ExplainFn, aggregate, explain_function, processed, stochastic
from fragile.models.outputs import match_input, model_output

DIRECTIONS = ("x", "y")


def shifts(size: int, nr_steps: int) -> list[int]:
    """Quantus' translation schedule for an axis of ``size`` pixels: -size + dx (k + 1), k < nr_steps,
    dx = (2 size + 1) // nr_steps, capped at ``size``."""
    if not 1 <= nr_steps <= 2 * size + 1:
        raise FragileError(f"nr_steps must be between 1 and 2 * size + 1 = {2 * size + 1} for an axis of "
                           f"{size} pixels, got {nr_steps}")
    dx = (2 * size + 1) // nr_steps
    return [min(-size + dx * (k + 1), size) for k in range(nr_steps)]


def _fill(x: torch.Tensor, baseline) -> torch.Tensor:
    """The baseline value per image, (N, 1, 1, 1) in x's dtype (``fragile.metrics._perturb.fill_value``)."""
    check_baseline(baseline)
    return fill_value(x, baseline).to(x.dtype)


def translate(x: torch.Tensor, shift: int, *, direction: str = "x", baseline="black") -> torch.Tensor:
    """``x: (N, C, H, W)`` shifted by ``shift`` pixels, right / down for ``shift > 0`` (left / up below 0),
    along the width (``direction="x"``) or height (``"y"``); the vacated pixels hold ``baseline``
    (Quantus' ``batched_translation``). ``|shift| >= size`` gives the baseline image."""
    if direction not in DIRECTIONS:
        raise FragileError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    dim = 3 if direction == "x" else 2
    size = x.shape[dim]
    out = _fill(x, baseline).expand_as(x).clone()
    s = max(-size, min(size, int(shift)))
    if s >= 0:
        out.narrow(dim, s, size - s).copy_(x.narrow(dim, 0, size - s))
    else:
        out.narrow(dim, 0, size + s).copy_(x.narrow(dim, -s, size + s))
    return out


def _unit(e: torch.Tensor, take_abs: bool, normalise: bool) -> torch.Tensor:
    e = e.reshape(e.shape[0], -1).double()
    if take_abs:
        e = e.abs()
    if normalise:
        e = e / e.abs().amax(1, keepdim=True).clamp(min=1e-300)
    return e


def continuity(explain: Explainer | ExplainFn, x: torch.Tensor, *, model: nn.Module | None = None, target=None,
               nr_steps: int = 28, direction: str = "x", baseline="black", reduce: str | None = None,
               abs: bool = True, normalise: bool = True, return_nan_when_prediction_changes: bool = False,
               batch_size: int = 8, seed: int = 0, common_noise: bool = True) -> torch.Tensor:
    """Continuity (Montavon et al. 2018, sec. 5.1), the module docstring's C(x): (N,) float64, lower is
    more continuous. ``x: (N, C, H, W)``; ``explain`` an Explainer or a callable ``f(model, x, target)`` (with
    ``model=``); ``target``: explained class (default: the class predicted for x), the same for every shift.
    Maps raw (``reduce=None``) or the attack's saliency (``reduce``), then ``abs`` and per-image max
    ``normalise`` (Quantus' defaults). ``batch_size`` shifts (x N images) are explained per call; noise-averaged
    explainers are reseeded with ``seed`` before each call (``common_noise``) and explain one shift per call.
    Quantus' ``Continuity`` (``nr_steps``, x direction, black baseline) gives the same values."""
    check_input(x)
    nr_steps = int_param(nr_steps, "nr_steps")
    batch_size = int_param(batch_size, "batch_size")
    if direction not in DIRECTIONS:
        raise FragileError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    _fill(x[:1], baseline)  # refuses a bad baseline before any explanation
    steps = shifts(x.shape[3 if direction == "x" else 2], nr_steps)
    model, g = explain_function(explain, model, seed=seed if common_noise else None)
    if common_noise and stochastic(explain):
        batch_size = 1
    x = match_input(model, x)
    n = x.shape[0]
    with torch.no_grad():
        out0 = model_output(model, x)
    label0 = out0.argmax(1)
    t = label0 if target is None else check_target(target, n, out0.shape[1], x.device)
    e0 = _unit(processed(g(x, t), reduce), abs, normalise)
    x0 = x.reshape(n, -1).double()
    ratios, changed = [], []
    for i in range(0, len(steps), batch_size):
        chunk = steps[i:i + batch_size]
        m = len(chunk)
        xs = torch.cat([translate(x, s, direction=direction, baseline=baseline) for s in chunk])  # (m * N, ...)
        with torch.no_grad():
            changed.append((model_output(model, xs).argmax(1) != label0.repeat(m)).view(m, n))
        e = _unit(processed(g(xs, t.repeat(m)), reduce), abs, normalise).view(m, n, -1)
        num = (e - e0).abs().sum(2)
        den = (xs.reshape(m, n, -1).double() - x0).norm(dim=2)
        ratios.append(torch.where(den > 0, num / den.clamp(min=1e-300), torch.full_like(num, float("nan"))))
    return aggregate(torch.cat(ratios), torch.cat(changed), "max",
                     return_nan_when_prediction_changes=return_nan_when_prediction_changes)
