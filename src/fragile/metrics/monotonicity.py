"""Monotonicity of a map: Arya et al. 2019 (Quantus 0.6 ``Monotonicity``) and Nguyen & Martinez 2020 (Quantus
0.6 ``MonotonicityCorrelation``).

The C x H x W features are ranked by their relevance, *ascending* (least relevant first), and taken in groups of
``features_in_step``:

- Arya et al.: starting from the all-baseline image, the groups of x are added back one after another; the map
  is monotonic when the class score never decreases along the way.
- Nguyen & Martinez (sec. 3.2): each group alone is replaced by a (random) baseline; the map is monotonic when
  the groups' relevance sums and the expected squared changes of the class score have the same ranking, i.e.
  a Spearman correlation of 1:

      corr_S( [sum_{i in G_j} a_i]_j , [E_v (f(x) - f(x_{G_j <- v}))^2 / f(x)^2]_j )

  (the 1 / f(x)^2 factor only where |f(x)| >= eps).
"""

from __future__ import annotations

import math

import torch

from fragile.errors import FragileError
from fragile.explanations.gradient import chunked
from fragile.metrics import _perturb as P
from fragile.metrics.similarity import spearman


def _ascending_groups(a: torch.Tensor, step: int) -> tuple[torch.Tensor, int]:
    """The group index (rank // step) of every feature of (N, C, H, W) relevance, ascending, stable; and the
    number of groups ceil(C H W / step)."""
    n = a.shape[0]
    flat = a.reshape(n, -1)
    order = flat.argsort(dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(flat.shape[1], device=a.device).expand(n, -1))
    return (rank // step).view(a.shape), math.ceil(flat.shape[1] / step)


def _uniform_or_fill(x: torch.Tensor, baseline, shape: tuple[int, ...], uniform_range, gen) -> torch.Tensor:
    """Replacement values, ``shape`` + (N,): U(uniform_range) draws for 'uniform', else the fixed per-image value."""
    n = x.shape[0]
    if baseline == "uniform":
        lo, hi = (float(v) for v in uniform_range)
        if not lo <= hi:
            raise FragileError(f"uniform_range must be (low, high) with low <= high, got {uniform_range!r}")
        return torch.rand((*shape, n), generator=gen, device=x.device, dtype=torch.float64) * (hi - lo) + lo
    return P.fill_value(x, baseline).double().view(n).expand(*shape, n)


def monotonicity(model, x: torch.Tensor, relevance: torch.Tensor, *, target=None, features_in_step: int = 1,
                 baseline="black", output: str = "softmax", uniform_range=(0.0, 1.0), seed: int = 0,
                 return_curve: bool = False, batch_size: int = 512):
    """Monotonicity (Arya et al. 2019, sec. 4 "Monotonicity"; Quantus 0.6 ``Monotonicity``) of ``relevance``
    for ``x: (N, C, H, W)``: (N,) bool, True where the class score is non-decreasing as the features of x are
    added to the baseline image in ascending order of relevance, ``features_in_step`` at a time (ceil(C H W /
    step) steps; the all-baseline start is not a step, as in Quantus).

    ``relevance``: (N, C, H, W), or (N, 1, H, W) / (N, H, W) broadcast over the channels (ties then broken by
    feature index). ``baseline``: 'black' (the image minimum, Quantus' default), 'white', 'mean', 'zero', a
    number, or 'uniform' (one seeded U(uniform_range) value per image). ``output``: 'softmax' (Quantus'
    default) or 'logit'. ``return_curve``: also return the scores, (steps, N) float64. Steps batched.

    Quantus 0.6's default perturbation replaces the features of the *baseline image* by the baseline, so its
    image never changes and every map is "monotonic"; given a perturbation function that inserts the
    features of x instead (the paper's definition, used in the test), it gives the same values. It ranks with
    an unstable sort (ties may be broken differently). Quantus' defaults abs=True, normalise=True: pass
    ``relevance.abs()`` to reproduce them (normalising does not change the ranking).
    """
    x = P.check_x(x)
    a = P.check_relevance(relevance, x)
    step = P.int_at_least(features_in_step, "features_in_step")
    P.check_baseline(baseline, extra=("uniform",))
    output = P.check_output(output)
    n = x.shape[0]
    group, n_steps = _ascending_groups(a, step)
    gen = torch.Generator(device=x.device).manual_seed(int(seed))
    fill = _uniform_or_fill(x, baseline, (), uniform_range, gen).view(n, 1, 1, 1).to(x.dtype)
    _, t = P.predict(model, x, target)
    curve = []
    for sl in chunked(n_steps, P.steps_per_chunk(n, batch_size)):
        ks = torch.arange(sl.start + 1, sl.stop + 1, device=x.device).view(-1, 1, 1, 1, 1)
        xs = torch.where(group.unsqueeze(0) < ks, x.unsqueeze(0), fill.unsqueeze(0))
        curve.append(P.stack_scores(model, xs, t, output, batch_size))
    curve = torch.cat(curve)
    monotonic = (curve[1:] - curve[:-1] >= 0).all(0)
    return (monotonic, curve) if return_curve else monotonic


def monotonicity_correlation(model, x: torch.Tensor, relevance: torch.Tensor, *, target=None,
                             features_in_step: int = 1, n_samples: int = 100, baseline="uniform", eps: float = 1e-5,
                             output: str = "softmax", uniform_range=(0.0, 1.0), seed: int = 0,
                             fill_values: torch.Tensor | None = None, batch_size: int = 512) -> torch.Tensor:
    """Monotonicity correlation (Nguyen & Martinez 2020, sec. 3.2; Quantus 0.6 ``MonotonicityCorrelation``) of
    ``relevance`` for ``x: (N, C, H, W)``: per image, (N,) float64 in [-1, 1], the Spearman correlation (average
    ranks) between the relevance sums of the groups of ``features_in_step`` features (ascending relevance) and
    the mean over ``n_samples`` of the squared change of the class score when that group alone is replaced by
    the baseline, divided by f(x)^2 where |f(x)| >= ``eps``. Higher = more faithful.

    ``relevance``: (N, C, H, W), or (N, 1, H, W) / (N, H, W) broadcast over the channels. ``baseline``:
    'uniform' (Quantus' default: one U(uniform_range) value per image, group and sample, seeded) or a fixed one
    ('black', 'white', 'mean', 'zero', a number; the samples are then identical and computed once).
    ``fill_values``: (groups, n_samples, N) replacement values to use instead of the draws (e.g. Quantus').
    ``output``: 'softmax' (Quantus' default) or 'logit'. All groups x samples x images are batched.

    Quantus 0.6 with the same replacement values gives the same correlations (its draws are np.random's; the
    test records them). An image whose squared changes are all equal gets NaN (and a DegenerateMapWarning),
    as scipy's spearmanr in Quantus. Quantus' defaults abs=True, normalise=True: pass ``relevance.abs()``.
    """
    x = P.check_x(x)
    a = P.check_relevance(relevance, x)
    step = P.int_at_least(features_in_step, "features_in_step")
    samples = P.int_at_least(n_samples, "n_samples")
    P.check_baseline(baseline, extra=("uniform",))
    eps = P.float_param(eps, "eps")
    output = P.check_output(output)
    n = x.shape[0]
    group, n_groups = _ascending_groups(a, step)
    if fill_values is not None:
        values = torch.as_tensor(fill_values, device=x.device).double()
        if values.shape != (n_groups, samples, n) or not bool(torch.isfinite(values).all()):
            raise FragileError(f"fill_values must be finite (groups, n_samples, N) = {(n_groups, samples, n)}, "
                               f"got {tuple(values.shape)}")
    else:
        gen = torch.Generator(device=x.device).manual_seed(int(seed))
        values = _uniform_or_fill(x, baseline, (n_groups, samples if baseline == "uniform" else 1), uniform_range, gen)
    draws = values.shape[1]
    _, t = P.predict(model, x, target)
    y0 = P.stack_scores(model, x.unsqueeze(0), t, output, batch_size)[0]
    big = y0.abs() >= eps
    inv = torch.where(big, 1 / torch.where(big, y0, torch.ones_like(y0)) ** 2, torch.ones_like(y0))
    jobs = [(j, s) for j in range(n_groups) for s in range(draws)]
    sq = []
    for sl in chunked(len(jobs), P.steps_per_chunk(n, batch_size)):
        js = torch.tensor([jobs[i][0] for i in range(sl.start, sl.stop)], device=x.device)
        ss = torch.tensor([jobs[i][1] for i in range(sl.start, sl.stop)], device=x.device)
        v = values[js, ss].view(-1, n, 1, 1, 1).to(x.dtype)
        xs = torch.where(group.unsqueeze(0) == js.view(-1, 1, 1, 1, 1), v, x.unsqueeze(0))
        sq.append((P.stack_scores(model, xs, t, output, batch_size) - y0.unsqueeze(0)) ** 2)
    variation = torch.cat(sq).view(n_groups, draws, n).mean(1) * inv  # (groups, N)
    sums = torch.zeros((n, n_groups), dtype=torch.float64, device=x.device).scatter_add_(
        1, group.reshape(n, -1), a.reshape(n, -1))
    return spearman(sums, variation.T)
