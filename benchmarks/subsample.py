"""Subsampled gradient steps (``attacks.run(subsample=...)``, issue 17.3) against the full attack, on the pretrained
CIFAR-10 ResNet-20 (not run in CI).

    python benchmarks/subsample.py [--images 16] [--methods ig sg] [--fractions 0.2 0.1] [--steps 10 30]
        [--eps 8] [--check-every 1] [--repeats 3] [--threads 1] [--out rows.json] [--reuse rows.json]

Top-k attack (k = 100), eps 8/255 (``--eps``), sign steps of 0.5/255, beta 'auto' (10), on correctly classified, class-balanced
CIFAR-10 test images; integrated gradients with 20 path points (``ig``) and SmoothGrad with 20 samples (``sg``).
Each gradient step of a subsampled attack differentiates an unbiased estimate of the map from a fraction f of the
points (a fresh random subset of IG's path points, f S fresh noise samples of SmoothGrad); every iterate is still
evaluated, and the returned example chosen, on the full method; ``--check-every c`` evaluates the subsampled
attacks' iterates only every c-th iteration (``attacks.run(check_every=c)``; the full attack: every iteration).
Prints per method:

- the time of one attack iteration (the gradient step, plus the evaluation of the iterate on the full method, which
  subsampling leaves as it is), median of ``--repeats`` interleaved repeats, and its ratio to the full attack's;
- the attack's effect, the mean drop of the top-100 intersection from the clean map (1 - intersection; a failure,
  returned unperturbed, counts as no drop), with its 95% bootstrap interval over the images, after each of
  ``--steps`` iterations (equal iterations), and for each fraction after as many iterations as the full attack's
  last budget takes in time (equal time); as a fraction of the full attack's effect at the same budget, with a
  paired bootstrap interval (images resampled jointly); the attack's own wall time;
- whether <= 1/5 of the full attack's cost reaches >= 90% of its effect.

``--out`` writes every run's per-image drops and each method's iteration times to JSON (after each run),
``--reuse`` reads them instead of rerunning (same images, settings and seed).

Measured (16 images, seed 0, 1 thread on a 2-core machine shared with other jobs, load ~6: absolute times are
inflated, the ratios come from interleaved medians of 5 repeats; ``--eps 8``, then ``--methods ig --eps 2``, then
``--methods sg --check-every 5``, the later runs reusing the first one's iteration times and full-attack rows):

- one iteration: IG-20 full 12.35 s (gradient 9.04 s + evaluation 3.31 s), f = 0.2 (4 points) 4.69 s = 0.38x,
  f = 0.1 (2 points) 3.98 s = 0.32x; SmoothGrad-20 full 8.48 s (6.73 + 1.75), f = 0.2 2.85 s = 0.34x, f = 0.1
  2.32 s = 0.27x. The gradient step alone is 0.15x / 0.07x (IG) and 0.16x / 0.085x (SmoothGrad) of the full one;
  what is left is the evaluation on the full method. With ``check_every=5`` SmoothGrad's iteration is 0.17x
  (f = 0.2) and 0.11x (f = 0.1).
- IG, eps 8 (saturates): full 0.976 [0.961, 0.988] after 10 iterations, 0.998 after 30. f = 0.2 at equal
  iterations 94% [81%, 101%] (T = 10, one image without a qualifying iterate) and 100% (T = 30); with 1/5 of the
  full T = 30's time (T = 15) 0.993, 99% [99%, 100%] of the full attack's (f = 0.1, T = 18: 100%); the full attack
  cut to the same time (T = 6) 88% [75%, 96%].
- IG, eps 2: full 0.869 (T = 10), 0.936 [0.905, 0.961] (T = 30); f = 0.2 at T = 30 101% [101%, 102%]; with 1/5
  of the time (T = 15) 0.933, 100% [99%, 100%] (f = 0.1, T = 18: 94% [82%, 101%], one failure); full T = 6 90%
  [79%, 97%]; at equal time (T = 79) 103% [102%, 104%].
- SmoothGrad, eps 8: full 0.355 [0.331, 0.382] (T = 10), 0.548 [0.515, 0.584] (T = 30). f = 0.2 at equal
  iterations 92% (T = 10), 80% [76%, 84%] (T = 30; f = 0.1: 78%): a 4-sample gradient is a noisier step; with
  1/5 of the time (T = 17) 68% [64%, 73%] (f = 0.1, T = 21: 71%), still more than the full attack cut to T = 6
  (54% [48%, 60%]); at equal time (T = 89) 99% [94%, 104%]. With ``check_every=5``: 1/5 of the time is T = 35
  (f = 0.2) 84% [80%, 88%] or T = 55 (f = 0.1) 90.4% [88%, 93%]; at equal time 109% [102%, 114%] (f = 0.2, T = 175).

So <= 1/5 of the cost reaches >= 90% of the full attack's effect for integrated gradients (99-100% at f = 0.2,
both eps, the whole interval above 90%), not for SmoothGrad with the check every iteration (68-71%); SmoothGrad
gets there only with ``check_every=5`` and f = 0.1 (90.4%, the interval's lower end 88%). Every returned example
kept its label.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
import warnings

import numpy as np
import torch

from fragile import attacks
from fragile.attacks import loop
from fragile.attacks.objectives import create as create_objective
from fragile.attacks.surrogate import choose_beta
from fragile.data import load_images
from fragile.data.sampling import interleave
from fragile.explanations import create
from fragile.explanations.subsample import subsample_size, subsampler
from fragile.metrics import bootstrap_ci
from fragile.models import create as create_model

METHODS = {"ig": ("integrated_gradients", {"steps": 20}), "sg": ("smoothgrad", {"samples": 20})}
ATTACK = {"step": "sign", "step_size": 0.5, "k": 100, "beta": "auto"}


def correct_images(model, n: int) -> torch.Tensor:
    """The first ``n`` correctly classified images of a class-balanced CIFAR-10 test sample, kept class-balanced."""
    x, labels = load_images(f"cifar10:{2 * n + 20}", size=(32, 32))
    with torch.no_grad():
        ok = model(x).argmax(1) == labels
    x, labels = x[ok], labels[ok]
    return x[interleave(labels)][:n]


def iteration_times(model, ex, x, fractions, repeats: int) -> tuple[dict, float]:
    """Median seconds of the gradient step per variant (None: the full method) and of the evaluation, from
    ``repeats`` interleaved repeats (each times every variant, then the evaluation) after a warm-up."""
    objective = create_objective("topk", k=100)
    t = ex.predict(x)
    p0 = torch.softmax(model(x), dim=1)
    state = objective.prepare(loop.saliency(ex.attribute(x, target=t)), p0)
    beta = choose_beta(model, x).beta
    rewritten = loop._gradient_model(model, ex, x, True)
    samplers = {f: subsampler(ex, f, seed=0) for f in [None, *fractions]}

    def grad(f):
        with rewritten():
            loop._objective_grad(model, samplers[f](ex.surrogate(beta)), objective, state, x, t, "abs_sum")

    def evaluate():
        loop._evaluate(model, ex, objective, state, x, t, p0.argmax(1), p0, "abs_sum")

    times = {f: [] for f in samplers}
    evals = []
    for f in samplers:  # warm-up
        grad(f)
    for _ in range(repeats):
        for f in samplers:
            start = time.perf_counter()
            grad(f)
            times[f].append(time.perf_counter() - start)
        start = time.perf_counter()
        evaluate()
        evals.append(time.perf_counter() - start)
    return {f: statistics.median(v) for f, v in times.items()}, statistics.median(evals)


def run_attack(model, ex, x, steps: int, fraction, eps: float, check_every: int) -> dict:
    """One attack: per-image drop of the top-100 intersection (failures: 0), successes, labels kept, wall time."""
    start = time.perf_counter()
    r = attacks.run(model, ex, x, "topk", eps=eps, steps=steps, subsample=fraction, check_every=check_every, **ATTACK)
    seconds = time.perf_counter() - start
    with torch.no_grad():
        kept = bool((model(r.x_adv).argmax(1) == r.label).all())
    drop = 1 - torch.nan_to_num(r.metrics["top100_intersection"], nan=1.0)
    return {"drop": drop.tolist(), "successes": int(r.success.sum()), "labels_kept": kept, "seconds": seconds,
            "steps": steps}


def ratio_ci(a, b, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) over paired per-image values, with its 95% percentile-bootstrap interval."""
    a, b = np.asarray(a), np.asarray(b)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_resamples, len(a)))
    ratios = a[idx].mean(1) / b[idx].mean(1)
    low, high = np.quantile(ratios, [0.025, 0.975])
    return float(a.mean() / b.mean()), float(low), float(high)


def label(fraction, check_every: int = 1) -> str:
    """``full``, ``f=0.2`` or, with the check every c-th iteration, ``f=0.2 c=5``."""
    return "full" if fraction is None else f"f={fraction:g}" + (f" c={check_every}" if check_every > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--methods", nargs="+", default=["ig", "sg"], choices=sorted(METHODS))
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.1])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 30])
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--check-every", type=int, default=1, help="check_every of the subsampled attacks (the full: 1)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write every run's per-image drops to this JSON file")
    ap.add_argument("--reuse", help="read the runs present in this JSON file (written by --out) instead of rerunning")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the softplus")
    torch.manual_seed(0)
    model = create_model("resnet20_cifar10", pretrained=True).eval()
    x = correct_images(model, args.images)
    reused = {}
    if args.reuse:
        with open(args.reuse) as f:
            reused = json.load(f)
    rows = dict(reused)
    print(f"ResNet-20, {len(x)} correctly classified class-balanced CIFAR-10 test images, top-k (k = 100), eps {args.eps:g}, "
          f"sign steps of 0.5/255, beta auto, {args.threads} thread(s)")
    budget = max(args.steps)
    for key in args.methods:
        name, params = METHODS[key]
        ex = create(name, model, **params)
        points = ex.average_points()
        timing = rows.get(f"{key} timing")
        if timing is None or any(f"{f:g}" not in timing["gradient"] for f in args.fractions):
            grad, evaluation = iteration_times(model, ex, x, args.fractions, args.repeats)
            rows[f"{key} timing"] = {"gradient": {"full" if f is None else f"{f:g}": v for f, v in grad.items()},
                                     "evaluation": evaluation}
        else:
            print(f"  (iteration times of {key} read from {args.reuse})")
            grad = {f: timing["gradient"]["full" if f is None else f"{f:g}"] for f in [None, *args.fractions]}
            evaluation = timing["evaluation"]
        c = args.check_every
        per_iter = {f: g + (evaluation if f is None else evaluation / c) for f, g in grad.items()}
        print(f"\n{name} {params} ({points} points): one iteration, median of {args.repeats} interleaved repeats "
              f"(the evaluation on the full method {evaluation:.2f} s of it{f', / {c} with check_every={c}' if c > 1 else ''})")
        for f, s in per_iter.items():
            m = points if f is None else subsample_size(ex, f)
            print(f"  {label(f, c):11s} {m:2d} points per step: {s:.2f} s per iteration ({grad[f]:.2f} s gradient), "
                  f"{s / per_iter[None]:.2f}x of the full attack's")
        # (fraction, iterations, the full attack's iterations it is compared with, note)
        plan = [(f, steps, steps, "") for steps in args.steps for f in [None, *args.fractions]]
        plan.append((None, max(1, round(budget / 5)), budget, f" (1/5 of the time of the full T={budget})"))
        for share, note, rounding in ((0.2, "1/5 of the time", math.floor), (1.0, "equal time", round)):
            plan += [(f, max(1, rounding(share * budget * per_iter[None] / per_iter[f])), budget,
                      f" ({note} of the full T={budget})") for f in args.fractions]
        summary = []
        for f, steps, ref, note in plan:
            row = f"{key} eps={args.eps:g} {label(f, c)} T={steps}"
            if row in reused:
                print(f"  (run {row!r} read from {args.reuse})")
            elif row not in rows:
                rows[row] = run_attack(model, ex, x, steps, f, args.eps, 1 if f is None else c)
                if args.out:
                    with open(args.out, "w") as fh:
                        json.dump(rows, fh)
            r, full = rows[row], rows[f"{key} eps={args.eps:g} full T={ref}"]
            ci = bootstrap_ci(r["drop"])
            rel = ratio_ci(r["drop"], full["drop"])
            cost = steps * per_iter[f] / (ref * per_iter[None])
            print(f"  {label(f, c):11s} T={steps:3d}{note}: drop of top-100 intersection {ci.mean:.3f} [{ci.low:.3f}, "
                  f"{ci.high:.3f}], {rel[0]:.0%} [{rel[1]:.0%}, {rel[2]:.0%}] of the full T={ref}'s at {cost:.2f}x its "
                  f"time; {r['successes']}/{len(x)} successes, labels kept: {r['labels_kept']}, {r['seconds']:.0f} s")
            if cost <= 0.2 + 1e-9:
                summary.append((label(f, c), steps, ref, cost, rel))
        for name_f, steps, ref, cost, rel in summary:
            verdict = "yes" if rel[0] >= 0.9 else "no"
            sure = " (the interval's lower end too)" if rel[1] >= 0.9 else " (not the interval's lower end)"
            print(f"  {name_f} T={steps}: {cost:.2f}x the full T={ref}'s time for {rel[0]:.1%} of its effect: <= 1/5 of "
                  f"the cost for >= 90% of the effect: {verdict}{sure if verdict == 'yes' else ''}")


if __name__ == "__main__":
    main()
