"""Fewer iterations to the paper's attack quality (issue 17.2): APGD's step-size schedule for sign steps against
Ghorbani's 300 sign steps of 0.5/255, on the pretrained CIFAR-10 ResNet-20 or the ImageNet SqueezeNet v1.0.

    python benchmarks/schedules.py [--model resnet20_cifar10 | squeezenet1_0_imagenet] [--images 16] [--eps 8]
        [--threads 1] [--budgets 20 40 60] [--objectives topk mass_center] [--k K]

For the top-k (k = 100 at 32x32, 1000 at 227x227, Ghorbani App. F) and mass-center attacks on gradient maps
(surrogate beta 'auto'), prints per setting the iterations, the wall time, the attack's effect (mean top-k
intersection, lower is stronger; mean center shift in pixels, higher is stronger; each with its 95% bootstrap
interval over the images) and the fraction of the paper setting's effect reached; then the quality-vs-iterations
curves: the loop's own best-so-far objective on the original model (top-k: the mass left on the original top-k
pixels; mass-center: the shift), mean over the images, at the recorded iterations (before an image has a
label-keeping iterate it is left out of the mean and the count of those in it is given). Every setting runs on the
same seeded class-balanced images; the per-iteration cost is the same for every schedule (one gradient of the
objective and one evaluation), so the ratio of iterations is the ratio of time.
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

EFFECT = {"topk": ("intersection", "lower"), "mass_center": ("center_shift", "higher")}
DATA = {"resnet20_cifar10": "cifar10", "squeezenet1_0_imagenet": "imagenet"}


def curve_text(r, points: int = 11) -> str:
    """The mean best-so-far objective (sign flipped for mass-center: the shift) at about ``points`` of the
    recorded iterations, ``value@iteration``."""
    its, traj = r.trajectory_iterations, r.trajectory[:, r.success].double()
    if r.attack == "mass_center":
        traj = -traj
    pick = sorted({round(i * (len(its) - 1) / (points - 1)) for i in range(points)})

    def mean(row):  # over the images with a qualifying iterate so far (inf before it), their count if not all
        ok = torch.isfinite(row)
        text = f"{float(row[ok].mean()):.4g}" if bool(ok.any()) else "-"
        return text if bool(ok.all()) else f"{text}({int(ok.sum())}/{row.numel()})"

    return " ".join(f"{mean(traj[j])}@{its[j]}" for j in pick)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20_cifar10", choices=list(DATA))
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--eps", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budgets", type=int, nargs="+", default=[20, 40, 60])
    ap.add_argument("--objectives", nargs="+", default=list(EFFECT), choices=list(EFFECT))
    ap.add_argument("--k", type=int, default=None, help="top-k's k (default: 100 at 32x32, 1000 at ImageNet size)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the softplus")
    model = create_model(args.model, pretrained=True).eval()
    x, labels = load_images(f"{DATA[args.model]}:{args.images}", size=model.input_size)
    with torch.no_grad():
        keep = model(x).argmax(1) == labels
    x = x[keep]
    ex = create("gradient", model)
    k = args.k or attacks.objectives.default_k(x.shape[-2] * x.shape[-1])
    print(f"{args.model}: {len(x)} correctly classified of {args.images} seeded class-balanced test images at "
          f"{tuple(x.shape[-2:])}, eps {args.eps:g}/255, k {k}, {args.threads} thread(s)")
    settings = [("paper: sign 300 x 0.5", {"step": "sign", "steps": 300, "step_size": 0.5})]
    for b in args.budgets:
        settings.append((f"apgd {b}", {"step": "apgd", "steps": b}))
        settings.append((f"sign {b} x 0.5", {"step": "sign", "steps": b, "step_size": 0.5}))
    for name in args.objectives:
        metric, better = EFFECT[name]
        metric = f"top{k}_intersection" if metric == "intersection" else metric
        objective = attacks.create(name, k=k) if name == "topk" else attacks.create(name)
        print(f"\n{name} ({metric}, {better} is stronger):", flush=True)
        ref, curves = None, []
        for label, s in settings:
            start = time.perf_counter()
            r = attacks.run(model, ex, x, objective, eps=args.eps, beta="auto", k=k, **s)
            seconds = time.perf_counter() - start
            values = r.metrics[metric]
            ci = bootstrap_ci(values)
            clean = 1.0 if metric.endswith("intersection") else 0.0
            effect = abs(float(values.nanmean()) - clean)
            ref = effect if ref is None else ref
            curves.append((label, curve_text(r)))
            print(f"  {label:24s} {r.settings['iterations']:4d} it  {seconds:7.1f} s  {ci.text('.3f'):28s} "
                  f"effect {effect / ref:6.1%} of the paper's  ({int(r.success.sum())}/{len(x)} kept the label)",
                  flush=True)
        print(f"  quality vs iterations ({'mass left on the original top-k' if name == 'topk' else 'shift, px'}, "
              "best so far, mean over the successes):")
        for label, text in curves:
            print(f"    {label:24s} {text}")


if __name__ == "__main__":
    main()
