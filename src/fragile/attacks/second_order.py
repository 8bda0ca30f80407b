"""How the attack's gradient step differentiates a gradient map: exactly, or by a finite difference of gradients.

An attack on the gradient map h(x) = grad_x F(x) (F: the explained score, a scalar per image) follows

    d/dx L(h(x), p(x)) = J_h(x)^T v + (the output term's first-order part),   v = dL/dh,   J_h = Hessian of F

- ``'exact'`` (the default): reverse over reverse, autograd through the map's graph (``create_graph``): one
  forward, one backward that keeps its graph, one double backward (55% of a gradient attack iteration,
  ``benchmarks/iteration_cost.py``).
- ``'difference'``: the Hessian is symmetric, so J_h^T v = H v, the derivative of the gradient along v,
  approximated by the forward difference (Pearlmutter 1994, sec. 2)

      H v  ~  (h(x + s v) - h(x)) / s,   s_n = rel * max(||x_n||, 1) / ||v_n||   (per image: a step of norm
                                                                              rel max(||x_n||, 1))

  two first-order passes instead of a first-order and a second-order one. The error is O(s) from the third
  derivative (the surrogate's curvature, large for a large beta) plus O(float eps / s) rounding, so ``rel`` is
  chosen once per attack, on the clean images at both ends of a beta schedule, from ``REL_STEPS`` by the worst
  image's cosine between the difference and the exact gradient (:func:`choose_step`: per beta one exact gradient,
  h(x) and v once, one more map per step tried, :func:`difference_at`); below ``MIN_COSINE`` the attack keeps the
  exact gradient and warns. :class:`DifferenceRule` compares again on the current iterate every ``RECHECK_EVERY``
  steps and switches to the exact gradient when the agreement falls (a larger beta). Both maps run with the
  max-pool windows of x (``FrozenPools``): autograd differentiates with x's winners fixed, and a window whose
  winner changes between x and x + s v would otherwise make the difference that of another function (SqueezeNet,
  VGG: cosine 0.02-0.4 without).

Only maps that are gradients of a scalar (``Explainer.map_is_gradient``: the simple gradient and its
softplus surrogate) have a symmetric Jacobian; gradient x input, IG or LRP do not, and noise-averaged maps
would draw other noise at x + s v: they refuse ``'difference'``.
"""

from __future__ import annotations

import warnings

import torch

from fragile.errors import FragileError
from fragile.models.pooling import FrozenPools

#: relative step sizes rel = ||s v|| / ||x|| that :func:`choose_step` tries (half decades)
REL_STEPS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
#: the smallest cosine with the exact gradient, over the images, at which the difference is used
MIN_COSINE = 0.99
#: every how many gradient steps :class:`DifferenceRule` compares the difference with the exact gradient again
RECHECK_EVERY = 25
SECOND_ORDER = ("exact", "difference")


def check_second_order(value, name: str = "second_order") -> str:
    """``second_order`` of ``attacks.run``: one of ``SECOND_ORDER``."""
    if not isinstance(value, str) or value not in SECOND_ORDER:
        raise FragileError(f"{name} must be one of {', '.join(map(repr, SECOND_ORDER))}, got {value!r}")
    return value


def refusal(explainer, autocast=None) -> str | None:
    """Why ``'difference'`` cannot run for this explainer / autocast dtype (None: it can)."""
    if not getattr(explainer, "map_is_gradient", False) or getattr(explainer, "inner", None) is not None:
        return (f"{getattr(explainer, 'name', type(explainer).__name__)} is not the gradient of a scalar (its "
                "Jacobian is not a symmetric Hessian); 'difference' supports the simple gradient")
    if autocast is not None:
        return "a finite difference needs the gradient step in float32, not precision='bfloat16'"
    return None


def _objective_vs(model, objective, state, h, x, reduce, key):
    """(v = dL/dh, the output term's gradient or None) at the map ``h`` of ``x``, ``(N, C, H, W)`` each."""
    from fragile.attacks.loop import saliency
    from fragile.models.outputs import model_output

    h = h.detach().requires_grad_(True)
    xa = x.detach().requires_grad_(objective.uses_output)
    p = torch.softmax(model_output(model, xa, key), dim=1) if objective.uses_output else None
    inputs = (h, xa) if objective.uses_output else (h,)
    grads = torch.autograd.grad(objective.loss(saliency(h, reduce), p, state).sum(), inputs)
    return grads[0], grads[1] if objective.uses_output else None


def difference_at(model, surrogate, objective, state, x, t, reduce, key):
    """``rel -> d/dx`` of the objective at ``x: (N, C, H, W)`` by the forward difference (:func:`difference_grad`),
    for any number of relative steps: h(x), v = dL/dh, the output term and the max-pool windows of x are computed
    once, each step costs one more map (``choose_step`` tries seven)."""
    pools = FrozenPools()
    with pools.recording():
        h = surrogate.attribute(x.detach(), target=t).detach()
    v, g_out = _objective_vs(model, objective, state, h, x, reduce, key)
    v_norm = v.flatten(1).norm(dim=1)
    x_norm = x.flatten(1).norm(dim=1).clamp(min=1.0)
    shape = (-1, *([1] * (x.dim() - 1)))

    def at(rel: float) -> torch.Tensor:
        s = torch.where(v_norm > 0, rel * x_norm / v_norm.clamp(min=1e-30), torch.ones_like(v_norm)).view(shape)
        with pools.replaying():
            h_step = surrogate.attribute((x + s * v).detach(), target=t).detach()
        hv = (h_step - h) / s
        return hv if g_out is None else hv + g_out

    return at


def difference_grad(model, surrogate, objective, state, x, t, reduce, key, *, rel: float) -> torch.Tensor:
    """d/dx of the objective on ``surrogate``'s gradient map at ``x: (N, C, H, W)``, its second-order part
    H v by the forward difference of the map along v with steps of norm ``rel * max(||x_n||, 1)`` (module docstring),
    both maps with the max-pool windows of ``x`` (:class:`fragile.models.pooling.FrozenPools`: the function autograd
    differentiates); the output term (manipulate) is first order and exact."""
    return difference_at(model, surrogate, objective, state, x, t, reduce, key)(rel)


def worst_cosine(difference: torch.Tensor, exact: torch.Tensor) -> float:
    """The smallest per-image cosine between the ``difference`` and the ``exact`` objective gradients (N, ...), over
    the images whose exact gradient is not zero (NaN if none is: nothing to compare)."""
    keep = exact.flatten(1).norm(dim=1) > 0
    if not bool(keep.any()):
        return float("nan")
    cos = torch.nn.functional.cosine_similarity(difference.flatten(1)[keep].double(), exact.flatten(1)[keep].double(),
                                                dim=1)
    return float(torch.nan_to_num(cos, nan=-1.0).min())


def choose_step(pairs, rel_steps=REL_STEPS) -> tuple[float, float]:
    """(rel, its worst cosine): the relative step in ``rel_steps`` whose differences agree best with the exact
    gradients, scored by the worst image: ``pairs`` is a list of ``(exact (N, ...), difference)``, ``difference(rel)``
    the difference gradient at that step (one pair per surrogate beta to hold at: the two ends of a schedule); a
    step's score is the minimum of :func:`worst_cosine` over the pairs. NaN when no image has a nonzero exact
    gradient."""
    best = (float(rel_steps[0]), float("nan"))
    for rel in rel_steps:
        score = min(worst_cosine(difference(rel), exact) for exact, difference in pairs)
        if score == score and not score <= best[1]:  # not NaN, and better than the best so far (or the first)
            best = (float(rel), score)
    return best


class DifferenceRule:
    """The gradient step by :func:`difference_grad` at relative step ``rel``, re-checked against ``exact_grad``
    (``attacks.loop._objective_grad``'s signature) on the current iterate and beta every ``every``-th call; the first
    recheck whose worst cosine falls below ``MIN_COSINE`` switches the rest of the attack to the exact gradient
    (a warning). ``record``: rule, rel_step, cosine (the choice's worst), rechecks, recheck_cosine (the worst seen),
    exact_from (the call index of the switch, or None)."""

    def __init__(self, exact_grad, rel: float, cosine: float, every: int = RECHECK_EVERY):
        self.exact_grad, self.rel, self.every, self.calls = exact_grad, rel, every, 0
        self.record = {"rule": "difference", "rel_step": rel, "cosine": cosine, "rechecks": 0, "recheck_cosine": None,
                       "exact_from": None}

    def __call__(self, model, surrogate, objective, state, x, t, reduce, key, autocast=None):
        """d/dx of the objective at ``x`` (N, C, H, W): the difference, the exact gradient at a recheck or after a
        switch."""
        self.calls += 1
        args = (model, surrogate, objective, state, x, t, reduce, key)
        if self.record["exact_from"] is not None:
            return self.exact_grad(*args)
        if self.calls % self.every:
            return difference_grad(*args, rel=self.rel)
        exact = self.exact_grad(*args)
        cos = worst_cosine(difference_grad(*args, rel=self.rel), exact)
        rec = self.record
        rec["rechecks"] += 1
        if cos == cos:
            rec["recheck_cosine"] = cos if rec["recheck_cosine"] is None else min(rec["recheck_cosine"], cos)
        if cos < MIN_COSINE:
            rec["exact_from"] = self.calls - 1
            warnings.warn(f"second_order='difference': at iteration {self.calls - 1} its worst agreement with the exact "
                          f"gradient fell to cosine {cos:.3f} (< {MIN_COSINE}); the rest of the attack differentiates "
                          "exactly", stacklevel=2)
        return exact


__all__ = ["MIN_COSINE", "RECHECK_EVERY", "REL_STEPS", "SECOND_ORDER", "DifferenceRule", "check_second_order",
           "choose_step", "difference_at", "difference_grad", "refusal", "worst_cosine"]
