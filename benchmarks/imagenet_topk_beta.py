"""ImageNet gradient top-k attack with a fixed surrogate beta vs beta='auto' (issue 14), with the random-sign
control (Ghorbani Fig. 3 protocol: SqueezeNet v1.0, k = 1000, eps 8, sign steps alpha 0.5).

Images: a seeded random sample of correctly classified ImageNet sample photos (one per class, so every image
is another class). Prints mean top-1000 intersection and Spearman with 95% bootstrap intervals, n attacked /
n, iterations and how many had not converged.
Usage: python benchmarks/imagenet_topk_beta.py [--images 16] [--steps 100] [--out runs/imagenet_topk_beta.json]
"""

from __future__ import annotations

import argparse
import json

import torch

from fragile import attacks
from fragile.data import load_images
from fragile.explanations import create
from fragile.metrics.statistics import bootstrap_ci
from fragile.models import create as create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/imagenet_topk_beta.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = create_model("squeezenet1_0_imagenet", pretrained=True)
    x, labels = load_images("imagenet:1000", size=model.input_size)
    with torch.no_grad():
        pred = torch.cat([model(c).argmax(1) for c in x.split(32)])
    correct = torch.nonzero(pred == labels).flatten()
    pick = correct[torch.randperm(len(correct), generator=torch.Generator().manual_seed(args.seed))[: args.images]]
    x = x[pick]
    ex = create("gradient", model)
    out = {"images": pick.tolist(), "steps": args.steps, "results": {}}
    for name, attack, beta in (("random_sign", "random_sign", "auto"), ("topk beta=10 (old default)", "topk", 10.0),
                               ("topk beta=auto", "topk", "auto")):
        r = attacks.run(model, ex, x, attacks.create(attack, k=1000), eps=8, steps=args.steps, beta=beta, k=1000)
        ok = r.success
        row = {"n": int(ok.numel()), "attacked": int(ok.sum()), "iterations": r.settings["iterations"],
               "beta": r.settings["beta"], "beta_note": r.settings["beta_note"], "not_converged": r.not_converged,
               "seconds": r.seconds}
        for m in ("top1000_intersection", "spearman", "center_shift"):
            ci = bootstrap_ci(r.metrics[m][ok].numpy())
            row[m] = [ci.mean, ci.low, ci.high]
        out["results"][name] = row
        print(name, json.dumps(row), flush=True)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
