"""Before/after of the scale-free optimiser: the manipulate attack at ImageNet size (issue 14).

Runs the manipulate attack on SqueezeNet v1.0 (227x227) for a few images: (a) the old setting, the map
MSE without the reference's prefactors (map_weight 1, output_weight 1e-5) and torch's absolute-eps Adam;
(b) the default: the same loss with the scale-free Adam; (c) Dombrowski's prefactors (1e11 / 1e6) with
torch's Adam. Prints PCC to the target before/after, the L-inf moved and the output change.
Usage: python benchmarks/manipulate_224.py [--images 2] [--steps 10]
"""

from __future__ import annotations

import argparse


from fragile import attacks
from fragile.data import load_images
from fragile.explanations import create
from fragile.models import create as create_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    model = create_model("squeezenet1_0_imagenet", pretrained=True)
    x, _ = load_images("imagenet:10", size=model.input_size)
    x = x[: args.images + 1]
    ex = create("gradient", model)
    target = attacks.saliency(ex.attribute(x[1:]))
    x = x[: args.images]
    settings = {
        "old: map_weight 1, output_weight 1e-5, absolute-eps Adam": ({"map_weight": 1.0, "output_weight": 1e-5},
                                                                     "adam_absolute"),
        "new default optimiser: same loss, scale-free Adam": ({"map_weight": 1.0, "output_weight": 1e-5}, "adam"),
        "Dombrowski prefactors 1e11 / 1e6, absolute-eps Adam": ({}, "adam_absolute"),
        "Dombrowski prefactors 1e11 / 1e6, scale-free Adam (default)": ({}, "adam"),
    }
    for name, (weights, step) in settings.items():
        obj = attacks.create("manipulate", target_map=target, **weights)
        r = attacks.run(model, ex, x, obj, eps=255, steps=args.steps, step=step, lr=0.0115 * 4, beta=(10, 100))
        m = r.metrics
        print(f"{name}: PCC to target {m['target_pcc_before'].mean():.4f} -> {m['target_pcc'].nanmean():.4f}, "
              f"L-inf {m['linf'].nanmean() * 255:.3f}/255, output change {m['output_change'].nanmean():.2e}, "
              f"{int(r.success.sum())}/{len(x)} ok, {r.seconds:.0f} s")


if __name__ == "__main__":
    main()
