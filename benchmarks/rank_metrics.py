"""Rank metrics at the sort floor (issue 17.5): Spearman and top-k intersection beside the fastest sort of the
same maps, the previous Spearman and a scipy loop over images.

    python benchmarks/rank_metrics.py [--maps 32] [--sizes 32 112 224] [--repeats 7] [--threads 1]
                                      [--dtype float32] [--device cpu]

For each map size, on untied maps (uniform random) and tied ones (values rounded to 50 levels; real saliency
maps all have ties at 224x224): one pass of ``spearman`` and ``topk_intersection`` (k = 1,000, or D / 4 for
small maps) on a batch of ``maps`` pairs, beside the floor -- the fastest sort of both batches for the
device: numpy's argsort of the maps as they are (their own dtype) on CPU, torch's argsort on CUDA. Also the
previous Spearman (commit dc907a6: numpy argsort, a gather, ties averaged in torch, two scatters) and, for
maps up to 112x112, ``scipy.stats.spearmanr`` per image. All variants run interleaved in every repeat
(each timing loops over enough calls to last ~20 ms of floor); the medians (CPU time of the process on CPU,
wall time on CUDA) are printed in ms with their ratio to the floor. Spearman is checked against scipy (atol 1e-12) and
top-k against a stable descending argsort before timing. ``--dtype float64`` gives maps whose values fill
all 52 mantissa bits (the path that truncates, checks and, for rows with values closer than ~2^-35, argsorts).

Measured (2026-12-02, CPU, 1 thread, 32 pairs a batch, 7 interleaved repeats, CPU time; the 2 cores were
shared with a background ``fragile run`` and other jobs, load average ~6, so wall times wandered; two runs
gave ratios within 0.1 of each other), float32 maps, median ratio to the floor:

    size      ties        floor ms   spearman   previous   top-k
    32x32     untied          0.56      1.73x      5.45x    0.52x
    32x32     50 levels       0.59      1.83x      3.80x    0.97x
    112x112   untied         10.07      1.11x      4.52x    0.35x
    112x112   50 levels       6.34      1.37x      3.89x    0.82x
    224x224   untied         39.92      1.03x      4.70x    0.36x
    224x224   50 levels      21.67      1.75x      5.03x    1.22x

With ``--dtype float64`` (ratios to float64's argsort): Spearman 1.35-2.0x untied, 1.3-1.7x tied; top-k 0.4-1.4x.
The tied maps are the hard case because numpy's argsort is 2x faster on them while our sort of (value,
position) keys, all distinct, is not.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from fragile.metrics import spearman, topk_intersection
from fragile.metrics.similarity import _rank_correlation, _ranks


def previous_spearman(a, b):
    """Spearman at commit dc907a6 (numpy argsort on CPU, gather, ties averaged in torch, scatter back)."""
    (ra, _), (rb, _) = _ranks(a.flatten(1).double()), _ranks(b.flatten(1).double())
    return _rank_correlation(ra, rb)


def stable_topk(a, b, k):
    top = lambda v: v.flatten(1).double().sort(dim=1, descending=True, stable=True).indices[:, :k]  # noqa: E731
    hit = torch.zeros_like(a.flatten(1), dtype=torch.bool).scatter_(1, top(a), True)
    return hit.gather(1, top(b)).double().mean(1)


def floor(a, b):
    if a.device.type == "cpu":
        np.argsort(a.flatten(1).numpy(), axis=1)
        np.argsort(b.flatten(1).numpy(), axis=1)
    else:
        a.flatten(1).argsort(dim=1)
        b.flatten(1).argsort(dim=1)


def scipy_loop(a, b):
    return [spearmanr(u.flatten().cpu().double().numpy(), v.flatten().cpu().double().numpy()).statistic
            for u, v in zip(a, b)]


def timed(fn, a, b, sync: bool, calls: int) -> float:
    """Seconds per call over ``calls`` calls: CPU time of this process on CPU (robust to other jobs on a shared
    machine; the metrics run at ``--threads``), wall time after a synchronize on CUDA."""
    clock = time.perf_counter if sync else time.process_time
    start = clock()
    for _ in range(calls):
        fn(a, b)
    if sync:
        torch.cuda.synchronize()
    return (clock() - start) / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--maps", type=int, default=32)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 112, 224])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sync = args.device.startswith("cuda")
    dtype = getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    floor_name = "numpy argsort of both batches" if args.device == "cpu" else "torch argsort of both batches"
    print(f"{args.maps} {args.dtype} map pairs per batch, {args.threads} thread(s), device {args.device}, "
          f"{args.repeats} interleaved repeats (median {'wall' if sync else 'process CPU'} ms; ratio to the floor = "
          f"{floor_name})")
    summary = []
    for size in args.sizes:
        k = min(1000, size * size // 4)
        for ties in (False, True):
            a, b = (torch.rand(args.maps, size, size, generator=gen, dtype=dtype) for _ in range(2))
            if ties:
                a, b = (a * 50).round(), (b * 50).round()
            a, b = a.to(args.device), b.to(args.device)
            assert np.allclose(spearman(a, b).cpu().numpy(), scipy_loop(a, b), rtol=0, atol=1e-12)
            assert torch.equal(topk_intersection(a, b, k).cpu(), stable_topk(a, b, k).cpu())
            variants = {"floor (argsort x2)": floor, "spearman": spearman, "spearman (previous)": previous_spearman,
                        f"top-{k} intersection": lambda u, v: topk_intersection(u, v, k)}  # noqa: B023
            if size <= 112:
                variants["scipy.spearmanr loop"] = scipy_loop
            calls = max(1, int(0.02 / timed(floor, a, b, sync, 1)))  # >= ~20 ms a timing: small maps loop
            times = {name: [] for name in variants}
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    times[name].append(timed(fn, a, b, sync, calls))
            med = {name: statistics.median(ts) for name, ts in times.items()}
            base = med["floor (argsort x2)"]
            print(f"\n{size}x{size}, {'tied (50 levels)' if ties else 'untied'}:")
            for name, m in med.items():
                print(f"  {name:24s} {m * 1e3:8.2f} ms   {m / base:5.2f}x floor")
            summary.append((size, ties, base, med["spearman"] / base, med["spearman (previous)"] / base,
                            med[f"top-{k} intersection"] / base))
    print("\nsize      ties        floor ms   spearman   previous   top-k")
    for size, ties, base, sp, prev, top in summary:
        print(f"{f'{size}x{size}':9s} {'50 levels' if ties else 'untied':10s} {base * 1e3:9.2f}  {sp:8.2f}x"
              f"  {prev:8.2f}x  {top:6.2f}x")


if __name__ == "__main__":
    main()
