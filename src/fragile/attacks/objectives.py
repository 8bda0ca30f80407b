"""Attack objectives: what an attack minimises, given the processed saliency map of x_adv.

All objectives see the saliency ``s = normalize_sum(reduce_channels(h(x_adv)))`` (N, H, W) (Ghorbani
et al.: maps are distributions over pixels) and, if they need it, the softmax output p(x_adv).
``prepare`` computes per-image state from the original map; ``loss`` returns one value per image.

- ``topk``       Ghorbani Alg. 1: minimise sum_{i in top-k(s_0)} s_i (the original k most important
                 features lose their importance).
- ``mass_center`` Ghorbani footnote a: maximise ||C(s) - C(s_0)||_2 (loss = minus the shift).
- ``targeted``   Ghorbani sec. 4 / App. D: maximise the mass sum_{i in A} s_i inside a region A.
- ``manipulate`` Dombrowski eq. 4: map_weight * MSE(s, s_t) + output_weight * MSE(p(x_adv), p(x)), with the
                 prefactors of the reference code (1e11, 1e6) as defaults.
- ``map_distance`` maximise ||s - s_0||_2 (adversarial Lipschitz estimates, Wang et al. sec. 6; the worst
                 case of MaxSensitivity, Yeh et al. 2019).
- ``relative_map_change`` maximise ||(s - s_0) / s_0||_2 (elementwise; the numerator of relative input /
                 output stability, Agarwal et al. 2022).
- ``random_sign`` Ghorbani's baseline: one random +-eps draw per image (a failure if it flips the label).
- ``random_sign_search`` a new random +-eps draw every iteration, the best by the top-k objective kept
                 (a stronger, searched baseline; not the paper's).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from fragile.errors import FragileError
from fragile.metrics.localization import center_of_mass


def default_k(num_features: int) -> int:
    """Ghorbani App. F: k = 100 at CIFAR size (32x32), 1000 at ImageNet size; at most a tenth of
    the features for smaller maps."""
    k = 100 if num_features <= 64 * 64 else 1000
    return max(1, min(k, num_features // 10))


class Objective:
    """Base class of the attack objectives: a loss on the saliency map, minimised by the attack loop.

    Subclasses set ``name`` (the registry key), ``default_step`` (the step rule used when the caller gives
    none), ``uses_output`` (whether ``loss`` needs the softmax output), ``output_tol`` and ``failure_reason``,
    and implement ``prepare`` and ``loss``.
    """

    name = "objective"
    default_step = "sign"
    uses_output = False
    #: success also needs max_c |p_c(x_adv) - p_c(x)| <= output_tol (None: label only)
    output_tol: float | None = None
    #: why an image without a qualifying iterate failed
    failure_reason = "no iterate kept the predicted label"
    #: a random control: ``default_step`` is its definition, any other step rule is refused (a sign step on the
    #: random-sign objective would be a top-k attack under the control's name)
    fixed_step = False

    def prepare(self, sal0: torch.Tensor, p0: torch.Tensor) -> dict:
        """Per-image state from the original saliency ``sal0: (N, H, W)`` and softmax output ``p0: (N, K)``."""
        return {}

    def loss(self, sal: torch.Tensor, p: torch.Tensor | None, state: dict) -> torch.Tensor:
        """One loss value per image, ``(N,)``, from the saliency ``sal: (N, H, W)`` of the current iterate (and its
        softmax ``p: (N, K)`` if ``uses_output``); the attack loop minimises it.
        """
        raise NotImplementedError

    def extra_metrics(self, sal0: torch.Tensor, sal: torch.Tensor, state: dict) -> dict[str, torch.Tensor]:
        """Per-image metrics specific to this objective, from the maps before (sal0) and after (sal)."""
        return {}

    def __repr__(self):
        return f"{type(self).__name__}({self.__dict__})"


class TopK(Objective):
    """Ghorbani et al. Alg. 1: minimise the saliency mass of the original top-k pixels, sum_{i in top-k(s_0)} s_i.

    ``k``: None for the default of ``default_k`` (100 at 32x32, 1000 at ImageNet size).
    """

    name = "topk"

    def __init__(self, k: int | None = None):
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) <= 0):
            raise FragileError(f"k must be a positive integer or None (the default), got {k!r}")
        self.k = None if k is None else int(k)

    def prepare(self, sal0, p0):
        """The indices of the k largest entries of each original map, and k."""
        flat = sal0.reshape(sal0.shape[0], -1)
        k = self.k or default_k(flat.shape[1])
        if k > flat.shape[1]:
            raise FragileError(f"k = {k} exceeds the number of features {flat.shape[1]}")
        return {"idx": flat.topk(k, dim=1).indices, "k": k}

    def loss(self, sal, p, state):
        """The mass of the current maps on the original top-k pixels, ``(N,)``."""
        return sal.reshape(sal.shape[0], -1).gather(1, state["idx"]).sum(1)


class MassCenter(Objective):
    """Ghorbani et al. (footnote a): maximise the shift ||C(s) - C(s_0)||_2 of the map's center of mass (pixels)."""

    name = "mass_center"

    def prepare(self, sal0, p0):
        """The center of mass ``(N, 2)`` of each original map."""
        return {"c0": center_of_mass(sal0)}

    def loss(self, sal, p, state):
        """Minus the center-of-mass shift in pixels, ``(N,)``."""
        return -(center_of_mass(sal) - state["c0"]).pow(2).sum(1).clamp(min=1e-20).sqrt()


class Targeted(Objective):
    """Ghorbani et al. sec. 4 / App. D: maximise the saliency mass inside a region A, sum_{i in A} s_i.

    ``mask``: ``(H, W)`` or ``(N, H, W)``, nonzero inside the region; neither empty nor everything.
    """

    name = "targeted"

    def __init__(self, mask: torch.Tensor):
        m = torch.as_tensor(mask)
        if m.dim() not in (2, 3):
            raise FragileError(f"region mask must be (H, W) or (N, H, W), got shape {tuple(m.shape)}")
        per_image = m.reshape(-1, *m.shape[-2:]).flatten(1).float()
        if bool((per_image.sum(1) == 0).any()):
            raise FragileError("region mask is empty (no pixel selected)")
        if bool((per_image.min(1).values > 0).any()):
            raise FragileError("region mask selects every pixel: nothing to move the saliency into")
        self.mask = m.float()

    def prepare(self, sal0, p0):
        """The mask broadcast to the maps, ``(N, H, W)``; refused when its size differs."""
        if tuple(self.mask.shape[-2:]) != tuple(sal0.shape[-2:]):
            raise FragileError(f"region mask {tuple(self.mask.shape)} does not match maps {tuple(sal0.shape)}")
        return {"mask": torch.broadcast_to(self.mask.to(sal0), sal0.shape)}

    def loss(self, sal, p, state):
        """Minus the mass of the current maps inside the region, ``(N,)``."""
        return -(sal * state["mask"]).sum((1, 2))

    def extra_metrics(self, sal0, sal, state):
        """The mass inside the region after and before the attack, ``(N,)`` each."""
        return {"mass_in_region": (sal * state["mask"]).sum((1, 2)),
                "mass_in_region_before": (sal0 * state["mask"]).sum((1, 2))}


class Manipulate(Objective):
    """Dombrowski et al. eq. 4: move the map to a target while keeping the output.

    loss = ``map_weight`` * MSE(s, s_t) + ``output_weight`` * MSE(p(x_adv), p(x)); the defaults 1e11 and 1e6
    are the prefactors of the reference code. ``target_map``: ``(H, W)`` or ``(N, H, W)`` saliency (its
    absolute value is normalised to sum 1). ``output_tol``: a returned iterate must also keep every softmax
    entry within this of the original (None: the label only).
    """

    name = "manipulate"
    default_step = "adam"
    uses_output = True
    failure_reason = "no iterate kept the predicted label and the softmax output within output_tol"

    def __init__(self, target_map: torch.Tensor, map_weight: float = 1e11, output_weight: float = 1e6,
                 output_tol: float | None = 0.05):
        t = torch.as_tensor(target_map)
        if t.dim() not in (2, 3):
            raise FragileError(f"target map must be (H, W) or (N, H, W) saliency, got shape {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise FragileError("target map contains NaN or inf")
        for name, w in (("map_weight", map_weight), ("output_weight", output_weight)):
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise FragileError(f"{name} must be a finite number >= 0, got {w!r}")
        if map_weight == 0:
            raise FragileError("map_weight must be positive: with 0 nothing moves the map toward the target")
        if output_tol is not None and not output_tol > 0:
            raise FragileError(f"output_tol must be positive or None, got {output_tol!r}")
        self.target_map, self.output_tol = t, output_tol
        self.map_weight, self.output_weight = float(map_weight), float(output_weight)

    def prepare(self, sal0, p0):
        """The normalised target ``(N, H, W)`` and the original softmax ``p0``."""
        t = self.target_map.to(sal0)
        if tuple(t.shape[-2:]) != tuple(sal0.shape[-2:]) or (t.dim() == 3 and t.shape[0] != sal0.shape[0]):
            raise FragileError(f"target map of shape {tuple(t.shape)} does not match maps {tuple(sal0.shape)}")
        t = torch.broadcast_to(t, sal0.shape).abs()
        t = t / t.sum((1, 2), keepdim=True).clamp(min=1e-30)
        return {"target": t, "p0": p0}

    def loss(self, sal, p, state):
        """The weighted map MSE to the target plus the weighted output MSE, ``(N,)``."""
        term_map = (sal - state["target"]).pow(2).mean((1, 2))
        return self.map_weight * term_map + self.output_weight * (p - state["p0"]).pow(2).mean(1)

    def extra_metrics(self, sal0, sal, state):
        """Dombrowski Fig. 3: the manipulated map (and, as reference, the original) against the target."""
        from fragile.metrics import mse, pcc, ssim

        t, out = state["target"], {}
        for suffix, m in (("", sal), ("_before", sal0)):
            out[f"target_pcc{suffix}"], out[f"target_mse{suffix}"] = pcc(m, t), mse(m, t)
            if min(m.shape[-2:]) >= 7:
                out[f"target_ssim{suffix}"] = ssim(m, t)
        return out


class MapDistance(Objective):
    """Maximise ||s - s_0||_2 (used for adversarial Lipschitz estimates, Wang et al. sec. 6)."""

    name = "map_distance"

    def prepare(self, sal0, p0):
        """The original maps."""
        return {"s0": sal0}

    def loss(self, sal, p, state):
        """Minus the L2 distance of the current maps to the original ones, ``(N,)``."""
        return -(sal - state["s0"]).flatten(1).pow(2).sum(1).clamp(min=1e-30).sqrt()


class RelativeMapChange(Objective):
    """Maximise ||(s - s_0) / s_0||_2, elementwise, a zero of s_0 replaced by ``eps_min`` (the numerator of
    relative input / output stability, Agarwal et al. 2022 eq. 2 and 5; its adversarial estimate)."""

    name = "relative_map_change"

    def __init__(self, eps_min: float = 1e-6):
        self.eps_min = float(eps_min)

    def prepare(self, sal0, p0):
        """The original maps and the denominators (zeros replaced by ``eps_min``)."""
        return {"s0": sal0, "den": sal0 + (sal0 == 0) * self.eps_min}

    def loss(self, sal, p, state):
        """Minus the L2 norm of the elementwise relative change, ``(N,)``."""
        return -((sal - state["s0"]) / state["den"]).flatten(1).pow(2).sum(1).clamp(min=1e-30).sqrt()


class RandomSign(TopK):
    """Ghorbani's random-sign baseline: one random +-eps draw per image (scored by the top-k objective)."""

    name = "random_sign"
    default_step = "random"
    fixed_step = True
    failure_reason = "the random draw changed the predicted label"


class RandomSignSearch(TopK):
    """A new random +-eps draw every iteration, keeping the best by the top-k objective (not the paper's)."""

    name = "random_sign_search"
    default_step = "random_search"
    fixed_step = True
    failure_reason = "no random draw kept the predicted label"


_OBJECTIVES: dict[str, Callable[..., Objective]] = {
    cls.name: cls for cls in (TopK, MassCenter, Targeted, Manipulate, MapDistance, RelativeMapChange, RandomSign,
                               RandomSignSearch)
}


def available() -> list[str]:
    """The names ``create`` accepts, sorted."""
    return sorted(_OBJECTIVES)


def create(name: str, **params) -> Objective:
    """``create("topk", k=100)``, ``create("targeted", mask=...)``, ``create("manipulate", target_map=...)``."""
    if name not in _OBJECTIVES:
        raise FragileError(f"unknown attack {name!r}; known: {', '.join(available())}")
    try:
        return _OBJECTIVES[name](**params)
    except TypeError as err:
        raise FragileError(f"bad parameters for attack {name!r}: {err}") from None
