"""Speed of the attack engine, as ratios measured in one run (not run in CI).

CIFAR ResNet-20 (random weights), batch 64, CPU:
  - one attack iteration (gradient method, top-k objective, sign step, surrogate beta 10, plus the
    per-iteration check on the original model) / one training step (forward + backward to the weights)
  - per-image loop / batched attack
  - batched metrics (torch) / scipy per image, at CIFAR and ImageNet map sizes
  - one attack iteration with BatchNorm folded into the convolutions for the gradient step (``fast=True``, the
    default) / without (``fast=False``), interleaved repeats, medians

Usage: python benchmarks/attacks.py [--batch 64] [--threads 2] [--with iteration_cost schedules ig_memory ...]

``--with NAME ...`` then runs the other benchmarks of issue 17 one after another (each in its own process, at its
own defaults; their docstrings say what they print and hold the figures measured here):

- point 1, cheaper iterations: ``iteration_cost`` (LRP rules, ``check_every``, ``--parts bf16``, ``--parts split``,
  ``--parts difference``), ``second_order`` (where the forward difference agrees with the exact gradient);
- point 2, fewer iterations (quality vs iterations and time): ``schedules`` (APGD vs 300 sign steps, ResNet-20
  top-k and mass-center), ``manipulate_schedules`` (Adam schedules vs Dombrowski's 1,500 steps, SqueezeNet);
- point 3, IG memory and the in-loop estimator: ``ig_memory`` (one-pass vs two-pass peak memory at 224x224),
  ``subsample`` (random subsets of path points / noise samples per iteration);
- point 4, cores: ``sweep`` (1 vs 2 workers, Ray, a simulated cluster); point 5, ``rank_metrics``;
- point 6, ``reference`` (needs the path of a local checkout of the Dombrowski reference code as its argument;
  not run by ``--with``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr

from fragile import attacks
from fragile.explanations import create
from fragile.metrics import spearman, topk_intersection
from fragile.models import CifarResNet, Preprocessed
from fragile.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD


#: The other benchmarks of issue 17 that ``--with`` runs (``reference`` needs a path, so it is run by hand).
OTHERS = ("iteration_cost", "second_order", "schedules", "manipulate_schedules", "ig_memory", "subsample", "sweep", "rank_metrics")


def clock(fn, repeats=1):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def scipy_metrics(a, b, k):
    for i in range(a.shape[0]):
        fa, fb = a[i].ravel(), b[i].ravel()
        spearmanr(fa, fb)
        len(set(np.argpartition(-fa, k)[:k]) & set(np.argpartition(-fb, k)[:k]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--with", dest="others", nargs="*", default=[], choices=OTHERS,
                    help="then run these benchmarks, each at its defaults, in its own process")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="the softplus")  # random weights: surrogate labels differ
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Preprocessed(CifarResNet(3), mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    x = torch.rand(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    ex = create("gradient", model)

    def train_step():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    unit = clock(train_step, 3)
    per_iter = (clock(lambda: attacks.run(model, ex, x, "topk", eps=8, steps=6, beta=10.0))
                - clock(lambda: attacks.run(model, ex, x, "topk", eps=8, steps=2, beta=10.0))) / 4
    print(f"one attack iteration / one training step: {per_iter / unit:.2f}x")
    times = {True: [], False: []}
    for _ in range(5):  # interleaved A/B: each repeat times both
        for fast in (True, False):
            times[fast].append(clock(lambda fast=fast: attacks.run(model, ex, x, "topk", eps=8, steps=3, beta=10.0,
                                                                    fast=fast)))
    ratio = np.median(times[True]) / np.median(times[False])
    print(f"attack (3 iterations + evaluation) with BatchNorm folded / plain: {ratio:.2f}x")
    batched = clock(lambda: attacks.run(model, ex, x, "topk", eps=8, steps=3, beta=10.0))
    loop = clock(lambda: [attacks.run(model, ex, x[i:i + 1], "topk", eps=8, steps=3, beta=10.0)
                          for i in range(len(x))])
    print(f"per-image loop / batched attack (3 iterations): {loop / batched:.1f}x")
    for size, k in ((32, 100), (224, 1000)):
        a, b = torch.rand(args.batch, size, size), torch.rand(args.batch, size, size)
        ours = clock(lambda a=a, b=b, k=k: (spearman(a, b), topk_intersection(a, b, k)), 3)
        theirs = clock(lambda a=a, b=b, k=k: scipy_metrics(a.numpy(), b.numpy(), k))
        print(f"metrics (Spearman + top-{k}) at {size}x{size}: scipy per image / batched torch: {theirs / ours:.1f}x")
    for name in args.others:
        print(f"\n=== benchmarks/{name}.py", flush=True)
        subprocess.run([sys.executable, str(Path(__file__).with_name(f"{name}.py"))], check=True)


if __name__ == "__main__":
    main()
