"""A cheaper, unbiased gradient step for maps that are averages: a random subset of the path points of integrated
gradients, fewer noise samples of SmoothGrad / Uniform Gradient (``attacks.run(subsample=...)``, issue 17.3).

A map that is an average over P terms, h(x) = sum_{k=1..P} w_k t_k(x), is estimated from a subset S of m terms
drawn uniformly without replacement, fresh at every gradient step:

    h_S(x) = sum_{k in S} (P / m) w_k t_k(x),     E_S[h_S(x)] = sum_k P(k in S) (P / m) w_k t_k(x) = h(x)

since P(k in S) = m / P. For integrated gradients (t_k the gradient at path point k, times the same (x - x')
factor) this is exact for the right Riemann sum and the trapezoid rule alike. For noise-averaged methods the m
samples are fresh noise, already unbiased for the S-sample map. Both are linear in the terms, so the derivative of
any linear function of the map is unbiased too: E_S[d <v, h_S(x)> / dx] = d <v, h(x)> / dx. The attack's objective
(a saliency normalised per image, then a top-k mass, ...) is not linear, so its gradient from h_S is an estimate of
the expected objective's gradient (as with fresh noise, expectation over transformation), not of the full map's.

The evaluation of every iterate (the objective that picks the returned example, the label check) stays on the full
method (``fragile.attacks.loop``); only the gradient step is subsampled.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from fragile.errors import FragileError
from fragile.explanations.base import Explainer
from fragile.explanations.noise import derive_seed


def check_subsample(subsample, where: str = "subsample") -> int | float | None:
    """The form of ``subsample`` without a method: None, an integer >= 1 or a fraction in (0, 1] (a sweep's config
    checks this at load time; the upper bound P of an integer depends on the method, :func:`subsample_size`)."""
    if subsample is None:
        return None
    if isinstance(subsample, bool) or not isinstance(subsample, numbers.Real):
        raise FragileError(f"{where} must be None, an integer >= 1 or a fraction in (0, 1], got {subsample!r}")
    if isinstance(subsample, numbers.Integral):
        if int(subsample) < 1:
            raise FragileError(f"{where}={subsample!r}: an integer subsample must be >= 1 (or give a fraction in (0, 1])")
        return int(subsample)
    if not 0.0 < float(subsample) <= 1.0:  # also refuses NaN
        raise FragileError(f"{where}={subsample!r}: a fraction must be in (0, 1] (or give an integer >= 1)")
    return float(subsample)


def subsample_size(explainer: Explainer, subsample: int | float | None) -> int | None:
    """The number m of terms per gradient step: ``subsample`` as an integer in [1, P] or a fraction in (0, 1] of
    the P terms of ``explainer`` (the nearest integer to f P, at least 1). None when ``subsample`` is None or m = P
    (the full method: nothing is subsampled). Methods that are not averages refuse any ``subsample``."""
    subsample = check_subsample(subsample)
    if subsample is None:
        return None
    points = explainer.average_points()
    name = getattr(explainer, "name", type(explainer).__name__)
    if points is None:
        raise FragileError(f"subsample={subsample!r}: the method {name!r} is not an average over path points or noise "
                           "samples (only integrated_gradients, smoothgrad and uniform_gradient are); use "
                           "subsample=None")
    if isinstance(subsample, float):
        m = max(1, int(subsample * points + 0.5))
    elif subsample > points:
        raise FragileError(f"subsample={subsample}: {name} averages {points} terms, so an integer subsample must be in "
                           f"[1, {points}] (or give a fraction in (0, 1])")
    else:
        m = subsample
    return None if m == points else m


def subsampler(explainer: Explainer, subsample: int | float | None, seed: int) -> Callable[[Explainer], Explainer]:
    """``sample(surrogate)``: the explainer an attack's gradient step differentiates, an unbiased estimator of
    ``surrogate``'s map from ``subsample`` of its terms (:func:`subsample_size`), a fresh subset at every call
    from a generator seeded from ``seed``; the identity (the same object) when nothing is subsampled."""
    m = subsample_size(explainer, subsample)
    if m is None:
        return lambda e: e
    explainer.subsampled(m, torch.Generator())  # refuses early what cannot be subsampled (fixed noise)
    generator = torch.Generator().manual_seed(derive_seed(seed + 3))  # attacks.run uses seed .. seed + 2
    return lambda e: e.subsampled(m, generator)
