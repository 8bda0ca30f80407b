"""Cheaper attack iterations, same numbers (issue 17.1), on the pretrained CIFAR-10 ResNet-20 (not run in CI).

    python benchmarks/iteration_cost.py [--batch 64] [--threads 1] [--repeats 7]
        [--parts lrp check_every bf16 split difference pools step_output] [--images 16] [--model resnet20_cifar10]
        [--steps 100]

(``--model squeezenet1_0_imagenet``: parts ``difference`` and ``pools`` on ImageNet sample photos, top-1000;
``pools``: the difference step with / without the max-pool windows held, ``FrozenPools``' cost.)

Prints, from interleaved A/B repeats in one process (medians):

- one LRP attack iteration (the softplus surrogate's objective gradient through the z+ / zB map, plus the check on
  the original model) now / before: the z+ rule's zero ``x^- W^-`` term skipped after non-negative activations,
  and each rule's ``J^T s`` of a convolution computed directly instead of by autograd through a forward pass on
  zeros, the terms summed without a zero start and unit signs not multiplied (``fragile.explanations.lrp``; the
  same map and gradient to the bit), each alone and all; and now / with the residual sums' summands stacked last,
  ``(..., K)`` instead of ``(N, K, ...)`` (``fragile.models.canonizers.Sum``; the same numbers), and now / with the
  convolutions' derivatives by autograd (``fragile.models.frozen_conv``; the same numbers up to float rounding);
- the LRP attack iteration / the gradient attack iteration (issue goal <= 3x);
- ``check_every``: the gradient attack (top-k, 30 sign steps of 0.5/255, eps 8, beta 'auto') on correctly
  classified CIFAR-10 test images with the original model's check after every iteration / after every 5th: the
  time per iteration ((T(30) - T(5)) / 25, so the attack's setup cancels), and the attack's effect (mean top-100
  intersection, lower is stronger) after 30 iterations;
- ``bf16``: the same gradient attack with ``precision='bfloat16'`` (the surrogate's map and its gradient under
  ``torch.autocast``) / ``'float32'``: time of the gradient step alone and per attack iteration (as above), the
  sign agreement of the objective's gradient on the clean images (surrogate beta 'auto'), and the attack's effect
  after 30 iterations (``--images`` correctly classified CIFAR-10 test images, default 16);
- ``difference``: the gradient attack's step before this issue (exact double backward, BatchNorms not folded), now
  (folded) and with ``second_order='difference'`` (folded; the forward difference of two gradients along dL/dh,
  ``fragile.attacks.second_order``): time of the gradient step and of the iteration, the agreement of the objective's
  gradient with the exact one on the clean images, and the attack's effect (mean top-100 intersection with its 95%
  interval) for both rules;
- ``split``: where one attack iteration of LRP, DeepLIFT and guided backprop goes (random images, beta 10): the
  forward of the chain copy (the modified backward's), of the true copy (and DeepLIFT's reference), the backward that
  makes the map, the second backward (the objective's gradient), the check on the original model; and the iteration
  with the chain's value at every rule reused from the true copy / computed again by the rule (before), with the
  chain copy's forward then (``fragile.explanations.modified``).

- ``step_output``: the manipulate attack (Dombrowski's prefactors, target map: the next image's map) of the gradient
  and gradient x input with its output term from a separate forward / backward of the original model
  (``step_output='model'``, the default) / from the surrogate's own forward pass (``'surrogate'``, as the Dombrowski
  reference): time of the gradient step (surrogate beta 10) and of the iteration, and the attack's effect after
  ``--steps`` iterations of ``adam_plateau`` from lr_0 = 4 x 0.0115 x 1500 / steps, beta 10 -> 100 (the mean PCC of
  the attacked map to the target with its 95% interval, the paired difference surrogate minus model, the median
  largest softmax change, successes), also with the surrogate's output and ``check_every=5`` (the plateau rule then
  reacts at every 5th iteration), each attack's wall time (one run each, not interleaved).

LRP part: top-k objective (k = 100), sign steps, surrogate beta 10, random images in [0, 1].
"""

from __future__ import annotations

import argparse
import contextlib
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
from fragile.models import canonizers, frozen_conv
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


def _canonical_last(block, x):
    return block.after(block.sum(torch.stack([block.branch(x), block.shortcut(x)], dim=-1)))


def _sum_backward_last(rule, relevance, a, graph):
    a = a.clamp(min=0) if rule.positive else a
    return a * (relevance / lrp_module.stabilize(a.sum(-1), rule.eps)).unsqueeze(-1)


def _op_transposed(rule, s, x, param_mod, graph):
    """``J^T s`` of a convolution by the ``aten.convolution_backward`` op (its derivative computes a weight gradient)."""
    m = rule.module
    if not frozen_conv.zero_padded(m):
        return _old_transposed(rule, s, x, param_mod, graph)
    with torch.set_grad_enabled(graph):
        return torch.ops.aten.convolution_backward(s, x.detach(), param_mod(m.weight, "weight"), None, m.stride,
                                                   m.padding, m.dilation, False, [0] * (x.dim() - 2), m.groups,
                                                   [True, False, False])[0]


def _autograd_layer(module, x, params):
    return torch.func.functional_call(module, params, (x,))


class _Before:
    """``with _Before(skip=..., direct=..., elementwise=..., last=..., convs=...):`` LRP as it was before issue 17.1:
    the z+ rule's x^- W^- term computed on every input (``skip``), ``J^T s`` of a convolution by autograd through a
    forward pass on zeros (``direct``), the terms summed from zeros and multiplied by their signs (``elementwise``),
    the residual sums' summands stacked last (``last``), the convolutions by autograd, their double backward with a
    weight-gradient convolution (``convs``; with ``direct=False``: ``J^T s`` by the ``aten.convolution_backward`` op,
    as before ``fragile.models.frozen_conv``)."""

    def __init__(self, skip: bool = True, direct: bool = True, elementwise: bool = True, last: bool = True,
                 convs: bool = True):
        self.skip, self.direct, self.elementwise, self.last, self.convs = skip, direct, elementwise, last, convs

    def __enter__(self):
        rule = lrp_module.LinearRule
        self.saved = rule.for_nonnegative_input, rule._transposed, rule.backward, lrp_module.stabilize
        self.saved_layer = lrp_module._layer
        if self.convs:
            lrp_module._layer = _autograd_layer
            rule._transposed = _op_transposed
        self.saved_sums = (canonizers.CanonicalBlock.canonical, canonizers.Sum.forward, lrp_module.SumRule.forward,
                           lrp_module.SumRule.backward)
        if self.last:
            canonizers.CanonicalBlock.canonical = _canonical_last
            canonizers.Sum.forward = lrp_module.SumRule.forward = lambda self, z: z.sum(-1)
            lrp_module.SumRule.backward = _sum_backward_last
        if self.skip:
            rule.for_nonnegative_input = lambda r: None
        if self.direct:
            rule._transposed = _old_transposed
        if self.elementwise:
            rule.backward, lrp_module.stabilize = _old_backward, _old_stabilize

    def __exit__(self, *exc):
        rule = lrp_module.LinearRule
        rule.for_nonnegative_input, rule._transposed, rule.backward, lrp_module.stabilize = self.saved
        lrp_module._layer = self.saved_layer
        (canonizers.CanonicalBlock.canonical, canonizers.Sum.forward, lrp_module.SumRule.forward,
         lrp_module.SumRule.backward) = self.saved_sums


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
                "sums_last": before(skip=False, direct=False, elementwise=False, convs=False),
                "convs_autograd": before(skip=False, direct=False, elementwise=False, last=False), "gradient": grad_iter}
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
          f"{med['elementwise_only'] / med['lrp_before']:.2f}x; now / with the sums' summands stacked last "
          f"{med['lrp'] / med['sums_last']:.2f}x, / with the convolutions' derivatives by autograd (a weight-gradient "
          f"convolution each) {med['lrp'] / med['convs_autograd']:.2f}x")
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


#: model -> (its test images, k of the top-k objective and metric)
DATA = {"resnet20_cifar10": ("cifar10", 100), "squeezenet1_0_imagenet": ("imagenet", 1000)}


def _correct_images(model, n: int, data: str = "cifar10"):
    """The first ``n`` correctly classified of ``2 n`` seeded class-balanced test images of ``data`` (N, 3, H, W) at
    the model's input size."""
    x, labels = load_images(f"{data}:{2 * n}", size=getattr(model, "input_size", (32, 32)))
    with torch.no_grad():
        return x[model(x).argmax(1) == labels][:n]


def _gradient_setup(model, images: int, data: str = "cifar10", k: int = 100):
    """The gradient attack's pieces on ``images`` correctly classified test images of ``data``: (x, explainer, top-k
    objective, target, softmax, objective state, beta 'auto''s choice, its surrogate)."""
    from fragile.attacks.surrogate import choose_beta

    x = _correct_images(model, images, data)
    ex = create("gradient", model)
    objective = create_objective("topk", k=k)
    t = ex.predict(x)
    p0 = torch.softmax(model(x), dim=1)
    state = objective.prepare(loop.saliency(ex.attribute(x, target=t)), p0)
    beta = choose_beta(model, x).beta
    return x, ex, objective, t, p0, state, beta, ex.surrogate(beta)


def _interleaved(grad, iteration, names, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Medians (seconds) of ``grad(name)`` and ``iteration(name)`` per name, from ``repeats`` interleaved rounds after
    one warm-up call each."""
    step_times: dict[str, list[float]] = {v: [] for v in names}
    iter_times: dict[str, list[float]] = {v: [] for v in names}
    for v in names:  # warm-up
        iteration(v)
    for _ in range(repeats):  # interleaved
        for v in names:
            step_times[v].append(seconds(lambda v=v: grad(v)))
            iter_times[v].append(seconds(lambda v=v: iteration(v)))
    return ({v: statistics.median(ts) for v, ts in step_times.items()},
            {v: statistics.median(ts) for v, ts in iter_times.items()})


def bf16_part(model, args) -> None:
    """The gradient attack with precision 'bfloat16' / 'float32': time, gradient signs, effect."""
    x, ex, objective, t, p0, state, beta, surrogate = _gradient_setup(model, args.images)
    rewritten = loop._gradient_model(model, ex, x, True)  # attacks.run(fast=True), as the attack runs it
    dtypes = {"float32": None, "bfloat16": torch.bfloat16}

    def grad(precision):
        with rewritten():
            return loop._objective_grad(model, surrogate, objective, state, x, t, "abs_sum", autocast=dtypes[precision])

    def iteration(precision):
        grad(precision)
        loop._evaluate(model, ex, objective, state, x, t, p0.argmax(1), p0, "abs_sum")

    step, per_iter = _interleaved(grad, iteration, list(dtypes), args.repeats)
    g32, g16 = grad("float32"), grad("bfloat16")
    agree = float((g32.sign() == g16.sign()).double().mean())
    rel = float((g16 - g32).norm() / g32.norm())
    print(f"gradient attack on {len(x)} correctly classified CIFAR-10 images, surrogate beta {beta:g}, "
          f"{args.threads} thread(s), {args.repeats} interleaved repeats (medians):")
    for p in dtypes:
        print(f"  {p}: gradient step {step[p]:.3f} s, attack iteration (step + check) {per_iter[p]:.3f} s")
    print(f"bfloat16 / float32: gradient step {step['bfloat16'] / step['float32']:.2f}x, attack iteration "
          f"{per_iter['bfloat16'] / per_iter['float32']:.2f}x; objective gradient at the clean images: sign agreement "
          f"{agree:.3f}, relative L2 difference {rel:.3f}")
    for eps, steps, size in ((8, 30, 0.5), (2, 10, 0.25), (1, 5, 0.25)):
        line = []
        for p in dtypes:
            r = attacks.run(model, ex, x, objective, eps=eps, steps=steps, step="sign", step_size=size, k=100,
                            precision=p)
            with torch.no_grad():
                kept = bool((model(r.x_adv).argmax(1) == r.label).all())
            inter = torch.nan_to_num(r.metrics["top100_intersection"], nan=1.0)
            line.append(f"{p} {float(inter.mean()):.3f} (successes {int(r.success.sum())}/{len(x)}, labels kept: "
                        f"{kept}, ran in {r.settings['precision']})")
        print(f"  eps {eps}, {steps} sign steps of {size}: top-100 intersection (failures as 1) " + "; ".join(line))


def difference_part(model, args) -> None:
    """The gradient attack's step by the exact double backward / by ``second_order='difference'``, against the
    iteration before this issue (no BatchNorm folding, exact): time, gradient agreement, effect."""
    from fragile.attacks import second_order as so
    from fragile.metrics import bootstrap_ci

    data, k = DATA[args.model]
    x, ex, objective, t, p0, state, beta, surrogate = _gradient_setup(model, args.images, data, k)
    folded = loop._gradient_model(model, ex, x, True)
    with folded():
        exact = loop._objective_grad(model, surrogate, objective, state, x, t, "abs_sum")
        rel, cosine = so.choose_step([(exact, so.difference_at(model, surrogate, objective, state, x, t, "abs_sum",
                                                               loop.OUTPUT_KEY))])
    variants = {
        "before (exact, unfolded)": (contextlib.nullcontext, loop._objective_grad),
        "exact (folded)": (folded, loop._objective_grad),
        "difference (folded)": (folded, so.DifferenceRule(loop._objective_grad, rel, cosine)),  # with its rechecks
    }

    def grad(name):
        enter, fn = variants[name]
        with enter():
            return fn(model, surrogate, objective, state, x, t, "abs_sum", loop.OUTPUT_KEY)

    def iteration(name):
        grad(name)
        loop._evaluate(model, ex, objective, state, x, t, p0.argmax(1), p0, "abs_sum")

    step, per_iter = _interleaved(grad, iteration, list(variants), args.repeats)
    d = grad("difference (folded)")
    agree = float((d.sign() == exact.sign()).double().mean())
    print(f"{args.model}: gradient attack on {len(x)} correctly classified {data} images, surrogate beta {beta:g}, "
          f"{args.threads} thread(s), {args.repeats} interleaved repeats (medians); difference step rel {rel:g} "
          f"(chosen on these images), worst image's cosine with the exact gradient {cosine:.6f}, sign agreement "
          f"{agree:.4f}:")
    base = "before (exact, unfolded)"
    for v in variants:
        print(f"  {v:26s} gradient step {step[v]:.3f} s ({step[v] / step[base]:.2f}x), attack iteration "
              f"{per_iter[v]:.3f} s ({per_iter[v] / per_iter[base]:.2f}x)")
    for eps, steps, size in ((8, 30, 0.5), (2, 10, 0.25), (1, 5, 0.25)):
        line = []
        for rule in ("exact", "difference"):
            r = attacks.run(model, ex, x, objective, eps=eps, steps=steps, step="sign", step_size=size, k=k,
                            second_order=rule)
            ci = bootstrap_ci(r.metrics[f"top{k}_intersection"])
            line.append(f"{rule} {ci.text('.3f')} ({int(r.success.sum())}/{len(x)} kept the label)")
        print(f"  eps {eps}, {steps} sign steps of {size}: top-{k} intersection " + "; ".join(line))


class _NoPools:
    """A stand-in for ``FrozenPools`` that records and replays nothing (part ``pools``)."""

    def recording(self):
        return contextlib.nullcontext(self)

    def replaying(self):
        return contextlib.nullcontext(self)


def pools_part(model, args) -> None:
    """The difference step with ``FrozenPools`` (a torch function mode around both maps) / with a no-op stand-in:
    what the mode costs on this model (on a network without max-pools both compute the same)."""
    from fragile.attacks import second_order as so

    data, k = DATA[args.model]
    x, ex, objective, t, p0, state, beta, surrogate = _gradient_setup(model, args.images, data, k)
    folded = loop._gradient_model(model, ex, x, True)
    variants = {"with FrozenPools": so.FrozenPools, "without": _NoPools}

    def grad(name):
        so.FrozenPools = variants[name]
        try:
            with folded():
                return so.difference_grad(model, surrogate, objective, state, x, t, "abs_sum", loop.OUTPUT_KEY, rel=1e-5)
        finally:
            so.FrozenPools = variants["with FrozenPools"]

    step, _ = _interleaved(grad, grad, list(variants), args.repeats)
    print(f"{args.model}, {len(x)} images, {args.threads} thread(s), {args.repeats} interleaved repeats (medians): "
          f"difference step with FrozenPools {step['with FrozenPools']:.4f} s, without {step['without']:.4f} s: "
          f"{step['with FrozenPools'] / step['without']:.2f}x")


class _Split:
    """``with _Split() as split:`` ``modified_input_grad`` of LRP, DeepLIFT and guided backprop timed in its pieces
    (``split.times``): the forward of the stacked batch (``forward``: chain, true and reference copies), the backward
    along the chain that makes the map (``map_backward``); with ``probe=True`` also a forward of the copies without the
    chain (``one_copy``: the true copy, which is then the chain, and the reference), what one pass would cost."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.probe = False

    def __enter__(self):
        from fragile.explanations import deeplift, guided, modified
        from fragile.models.outputs import class_scores, run_model

        self.modules = (lrp_module, deeplift, guided)
        self.saved = modified.modified_input_grad

        def timed(explainer, net, layout, x, target, create_graph, extras=(), relevance_seed=False):
            n = x.shape[0]
            xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            if self.probe:
                layout.parts, layout.true, layout.batch = 1 + len(extras), 0, n
                start = time.perf_counter()
                class_scores(run_model(net, torch.cat([xg, *[e.detach() for e in extras]])), n * layout.parts,
                             explainer.output_key)
                self.times["one_copy"] = time.perf_counter() - start
            copies = [xg, xg] if create_graph else [xg]
            layout.parts, layout.true, layout.batch = len(copies) + len(extras), len(copies) - 1, n
            start = time.perf_counter()
            stacked = torch.cat([*copies, *[e.detach() for e in extras]])
            out = class_scores(run_model(net, stacked), stacked.shape[0], explainer.output_key)
            self.times["forward"] = time.perf_counter() - start
            start = time.perf_counter()
            raw_chain, raw_true = out[:n], out[layout.true * n:(layout.true + 1) * n]
            y_true = modified.OUTPUTS[explainer.output](raw_true)
            t = modified.check_target(target, n, y_true.shape[1], x.device)
            seed = torch.zeros_like(y_true).scatter_(1, t[:, None], 1.0)
            if relevance_seed:
                seed = seed * y_true
            cotangent = modified.output_vjp(explainer.output, raw_true, seed)
            if not create_graph:
                cotangent = cotangent.detach()
            (g,) = torch.autograd.grad(raw_chain, xg, cotangent, create_graph=create_graph)
            self.times["map_backward"] = time.perf_counter() - start
            return g

        for module in self.modules:
            module.modified_input_grad = timed
        return self

    def __exit__(self, *exc):
        for module in self.modules:
            module.modified_input_grad = self.saved


def _split(model, ex, x, repeats: int) -> dict[str, float]:
    """Medians (seconds) of the pieces of one attack iteration of ``ex`` on ``x`` (see ``split_part``)."""
    objective = create_objective("topk", k=100)
    t = ex.predict(x)
    p0 = torch.softmax(model(x), dim=1)
    state = objective.prepare(loop.saliency(ex.attribute(x, target=t)), p0)
    surrogate = ex.surrogate(10.0)
    pieces: dict[str, list[float]] = {}
    attribute = surrogate.attribute

    def timed_attribute(*a, **kw):
        start = time.perf_counter()
        h = attribute(*a, **kw)
        split.times["attribute"] = time.perf_counter() - start
        return h

    surrogate.attribute = timed_attribute
    with _Split() as split:
        for rep in range(repeats + 1):
            split.probe = True
            start = time.perf_counter()
            loop._objective_grad(model, surrogate, objective, state, x, t, "abs_sum")
            gradient_step = time.perf_counter() - start - split.times["one_copy"]  # the probe is not part of it
            stacked = dict(split.times)
            split.probe = False
            start = time.perf_counter()
            loop._evaluate(model, ex, objective, state, x, t, p0.argmax(1), p0, "abs_sum")
            check = time.perf_counter() - start
            if rep == 0:  # warm-up
                continue
            row = {"chain copy forward": stacked["forward"] - stacked["one_copy"],
                   "true (+ reference) copy forward": stacked["one_copy"],
                   "map backward (along the chain)": stacked["map_backward"],
                   "surgery and checks": stacked["attribute"] - stacked["one_copy"] - stacked["forward"]
                   - stacked["map_backward"],
                   "second backward (objective gradient)": gradient_step - stacked["attribute"] + stacked["one_copy"],
                   "check on the original model": check, "iteration": gradient_step + check}
            for k, v in row.items():
                pieces.setdefault(k, []).append(v)
    return {k: statistics.median(v) for k, v in pieces.items()}


class _Recomputed:
    """``with _Recomputed():`` the chain copy's value at every rule computed again by the rule's forward (before issue
    17.1: LRP's convolutions ran twice on the true copy), instead of reusing the true copy's output."""

    def __enter__(self):
        from fragile.explanations import modified

        def forward(ctx, rule, chain, true, value, *extras):
            ctx.rule = rule
            ctx.save_for_backward(true, *extras)
            return rule.forward(true)

        self.function = modified._ModifiedFunction
        self.saved = self.function.__dict__["forward"]
        self.function.forward = staticmethod(forward)

    def __exit__(self, *exc):
        self.function.forward = self.saved


def split_part(model, args) -> None:
    """Where one attack iteration of LRP, DeepLIFT and guided backprop goes: the chain and the true copy; the iteration
    with the chain's value reused from the true copy / computed again (before)."""
    x = torch.rand(args.batch, 3, 32, 32)
    print(f"one attack iteration split (top-k, ResNet-20, batch {args.batch}, {args.threads} thread(s), surrogate "
          f"beta 10, {args.repeats} repeats, medians, seconds and % of the iteration):")
    for name in ("lrp", "deeplift", "guided_backprop"):
        ex = create(name, model)
        med = _split(model, ex, x, args.repeats)
        total = med["iteration"]
        print(f"  {name}: iteration {total:.3f} s = " + ", ".join(
            f"{k} {v:.3f} ({100 * v / total:.0f}%)" for k, v in med.items() if k != "iteration"))
        with _Recomputed():
            chain = _split(model, ex, x, max(1, args.repeats // 3))["chain copy forward"]
        print(f"    chain copy forward with the chain's value computed again (before): {chain:.3f} s")
        now = iteration(model, ex, x)

        def before(now=now):
            with _Recomputed():
                now()

        times: dict[str, list[float]] = {"now": [], "before": []}
        now(), before()  # warm-up
        for _ in range(args.repeats):  # interleaved
            times["now"].append(seconds(now))
            times["before"].append(seconds(before))
        now_s, before_s = statistics.median(times["now"]), statistics.median(times["before"])
        print(f"    iteration with the chain's value reused / computed again: {now_s:.3f} / {before_s:.3f} s = "
              f"{now_s / before_s:.2f}x")


def step_output_part(model, args) -> None:
    """Manipulate's output term from the original model / from the surrogate's forward: time and effect."""
    from fragile.metrics.statistics import bootstrap_ci, paired_difference_ci

    x = _correct_images(model, args.images)
    p0 = torch.softmax(model(x), dim=1)
    t = p0.argmax(1)
    choices = ("model", "surrogate")
    for method in ("gradient", "gradient_x_input"):
        ex = create(method, model)
        target = loop.saliency(ex.attribute(x.roll(1, 0), target=t.roll(1, 0)))
        objective = create_objective("manipulate", target_map=target)
        state = objective.prepare(loop.saliency(ex.attribute(x, target=t)), p0)
        surrogate = ex.surrogate(10.0)
        rewritten = loop._gradient_model(model, ex, x, True)

        def grad(choice, ex=ex, objective=objective, state=state, surrogate=surrogate, rewritten=rewritten):
            with rewritten():
                return loop._objective_grad(model, surrogate, objective, state, x, t, "abs_sum", step_output=choice)

        def iteration(choice, ex=ex, objective=objective, state=state, grad=grad):
            grad(choice)
            loop._evaluate(model, ex, objective, state, x, t, t, p0, "abs_sum")

        step, per_iter = _interleaved(grad, iteration, list(choices), args.repeats)
        print(f"{method}, manipulate, {len(x)} correctly classified CIFAR-10 images, surrogate beta 10, "
              f"{args.threads} thread(s), {args.repeats} interleaved repeats (medians):")
        for c in choices:
            print(f"  step_output={c}: gradient step {step[c]:.3f} s, attack iteration (step + check) {per_iter[c]:.3f} s")
        print(f"  surrogate / model: gradient step {step['surrogate'] / step['model']:.2f}x, attack iteration "
              f"{per_iter['surrogate'] / per_iter['model']:.2f}x")
        lr = 4 * 0.0115 * 1500 / args.steps
        runs = {"model": ("model", 1), "surrogate": ("surrogate", 1), "surrogate, check_every 5": ("surrogate", 5)}
        results = {name: attacks.run(model, ex, x, objective, eps=255, steps=args.steps, step="adam_plateau", lr=lr,
                                     beta=(10.0, 100.0), step_output=c, check_every=every)
                   for name, (c, every) in runs.items()}
        for name, r in results.items():
            change = bootstrap_ci(r.metrics["output_change"].cpu().numpy(), statistic="median")  # NaN: failures
            print(f"  {name}: {args.steps} adam_plateau steps from lr {lr:.3g} in {r.seconds:.1f} s: target PCC "
                  f"{bootstrap_ci(r.metrics['target_pcc'])}, median largest softmax change {change}, successes "
                  f"{int(r.success.sum())}/{len(x)}, converged {int(r.converged.sum())}")
        for name in list(runs)[1:]:
            diff = paired_difference_ci(results[name].metrics["target_pcc"], results["model"].metrics["target_pcc"])
            print(f"  target PCC {name} minus model, paired: {diff}; time {results[name].seconds / results['model'].seconds:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--images", type=int, default=16, help="correctly classified test images (parts bf16, difference)")
    ap.add_argument("--model", default="resnet20_cifar10", choices=list(DATA),
                    help="the pretrained model of part difference (the other parts: ResNet-20)")
    ap.add_argument("--parts", nargs="+", default=["lrp", "check_every"],
                    choices=["lrp", "check_every", "bf16", "split", "difference", "pools", "step_output"])
    ap.add_argument("--steps", type=int, default=100, help="attack iterations of part step_output")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the softplus")
    torch.manual_seed(0)
    if args.model != "resnet20_cifar10" and set(args.parts) - {"difference", "pools"}:
        ap.error("--model other than resnet20_cifar10 is for --parts difference and pools only")
    model = create_model(args.model, pretrained=True).eval()
    if "lrp" in args.parts:
        lrp_part(model, args)
    if "check_every" in args.parts:
        check_every_part(model, args)
    if "bf16" in args.parts:
        bf16_part(model, args)
    if "difference" in args.parts:
        difference_part(model, args)
    if "split" in args.parts:
        split_part(model, args)
    if "pools" in args.parts:
        pools_part(model, args)
    if "step_output" in args.parts:
        step_output_part(model, args)


if __name__ == "__main__":
    main()
