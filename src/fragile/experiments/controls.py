"""Equal-norm random-noise controls of attacks (issue 19, R5 / R6 / R9).

An attack's perturbation delta = x_adv - x is compared with a random perturbation of the same L2 norm
that respects the same constraints: inside the attack's eps ball (L-inf: |d_i| <= eps per coordinate;
L2: ||d||_2 = ||delta||_2 <= eps already) and the data bounds (low <= x + d <= high). If a map moves
about as much under the control as under the attack, the attack found nothing a random perturbation of
its size would not do.

The control's direction is a Gaussian vector r; its length is found by bisection on s in
||clip(s r)||_2 = ||delta||_2, where clip clamps each coordinate to the box. That norm grows with s and
reaches its maximum when every coordinate is at the box, so the match is exact unless the box cannot hold
a vector of that length with r's signs (then the control is that corner, shorter than delta, and its own
``l2`` metric says so).
"""

from __future__ import annotations

import torch

from fragile.attacks.loop import common_noise_maps, map_metrics, saliency
from fragile.attacks.result import AttackResult
from fragile.explanations.base import Explainer, model_bounds
from fragile.models.outputs import OUTPUT_KEY, model_output

#: the suffix of a control's attack name in a sweep store (``manipulate`` -> ``manipulate_noise_control``)
SUFFIX = "_noise_control"
#: why a control row has no metrics
LABEL_CHANGED = "the equal-norm random perturbation changed the predicted label"
NO_ATTACK = "the attack found no perturbation to match"


def equal_norm_noise(x0: torch.Tensor, delta: torch.Tensor, *, eps: float | None, low: float, high: float,
                     norm: str = "linf", generator: torch.Generator | None = None, iters: int = 100) -> torch.Tensor:
    """A random perturbation per image with the L2 norm of ``delta`` inside the same constraints.

    ``x0, delta: (N, C, H, W)``; ``eps``: the attack's radius in raw units (the L-inf box for
    ``norm="linf"``; for ``"l2"`` the norm match keeps it, None: no radius); ``low, high``: the data
    bounds. The direction is drawn from ``generator`` (on the CPU, so a seed gives the same control on
    every device); computed in float64, returned in ``x0``'s dtype and device. An image with delta = 0
    gets 0."""
    x = x0.detach().to("cpu", torch.float64)
    target = delta.detach().to("cpu", torch.float64).flatten(1).norm(dim=1)
    lo, hi = low - x, high - x
    if norm == "linf" and eps is not None:
        lo, hi = lo.clamp(min=-float(eps)), hi.clamp(max=float(eps))
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # x0 itself lies inside the bounds
    r = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    view = (-1, *[1] * (x.dim() - 1))

    def length(s: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(s.view(view) * r, hi), lo).flatten(1).norm(dim=1)

    # at s_max every coordinate with r != 0 sits at its bound: the longest vector with r's direction pattern
    reach = torch.where(r > 0, hi / r.clamp(min=1e-300), torch.where(r < 0, lo / r.clamp(max=-1e-300), 0.0))
    s_lo = torch.zeros_like(target)
    s_hi = reach.flatten(1).amax(1)
    for _ in range(iters):  # bisection: length(s) is continuous and non-decreasing in s
        mid = (s_lo + s_hi) / 2
        short = length(mid) < target
        s_lo, s_hi = torch.where(short, mid, s_lo), torch.where(short, s_hi, mid)
    s = torch.where(target > 0, s_hi, torch.zeros_like(s_hi))
    d = torch.maximum(torch.minimum(s.view(view) * r, hi), lo)
    return d.to(x0.dtype).to(x0.device)


def noise_control(model, explainer: Explainer, objective, result: AttackResult, *, eps_raw: float | None,
                  norm: str = "linf", reduce: str = "abs_sum", seed: int = 0,
                  output_key: str = OUTPUT_KEY) -> dict:
    """The equal-norm random control of an attack ``result``, evaluated with the attack's metrics.

    Per image of the result: ``x_control`` (x + the control perturbation, matched to x_adv - x),
    ``maps_control`` (the explainer's saliency of it for the original label; for a noise-averaged method with the
    noise of the result's own maps, ``settings["maps_noise_seed"]``, so that the control's change, like the
    attack's, is the input's and not a new noise draw), ``label_control``,
    ``success`` (the attack succeeded and the control kept the label; otherwise the metrics are NaN and
    ``reasons`` says why) and ``metrics`` (``map_metrics`` between the original map and the control's,
    ``output_change``, and the objective's own extra metrics, e.g. ``target_pcc`` of manipulate)."""
    low, high = model_bounds(model)
    x0 = result.x
    gen = torch.Generator().manual_seed(int(seed))
    d = equal_norm_noise(x0, result.x_adv - x0, eps=eps_raw, low=low, high=high, norm=norm, generator=gen)
    x_c = (x0 + d).clamp(low, high)
    t = result.label
    with torch.no_grad():
        p0 = torch.softmax(model_output(model, x0, output_key), dim=1)
        p_c = torch.softmax(model_output(model, x_c, output_key), dim=1)
    label_c = p_c.argmax(1)
    sal0 = result.maps
    noise_seed = result.settings.get("maps_noise_seed")
    if noise_seed is not None:  # a noise-averaged map: the control's with the noise of the result's maps
        (sal_c,) = common_noise_maps(explainer, [x_c], target=t, reduce=reduce, seed=int(noise_seed))
    else:
        sal_c = saliency(explainer.attribute(x_c, target=t), reduce)
    metrics = map_metrics(sal0, sal_c, x0, x_c, int(result.settings["k"]), data_range=high - low)
    metrics["output_change"] = (p_c - p0).abs().amax(1)
    metrics.update(objective.extra_metrics(sal0, sal_c, objective.prepare(sal0, p0)))
    ok = result.success & (label_c == result.label)
    metrics = {name: torch.where(ok, v.double(), torch.full_like(v, float("nan"), dtype=torch.float64))
               for name, v in metrics.items()}
    reasons = [None if o else (NO_ATTACK if not s else LABEL_CHANGED)
               for o, s in zip(ok.tolist(), result.success.tolist())]
    return {"x_control": x_c, "maps_control": sal_c, "label_control": label_c, "success": ok, "reasons": reasons,
            "metrics": metrics}


def is_random(result: AttackResult) -> bool:
    """Random attacks (random sign, or any objective taking random steps) are their own control."""
    return (result.attack in ("random_sign", "random_sign_search")
            or result.settings.get("step") in ("random", "random_search"))
