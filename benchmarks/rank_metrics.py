"""Rank metrics at the sort floor (issue 17.5): Spearman and top-k intersection beside the fastest sort of the
same maps, the previous torch-sort implementation and a scipy loop over images.

    python benchmarks/rank_metrics.py [--maps 64] [--sizes 112 224] [--repeats 7] [--threads 1] [--device cpu]

For each map size, on untied maps (uniform random) and tied ones (values rounded to 50 levels, like real
saliency maps, which all have ties at 224x224): one pass of ``spearman`` and ``topk_intersection`` (k = 1,000)
on a batch of ``maps`` pairs, the floor (numpy's argsort of both batches on CPU, torch's argsort on another
device), the previous implementation (torch's CPU sort, average ranks by scatter_add; stable descending sort
for top-k), and ``scipy.stats.spearmanr`` per image. All variants run interleaved in every repeat; medians are
printed with their ratio to the floor. The numbers are checked to agree with scipy before timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from fragile.metrics import spearman, topk_intersection


def old_ranks(v: torch.Tensor) -> torch.Tensor:
    """The implementation before issue 17.5 (torch sort; ties averaged with scatter_add)."""
    sorted_v, order = v.sort(dim=1)
    pos = torch.arange(v.shape[1], dtype=torch.float64, device=v.device).expand(v.shape[0], -1)
    new_run = torch.ones_like(sorted_v, dtype=torch.bool)
    new_run[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    if not bool((~new_run).any()):
        return torch.empty_like(pos).scatter_(1, order, pos)
    run_id = new_run.cumsum(1) - 1
    sums = torch.zeros_like(pos).scatter_add_(1, run_id, pos)
    counts = torch.zeros_like(pos).scatter_add_(1, run_id, torch.ones_like(pos))
    return torch.empty_like(pos).scatter_(1, order, (sums / counts.clamp(min=1)).gather(1, run_id))


def old_spearman(a, b):
    ra, rb = old_ranks(a.flatten(1).double()), old_ranks(b.flatten(1).double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.pow(2).sum(1) * rb.pow(2).sum(1)).sqrt()


def old_topk(a, b, k):
    top = lambda v: v.flatten(1).double().sort(dim=1, descending=True, stable=True).indices[:, :k]  # noqa: E731
    hit = torch.zeros_like(a.flatten(1), dtype=torch.bool).scatter_(1, top(a), True)
    return hit.gather(1, top(b)).double().mean(1)


def floor(a, b):
    if a.device.type == "cpu":
        np.argsort(a.flatten(1).double().numpy(), axis=1)
        np.argsort(b.flatten(1).double().numpy(), axis=1)
    else:
        a.flatten(1).double().argsort(dim=1)
        b.flatten(1).double().argsort(dim=1)
        torch.cuda.synchronize()


def scipy_loop(a, b):
    return [spearmanr(u.flatten().cpu().numpy(), v.flatten().cpu().numpy()).statistic for u, v in zip(a, b)]


def timed(fn, a, b, sync: bool) -> float:
    start = time.perf_counter()
    fn(a, b)
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--maps", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sync = args.device.startswith("cuda")
    gen = torch.Generator().manual_seed(0)
    print(f"{args.maps} map pairs per batch, {args.threads} thread(s), device {args.device}, {args.repeats} repeats "
          "(median ms; ratio to the floor = numpy argsort of both batches on CPU)")
    for size in args.sizes:
        for ties in (False, True):
            a, b = (torch.rand(args.maps, size, size, generator=gen) for _ in range(2))
            if ties:
                a, b = (a * 50).round(), (b * 50).round()
            a, b = a.to(args.device), b.to(args.device)
            ref = np.array(scipy_loop(a, b))
            assert np.allclose(spearman(a, b).cpu().numpy(), ref, atol=1e-12)
            assert torch.equal(topk_intersection(a, b, 1000).cpu(), old_topk(a, b, 1000).cpu())
            variants = {"floor (argsort x2)": floor, "spearman": spearman, "spearman (before)": old_spearman,
                        "top-1000 intersection": lambda u, v: topk_intersection(u, v, 1000),
                        "top-1000 (before)": lambda u, v: old_topk(u, v, 1000)}
            if size <= 112 or args.repeats <= 3:
                variants["scipy.spearmanr loop"] = scipy_loop
            times = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    times[name].append(timed(fn, a, b, sync))
            base = statistics.median(times["floor (argsort x2)"])
            print(f"\n{size}x{size}, {'tied (50 levels)' if ties else 'untied'}:")
            for name, ts in times.items():
                med = statistics.median(ts)
                print(f"  {name:24s} {med * 1e3:8.1f} ms   {med / base:5.2f}x floor")


if __name__ == "__main__":
    main()
