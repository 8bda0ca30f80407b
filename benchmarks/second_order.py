"""Where ``second_order='difference'`` can stand in for the exact double backward (issue 17.1): the cosine between
the forward difference of two gradient maps and the exact objective gradient, per relative step, model and beta.

    python benchmarks/second_order.py [--models resnet20_cifar10 squeezenet1_0_imagenet] [--images 4] [--betas 1 10]
        [--threads 1]

For each model (pretrained; seeded class-balanced test images: CIFAR-10 for ResNet-20, the ImageNet sample photos for
SqueezeNet), each surrogate beta ('auto''s choice for the model first, then ``--betas``) and the top-k and
mass-center objectives on gradient maps, prints the mean over the images of the cosine between
``fragile.attacks.second_order.difference_at`` at relative steps rel = 1e-1 ... 1e-6 and the exact gradient
(``attacks.loop._objective_grad``, float32), and below it the worst image's. The attack uses the difference only
where the best of ``REL_STEPS`` (1e-3 ... 1e-6) reaches ``MIN_COSINE`` (0.99) for the worst image: the truncation
error grows with the step (the surrogate's curvature), float32 rounding with its inverse, and on some models no
step lies between them.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from fragile import attacks
from fragile.attacks import loop
from fragile.attacks import second_order as so
from fragile.attacks.surrogate import choose_beta
from fragile.data import load_images
from fragile.explanations import create
from fragile.models import create as create_model

DATA = {"resnet20_cifar10": "cifar10", "squeezenet1_0_imagenet": "imagenet"}
RELS = (1e-1, 3e-2, 1e-2, 3e-3) + so.REL_STEPS


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(DATA), choices=list(DATA))
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--betas", type=float, nargs="*", default=[1.0, 10.0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rels", type=float, nargs="+", default=list(RELS), help="relative steps to compare")
    ap.add_argument("--objectives", nargs="+", default=["topk", "mass_center"], choices=["topk", "mass_center"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the softplus")
    for name in args.models:
        model = create_model(name, pretrained=True).eval()
        x, _ = load_images(f"{DATA[name]}:{args.images}", size=model.input_size)
        ex = create("gradient", model)
        t = ex.predict(x)
        p0 = torch.softmax(model(x), 1)
        auto = choose_beta(model, x).beta
        print(f"\n{name}: {len(x)} images at {tuple(x.shape[-2:])}, beta 'auto' = {auto:g}; mean cosine with the exact "
              "gradient per relative step")
        print(f"  {'objective':12s} {'beta':>5s}  " + " ".join(f"{r:>7g}" for r in args.rels))
        for objective_name in args.objectives:
            objective = attacks.create(objective_name)
            state = objective.prepare(loop.saliency(ex.attribute(x, target=t)), p0)
            for beta in [auto, *args.betas]:
                surrogate = ex.surrogate(beta)
                exact = loop._objective_grad(model, surrogate, objective, state, x, t, "abs_sum")
                means, worst = [], []
                difference = so.difference_at(model, surrogate, objective, state, x, t, "abs_sum", loop.OUTPUT_KEY)
                for rel in args.rels:
                    d = difference(rel)
                    means.append(float(torch.nn.functional.cosine_similarity(d.flatten(1), exact.flatten(1)).mean()))
                    worst.append(so.worst_cosine(d, exact))
                print(f"  {objective_name:12s} {beta:5g}  " + " ".join(f"{c:7.4f}" for c in means), flush=True)
                print(f"  {'  worst image':12s} {'':5s}  " + " ".join(f"{c:7.4f}" for c in worst), flush=True)


if __name__ == "__main__":
    main()
