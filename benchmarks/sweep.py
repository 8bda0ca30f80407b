"""Sweep throughput on this machine, and the Ray speed-up from 1 to 2 workers (not run in CI).

Ghorbani's CIFAR protocol: simple gradient, integrated gradients (M=100), DeepLIFT; random-sign,
top-k, mass-center attacks; eps 1, 2, 4, 8; 300 iterations; pretrained ResNet-20. A reduced sweep
(IMAGES images, ITERS iterations, one attack and eps per method) is timed; the full protocol on 512
images is projected from the measured images x iterations per second.

Usage: python benchmarks/sweep.py [--images 16] [--iters 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from fragile.experiments import config as config_mod
from fragile.experiments.runner import run_sweep

METHODS = ["gradient", {"name": "integrated_gradients", "steps": 100}, "deeplift"]


def timed(cfg, **kw):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_sweep(cfg, d, show_progress=False, log=lambda *a: None, **kw)
        return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--ray-only", action="store_true", help="only the 1-vs-2 Ray workers comparison")
    args = ap.parse_args()
    full_units = 512 * 3 * 4 * 300  # images x attacks x eps x iterations, per method
    total = 0.0
    for method in [] if args.ray_only else METHODS:
        cfg = config_mod.resolve({"images": "cifar10:4", "limit": args.images, "methods": [method], "attacks": ["topk"],
                                  "eps": [8], "batch_size": args.images, "store_arrays": False,
                                  "attack_settings": {"steps": args.iters}})
        seconds = timed(cfg)
        rate = args.images * args.iters / seconds
        total += full_units / rate
        name = method if isinstance(method, str) else method["name"]
        print(f"{name:22s} {rate:8.1f} images x iterations / s  (in-process, 2 threads)")
    if total:
        print(f"projected full Ghorbani CIFAR protocol (512 images, 3 methods x 3 attacks x 4 eps x 300 it.): "
              f"{total / 3600:.1f} h")
    cfg = config_mod.resolve({"images": "cifar10:4", "limit": args.images, "methods": ["gradient"],
                              "attacks": ["topk", "mass_center"], "eps": [4, 8], "batch_size": args.images // 2,
                              "store_arrays": False, "threads": 1, "attack_settings": {"steps": args.iters}})
    one, two = timed(cfg, executor="ray", workers=1), timed(cfg, executor="ray", workers=2)
    print(f"Ray, 8 units of gradient/top-k+mass-center: 1 worker / 2 workers wall time = {one / two:.2f}x")


if __name__ == "__main__":
    main()
