"""Cost of the issue-18 metrics as a ratio to one explanation of the same batch (pretrained ResNet-20, CIFAR-10).

    python benchmarks/robustness_metrics.py [--images 16] [--samples 10] [--steps 10] [--threads 2]

Per method: one explanation of the batch (the unit), MaxSensitivity (``samples`` perturbations: about
``samples`` explanations, all batched), worst_vs_random (the random metrics + the attack loop at two radii and two
objectives), cascading and independent randomisation (4 layer groups), FaithfulnessCorrelation (100 runs) and IROF.
"""

from __future__ import annotations

import argparse
import time

import torch

from fragile.data import load_images
from fragile.explanations import create
from fragile.metrics import faithfulness_correlation, irof, max_sensitivity
from fragile.metrics.robustness import worst_vs_random
from fragile.metrics.sanity import model_parameter_randomisation
from fragile.models import create as create_model


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = create_model("resnet20_cifar10", pretrained=True)
    x, _ = load_images(f"cifar10:{max(args.images, 10)}", size=(32, 32))
    x = x[: args.images]
    print(f"{args.images} images, {args.samples} samples, {args.steps} attack iterations; ratio = seconds / one explanation")
    for name, params in (("gradient", {}), ("integrated_gradients", {"steps": 8}), ("smoothgrad", {"samples": 6})):
        unit, costs = measure(model, create(name, model, **params), x, args)
        print(f"{name}: one explanation {unit * 1000:.0f} ms; " + "; ".join(f"{k} {v / unit:.0f}x" for k, v in costs.items()))


def measure(model, ex, x, args) -> tuple[float, dict[str, float]]:
    ex.attribute(x)  # warm-up
    unit = timed(lambda: ex.attribute(x))
    h = ex.attribute(x)
    return unit, {
        "max_sensitivity": timed(lambda: max_sensitivity(ex, x, eps=8, samples=args.samples)),
        "worst_vs_random": timed(lambda: worst_vs_random(ex, x, eps=8, samples=args.samples, steps=args.steps,
                                                         scales=(0.5, 1.0), beta=10.0)),
        "randomisation (cascading + independent, 4 groups)": timed(lambda: [
            model_parameter_randomisation(ex, x, mode=m, groups=4) for m in ("cascading", "independent")]),
        "faithfulness_correlation (100 runs)": timed(lambda: faithfulness_correlation(model, x, h, subset_size=64)),
        "irof": timed(lambda: irof(model, x, h)),
    }

if __name__ == "__main__":
    main()
