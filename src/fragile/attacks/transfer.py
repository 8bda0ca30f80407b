"""Transfer (Wang et al. 2020, sec. 5.3): a perturbation found against one method, evaluated with others."""

from __future__ import annotations

from fragile.attacks.loop import common_noise_maps, map_metrics
from fragile.attacks.result import AttackResult
from fragile.explanations.base import Explainer, model_bounds


def transfer_maps(explainer: Explainer, x, *others, target, reduce: str = "abs_sum", seed: int = 1):
    """Saliency maps (N, H, W) of ``explainer`` on x and on each of ``others`` (x_adv, a control, ...), all for the
    original labels ``target`` and, for a noise-averaged method, with the same noise (``common_noise_maps``)."""
    return tuple(common_noise_maps(explainer, [x, *others], target=target, reduce=reduce, seed=seed))


def transfer(result: AttackResult, explainers: dict[str, Explainer], reduce: str = "abs_sum") -> dict[str, dict]:
    """For each named explainer: per-image metrics between its maps of ``result.x`` and ``result.x_adv``
    (targets: the original labels). Only successful images should be averaged (``result.success``)."""
    out = {}
    for name, ex in explainers.items():
        low, high = model_bounds(ex.model)
        s0, s1 = transfer_maps(ex, result.x, result.x_adv, target=result.label, reduce=reduce)
        out[name] = map_metrics(s0, s1, result.x, result.x_adv, result.settings["k"], data_range=high - low)
    return out
