"""How the attack's gradient step differentiates a gradient map: exactly, or by a finite difference of gradients.

An attack on the gradient map h(x) = grad_x F(x) (F: the explained score, a scalar per image) follows

    d/dx L(h(x), p(x)) = J_h(x)^T v + (the output term's first-order part),   v = dL/dh,   J_h = Hessian of F

- ``'exact'`` (the default): reverse over reverse, autograd through the map's graph (``create_graph``): one
  forward, one backward that keeps its graph, one double backward (55% of a gradient attack iteration,
  ``benchmarks/iteration_cost.py``).
- ``'difference'``: the Hessian is symmetric, so J_h^T v = H v, the derivative of the gradient along v,
  approximated by the forward difference (Pearlmutter 1994, sec. 2)

      H v  ~  (h(x + s v) - h(x)) / s,   s_n = rel * ||x_n|| / ||v_n||   (per image: a step of norm rel ||x_n||)

  two first-order passes instead of a first-order and a second-order one. The error is O(s) from the third
  derivative (the surrogate's curvature, large for a large beta) plus O(float eps / s) rounding, so ``rel`` is
  chosen once per attack, on the clean images, from ``REL_STEPS`` by the cosine between the difference and the
  exact gradient (:func:`choose_step`); below ``MIN_COSINE`` the attack keeps the exact gradient and warns.

Only maps that are gradients of a scalar (``Explainer.map_is_gradient``: the simple gradient and its
softplus surrogate) have a symmetric Jacobian; gradient x input, IG or LRP do not, and noise-averaged maps
would draw other noise at x + s v: they refuse ``'difference'``.
"""

from __future__ import annotations

import torch

from fragile.errors import FragileError

#: relative step sizes rel = ||s v|| / ||x|| that :func:`choose_step` tries (half decades)
REL_STEPS = (1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
#: the smallest mean cosine with the exact gradient at which the difference is used
MIN_COSINE = 0.99
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


def _map_and_v(model, surrogate, objective, state, x, t, reduce, key):
    """(h(x) without a graph, v = dL/dh, the output term's gradient or None), ``(N, C, H, W)`` each."""
    from fragile.attacks.loop import saliency
    from fragile.models.outputs import model_output

    h = surrogate.attribute(x.detach(), target=t).detach().requires_grad_(True)
    xa = x.detach().requires_grad_(objective.uses_output)
    p = torch.softmax(model_output(model, xa, key), dim=1) if objective.uses_output else None
    inputs = (h, xa) if objective.uses_output else (h,)
    grads = torch.autograd.grad(objective.loss(saliency(h, reduce), p, state).sum(), inputs)
    return h.detach(), grads[0], grads[1] if objective.uses_output else None


def difference_grad(model, surrogate, objective, state, x, t, reduce, key, *, rel: float) -> torch.Tensor:
    """d/dx of the objective on ``surrogate``'s gradient map at ``x: (N, C, H, W)``, its second-order part
    H v by the forward difference of the map along v with steps of norm ``rel * ||x_n||`` (module docstring);
    the output term (manipulate) is first order and exact."""
    h, v, g_out = _map_and_v(model, surrogate, objective, state, x, t, reduce, key)
    v_norm = v.flatten(1).norm(dim=1)
    s = torch.where(v_norm > 0, rel * x.flatten(1).norm(dim=1).clamp(min=1.0) / v_norm.clamp(min=1e-30),
                    torch.ones_like(v_norm)).view(-1, *([1] * (x.dim() - 1)))
    h_step = surrogate.attribute((x + s * v).detach(), target=t).detach()
    hv = (h_step - h) / s
    return hv if g_out is None else hv + g_out


def choose_step(exact: torch.Tensor, difference, rel_steps=REL_STEPS) -> tuple[float, float]:
    """(rel, mean cosine) of the relative step in ``rel_steps`` whose ``difference(rel)`` (N, ...) agrees best,
    by the mean over images of the cosine, with the ``exact`` objective gradient (N, ...); images whose exact
    gradient is zero are left out (cosine NaN if all are: nothing to compare)."""
    keep = exact.flatten(1).norm(dim=1) > 0
    if not bool(keep.any()):
        return float(rel_steps[0]), float("nan")
    best = (float(rel_steps[0]), -2.0)
    for rel in rel_steps:
        d = difference(rel)
        cos = torch.nn.functional.cosine_similarity(d.flatten(1)[keep].double(), exact.flatten(1)[keep].double(), dim=1)
        c = float(torch.nan_to_num(cos, nan=-1.0).mean())
        if c > best[1]:
            best = (float(rel), c)
    return best


__all__ = ["MIN_COSINE", "REL_STEPS", "SECOND_ORDER", "check_second_order", "choose_step", "difference_grad",
           "refusal"]
