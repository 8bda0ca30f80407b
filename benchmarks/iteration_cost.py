"""Cheaper attack iterations, same numbers (issue 17.1), on the pretrained CIFAR-10 ResNet-20 (not run in CI).

    python benchmarks/iteration_cost.py [--batch 64] [--threads 1] [--repeats 7] [--parts lrp check_every]

Prints, from interleaved A/B repeats in one process (medians):

- one LRP attack iteration (the softplus surrogate's objective gradient through the z+ / zB map, plus the check on
  the original model) now / before: the z+ rule's zero ``x^- W^-`` term skipped after non-negative activations,
  and each rule's ``J^T s`` of a convolution computed directly instead of by autograd through a forward pass on
  zeros, the terms summed without a zero start and unit signs not multiplied (``fragile.explanations.lrp``; the
  same map and gradient to the bit), each alone and all;
- the LRP attack iteration / the gradient attack iteration (issue goal <= 3x);
- ``check_every``: the gradient attack (top-k, 30 sign steps of 0.5/255, eps 8, beta 'auto') on correctly
  classified CIFAR-10 test images with the original model's check after every iteration / after every 5th: the
  time per iteration ((T(30) - T(5)) / 25, so the attack's setup cancels), and the attack's effect (mean top-100
  intersection, lower is stronger) after 30 iterations.

LRP part: top-k objective (k = 100), sign steps, surrogate beta 10, random images in [0, 1].
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from fragile import attacks
from fragile.attacks import loop
from fragile.attacks.objectives import create as create_objective
from fragile.data import load_images
from fragile.explanations import create
from fragile.explanations import lrp as lrp_module
from fragile.explanations.modified import vjp
from fragile.models import create as create_model


def seconds(fn) -> float:
    """Wall time of one call of ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def iteration(model, explainer, x, beta: float = 10.0):
    """One attack iteration as ``attacks.run`` does it (``fast=True``): the surrogate's objective gradient, then the evaluation of the
    iterate on the original model (its map and label)."""
    objective = create_objective("topk", k=100)
    t = explainer.predict(x)
    p0 = torch.softmax(model(x), dim=1)
    sal0 = loop.saliency(explainer.attribute(x, target=t))
    state = objective.prepare(sal0, p0)
    surrogate = explainer.surrogate(beta)
    rewritten = loop._gradient_model(model, explainer, x, True)  # attacks.run(fast=True): BatchNorm folded, gradient

    def run():
        with rewritten():
            loop._objective_grad(model, surrogate, objective, state, x, t, "abs_sum")
        loop._evaluate(model, explainer, objective, state, x, t, p0.argmax(1), p0, "abs_sum")

    return run


def _old_backward(rule, relevance, x, graph):
    """``LinearRule.backward`` before issue 17.1: every term's sum from zeros, its signs multiplied."""
    inputs = [mod_in(x) for mod_in, _, _ in rule.terms]
    z = sum(k * rule._f(a, pm) for a, (_, pm, k) in zip(inputs, rule.terms))
    s = relevance / _old_stabilize(z, rule.eps)
    r_in = torch.zeros_like(x)
    for a, (_, pm, k) in zip(inputs, rule.terms):
        r_in = r_in + k * a * rule._transposed(s, x, pm, graph)
    return r_in


def _old_stabilize(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _old_transposed(rule, s, x, param_mod, graph):
    u = torch.zeros_like(x, requires_grad=True)
    return vjp(rule._f(u, param_mod), u, s, graph)


class _Before:
    """``with _Before(skip=..., direct=..., elementwise=...):`` LRP as it was before issue 17.1: the z+ rule's x^- W^-
    term computed on every input (``skip``), ``J^T s`` of a convolution by autograd through a forward pass on zeros
    (``direct``), the terms summed from zeros and multiplied by their signs (``elementwise``)."""

    def __init__(self, skip: bool = True, direct: bool = True, elementwise: bool = True):
        self.skip, self.direct, self.elementwise = skip, direct, elementwise

    def __enter__(self):
        rule = lrp_module.LinearRule
        self.saved = rule.for_nonnegative_input, rule._transposed, rule.backward, lrp_module.stabilize
        if self.skip:
            rule.for_nonnegative_input = lambda r: None
        if self.direct:
            rule._transposed = _old_transposed
        if self.elementwise:
            rule.backward, lrp_module.stabilize = _old_backward, _old_stabilize

    def __exit__(self, *exc):
        rule = lrp_module.LinearRule
        rule.for_nonnegative_input, rule._transposed, rule.backward, lrp_module.stabilize = self.saved


def lrp_part(model, args) -> None:
    """LRP now / before, and LRP / gradient attack iteration (module docstring)."""
    x = torch.rand(args.batch, 3, 32, 32)
    lrp_iter = iteration(model, create("lrp", model), x)
    grad_iter = iteration(model, create("gradient", model), x)

    def before(**undo):
        def run():
            with _Before(**undo):
                lrp_iter()
        return run

    variants = {"lrp": lrp_iter, "lrp_before": before(), "skip_only": before(skip=False),
                "direct_only": before(direct=False), "elementwise_only": before(elementwise=False),
                "gradient": grad_iter}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved: each repeat times every variant
        for name, fn in variants.items():
            times[name].append(seconds(fn))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"ResNet-20, batch {args.batch}, {args.threads} thread(s), {args.repeats} interleaved repeats (medians)")
    for name, m in med.items():
        print(f"  {name:16s} iteration {m:.3f} s")
    print(f"LRP iteration, now / before: {med['lrp'] / med['lrp_before']:.2f}x; alone: z+ without the zero x^- W^- "
          f"term {med['skip_only'] / med['lrp_before']:.2f}x, J^T s without the forward on zeros "
          f"{med['direct_only'] / med['lrp_before']:.2f}x, sums without zeros and unit signs "
          f"{med['elementwise_only'] / med['lrp_before']:.2f}x")
    print(f"LRP iteration / gradient iteration: {med['lrp'] / med['gradient']:.2f}x "
          f"(before: {med['lrp_before'] / med['gradient']:.2f}x; goal <= 3x)")


def check_every_part(model, args, every: int = 5) -> None:
    """The gradient attack with the check every iteration / every ``every``-th: time per iteration and effect."""
    x, labels = load_images(f"cifar10:{args.batch}", size=(32, 32))
    with torch.no_grad():
        x = x[model(x).argmax(1) == labels]
    ex = create("gradient", model)
    objective = create_objective("topk", k=100)

    def attack(steps, c):
        return attacks.run(model, ex, x, objective, eps=8, steps=steps, step="sign", step_size=0.5, k=100,
                           check_every=c)

    times: dict[tuple[int, int], list[float]] = {(s, c): [] for c in (1, every) for s in (5, 30)}
    results = {}
    for _ in range(args.repeats):
        for (steps, c), v in times.items():
            start = time.perf_counter()
            results[steps, c] = attack(steps, c)
            v.append(time.perf_counter() - start)
    per_iter = {c: (statistics.median(times[30, c]) - statistics.median(times[5, c])) / 25 for c in (1, every)}
    print(f"gradient attack on {len(x)} CIFAR-10 images, {args.repeats} interleaved repeats (medians):")
    for c in (1, every):
        r = results[30, c]
        with torch.no_grad():
            kept = bool((model(r.x_adv).argmax(1) == r.label).all())
        inter = r.metrics["top100_intersection"]
        effect, unperturbed = float(inter.nanmean()), float(torch.nan_to_num(inter, nan=1.0).mean())
        print(f"  check_every={c}: {per_iter[c]:.3f} s per iteration; 30 iterations: top-100 intersection "
              f"{effect:.3f} over the successes ({int(r.success.sum())}/{len(x)}), {unperturbed:.3f} with the failures "
              f"(returned unperturbed) as 1; labels kept: {kept}")
    print(f"time per iteration, check_every={every} / 1: {per_iter[every] / per_iter[1]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--parts", nargs="+", default=["lrp", "check_every"], choices=["lrp", "check_every"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the softplus")
    torch.manual_seed(0)
    model = create_model("resnet20_cifar10", pretrained=True).eval()
    if "lrp" in args.parts:
        lrp_part(model, args)
    if "check_every" in args.parts:
        check_every_part(model, args)


if __name__ == "__main__":
    main()
