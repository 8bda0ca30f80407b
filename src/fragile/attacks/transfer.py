"""Transfer (Wang et al. 2020, sec. 5.3): a perturbation found against one method, evaluated with others."""

from __future__ import annotations

from fragile.attacks.loop import map_metrics, saliency
from fragile.attacks.result import AttackResult
from fragile.explanations.base import Explainer, model_bounds


def transfer_maps(explainer: Explainer, x, x_adv, target, reduce: str = "abs_sum"):
    """Saliency maps (N, H, W) of ``explainer`` on x and on x_adv, both for the original labels ``target``."""
    return (saliency(explainer.attribute(x, target=target), reduce),
            saliency(explainer.attribute(x_adv, target=target), reduce))


def transfer(result: AttackResult, explainers: dict[str, Explainer], reduce: str = "abs_sum") -> dict[str, dict]:
    """For each named explainer: per-image metrics between its maps of ``result.x`` and ``result.x_adv``
    (targets: the original labels). Only successful images should be averaged (``result.success``)."""
    out = {}
    for name, ex in explainers.items():
        low, high = model_bounds(ex.model)
        s0, s1 = transfer_maps(ex, result.x, result.x_adv, result.label, reduce)
        out[name] = map_metrics(s0, s1, result.x, result.x_adv, result.settings["k"], data_range=high - low)
    return out
