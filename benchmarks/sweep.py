"""Sweep throughput on this machine, and how well a sweep uses the cores (issue 17.4; not run in CI).

Throughput: Ghorbani's CIFAR protocol (simple gradient, integrated gradients (M=100), DeepLIFT;
random-sign, top-k, mass-center attacks; eps 1, 2, 4, 8; 300 iterations; pretrained ResNet-20). A reduced
sweep (IMAGES images, ITERS iterations, one attack and eps per method) is timed; the full protocol on 512
images is projected from the measured images x iterations per second.

Cores: one small sweep (gradient on ResNet-20, top-k and mass-center, eps 4 and 8, IMAGES images in 2
batches: 8 units of ITERS iterations) run as
  - in-process with 1 and with 2 torch threads,
  - on a local Ray instance with 1 and with 2 workers (1 thread each),
  - on a simulated 2-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, 1 CPU a node),
    submitted with ``run_sweep(..., executor="ray", workers=2, ray_address=cluster.address)``,
the variants interleaved in each of REPEATS rounds (a variant 10x slower than in-process at 1 thread in
round 1 -- threads spinning on busy cores -- is not run again, so as not to hog a shared machine). Printed per
variant (medians over the rounds): wall time of ``run_sweep`` (Ray start-up and model loading included), units
/ s over that wall time, units / s over the span of the units (first unit's start to last unit's end, from the
store: start-up excluded), and the speed-ups 2 threads / 1 thread and 2 workers / 1 worker. For the cluster:
the units each node ran, and whether its result store equals the in-process one (every row and metric, timings
and unit names aside).

Usage: python benchmarks/sweep.py [--images 16] [--iters 10] [--repeats 3] [--cores-only]

Measured (2026-12-02, --cores-only --images 4 --iters 4 --repeats 3, 8 units; the 2 cores were shared with
the background ``fragile run`` at 1 thread and 3-4 other CPU-bound jobs, load average ~6, so every 2-way
figure is contended and says nothing of a quiet machine):

    variant                          wall s  units/s (wall)  units/s (span)  rounds  same rows as in-process
    in-process, 1 thread                5.6            1.42            1.57       3  True
    in-process, 2 threads             235.2            0.03            0.03       1  True
    ray local, 1 worker                15.9            0.50            1.57       3  True
    ray local, 2 workers               18.7            0.43            1.26       3  True
    ray cluster, 2 nodes x 1 CPU       12.3            0.65            1.30       3  True
    speed-up 2 threads / 1 thread (in-process): 0.02x wall, 0.02x span
    speed-up 2 workers / 1 worker (ray local): 0.85x wall, 0.81x span
    ray cluster, 2 nodes x 1 CPU: units per node 33d007a1: 4, 509f279c: 4

So on busy cores 2 OpenMP threads collapse (42x slower: each parallel region waits for a descheduled
thread; ``threads: auto`` picks 1 here), 2 Ray processes do not (they only share the cores: 0.8x, nothing
gained when the cores are already taken), and Ray start-up (~10 s locally) outweighs these short units. The
cluster's wall time excludes starting the cluster (done before the timer, as an existing cluster would be).

Measured on quiet cores (2026-12-02, --cores-only --images 8 --iters 10 --repeats 3, 4 units; every other
process of this machine stopped with SIGSTOP for the run, load average ~1.9 from the benchmark itself; the
header line's "shared" is printed always):

    variant                          wall s  units/s (wall)  units/s (span)  rounds  same rows as in-process
    in-process, 1 thread                3.0            1.34            1.44       3  True
    in-process, 2 threads               2.3            1.74            1.89       3  False (float rounding)
    ray local, 1 worker                 8.3            0.48            1.38       3  True
    ray local, 2 workers                6.8            0.59            2.03       3  True
    ray cluster, 2 nodes x 1 CPU        4.2            0.96            1.84       3  True
    speed-up 2 threads / 1 thread: 1.29x wall, 1.31x span; 2 workers / 1 worker: 1.22x wall, 1.47x span

On free cores both ways of using the second core gain (workers 1.47x over the units' span, threads 1.31x);
the units are short, so Ray's start-up still dominates its wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from fragile.experiments import config as config_mod
from fragile.experiments.runner import run_sweep
from fragile.experiments.store import Store

METHODS = ["gradient", {"name": "integrated_gradients", "steps": 100}, "deeplift"]
DROP = {"unit", "seconds", "arrays", "array_index"}  # what may differ between executors


def timed(cfg, **kw):
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        run_sweep(cfg, d, show_progress=False, log=lambda *a: None, **kw)
        return time.perf_counter() - t0


def throughput(args) -> None:
    full_units = 512 * 3 * 4 * 300  # images x attacks x eps x iterations, per method
    total = 0.0
    for method in METHODS:
        cfg = config_mod.resolve({"images": "cifar10:4", "limit": args.images, "methods": [method], "attacks": ["topk"],
                                  "eps": [8], "batch_size": args.images, "store_arrays": False,
                                  "attack_settings": {"steps": args.iters}})
        seconds = timed(cfg)
        rate = args.images * args.iters / seconds
        total += full_units / rate
        name = method if isinstance(method, str) else method["name"]
        print(f"{name:22s} {rate:8.1f} images x iterations / s  (in-process, threads: auto)")
    print(f"projected full Ghorbani CIFAR protocol (512 images, 3 methods x 3 attacks x 4 eps x 300 it.): "
          f"{total / 3600:.1f} h")


def rows_of(store_path) -> list[dict]:
    key = lambda r: (r["image"], r["attack"], r["eps"])  # noqa: E731
    with Store.open(store_path) as store:
        return [{k: v for k, v in r.items() if k not in DROP} for r in sorted(store.rows(), key=key)]


def unit_span(store_path) -> float:
    """Seconds from the first unit's start to the last unit's end (the store's finish times and durations)."""
    with Store.open(store_path) as store:
        done = store.conn.execute("SELECT finished, seconds FROM units").fetchall()
    return max(f for f, _ in done) - min(f - s for f, s in done)


def sweep_once(cfg, path, **kw) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = run_sweep(cfg, path, show_progress=False, log=lambda *a: None, **kw)
    return time.perf_counter() - t0, out


@contextlib.contextmanager
def two_node_cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def cores(args) -> None:
    base = {"images": "cifar10:4", "limit": args.images, "methods": ["gradient"], "attacks": ["topk", "mass_center"],
            "eps": [4, 8], "batch_size": args.images // 2, "store_arrays": False,
            "attack_settings": {"steps": args.iters}}
    one_thread, two_threads = (config_mod.resolve({**base, "threads": t}) for t in (1, 2))
    try:
        import ray  # noqa: F401

        have_ray = True
    except ImportError:
        have_ray = False
    variants = {"in-process, 1 thread": (one_thread, {}), "in-process, 2 threads": (two_threads, {})}
    if have_ray:
        variants["ray local, 1 worker"] = (one_thread, {"executor": "ray", "workers": 1})
        variants["ray local, 2 workers"] = (one_thread, {"executor": "ray", "workers": 2})
        variants["ray cluster, 2 nodes x 1 CPU"] = (one_thread, {"executor": "ray", "workers": 2, "cluster": True})
    wall = {name: [] for name in variants}
    span = {name: [] for name in variants}
    nodes, same = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        reference = None
        for rnd in range(args.repeats):
            for i, (name, (cfg, kw)) in enumerate(variants.items()):
                if rnd and wall[name][0] > 10 * wall["in-process, 1 thread"][0]:
                    continue  # a collapse (threads spinning on busy cores) is timed once, not hogged again
                path = Path(tmp) / f"{rnd}-{i}"
                kw = dict(kw)
                if kw.pop("cluster", False):
                    with two_node_cluster() as cluster:
                        seconds, out = sweep_once(cfg, path, ray_address=cluster.address, **kw)
                else:
                    seconds, out = sweep_once(cfg, path, **kw)
                wall[name].append(seconds)
                span[name].append(unit_span(path))
                rows = rows_of(path)
                reference = rows if reference is None else reference
                same[name] = same.get(name, True) and rows == reference
                if "nodes" in out:
                    nodes[name] = out["nodes"]
        units = out["units"]
    print(f"{units} units (gradient, top-k + mass-center, eps 4 and 8, {args.images} images in 2 batches, "
          f"{args.iters} iterations), {args.repeats} interleaved rounds, medians; 2 cores shared with other jobs")
    print(f"{'variant':30s} {'wall s':>8s} {'units/s (wall)':>15s} {'units/s (span)':>15s} {'rounds':>7s}  "
          "same rows as in-process")
    med = {name: (statistics.median(wall[name]), statistics.median(span[name])) for name in variants}
    for name, (w, s) in med.items():
        print(f"{name:30s} {w:8.1f} {units / w:15.2f} {units / s:15.2f} {len(wall[name]):7d}  {same[name]}")
    pairs = [("2 threads / 1 thread (in-process)", "in-process, 1 thread", "in-process, 2 threads"),
             ("2 workers / 1 worker (ray local)", "ray local, 1 worker", "ray local, 2 workers"),
             ("2-node cluster / 1 worker", "ray local, 1 worker", "ray cluster, 2 nodes x 1 CPU")]
    for label, a, b in pairs:
        if a in med and b in med:
            print(f"speed-up {label}: {med[a][0] / med[b][0]:.2f}x wall, {med[a][1] / med[b][1]:.2f}x span")
    print("(the cluster is started before its timer: its wall time has no Ray start-up, the local ones do)")
    for name, per_node in nodes.items():
        print(f"{name}: units per node (last round) " + ", ".join(f"{n[:8]}: {c}" for n, c in sorted(per_node.items())))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores-only", action="store_true", help="only the threads / workers / cluster comparison")
    args = ap.parse_args()
    if not args.cores_only:
        throughput(args)
    cores(args)


if __name__ == "__main__":
    main()
