"""The attack loop, written once (Ghorbani et al. 2019 Alg. 1; Dombrowski et al. 2019 sec. 3).

For each eps, batched over images:

    delta_0 = 0
    for t in 0..P-1:
        g     = d/dx objective(s~(x + delta_t))        on the softplus(beta_t) surrogate (create_graph)
        delta = step(delta_t, g);  delta = project_eps(delta);  delta = clip(x + delta) - x
        keep delta if the *original* model keeps the label (and output within tolerance) and the
        objective evaluated on the original model's map improves, per image

An explanation that is already beta-smoothed (a defence) is differentiated as it is.
``eps``, ``step_size`` and ``lr`` are given in pixel units of ``pixel_scale`` (eps=8 means 8/255 of the
data range for the default ``pixel_scale=255``), as in the papers. ``beta`` is the surrogate's softplus
beta: 'auto' (chosen for the model, ``fragile.attacks.surrogate``), a number, a (start, end) pair for a
geometric schedule (Dombrowski: 10 -> 100), or None to differentiate the original model directly.

With ``check_every = c > 1`` the iterate is evaluated on the original model (its map and label) only after
every c-th iteration and after the last: only evaluated iterates can be kept, so the returned example always
keeps its label on the original model, and the trajectory has a point per evaluated iteration.

What a result says about itself: images without a qualifying iterate (or whose objective gradient was
zero throughout) are failures, with NaN metrics and a reason; the best-so-far objective trajectory is
kept (compactly) and ``converged`` says whether it was still improving in the last 10% of iterations.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fragile.attacks.objectives import Objective, TopK
from fragile.attacks.objectives import create as create_objective
from fragile.attacks.result import AttackResult
from fragile.attacks.second_order import (
    MIN_COSINE,
    DifferenceRule,
    check_second_order,
    choose_step,
    difference_at,
    refusal,
)
from fragile.attacks.steps import STEPS
from fragile.attacks.threat import NORMS, clip_to_bounds
from fragile.errors import FragileError
from fragile.explanations.base import Explainer, check_input, check_target, model_bounds
from fragile.explanations.postprocess import normalize_sum, reduce_channels
from fragile.explanations.subsample import subsampler
from fragile.metrics import center_shift, cosine_distance, mse, pcc, spearman, ssim, topk_intersection, topk_name
from fragile.models.outputs import OUTPUT_KEY, match_input, model_output
from fragile.models.smooth import softplus

logger = logging.getLogger("fragile")


def saliency(h: torch.Tensor, reduce: str = "abs_sum") -> torch.Tensor:
    """Ghorbani's saliency: channels reduced (sum of |h|), normalised to sum 1 per image, (N, H, W)."""
    return normalize_sum(reduce_channels(h, reduce))


def draws_noise(explainer: Explainer) -> bool:
    """Whether the explainer draws random numbers per call (a noise-averaged method: it overrides ``reseed``)."""
    return type(explainer).reseed is not Explainer.reseed


def _same_noise(explainer: Explainer, seed: int) -> None:
    """Restart a noise-averaged explainer's stream at ``seed`` (no-op for deterministic ones)."""
    if draws_noise(explainer):
        explainer.reseed(seed)


def common_noise_maps(explainer: Explainer, inputs: Sequence[torch.Tensor], *, target, reduce: str = "abs_sum",
                      seed: int = 0) -> list[torch.Tensor]:
    """Saliency maps (N, H, W) of each tensor in ``inputs`` (each (N, C, H, W)) for ``target``, all with the same
    noise when the method is noise-averaged (the stream reseeded at ``seed`` before each call: common random
    numbers), so that their differences measure the change of the input, not the Monte-Carlo noise of the
    method. Deterministic methods are simply evaluated."""
    maps = []
    for x in inputs:
        _same_noise(explainer, seed)
        maps.append(saliency(explainer.attribute(x, target=target), reduce))
    return maps


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


def _number(value, name: str) -> float:
    """A finite real number (Python or numpy scalar, or a 0-d tensor); strings and bools are refused."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FragileError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise FragileError(f"{name} must be finite, got {value}")
    return value


def _positive(value, name: str) -> float:
    value = _number(value, name)
    if value <= 0:
        raise FragileError(f"{name} must be positive, got {value:g}")
    return value


def _check_eps(eps, pixel_scale: float) -> float:
    eps = _positive(eps, "eps")
    if eps > pixel_scale:
        raise FragileError(f"eps = {eps:g} is larger than the data range ({pixel_scale:g} pixel units)")
    return eps


def check_beta_setting(beta):
    """``"auto"``, ``None``, a positive number, or a (start, end) pair of positive numbers -> normalised."""
    if isinstance(beta, str):
        if beta != "auto":
            raise FragileError(f"beta must be 'auto', None, a positive number or a (start, end) pair, got {beta!r}")
        return beta
    if beta is None:
        return None
    if isinstance(beta, (list, tuple)):
        if len(beta) != 2:
            raise FragileError(f"a beta schedule is a (start, end) pair, got {beta!r}")
        return (_positive(beta[0], "beta start"), _positive(beta[1], "beta end"))
    return _positive(beta, "beta")


def _check_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise FragileError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def converged(trajectory: torch.Tensor, tail: float = 0.1, tol: float = 0.01,
              iterations: Sequence[int] | None = None) -> torch.Tensor:
    """Per image, whether the best objective stopped improving: its decrease over the last ``tail``
    fraction of the iterations is at most ``tol`` times its total decrease from the clean image.

    ``trajectory: (P, N)`` float64, row 0 the clean objective, row j the best qualifying objective after
    ``iterations[j]`` iterations (default: row t after t iterations, P = T + 1; inf before the first qualifying
    iterate). With rows only at evaluated iterations (``check_every``) the decrease is taken from the last row at
    or before T - ceil(tail T), so over at least the tail. One iteration cannot show convergence: T = 1 gives
    False. Images without a qualifying iterate give False."""
    done = list(range(trajectory.shape[0])) if iterations is None else list(iterations)
    t = done[-1]
    if t < 2:
        return torch.zeros(trajectory.shape[1], dtype=torch.bool, device=trajectory.device)
    window = max(1, math.ceil(tail * t))
    row = max(j for j, d in enumerate(done) if d <= t - window)
    end, before, clean = trajectory[-1], trajectory[row], trajectory[0]
    total = (clean - end).clamp(min=0)
    ok = torch.isfinite(before) & torch.isfinite(end)
    last = torch.where(ok, before - end, torch.full_like(end, float("inf")))
    return ok & (last <= tol * total)


def _compact(trajectory: torch.Tensor, points: int = 33) -> tuple[list[int], torch.Tensor]:
    """At most ``points`` rows of a (T + 1, N) trajectory, evenly spaced, first and last kept."""
    idx = sorted({round(i * (trajectory.shape[0] - 1) / (points - 1)) for i in range(points)})
    return idx, trajectory[idx].float()


def run(model: nn.Module, explainer: Explainer, x: torch.Tensor, objective: Objective | str, *,
        eps: float | Sequence[float], steps: int = 300, step: str | None = None, step_size: float = 0.5,
        lr: float = 0.05, norm: str = "linf", beta="auto", target=None, seed: int = 0,
        early_stop: int | None = None, reduce: str = "abs_sum", pixel_scale: float = 255.0,
        k: int | None = None, surrogate_maps: bool = False, fast: bool = True, check_every: int = 1,
        subsample: int | float | None = None, precision: str = "float32", second_order: str = "exact",
        step_output: str = "model", progress: Callable[[int, int], None] | None = None) -> AttackResult | list[AttackResult]:
    """Attack the explanations of ``x: (N, C, H, W)`` (raw pixels within the model's bounds).

    ``objective``: an Objective or a name ('topk', 'mass_center', 'random_sign', 'random_sign_search';
    'targeted' and 'manipulate' need parameters, pass ``attacks.create(...)``). ``step``: 'sign' (default
    for most), 'apgd' (sign steps with APGD's step-size schedule), 'adam' (manipulate; scale-free),
    'adam_cosine' / 'adam_plateau' (Adam with a cosine decay / APGD-style halving of lr), 'adam_absolute'
    (torch's Adam, the Dombrowski code), 'gradient', 'random', 'random_search' (see ``fragile.attacks.steps``).

    Units: ``eps``, ``step_size`` (alpha of 'sign') and ``lr`` (of 'adam' / 'gradient': the size of a
    step per coordinate) are all in pixel units of ``pixel_scale`` (255: eps = 8 means 8/255 of the data
    range). From a code base with normalised inputs ((x - mean) / std, x in [0, 1]) an Adam learning
    rate lr_n converts to lr = lr_n * std * pixel_scale (Dombrowski's 2e-4 with ImageNet's mean std 0.226
    is lr = 0.0115).

    ``beta``: 'auto' (default: the surrogate chosen for this model, ``fragile.attacks.surrogate``), a
    number, a (start, end) geometric schedule (Dombrowski 10 -> 100), or None (the original model; refused
    when the objective's gradient is then exactly zero, as on ReLU networks). A list of eps returns one
    result per eps.

    ``fast`` (default True): the gradient step of explainers that differentiate the model by plain autograd
    (gradient, gradient x input, IG, SmoothGrad, Uniform Gradient) runs on the model with its BatchNorms
    merged into the preceding layers (``fragile.models.fast``; the same function up to float rounding, checked
    on x). Every iterate is still evaluated, and the returned example chosen, on the original model exactly.
    False: the plain model throughout.

    ``check_every`` (default 1: every iteration): evaluate the iterate on the original model (its map and label:
    the objective that chooses the returned example) only after every ``check_every``-th iteration and after the
    last, ceil(T / check_every) evaluations instead of T. Only evaluated iterates are kept, so ``x_adv`` still
    keeps its label on the original model; the trajectory (and ``converged``, ``best_iteration``, ``early_stop``)
    sees the evaluated iterations only. Step rules that react to the evaluated objective (``apgd``,
    ``adam_plateau``) react at evaluated iterations only: a checkpoint passed between evaluations is tested at the
    next one, its 75% progress test over the evaluations since the last test (``steps._stalled``).

    ``subsample`` (default None: the full method): the gradient step differentiates an unbiased estimator of the
    map from that many (an integer in [1, P]) or that fraction (in (0, 1]) of its P path points (integrated
    gradients: a fresh uniformly random subset each iteration, weights scaled by P / m) or noise samples
    (SmoothGrad, Uniform Gradient: fewer fresh samples); ``fragile.explanations.subsample``. Every iterate is still
    evaluated, and the returned example chosen, on the full method. Other methods refuse it.

    ``precision`` (default ``'float32'``: off, the gradient step in the model's own dtype, unchanged to the bit):
    ``'bfloat16'`` computes the surrogate's map (and the output the objective may use) in the gradient step under
    ``torch.autocast(x.device.type, torch.bfloat16)`` (CPU and CUDA; their backward follows the forward's dtypes),
    the post-processing and the objective in float32. Every iterate is still evaluated, and the returned example
    chosen, on the float32 model exactly: ``x_adv`` keeps its label. Applied to float32 models with explainers
    computed by plain autograd (``plain_autograd``: gradient, gradient x input, IG, SmoothGrad, Uniform Gradient);
    elsewhere (LRP, DeepLIFT, ...; float64 models) a warning and the model's dtype. ``settings['precision']`` says
    what the gradient step ran in. Measured (``benchmarks/iteration_cost.py --parts bf16``: gradient maps,
    pretrained ResNet-20, 16 correctly classified CIFAR-10 test images, 1 thread of a Xeon with AMX / AVX512-BF16,
    15 interleaved repeats, medians): the gradient step 0.61x, the attack iteration (step + check) 0.70x the float32
    time; the objective's gradient keeps 95.2% of its signs (relative L2 difference 0.24); the attack is slightly
    weaker: top-100 intersection 0.123 against 0.119 after 5 sign steps of 0.25/255 at eps 1, 0.016 against 0.014
    after 10 of 0.25/255 at eps 2, 0.001 for both after 30 of 0.5/255 at eps 8 (saturated).

    ``second_order`` (default ``'exact'``: autograd through the map's graph): ``'difference'`` replaces the double
    backward of a gradient map by the forward difference of two gradients along v = dL/dh (H v ~ (h(x + s v) -
    h(x)) / s; ``fragile.attacks.second_order``), its relative step chosen on the clean images (at both ends of a
    beta schedule) by the worst image's cosine with the exact gradient, below 0.99 the attack keeps the exact
    gradient and warns; every 25 steps the difference is compared with the exact gradient on the iterate again and
    the attack switches to it when the agreement falls. ``settings['second_order']`` records the rule, the step,
    the cosines and any switch. Simple gradient maps only (their Jacobian is the symmetric Hessian), float32;
    every iterate is still evaluated, and the returned example chosen, on the original model exactly.

    ``step_output`` (objectives that use the output, i.e. ``manipulate``): where the gradient step takes the
    output term. ``'model'`` (default): a forward and backward of the original model beside the surrogate's map, the
    exact gradient of the objective on the surrogate's map and the model's output. ``'surrogate'``: the output of
    the network the map is computed on (softplus(beta), or the model when beta is None), against the original
    model's clean softmax, as the Dombrowski reference's step does; gradient and gradient x input take it from the
    map's own forward pass, one forward and one backward of the network fewer per step (other methods run the
    surrogate's forward once more: no saving). Every iterate is still evaluated, and the returned example chosen,
    on the original model's map and output exactly. Refused with ``second_order='difference'``.
    """
    if isinstance(objective, str):
        objective = create_objective(objective)
    if isinstance(eps, (list, tuple)) or (isinstance(eps, np.ndarray) and eps.ndim == 1):
        if len(eps) == 0:
            raise FragileError("eps is an empty list: give at least one eps (pixel units of 255)")
        return [run(model, explainer, x, objective, eps=e, steps=steps, step=step, step_size=step_size, lr=lr,
                    norm=norm, beta=beta, target=target, seed=seed, early_stop=early_stop, reduce=reduce,
                    pixel_scale=pixel_scale, k=k, surrogate_maps=surrogate_maps, fast=fast, check_every=check_every,
                    subsample=subsample, precision=precision, second_order=second_order, step_output=step_output,
                    progress=progress)
                for e in eps]
    if not isinstance(model, nn.Module):
        raise FragileError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(explainer, Explainer):
        raise FragileError(f"explainer must be a fragile Explainer (explanations.create(...)), got "
                           f"{type(explainer).__name__}")
    x = match_input(model, check_input(x))
    key = getattr(explainer, "output_key", OUTPUT_KEY)
    pixel_scale = _positive(pixel_scale, "pixel_scale")
    eps = _check_eps(eps, pixel_scale)
    steps = _check_int(steps, "steps")
    step_size, lr = _positive(step_size, "step_size"), _positive(lr, "lr")
    early_stop = None if early_stop is None else _check_int(early_stop, "early_stop")
    k = None if k is None else _check_int(k, "k")
    check_every = _check_int(check_every, "check_every")
    sample = subsampler(explainer, subsample, seed)  # the gradient step's explainer (identity: the full method)
    check_precision(precision)
    check_second_order(second_order)
    check_step_output(step_output, second_order)
    beta = check_beta_setting(beta)
    if norm not in NORMS:
        raise FragileError(f"unknown norm {norm!r}; choose one of {sorted(NORMS)}")
    if objective.fixed_step and step not in (None, objective.default_step):
        raise FragileError(f"{objective.name} is a random control: its step is {objective.default_step!r}, got "
                           f"step={step!r} (which would make it a gradient attack under the control's name)")
    step = step or objective.default_step
    if step not in STEPS:
        raise FragileError(f"unknown step {step!r}; choose one of {sorted(STEPS)}")
    low, high = model_bounds(model)
    if bool((x < low - 1e-6).any()) or bool((x > high + 1e-6).any()):
        raise FragileError(f"x lies outside the model's data range [{low}, {high}]")
    unit = (high - low) / pixel_scale
    eps_raw = eps * unit
    stepper = STEPS[step]((step_size if step == "sign" else lr) * unit)
    iterations = min(steps, stepper.max_steps or steps)
    project = NORMS[norm]
    gen = torch.Generator(device=x.device).manual_seed(seed)
    if hasattr(explainer, "reseed"):
        explainer.reseed(seed)
    started = time.perf_counter()

    x0 = x.detach()
    with torch.no_grad():
        p0 = torch.softmax(model_output(model, x0, key), dim=1)
    if p0.shape[1] < 2:
        raise FragileError("the model returns one score per image (N, 1): its label never changes, so an attack "
                           "cannot keep it; return (N,) for a single-logit binary classifier or (N, classes) logits")
    label0 = p0.argmax(1)
    t = label0 if target is None else check_target(target, x0.shape[0], p0.shape[1], x0.device)
    beta, beta_note = _resolve_beta(model, explainer, x0, beta, stepper.needs_grad, key)
    # A noise-averaged method is evaluated with common random numbers: every evaluation (the clean map, each
    # iterate, the final label check) redraws the same noise from a stream of its own (seed + 1), so the objective
    # compares iterates, not noise draws; the gradient steps keep drawing fresh noise (EOT) from the shared stream.
    evaluator = explainer.independent_noise(seed + 1) if draws_noise(explainer) else explainer
    _same_noise(evaluator, seed + 1)
    sal0 = saliency(evaluator.attribute(x0, target=t), reduce)
    state = objective.prepare(sal0, p0)
    k_metric = k or (state["k"] if "k" in state else TopK().prepare(sal0, p0)["k"])

    n = x0.shape[0]
    with torch.no_grad():
        clean_loss = objective.loss(sal0, p0, state).double()
    best_loss = torch.full((n,), float("inf"), device=x0.device, dtype=torch.float64)
    best_delta = torch.zeros_like(x0)
    best_iter = torch.full((n,), -1, dtype=torch.long, device=x0.device)
    moved = torch.zeros(n, dtype=torch.bool, device=x0.device) if stepper.needs_grad else None
    trajectory, evaluated = [clean_loss], [0]
    delta = torch.zeros_like(x0)
    step_state = stepper.init(delta)
    rewritten = _gradient_model(model, explainer, x0, fast and stepper.needs_grad)
    autocast, precision = _gradient_precision(precision, explainer, x0, stepper.needs_grad)
    objective_grad, second_order_used = functools.partial(_objective_grad, step_output=step_output), {"rule": "exact"}
    if second_order != "exact" and stepper.needs_grad:  # a random attack takes no gradient: nothing to choose
        ends = dict.fromkeys(beta_at(beta, i, iterations) for i in (0, iterations - 1))  # a schedule's two ends
        with rewritten():
            objective_grad, second_order_used = _second_order_rule(
                second_order, model, [sample(explainer.surrogate(b)) for b in ends], objective, state, x0, t, reduce,
                key, autocast)
    for it in range(iterations):
        grad = None
        if stepper.needs_grad:
            surrogate = sample(explainer.surrogate(beta_at(beta, it, iterations)))
            with rewritten():
                grad = objective_grad(model, surrogate, objective, state, x0 + delta, t, reduce, key, autocast)
            moved |= (grad != 0).flatten(1).any(1)
            if it == 0 and not bool(moved.any()):
                raise FragileError(_zero_gradient_message(beta))
        delta, step_state = stepper.update(delta, grad, step_state, it, eps_raw, gen)
        delta = clip_to_bounds(x0, project(delta, eps_raw), low, high).detach()
        if (it + 1) % check_every and it != iterations - 1:  # not evaluated: the rule continues (no objective)
            delta, step_state = stepper.observe(delta, step_state, loss=None, best_delta=best_delta,
                                                best_loss=best_loss, t=it, iterations=iterations)
            if progress is not None:
                progress(it + 1, iterations)
            continue
        _same_noise(evaluator, seed + 1)
        loss, ok, _ = _evaluate(model, evaluator, objective, state, x0 + delta, t, label0, p0, reduce)
        better = ok & (loss < best_loss)
        best_loss = torch.where(better, loss, best_loss)
        best_delta = torch.where(better.view(-1, 1, 1, 1), delta, best_delta)
        best_iter = torch.where(better, torch.full_like(best_iter, it), best_iter)
        trajectory.append(best_loss)
        evaluated.append(it + 1)
        delta, step_state = stepper.observe(delta, step_state, loss=torch.where(ok, loss, torch.full_like(loss, math.inf)),
                                            best_delta=best_delta, best_loss=best_loss, t=it, iterations=iterations)
        if progress is not None:
            progress(it + 1, iterations)
        if early_stop and it - int(best_iter.max()) >= early_stop:
            break

    success = best_iter >= 0
    reasons = [None if s else objective.failure_reason for s in success.tolist()]
    if moved is not None:
        stuck = success & ~moved
        reasons = [ZERO_GRADIENT_REASON if st else r for st, r in zip(stuck.tolist(), reasons)]
        success = success & moved
    best_delta = torch.where(success.view(-1, 1, 1, 1), best_delta, torch.zeros_like(best_delta))
    x_adv = x0 + best_delta
    _same_noise(evaluator, seed + 1)
    _, _, label_adv = _evaluate(model, evaluator, objective, state, x_adv, t, label0, p0, reduce)
    maps_noise_seed = seed + 2 if draws_noise(explainer) else None
    if maps_noise_seed is not None:  # the reported maps share one noise draw, independent of the one that chose x_adv
        sal0, sal_adv = common_noise_maps(explainer, [x0, x_adv], target=t, reduce=reduce, seed=maps_noise_seed)
    else:
        sal_adv = saliency(explainer.attribute(x_adv, target=t), reduce)
    with torch.no_grad():
        p_adv = torch.softmax(model_output(model, x_adv, key), dim=1)
    metrics = map_metrics(sal0, sal_adv, x0, x_adv, k_metric, data_range=high - low)
    metrics["output_change"] = (p_adv - p0).abs().amax(1)
    metrics.update(objective.extra_metrics(sal0, sal_adv, state))
    metrics = {name: torch.where(success, v.double(), torch.full_like(v, float("nan"), dtype=torch.float64))
               for name, v in metrics.items()}
    traj = torch.stack(trajectory)
    rows, traj_values = _compact(traj)
    return AttackResult(
        attack=objective.name, method=getattr(explainer, "name", type(explainer).__name__), eps=float(eps), norm=norm,
        x=x0, x_adv=x_adv, maps=sal0, maps_adv=sal_adv, success=success, label=label0, label_adv=label_adv,
        best_iteration=best_iter, objective=torch.where(success, best_loss, torch.full_like(best_loss, float("nan"))),
        metrics=metrics, seconds=time.perf_counter() - started,
        settings={"steps": steps, "iterations": evaluated[-1], "step": step, "step_size": step_size, "lr": lr,
                  "beta": list(beta) if isinstance(beta, tuple) else beta, "beta_note": beta_note, "seed": seed,
                  "reduce": reduce, "pixel_scale": pixel_scale, "k": k_metric, "early_stop": early_stop,
                  "subsample": subsample, "check_every": check_every, "precision": precision,
                  "second_order": second_order_used, "maps_noise_seed": maps_noise_seed,
                  "step_output": step_output if objective.uses_output else None},
        maps_surrogate_adv=(saliency(explainer.surrogate(beta_at(beta, iterations - 1, iterations)).attribute(
            x_adv, target=t), reduce) if surrogate_maps else None),
        converged=(converged(traj, iterations=evaluated) & success) if stepper.needs_grad else None, reasons=reasons,
        trajectory=traj_values, trajectory_iterations=[evaluated[j] for j in rows],
    )


ZERO_GRADIENT_REASON = "the objective's gradient was exactly zero at every iteration (nothing to follow)"


def _zero_gradient_message(beta) -> str:
    why = ("with beta=None the attack differentiates the original model, and on a piecewise-linear network "
           "(ReLU, max-pool) the map's derivative w.r.t. the input is zero almost everywhere (zero second "
           "derivative), so the attack cannot move and would report perfect robustness. Use beta='auto' (a "
           "softplus surrogate chosen for the model) or a fixed beta, or attack a smooth explanation")
    if beta is not None:
        why = (f"the surrogate (beta={beta}) still has a zero derivative of the map; lower beta or use "
               "beta='auto'")
    return f"the gradient of the attack objective is exactly zero for every image: {why}."


def _resolve_beta(model, explainer, x0, beta, needs_grad, key=OUTPUT_KEY):
    """(beta the loop uses, a note for the result). 'auto' -> the choice of ``fragile.attacks.surrogate``."""
    if not needs_grad:
        return None, "not used (a random attack takes no gradient)"
    if explainer.surrogate(1.0) is explainer:
        return None, "not used (the explanation is already smoothed and is attacked as it is)"
    if beta == "auto":
        from fragile.attacks.surrogate import choose_beta

        choice = choose_beta(model, x0, output_key=key)
        if not choice.qualified:
            warnings.warn(choice.describe(), stacklevel=3)
        logger.info(choice.describe())
        return choice.beta, choice.describe()
    if beta is not None:
        _warn_surrogate(model, explainer, x0, beta_at(beta, 0, 2), key=key)
        return beta, "fixed"
    return None, "none: the original model is differentiated"


STEP_OUTPUTS = ("model", "surrogate")  # where the gradient step takes the output term (run's docstring)


def check_step_output(step_output, second_order="exact", name: str = "step_output") -> str:
    """``step_output`` if it is one of :data:`STEP_OUTPUTS` and compatible with ``second_order``, else FragileError."""
    if not isinstance(step_output, str) or step_output not in STEP_OUTPUTS:
        raise FragileError(f"unknown {name} {step_output!r}; choose one of {list(STEP_OUTPUTS)}")
    if step_output == "surrogate" and second_order != "exact":
        raise FragileError(f"{name}='surrogate' cannot be combined with second_order={second_order!r} (the "
                           "difference rule's output term is the original model's); use one of them")
    return step_output


#: ``precision`` of the attack's gradient step -> the autocast dtype (None: the model's own dtype, no autocast)
PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def check_precision(precision, name: str = "precision") -> str:
    """``precision`` of ``run``: one of ``PRECISIONS`` ('float32', 'bfloat16')."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise FragileError(f"{name} must be one of {', '.join(map(repr, PRECISIONS))}, got {precision!r}")
    return precision


def plain_autograd(explainer: Explainer) -> bool:
    """Whether the explainer's map is plain autograd through the model (``plain_autograd``, and so is its inner
    method if it averages one): only then may the gradient step run on the BatchNorm-folded model (``fast``; a
    modified backward such as LRP's treats a folded convolution differently from a convolution and a BatchNorm)
    or under ``torch.autocast`` (``precision``). Modified backwards may not: LRP's rules call
    convolution backwards with float32 weights on bfloat16 activations, DeepLIFT's quotients of small differences
    lose their meaning in bfloat16 (objective gradients 2x their own norm away from float32's on ResNet-20)."""
    inner = getattr(explainer, "inner", None)
    return bool(getattr(explainer, "plain_autograd", False)) and (inner is None or plain_autograd(inner))


def _gradient_precision(precision: str, explainer: Explainer, x0: torch.Tensor, needs_grad: bool):
    """(autocast dtype or None, the precision the gradient step runs in, for the result's settings)."""
    own = str(x0.dtype).removeprefix("torch.")
    if PRECISIONS[precision] is None or not needs_grad:
        return None, own
    if x0.dtype != torch.float32:
        why = f"the model computes in {own} (autocast lowers float32 only)"
    elif not plain_autograd(explainer):
        why = f"{getattr(explainer, 'name', type(explainer).__name__)} is not computed by plain autograd through the model"
    else:
        return PRECISIONS[precision], precision
    warnings.warn(f"precision={precision!r} is not applied: {why}; the gradient step runs in {own}", stacklevel=3)
    return None, own


def _gradient_model(model: nn.Module, explainer: Explainer, x0: torch.Tensor, fast: bool) -> Callable:
    """``with _gradient_model(...)():`` what the gradient step runs on: BatchNorms folded
    (``fragile.models.fast``) for explainers that differentiate the model by plain autograd
    (:func:`plain_autograd`; SmoothGrad of LRP is not), else the model as it is."""
    if fast and plain_autograd(explainer):
        from fragile.models.fast import batch_norm_folding

        return batch_norm_folding(model, x0)
    return contextlib.nullcontext


def _objective_grad(model, surrogate, objective, state, x, t, reduce, key=OUTPUT_KEY,
                    autocast: torch.dtype | None = None, step_output: str = "model") -> torch.Tensor:
    """d/dx of the objective on ``surrogate``'s map at ``x``, its output term (if any) on the original ``model``
    (``step_output='model'``) or on the surrogate's own network (``'surrogate'``, see :func:`run`); with
    ``autocast`` (a dtype) the map and the output are computed under ``torch.autocast`` (their backward follows the
    dtypes of the forward), the post-processing and the objective in x's dtype."""
    xa = x.detach().requires_grad_(True)
    with torch.autocast(device_type=x.device.type, dtype=autocast) if autocast else contextlib.nullcontext():
        if objective.uses_output and step_output == "surrogate":
            h, out = surrogate.attribute_with_step_output(xa, target=t)
        else:
            h = surrogate.attribute(xa, target=t, create_graph=True)
            out = model_output(model, xa, key) if objective.uses_output else None
    sal = saliency(h.to(x.dtype), reduce)
    p = torch.softmax(out.to(x.dtype), dim=1) if out is not None else None
    (g,) = torch.autograd.grad(objective.loss(sal, p, state).sum(), xa)
    return g


def _second_order_rule(second_order, model, surrogates, objective, state, x0, t, reduce, key, autocast):
    """For ``second_order='difference'`` (``fragile.attacks.second_order``): (the gradient step's function, with
    ``_objective_grad``'s signature; what ``settings['second_order']`` records, a dict with its ``rule``). The
    relative step is chosen on the clean images ``x0`` for every surrogate in ``surrogates`` (the two ends of a beta
    schedule) by the worst image's cosine with the exact gradient; refused (FragileError) where the map is not a
    gradient, kept exact with a warning where that cosine is below ``MIN_COSINE``; a :class:`DifferenceRule`
    (rechecked during the attack) otherwise."""
    why = refusal(surrogates[0], autocast)
    if why is not None:
        raise FragileError(f"second_order='difference' cannot be used here: {why}")

    def pair(surrogate):
        return (_objective_grad(model, surrogate, objective, state, x0, t, reduce, key),
                difference_at(model, surrogate, objective, state, x0, t, reduce, key))

    rel, cosine = choose_step([pair(s) for s in surrogates])
    if not cosine >= MIN_COSINE:
        warnings.warn(f"second_order='difference' is not used: its best agreement with the exact gradient on the clean "
                      f"images is cosine {cosine:.3f} for the worst image (< {MIN_COSINE}); the attack differentiates "
                      "exactly", stacklevel=4)
        return _objective_grad, {"rule": "exact", "requested": "difference", "rel_step": rel, "cosine": cosine}
    rule = DifferenceRule(_objective_grad, rel, cosine)
    return rule, rule.record


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


def _warn_surrogate(model, explainer, x0, beta, min_pcc: float = 0.5, key=OUTPUT_KEY) -> None:
    """Warn when the softplus(beta) surrogate disagrees with the model: other labels, or gradient maps
    whose PCC with the model's is below ``min_pcc`` (its gradients may then mislead the attack)."""
    from fragile.explanations import create

    with torch.no_grad():
        label0 = model_output(model, x0, key).argmax(1)
    with softplus(model, beta=beta) as smooth, torch.no_grad():
        disagree = int((model_output(smooth, x0, key).argmax(1) != label0).sum())
    grad = create("gradient", model, output_key=key)
    agreement = float(torch.nan_to_num(pcc(saliency(grad.attribute(x0, target=label0)),
                                           saliency(grad.smoothed(beta).attribute(x0, target=label0))), nan=0.0).mean())
    if disagree or agreement < min_pcc:
        warnings.warn(f"the softplus(beta={beta}) surrogate disagrees with the model: other class on {disagree} "
                      f"of {x0.shape[0]} clean images, mean PCC of gradient maps {agreement:.2f}; its gradients "
                      "may mislead the attack (beta='auto' chooses one on these images; a sweep chooses it once, on its "
                      "first images)", stacklevel=4)
