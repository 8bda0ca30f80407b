"""Speed of the attack engine, as ratios measured in one run (not run in CI).

CIFAR ResNet-20 (random weights), batch 64, CPU:
  - one attack iteration (gradient method, top-k objective, sign step, surrogate beta 10, plus the
    per-iteration check on the original model) / one training step (forward + backward to the weights)
  - per-image loop / batched attack
  - batched metrics (torch) / scipy per image, at CIFAR and ImageNet map sizes
  - one attack iteration with BatchNorm folded into the convolutions for the gradient step (``fast=True``, the
    default) / without (``fast=False``), interleaved repeats, medians

Usage: python benchmarks/attacks.py [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr

from fragile import attacks
from fragile.explanations import create
from fragile.metrics import spearman, topk_intersection
from fragile.models import CifarResNet, Preprocessed
from fragile.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD


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


if __name__ == "__main__":
    main()
