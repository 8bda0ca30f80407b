"""Speed of the explanation engine, as ratios measured in one run (not run in CI).

For a CIFAR-sized ResNet-20 (random weights, eval mode), batch 64, on this machine's CPU:
  - explain:            one ``attribute`` call / one plain forward+backward of the model
  - explain+backward:   ``attribute(create_graph=True)`` + backward of a loss on the map, same unit
  - loop/batched:       a per-image Python loop over the 64 images / one batched call

Usage: python benchmarks/explanations.py [--batch 64] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fragile.explanations import create, estimate_patterns
from fragile.models import CifarResNet, Preprocessed
from fragile.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD

PARAMS = {  # reduced sample counts keep the run short; the ratio scales linearly with them
    "integrated_gradients": {"steps": 20},
    "smoothgrad": {"samples": 10},
    "uniform_gradient": {"samples": 10},
}


def timeit(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", nargs="*", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Preprocessed(CifarResNet(3), mean=CIFAR_MEAN, std=CIFAR_STD).eval()
    x = torch.rand(args.batch, 3, 32, 32)
    target = torch.randint(0, 10, (args.batch,))

    def plain():
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, target[:, None]).sum(), xi)

    unit = timeit(plain, args.repeats)
    patterns = estimate_patterns(model, torch.rand(256, 3, 32, 32))
    extra = {"pattern_attribution": {"patterns": patterns}}
    names = args.methods or ["gradient", "gradient_x_input", "integrated_gradients", "smoothgrad",
                             "uniform_gradient", "deeplift", "guided_backprop", "lrp",
                             "pattern_attribution", "grad_cam"]
    print(f"ResNet-20, batch {args.batch}, {args.threads} threads; unit = one forward+backward; "
          f"IG steps 20, SmoothGrad/UniformGrad 10 samples")
    print(f"{'method':22s} {'explain':>9s} {'explain+backward':>17s} {'loop/batched':>13s}")
    for name in names:
        ex = create(name, model, **PARAMS.get(name, {}), **extra.get(name, {}))
        smooth = create(name, model, smooth_beta=10.0, **PARAMS.get(name, {}), **extra.get(name, {}))
        t_explain = timeit(lambda ex=ex: ex.attribute(x, target=target), args.repeats)

        def through(ex=smooth):
            xi = x.clone().requires_grad_(True)
            h = ex.attribute(xi, target=target, create_graph=True)
            torch.autograd.grad(h.pow(2).sum(), xi)

        t_through = timeit(through, args.repeats)
        t_loop = timeit(lambda ex=ex: [ex.attribute(x[i:i + 1], target=target[i:i + 1]) for i in range(len(x))], 1)
        print(f"{name:22s} {t_explain / unit:8.1f}x {t_through / unit:16.1f}x {t_loop / t_explain:12.1f}x", flush=True)


if __name__ == "__main__":
    main()
