"""Fewer iterations to the paper's attack quality (issue 17.2): APGD's step-size schedule for sign steps against
Ghorbani's 300 sign steps of 0.5/255, on the pretrained CIFAR-10 ResNet-20.

    python benchmarks/schedules.py [--images 16] [--eps 8] [--threads 1] [--budgets 20 40 60] [--objectives topk mass_center]

For the top-k (k = 100) and mass-center attacks on gradient maps (surrogate beta 'auto'), prints per setting the
iterations, the wall time, the attack's effect (mean top-100 intersection, lower is stronger; mean center shift
in pixels, higher is stronger; each with its 95% bootstrap interval over the images) and the fraction of the
paper setting's effect reached. Every setting runs on the same seeded class-balanced images; the per-iteration
cost is the same for every schedule (one gradient of the objective and one evaluation), so the ratio of
iterations is the ratio of time.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from fragile import attacks
from fragile.data import load_images
from fragile.explanations import create
from fragile.metrics import bootstrap_ci
from fragile.models import create as create_model

EFFECT = {"topk": ("top100_intersection", "lower"), "mass_center": ("center_shift", "higher")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budgets", type=int, nargs="+", default=[20, 40, 60])
    ap.add_argument("--objectives", nargs="+", default=list(EFFECT), choices=list(EFFECT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the softplus")
    model = create_model("resnet20_cifar10", pretrained=True).eval()
    x, labels = load_images(f"cifar10:{args.images}", size=(32, 32))
    with torch.no_grad():
        keep = model(x).argmax(1) == labels
    x = x[keep]
    ex = create("gradient", model)
    print(f"{len(x)} correctly classified CIFAR-10 test images (class-balanced, seeded), eps {args.eps:g}/255")
    settings = [("paper: sign 300 x 0.5", {"step": "sign", "steps": 300, "step_size": 0.5})]
    for b in args.budgets:
        settings.append((f"apgd {b}", {"step": "apgd", "steps": b}))
        settings.append((f"sign {b} x 0.5", {"step": "sign", "steps": b, "step_size": 0.5}))
    for name in args.objectives:
        metric, better = EFFECT[name]
        objective = attacks.create(name, k=100) if name == "topk" else attacks.create(name)
        print(f"\n{name} ({metric}, {better} is stronger):")
        ref = None
        for label, s in settings:
            start = time.perf_counter()
            r = attacks.run(model, ex, x, objective, eps=args.eps, beta="auto", k=100, **s)
            seconds = time.perf_counter() - start
            values = r.metrics[metric]
            ci = bootstrap_ci(values)
            clean = 1.0 if metric.endswith("intersection") else 0.0
            effect = abs(float(values.nanmean()) - clean)
            ref = effect if ref is None else ref
            print(f"  {label:24s} {r.settings['iterations']:4d} it  {seconds:7.1f} s  {ci.text('.3f'):28s} "
                  f"effect {effect / ref:6.1%} of the paper's  ({int(r.success.sum())}/{len(x)} kept the label)")


if __name__ == "__main__":
    main()
