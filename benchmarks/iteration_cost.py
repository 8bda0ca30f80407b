"""Cheaper attack iterations, same numbers (issue 17.1), on the pretrained CIFAR-10 ResNet-20 (not run in CI).

    python benchmarks/iteration_cost.py [--batch 64] [--threads 1] [--repeats 7]

Prints, from interleaved A/B repeats in one process (medians):

- one LRP attack iteration (the softplus surrogate's objective gradient through the z+ / zB map, plus the check on
  the original model) with the z+ rule's zero ``x^- W^-`` term skipped after non-negative activations / computed
  (``fragile.explanations.lrp``; the same map and gradient to the bit);
- the LRP attack iteration / the gradient attack iteration (issue goal <= 3x).

Top-k objective (k = 100), sign steps, surrogate beta 10, random images in [0, 1].
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from fragile.attacks import loop
from fragile.attacks.objectives import create as create_objective
from fragile.explanations import create
from fragile.explanations import lrp as lrp_module
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


class _FullZPlus:
    """``with _FullZPlus():`` LRP's z+ rule computes its x^- W^- term on every input (the behaviour before the skip)."""

    def __enter__(self):
        self.saved = lrp_module.LinearRule.for_nonnegative_input
        lrp_module.LinearRule.for_nonnegative_input = lambda rule: None

    def __exit__(self, *exc):
        lrp_module.LinearRule.for_nonnegative_input = self.saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the softplus")
    torch.manual_seed(0)
    model = create_model("resnet20_cifar10", pretrained=True).eval()
    x = torch.rand(args.batch, 3, 32, 32)
    lrp_iter = iteration(model, create("lrp", model), x)
    grad_iter = iteration(model, create("gradient", model), x)

    def full():
        with _FullZPlus():
            lrp_iter()

    variants = {"lrp": lrp_iter, "lrp_full": full, "gradient": grad_iter}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved: each repeat times every variant
        for name, fn in variants.items():
            times[name].append(seconds(fn))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"ResNet-20, batch {args.batch}, {args.threads} thread(s), {args.repeats} interleaved repeats (medians)")
    for name, m in med.items():
        print(f"  {name:10s} iteration {m:.3f} s")
    print(f"LRP iteration, z+ without the zero x^- W^- term / with it: {med['lrp'] / med['lrp_full']:.2f}x")
    print(f"LRP iteration / gradient iteration: {med['lrp'] / med['gradient']:.2f}x "
          f"(with the term: {med['lrp_full'] / med['gradient']:.2f}x; goal <= 3x)")


if __name__ == "__main__":
    main()
