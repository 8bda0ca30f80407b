"""The attack loop, written once (Ghorbani et al. 2019 Alg. 1; Dombrowski et al. 2019 sec. 3).

For each eps, batched over images:

    delta_0 = 0
    for t in 0..P-1:
        g     = d/dx objective(s~(x + delta_t))        on the softplus(beta_t) surrogate (create_graph)
        delta = step(delta_t, g);  delta = project_eps(delta);  delta = clip(x + delta) - x
        keep delta if the *original* model keeps the label (and output within tolerance) and the
        objective evaluated on the original model's map improves, per image

An explanation that is already beta-smoothed (a defence) is differentiated as it is.
``eps`` and ``step_size`` are given in pixel units of ``pixel_scale`` (eps=8 means 8/255 of the data
range for the default ``pixel_scale=255``), as in the papers. ``beta`` is the surrogate's softplus
beta: a number, a (start, end) pair for a geometric schedule (Dombrowski: 10 -> 100), or None to
differentiate the original model directly.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from fragile.attacks.objectives import Objective, TopK
from fragile.attacks.objectives import create as create_objective
from fragile.attacks.result import AttackResult
from fragile.attacks.steps import STEPS
from fragile.attacks.threat import NORMS, clip_to_bounds
from fragile.errors import FragileError
from fragile.explanations.base import Explainer, check_input, check_target, model_bounds
from fragile.explanations.postprocess import normalize_sum, reduce_channels
from fragile.metrics import center_shift, cosine_distance, mse, pcc, spearman, ssim, topk_intersection, topk_name
from fragile.models.smooth import softplus


def saliency(h: torch.Tensor, reduce: str = "abs_sum") -> torch.Tensor:
    """Ghorbani's saliency: channels reduced (sum of |h|), normalised to sum 1 per image, (N, H, W)."""
    return normalize_sum(reduce_channels(h, reduce))


def beta_at(beta, t: int, steps: int) -> float | None:
    """Surrogate beta at iteration t: constant, or geometric from beta[0] to beta[1] (Dombrowski)."""
    if beta is None or isinstance(beta, (int, float)):
        return beta
    b0, b1 = beta
    return b0 * (b1 / b0) ** (t / max(steps - 1, 1))


def map_metrics(sal0: torch.Tensor, sal: torch.Tensor, x0: torch.Tensor, x: torch.Tensor, k: int,
                data_range: float = 1.0) -> dict:
    """Every per-image metric between original and attacked maps (and images, of ``data_range``)."""
    d = (x - x0).flatten(1)
    k = min(k, sal0[0].numel())
    nan = torch.full_like(d[:, 0], float("nan"))
    big_enough = min(sal.shape[-2:]) >= 7  # the SSIM window
    return {
        "spearman": spearman(sal0, sal), topk_name(k): topk_intersection(sal0, sal, k),
        "center_shift": center_shift(sal0, sal), "cosine_distance": cosine_distance(sal0, sal),
        "pcc": pcc(sal0, sal), "ssim": ssim(sal0, sal) if big_enough else nan, "mse": mse(sal0, sal),
        "image_ssim": ssim(x0, x, data_range=data_range) if big_enough else nan,
        "linf": d.abs().amax(1), "l2": d.norm(dim=1),
    }


def _check_eps(eps: float, pixel_scale: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps)) or eps <= 0:
        raise FragileError(f"eps must be a positive number, got {eps!r}")
    if eps > pixel_scale:
        raise FragileError(f"eps = {eps} is larger than the data range ({pixel_scale} pixel units)")


def run(model: nn.Module, explainer: Explainer, x: torch.Tensor, objective: Objective | str, *,
        eps: float | Sequence[float], steps: int = 300, step: str | None = None, step_size: float = 0.5,
        lr: float = 2e-4, norm: str = "linf", beta=10.0, target=None, seed: int = 0,
        early_stop: int | None = None, reduce: str = "abs_sum", pixel_scale: float = 255.0,
        k: int | None = None, surrogate_maps: bool = False,
        progress: Callable[[int, int], None] | None = None) -> AttackResult | list[AttackResult]:
    """Attack the explanations of ``x: (N, C, H, W)`` (raw pixels within the model's bounds).

    ``objective``: an Objective or a name ('topk', 'mass_center', 'random_sign'; 'targeted' and
    'manipulate' need parameters, pass ``attacks.create(...)``). ``step``: 'sign' (default for most),
    'adam' (manipulate), 'gradient', 'random'; ``step_size`` is alpha in pixel units for 'sign',
    ``lr`` the learning rate (raw units) for 'adam'/'gradient'. A list of eps returns one result per eps.
    """
    if isinstance(objective, str):
        objective = create_objective(objective)
    if not isinstance(eps, (int, float)):
        return [run(model, explainer, x, objective, eps=e, steps=steps, step=step, step_size=step_size, lr=lr,
                    norm=norm, beta=beta, target=target, seed=seed, early_stop=early_stop, reduce=reduce,
                    pixel_scale=pixel_scale, k=k, surrogate_maps=surrogate_maps, progress=progress) for e in eps]
    check_input(x)
    _check_eps(eps, pixel_scale)
    if int(steps) < 1:
        raise FragileError(f"steps must be >= 1, got {steps}")
    if norm not in NORMS:
        raise FragileError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}")
    step = step or objective.default_step
    if step not in STEPS:
        raise FragileError(f"unknown step {step!r}; choose one of {sorted(STEPS)}")
    low, high = model_bounds(model)
    if bool((x < low - 1e-6).any()) or bool((x > high + 1e-6).any()):
        raise FragileError(f"x lies outside the model's data range [{low}, {high}]")
    unit = (high - low) / pixel_scale
    eps_raw = eps * unit
    stepper = STEPS[step](step_size * unit if step in ("sign", "random") else lr)
    project = NORMS[norm]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    started = time.perf_counter()

    x0 = x.detach()
    with torch.no_grad():
        p0 = torch.softmax(model(x0), dim=1)
    label0 = p0.argmax(1)
    t = label0 if target is None else check_target(target, x0.shape[0], p0.shape[1], x0.device)
    _warn_surrogate(model, x0, label0, beta_at(beta, 0, steps))
    sal0 = saliency(explainer.attribute(x0, target=t), reduce)
    state = objective.prepare(sal0, p0)
    k_metric = k or (state["k"] if "k" in state else TopK().prepare(sal0, p0)["k"])

    n = x0.shape[0]
    best_loss = torch.full((n,), float("inf"), device=x0.device, dtype=torch.float64)
    best_delta = torch.zeros_like(x0)
    best_iter = torch.full((n,), -1, dtype=torch.long, device=x0.device)
    delta = torch.zeros_like(x0)
    step_state = stepper.init(delta)
    for it in range(int(steps)):
        grad = None
        if stepper.needs_grad:
            surrogate = explainer.surrogate(beta_at(beta, it, steps))
            grad = _objective_grad(model, surrogate, objective, state, x0 + delta, t, reduce)
        delta, step_state = stepper.update(delta, grad, step_state, it, eps_raw, gen)
        delta = clip_to_bounds(x0, project(delta, eps_raw), low, high).detach()
        loss, ok, _ = _evaluate(model, explainer, objective, state, x0 + delta, t, label0, p0, reduce)
        better = ok & (loss < best_loss)
        best_loss = torch.where(better, loss, best_loss)
        best_delta = torch.where(better.view(-1, 1, 1, 1), delta, best_delta)
        best_iter = torch.where(better, torch.full_like(best_iter, it), best_iter)
        if progress is not None:
            progress(it + 1, int(steps))
        if early_stop and it - int(best_iter.max()) >= early_stop:
            break

    x_adv = x0 + best_delta
    _, _, label_adv = _evaluate(model, explainer, objective, state, x_adv, t, label0, p0, reduce)
    sal_adv = saliency(explainer.attribute(x_adv, target=t), reduce)
    success = best_iter >= 0
    with torch.no_grad():
        p_adv = torch.softmax(model(x_adv), dim=1)
    metrics = map_metrics(sal0, sal_adv, x0, x_adv, k_metric, data_range=high - low)
    metrics["output_change"] = (p_adv - p0).abs().amax(1)
    metrics.update(objective.extra_metrics(sal0, sal_adv, state))
    return AttackResult(
        attack=objective.name, method=getattr(explainer, "name", type(explainer).__name__), eps=float(eps), norm=norm,
        x=x0, x_adv=x_adv, maps=sal0, maps_adv=sal_adv, success=success, label=label0, label_adv=label_adv,
        best_iteration=best_iter, objective=best_loss, metrics=metrics, seconds=time.perf_counter() - started,
        settings={"steps": int(steps), "step": step, "step_size": step_size, "lr": lr, "beta": beta, "seed": seed,
                  "reduce": reduce, "pixel_scale": pixel_scale, "k": k_metric, "early_stop": early_stop},
        maps_surrogate_adv=(saliency(explainer.surrogate(beta_at(beta, steps - 1, steps)).attribute(x_adv, target=t), reduce)
                            if surrogate_maps else None),
    )


def _objective_grad(model, surrogate, objective, state, x, t, reduce) -> torch.Tensor:
    xa = x.detach().requires_grad_(True)
    sal = saliency(surrogate.attribute(xa, target=t, create_graph=True), reduce)
    p = torch.softmax(model(xa), dim=1) if objective.uses_output else None
    (g,) = torch.autograd.grad(objective.loss(sal, p, state).sum(), xa)
    return g


def _evaluate(model, explainer, objective, state, x, t, label0, p0, reduce):
    """Objective on the original model's map, and whether the iterate qualifies."""
    h, out = explainer.attribute_with_output(x, target=t)
    p = torch.softmax(out, dim=1)
    label = p.argmax(1)
    ok = label == label0
    if objective.output_tol is not None:
        ok &= (p - p0).abs().amax(1) <= objective.output_tol
    with torch.no_grad():
        loss = objective.loss(saliency(h, reduce), p, state).double()
    return loss, ok, label


def _warn_surrogate(model, x0, label0, beta) -> None:
    if beta is None:
        return
    with softplus(model, beta=beta) as smooth, torch.no_grad():
        disagree = int((smooth(x0).argmax(1) != label0).sum())
    if disagree:
        warnings.warn(f"the softplus(beta={beta}) surrogate predicts a different class than the model on "
                      f"{disagree} of {x0.shape[0]} clean images; its gradients may mislead the attack "
                      "(raise beta)", stacklevel=3)
