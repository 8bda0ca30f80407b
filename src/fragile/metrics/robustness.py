"""Random-perturbation robustness of explanations, batched over images and perturbation samples.

For an image x with map e(x) (the explainer's raw map, or with ``reduce`` the attack's saliency
``s = normalize_sum(reduce_channels(h))``), S perturbations x_j = clip(x + delta_j) are drawn (uniform in
the L-inf ball of radius eps, or Gaussian with std eps; eps in pixel units of ``pixel_scale``, so eps = 8
means 8/255 of the model's data range) and, per sample j, one of:

- sensitivity (Yeh et al. 2019, eq. 7; Bhatt et al. 2020):      ||e(x_j) - e(x)||_2 / ||e(x)||_2
- Lipschitz ratio (Alvarez-Melis & Jaakkola 2018, eq. 1):       ||e(x_j) - e(x)||_2 / ||x_j - x||_2
- relative input stability (Agarwal et al. 2022, eq. 2):        ||(e(x) - e(x_j)) / e(x)||_2 / max(||(x - x_j) / x||_2, eps_min)
- relative output stability (Agarwal et al. 2022, eq. 5):       ||(e(x) - e(x_j)) / e(x)||_2 / max(||h(x) - h(x_j)||_2, eps_min)
- relative representation stability (Agarwal et al. 2022, eq. 3):
  ||(e(x) - e(x_j)) / e(x)||_2 / max(||(L(x) - L(x_j)) / L(x)||_2, eps_min)

(divisions elementwise; h the logits; L(x) the outputs of chosen inner layers, flattened per image and
concatenated in the order the forward pass runs them (:func:`hidden_layers`, captured by forward hooks);
a zero entry of e(x), x or L(x) is replaced by eps_min as in Quantus).
The metrics aggregate over the samples: MaxSensitivity = max_j, AvgSensitivity = mean_j (Yeh's Monte-Carlo
estimates of the sup and the expectation over the ball), local Lipschitz estimate = max_j, RIS / ROS / RRS =
max_j. All are "lower is more stable".

The explanation is an ``Explainer`` of ours or any callable ``f(model, x, target) -> map`` (e.g. a captum
attribution, ``lambda m, x, t: Saliency(m).attribute(x, target=t)``; then pass ``model=``). All S x N
perturbed images are explained in chunks of ``batch_size`` samples (one call per chunk, not one per image).

Conventions, and where they differ from Quantus 0.6 (checked in ``tests/test_robustness_metrics.py``):

- The noise is drawn from ``torch.Generator().manual_seed(seed)``, one (N, C, H, W) draw per sample in
  sample order (so the noise does not depend on ``batch_size``), and clipped to the model's data range
  (``clip=False``: not clipped; Quantus never clips). Quantus' defaults differ: sensitivity uses uniform
  noise of radius 0.2 (= eps 51 of 255) and 200 samples, the Lipschitz estimate Gaussian noise of std 0.1 with
  maps normalised by their max; give them ``eps``/``noise`` (and normalise the maps) to get the same quantity.
- ``return_nan_when_prediction_changes``: as Quantus, an image whose predicted class changes under *any*
  of its samples gets NaN (default False for sensitivity and Lipschitz, True for RIS / ROS / RRS, as there).
  Otherwise every sample counts. The papers' RIS / ROS maximise over label-preserving perturbations
  only: :func:`perturbation_scores` gives every per-sample value and the changed-prediction mask, and
  :func:`aggregate` with ``skip_changed=True`` takes that max.
- RIS / ROS / RRS denominators: max(., eps_min) as in the paper; Quantus adds eps_min only to an exact zero.
  The two differ only when the denominator is below eps_min (1e-6).
- Lipschitz ratio: the denominator is clamped at 1e-30 (Quantus adds 1e-10); a zero map norm in the
  sensitivity denominator gives NaN (undefined).
- RRS layers: Quantus' ``layer_names`` / ``layer_indices`` (one or the other; default every layer). Indices
  count the modules of ``model.named_modules()`` that are neither the model's own class nor an
  ``nn.Sequential``, as Quantus'; a negative index counts from the end of that list (Quantus converts it
  with the count of *all* modules, so its -1 selects nothing on an ``nn.Sequential``). Layer outputs are
  copied when captured (Quantus keeps a view, which a following in-place ReLU overwrites).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.explanations.base import Explainer, check_input, check_target, model_bounds
from fragile.explanations.postprocess import normalize_sum, reduce_channels
from fragile.models.outputs import match_input, model_output

QUANTITIES = ("sensitivity", "lipschitz", "ris", "ros", "rrs")
NOISES = ("uniform", "gaussian")
ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def stochastic(explain) -> bool:
    """Whether ``explain`` draws random numbers (a noise-averaged Explainer: it overrides ``reseed``)."""
    return isinstance(explain, Explainer) and type(explain).reseed is not Explainer.reseed


def explain_function(explain: Explainer | ExplainFn, model: nn.Module | None = None, seed: int | None = None):
    """(model, g) with ``g(x, target) -> map`` for an Explainer or a callable ``f(model, x, target)``. With
    ``seed`` a noise-averaged Explainer is reseeded before every call: inputs of one shape get the same noise
    (common random numbers), so map differences come from the input, not from the method's own sampling."""
    if isinstance(explain, Explainer):
        model = explain.model if model is None else model
        if seed is not None and stochastic(explain):
            def reseeded(x, t):
                explain.reseed(seed)
                return explain.attribute(x, target=t)
            return model, reseeded
        return model, lambda x, t: explain.attribute(x, target=t)
    if callable(explain):
        if not isinstance(model, nn.Module):
            raise FragileError("a callable explanation f(model, x, target) needs model=<the nn.Module it explains>")

        def g(x, t):
            out = explain(model, x, t)
            out = torch.as_tensor(out.detach() if isinstance(out, torch.Tensor) else out, device=x.device)
            if out.shape[0] != x.shape[0] or not bool(torch.isfinite(out).all()):
                raise FragileError(f"the explanation returned shape {tuple(out.shape)} (or NaN/inf) for inputs "
                                   f"{tuple(x.shape)}: it must return one finite map per input")
            return out
        return model, g
    raise FragileError(f"explain must be an Explainer or a callable f(model, x, target) -> map, got {type(explain).__name__}")


def processed(h: torch.Tensor, reduce: str | None) -> torch.Tensor:
    """The map the metrics compare: the raw map (``reduce=None``), or the attack's saliency
    ``normalize_sum(reduce_channels(h, reduce))`` (N, H, W)."""
    h = h.detach()
    if reduce is None:
        return h
    return normalize_sum(reduce_channels(h if h.dim() == 4 else h.unsqueeze(1), reduce))


def perturbations(x: torch.Tensor, *, eps: float, samples: int, seed: int = 0, noise: str = "uniform",
                  bounds: tuple[float, float] = (0.0, 1.0), clip: bool = True, pixel_scale: float = 255.0):
    """The perturbed images, one ``(N, C, H, W)`` batch per sample in order: x + U(-r, r) (``uniform``)
    or x + N(0, r^2) (``gaussian``), r = eps * (high - low) / pixel_scale, clipped to ``bounds``."""
    if noise not in NOISES:
        raise FragileError(f"unknown noise {noise!r}; choose one of {NOISES}")
    low, high = bounds
    r = float(eps) * (high - low) / pixel_scale
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    for _ in range(int(samples)):
        if noise == "uniform":
            delta = (2 * torch.rand(x.shape, generator=gen, dtype=x.dtype, device=x.device) - 1) * r
        else:
            delta = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device) * r
        xs = x + delta
        yield xs.clamp(low, high) if clip else xs


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).double()


def _relative(a: torch.Tensor, eps_min: float) -> torch.Tensor:
    """a with exact zeros replaced by eps_min (Quantus' guard of the elementwise division)."""
    return torch.where(a == 0, torch.full_like(a, eps_min), a)  # (a == 0) * eps_min would be float32


def hidden_layers(model: nn.Module, layer_names: Sequence[str] | None = None,
                  layer_indices: Sequence[int] | None = None) -> list[tuple[str, nn.Module]]:
    """The (name, module) pairs whose outputs form the representation L(x) of RRS, Quantus' convention: the
    candidates are ``model.named_modules()`` less the model's own class and ``nn.Sequential`` containers;
    ``layer_names`` picks by name, ``layer_indices`` by position in that list (negative: from its end), neither
    picks every candidate. An unknown name or an index out of range is an error, not an empty selection."""
    if layer_names is not None and layer_indices is not None:
        raise FragileError("give layer_names or layer_indices, not both (Quantus' convention)")
    candidates = [(n, m) for n, m in model.named_modules() if not isinstance(m, (type(model), nn.Sequential))]
    if not candidates:
        raise FragileError(f"{type(model).__name__} has no inner layer whose output could be the representation")
    if layer_names is not None:
        names = [layer_names] if isinstance(layer_names, str) else list(layer_names)
        known = {n for n, _ in candidates}
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise FragileError(f"unknown layer names {unknown or names}; the model's layers are {sorted(known)}")
        return [(n, m) for n, m in candidates if n in names]
    if layer_indices is not None:
        indices = [layer_indices] if isinstance(layer_indices, int) else list(layer_indices)
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not -len(candidates) <= i < len(candidates)]
        if bad or not indices:
            raise FragileError(f"layer_indices {bad or indices} out of range: the model has {len(candidates)} layers")
        chosen = {i % len(candidates) for i in indices}
        return [c for i, c in enumerate(candidates) if i in chosen]
    return candidates


def representation(model: nn.Module, x: torch.Tensor, layers: Sequence[tuple[str, nn.Module]], strict: bool = True):
    """(class scores (N, K), L(x) (N, D) float64): one forward pass with forward hooks on ``layers``; each
    output flattened per image and copied, concatenated in the order the forward pass ran them. An output
    that is not one tensor with a row per image is an error (``strict``) or left out (the default selection
    of every layer)."""
    captured = []

    def hook(name):
        def keep(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.dim() == 0 or output.shape[0] != x.shape[0]:
                if not strict:
                    return
                raise FragileError(f"layer {name!r} does not return one tensor with a row per image: choose layers "
                                   "(layer_names / layer_indices) whose outputs are tensors")
            captured.append(output.detach().reshape(x.shape[0], -1).to(torch.float64, copy=True))
        return keep

    handles = [m.register_forward_hook(hook(n)) for n, m in layers]
    try:
        with torch.no_grad():
            out = model_output(model, x)
    finally:
        for h in handles:
            h.remove()
    if not captured:
        raise FragileError(f"none of the layers {[n for n, _ in layers]} ran in the model's forward pass")
    return out, torch.cat(captured, 1)


def perturbation_scores(explain: Explainer | ExplainFn, x: torch.Tensor, *, eps: float, samples: int = 50,
                        model: nn.Module | None = None, target=None, noise: str = "uniform", clip: bool = True,
                        reduce: str | None = None, quantities: Sequence[str] = QUANTITIES, seed: int = 0,
                        batch_size: int = 8, eps_min: float = 1e-6, pixel_scale: float = 255.0,
                        common_noise: bool = True, layer_names: Sequence[str] | None = None,
                        layer_indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """Per-sample values of the ``quantities`` (see the module docstring), each ``(S, N)`` float64, and
    ``changed`` ``(S, N)`` bool: whether sample j changed the predicted class of image n. ``x: (N, C, H, W)``
    within the model's data range; ``target``: explained class (default: the predicted class of x).
    One explanation per perturbed image, ``batch_size`` samples (x N images) per call.

    ``common_noise`` (noise-averaged explainers such as SmoothGrad): the explainer is reseeded with ``seed``
    before every call and explains one sample (N images) per call, so e(x) and every e(x_j) use the same
    noise draws and the metric measures the map's change with the input, not the Monte-Carlo noise of the
    method (which Quantus, calling the method afresh, includes).

    ``layer_names`` / ``layer_indices``: the layers of the representation L of ``rrs`` (:func:`hidden_layers`)."""
    check_input(x)
    unknown = sorted(set(quantities) - set(QUANTITIES))
    if unknown or not quantities:
        raise FragileError(f"unknown quantities {unknown}; choose from {QUANTITIES}")
    if int(samples) < 1 or int(batch_size) < 1:
        raise FragileError(f"samples and batch_size must be >= 1, got {samples}, {batch_size}")
    if not float(eps) > 0:
        raise FragileError(f"eps must be positive (pixel units of {pixel_scale:g}), got {eps!r}")
    model, g = explain_function(explain, model, seed=seed if common_noise else None)
    if common_noise and stochastic(explain):
        batch_size = 1
    x = match_input(model, x)
    n = x.shape[0]
    layers = hidden_layers(model, layer_names, layer_indices) if "rrs" in quantities else []
    strict = layer_names is not None or layer_indices is not None

    def forward(inputs):
        if layers:
            return representation(model, inputs, layers, strict)
        with torch.no_grad():
            return model_output(model, inputs), None

    out0, l0 = forward(x)
    label0 = out0.argmax(1)
    t = label0 if target is None else check_target(target, n, out0.shape[1], x.device)
    e0 = _flat(processed(g(x, t), reduce))
    x0 = _flat(x)
    rel_e0 = _relative(e0, eps_min)
    rel_x0 = _relative(x0, eps_min)
    h0 = out0.double()
    values = {q: [] for q in quantities}
    changed = []
    stream = perturbations(x, eps=eps, samples=samples, seed=seed, noise=noise, bounds=model_bounds(model),
                           clip=clip, pixel_scale=pixel_scale)
    while True:
        chunk = [xs for _, xs in zip(range(int(batch_size)), stream)]
        if not chunk:
            break
        m = len(chunk)
        flat = torch.cat(chunk)  # (m * N, C, H, W), sample-major
        out, rep = forward(flat)
        changed.append((out.argmax(1) != label0.repeat(m)).view(m, n))
        e = _flat(processed(g(flat, t.repeat(m)), reduce)).view(m, n, -1)
        diff = e - e0
        dx = _flat(flat).view(m, n, -1) - x0
        if "sensitivity" in values:
            den = e0.norm(dim=1)
            den = torch.where(den > 0, den, torch.full_like(den, float("nan")))
            values["sensitivity"].append(diff.norm(dim=2) / den)
        if "lipschitz" in values:
            values["lipschitz"].append(diff.norm(dim=2) / dx.norm(dim=2).clamp(min=1e-30))
        if "ris" in values or "ros" in values or "rrs" in values:
            num = (diff / rel_e0).norm(dim=2)
            if "ris" in values:
                values["ris"].append(num / (dx / rel_x0).norm(dim=2).clamp(min=eps_min))
            if "ros" in values:
                dh = (out.double().view(m, n, -1) - h0).norm(dim=2)
                values["ros"].append(num / dh.clamp(min=eps_min))
            if "rrs" in values:
                dl = ((rep.view(m, n, -1) - l0) / _relative(l0, eps_min)).norm(dim=2)
                values["rrs"].append(num / dl.clamp(min=eps_min))
    result = {q: torch.cat(v) for q, v in values.items()}
    result["changed"] = torch.cat(changed)
    return result


def aggregate(values: torch.Tensor, changed: torch.Tensor, how: str = "max", *,
              return_nan_when_prediction_changes: bool = False, skip_changed: bool = False) -> torch.Tensor:
    """(S, N) per-sample values -> (N,): ``max`` or ``mean`` over the samples. NaN values (undefined) are
    ignored. ``return_nan_when_prediction_changes``: NaN for an image whose class changed under any sample
    (Quantus); ``skip_changed``: leave those samples out (the papers' label-preserving neighbourhood; NaN
    only when every sample changed the class)."""
    if how not in ("max", "mean"):
        raise FragileError(f"how must be 'max' or 'mean', got {how!r}")
    v = values.double()
    if skip_changed:
        v = torch.where(changed, torch.full_like(v, float("nan")), v)
    valid = ~torch.isnan(v)
    if how == "max":
        out = torch.where(valid, v, torch.full_like(v, -float("inf"))).amax(0)
    else:
        out = torch.where(valid, v, torch.zeros_like(v)).sum(0) / valid.sum(0)
    out = torch.where(valid.any(0), out, torch.full_like(out, float("nan")))
    if return_nan_when_prediction_changes:
        out = torch.where(changed.any(0), torch.full_like(out, float("nan")), out)
    return out


def _metric(quantity: str, how: str, default_nan: bool):
    def metric(explain: Explainer | ExplainFn, x: torch.Tensor, *, eps: float, samples: int = 50,
               model: nn.Module | None = None, target=None, noise: str = "uniform", clip: bool = True,
               reduce: str | None = None, return_nan_when_prediction_changes: bool = default_nan, seed: int = 0,
               batch_size: int = 8, eps_min: float = 1e-6, pixel_scale: float = 255.0,
               common_noise: bool = True) -> torch.Tensor:
        scores = perturbation_scores(explain, x, eps=eps, samples=samples, model=model, target=target, noise=noise,
                                     clip=clip, reduce=reduce, quantities=(quantity,), seed=seed,
                                     batch_size=batch_size, eps_min=eps_min, pixel_scale=pixel_scale,
                                     common_noise=common_noise)
        return aggregate(scores[quantity], scores["changed"], how,
                         return_nan_when_prediction_changes=return_nan_when_prediction_changes)
    return metric


max_sensitivity = _metric("sensitivity", "max", False)
max_sensitivity.__name__ = "max_sensitivity"
max_sensitivity.__doc__ = """MaxSensitivity (Yeh et al. 2019, eq. 7): max_j ||e(x_j) - e(x)||_2 / ||e(x)||_2 over ``samples``
perturbations x_j in the ball of radius ``eps`` (pixel units of 255), (N,) float64. Quantus'
``MaxSensitivity`` with the same noise gives the same values (its default: radius 0.2, 200 samples)."""

avg_sensitivity = _metric("sensitivity", "mean", False)
avg_sensitivity.__name__ = "avg_sensitivity"
avg_sensitivity.__doc__ = """AvgSensitivity (Yeh et al. 2019, sec. 4): the mean over the samples of
||e(x_j) - e(x)||_2 / ||e(x)||_2, a Monte-Carlo estimate of the expected sensitivity in the ball, (N,)."""

local_lipschitz_estimate = _metric("lipschitz", "max", False)
local_lipschitz_estimate.__name__ = "local_lipschitz_estimate"
local_lipschitz_estimate.__doc__ = """Local Lipschitz estimate (Alvarez-Melis & Jaakkola 2018, eq. 1):
max_j ||e(x_j) - e(x)||_2 / ||x_j - x||_2, (N,). With ``reduce='abs_sum'`` and uniform noise it is
``fragile.geometry.lipschitz_sampled`` (Wang et al. sec. 6); Quantus' ``LocalLipschitzEstimate`` defaults
to Gaussian noise (std 0.1) and max-normalised maps.
``return_nan_when_prediction_changes``: NaN for an image whose class any sample changed (Quantus)."""

relative_input_stability = _metric("ris", "max", True)
relative_input_stability.__name__ = "relative_input_stability"
relative_input_stability.__doc__ = """Relative input stability (Agarwal et al. 2022, eq. 2):
max_j ||(e(x) - e(x_j)) / e(x)||_2 / max(||(x - x_j) / x||_2, eps_min), (N,); NaN by default for an image
whose class any sample changed (as Quantus; the paper maximises over label-preserving x_j only, see
:func:`aggregate`)."""

relative_output_stability = _metric("ros", "max", True)
relative_output_stability.__name__ = "relative_output_stability"
relative_output_stability.__doc__ = """Relative output stability (Agarwal et al. 2022, eq. 5):
max_j ||(e(x) - e(x_j)) / e(x)||_2 / max(||h(x) - h(x_j)||_2, eps_min), h the logits, (N,); NaN by default
for an image whose class any sample changed (as Quantus)."""


def relative_representation_stability(explain: Explainer | ExplainFn, x: torch.Tensor, *, eps: float,
                                      samples: int = 50, layer_names: Sequence[str] | None = None,
                                      layer_indices: Sequence[int] | None = None, model: nn.Module | None = None,
                                      target=None, noise: str = "uniform", clip: bool = True, reduce: str | None = None,
                                      return_nan_when_prediction_changes: bool = True, seed: int = 0,
                                      batch_size: int = 8, eps_min: float = 1e-6, pixel_scale: float = 255.0,
                                      common_noise: bool = True) -> torch.Tensor:
    """Relative representation stability (Agarwal et al. 2022, eq. 3), (N,) float64, lower is more stable:

        RRS(x) = max_j ||(e(x) - e(x_j)) / e(x)||_2 / max(||(L(x) - L(x_j)) / L(x)||_2, eps_min)

    over ``samples`` perturbations x_j in the ball of radius ``eps`` (pixel units of ``pixel_scale``; noise as
    in :func:`perturbations`), divisions elementwise, L(x) the outputs of the layers picked by ``layer_names``
    or ``layer_indices`` (Quantus' convention, see :func:`hidden_layers`; default every layer), flattened and
    concatenated. ``x: (N, C, H, W)`` in the model's data range; maps raw (``reduce=None``) or the attack's
    saliency. NaN by default for an image whose class any sample changed (as Quantus; :func:`aggregate` with
    ``skip_changed=True`` gives the paper's max over label-preserving x_j).

    Quantus' ``RelativeRepresentationStability`` given the same perturbations gives the same values (its
    default noise: uniform of radius 0.2 = eps 51, 200 samples; it computes L from float32 inputs, so the two
    agree to ~1e-6 relative). A layer whose output has exact zeros (after a ReLU) divides by eps_min there:
    the denominator is then dominated by those entries; pick a layer before the nonlinearity to avoid it.
    Every layer (the default) keeps N x (the sum of all layer sizes) float64 numbers per sample in a chunk:
    name one layer on a large model."""
    scores = perturbation_scores(explain, x, eps=eps, samples=samples, model=model, target=target, noise=noise,
                                 clip=clip, reduce=reduce, quantities=("rrs",), seed=seed, batch_size=batch_size,
                                 eps_min=eps_min, pixel_scale=pixel_scale, common_noise=common_noise,
                                 layer_names=layer_names, layer_indices=layer_indices)
    return aggregate(scores["rrs"], scores["changed"], "max",
                     return_nan_when_prediction_changes=return_nan_when_prediction_changes)


# -- the worst case in the same ball -----------------------------------------------------------------------------------

#: the attack objective that maximises each quantity's numerator (the denominators of sensitivity and ROS are
#: constant or follow the output; those of the Lipschitz ratio and RIS grow with ||x' - x||, so several radii)
OBJECTIVES = {"sensitivity": "map_distance", "lipschitz": "map_distance", "ris": "relative_map_change",
              "ros": "relative_map_change", "rrs": "relative_map_change"}
#: the random-perturbation metric -> (its per-sample quantity, the aggregate over samples)
RANDOM_METRICS = {"max_sensitivity": ("sensitivity", "max"), "avg_sensitivity": ("sensitivity", "mean"),
                  "local_lipschitz": ("lipschitz", "max"), "relative_input_stability": ("ris", "max"),
                  "relative_output_stability": ("ros", "max"), "relative_representation_stability": ("rrs", "max")}


def adversarial_scores(explainer: Explainer, x: torch.Tensor, *, eps: float, quantities: Sequence[str] = QUANTITIES,
                       steps: int = 20, scales: Sequence[float] = (0.25, 0.5, 1.0), beta="auto", target=None,
                       reduce: str = "abs_sum", seed: int = 0, eps_min: float = 1e-6, pixel_scale: float = 255.0,
                       layer_names: Sequence[str] | None = None,
                       layer_indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """The adversarial estimate of each quantity in the L-inf ball of radius eps (pixel units), (N,) float64:
    the attack loop (``fragile.attacks.run``, sign steps of r / 4, ``steps`` iterations, label-preserving
    iterates only) maximises the quantity's numerator (``OBJECTIVES``: ``map_distance`` = ||s' - s||_2,
    ``relative_map_change`` = ||(s' - s) / s||_2) in the balls of radius r = eps * scale, and the quantity is
    evaluated at each result; the estimate is the max over the radii (a smaller radius can give a larger
    ratio when the denominator grows with ||x' - x||, Wang et al. sec. 6). NaN where no attack kept the label.
    Maps are the attack's saliency ``normalize_sum(reduce_channels(h, reduce))``, recomputed at x and at the
    attack's x' with the explainer reseeded (common noise for noise-averaged methods, as in
    :func:`perturbation_scores`). ``rrs``: the representation L of ``layer_names`` / ``layer_indices``
    (:func:`hidden_layers`) at x and at the attack's x'; its attack is RIS's and ROS's (the same numerator)."""
    from fragile import attacks

    check_input(x)
    unknown = sorted(set(quantities) - set(QUANTITIES))
    if unknown or not quantities:
        raise FragileError(f"unknown quantities {unknown}; choose from {QUANTITIES}")
    model, g = explain_function(explainer, seed=seed)
    x = match_input(model, x)
    layers = hidden_layers(model, layer_names, layer_indices) if "rrs" in quantities else []
    strict = layer_names is not None or layer_indices is not None
    if layers:
        out0, l0 = representation(model, x, layers, strict)
    else:
        with torch.no_grad():
            out0 = model_output(model, x)
    h0 = out0.double()
    t = out0.argmax(1) if target is None else check_target(target, x.shape[0], out0.shape[1], x.device)
    e0 = _flat(processed(g(x, t), reduce))
    best = {q: torch.full((x.shape[0],), float("nan"), dtype=torch.float64, device=x.device) for q in quantities}
    for objective in sorted({OBJECTIVES[q] for q in quantities}):
        for scale in scales:
            r = float(eps) * float(scale)
            res = attacks.run(model, explainer, x, objective, eps=r, steps=steps, step_size=r / 4, beta=beta,
                              target=target, seed=seed, reduce=reduce, pixel_scale=pixel_scale)
            e1 = _flat(processed(g(res.x_adv, t), reduce))
            dx = _flat(res.x_adv) - _flat(res.x)
            if layers:
                out1, l1 = representation(model, res.x_adv, layers, strict)
            else:
                with torch.no_grad():
                    out1 = model_output(model, res.x_adv)
            dh = (out1.double() - h0).norm(dim=1)
            num = ((e1 - e0) / _relative(e0, eps_min)).norm(dim=1)
            value = {"sensitivity": (e1 - e0).norm(dim=1) / e0.norm(dim=1),
                     "lipschitz": (e1 - e0).norm(dim=1) / dx.norm(dim=1).clamp(min=1e-30),
                     "ris": num / (dx / _relative(_flat(res.x), eps_min)).norm(dim=1).clamp(min=eps_min),
                     "ros": num / dh.clamp(min=eps_min)}
            if layers:
                value["rrs"] = num / ((l1 - l0) / _relative(l0, eps_min)).norm(dim=1).clamp(min=eps_min)
            for q in quantities:
                if OBJECTIVES[q] == objective:
                    v = torch.where(res.success, value[q], torch.full_like(value[q], float("nan")))
                    best[q] = torch.fmax(best[q], v)
    return best


def worst_vs_random(explainer: Explainer, x: torch.Tensor, *, eps: float, metrics: Sequence[str] = tuple(RANDOM_METRICS),
                    samples: int = 20, steps: int = 20, scales: Sequence[float] = (0.25, 0.5, 1.0), beta="auto",
                    target=None, reduce: str = "abs_sum", seed: int = 0, batch_size: int = 8,
                    pixel_scale: float = 255.0, layer_names: Sequence[str] | None = None,
                    layer_indices: Sequence[int] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Each random-perturbation metric beside its worst case in the same ball: ``{metric: {"random": (N,),
    "worst": (N,), "ratio": worst / random}}``. ``random``: the metric over ``samples`` uniform draws in the
    L-inf ball of radius eps, label-preserving samples only (the attack may not change the label either);
    ``worst``: :func:`adversarial_scores` (for ``avg_sensitivity`` the worst case is that of the max: the
    sup over the ball). A ratio far above 1 is the point of the comparison: random noise calls the map
    stable, the worst case within the same eps does not. Maps are the attack's saliency (``reduce``);
    ``layer_names`` / ``layer_indices``: the representation of ``relative_representation_stability``."""
    unknown = sorted(set(metrics) - set(RANDOM_METRICS))
    if unknown or not metrics:
        raise FragileError(f"unknown metrics {unknown}; choose from {sorted(RANDOM_METRICS)}")
    quantities = sorted({RANDOM_METRICS[m][0] for m in metrics})
    layers = {"layer_names": layer_names, "layer_indices": layer_indices}
    rand = perturbation_scores(explainer, x, eps=eps, samples=samples, target=target, reduce=reduce,
                               quantities=quantities, seed=seed, batch_size=batch_size, pixel_scale=pixel_scale, **layers)
    worst = adversarial_scores(explainer, x, eps=eps, quantities=quantities, steps=steps, scales=scales, beta=beta,
                               target=target, reduce=reduce, seed=seed, pixel_scale=pixel_scale, **layers)
    out = {}
    for m in metrics:
        q, how = RANDOM_METRICS[m]
        r = aggregate(rand[q], rand["changed"], how, skip_changed=True)
        out[m] = {"random": r, "worst": worst[q], "ratio": worst[q] / r}
    return out
