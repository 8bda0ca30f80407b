"""Memory and time of an integrated-gradients attack iteration: one pass vs two-pass replay (not run in CI).

SqueezeNet 1.0 (random weights: memory and time do not depend on them), one 224x224 image, IG with
M in {20, 50, 100} path points, one top-k attack iteration (``attacks.run(..., steps=1)``: the clean map,
one gradient through the softplus(10) surrogate's map, the check on the original model, the final maps).

- peak RSS (VmHWM) of a fresh subprocess per setting, and its RSS before the attack (torch + model):
  ``before``   one pass, ``batch_size=256`` (the old default: all M points of the image in one chunk);
  ``chunked``  one pass, ``batch_size="auto"`` (5 points per chunk at 224x224, every chunk's graph kept);
  ``replay``   two-pass, ``batch_size="auto"`` (the default now: one chunk's graph at a time);
- time of the attack's gradient (map with graph, loss, d loss / dx) per setting, interleaved repeats in
  one subprocess, medians, as ratios to ``before``.

Usage: python benchmarks/ig_memory.py [--steps 20 50 100] [--repeats 3] [--size 224] [--threads 1]
A setting whose projected peak exceeds the memory available is skipped (printed as such).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODES = {"before": {"replay": False, "batch_size": 256}, "chunked": {"replay": False, "batch_size": "auto"},
         "replay": {"replay": True, "batch_size": "auto"}}


def _setup(size: int, threads: int):
    import warnings

    import torch

    from fragile.models.imagenet import squeezenet_v1_0

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = squeezenet_v1_0(pretrained=False).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    return model, x


def _explainer(model, steps: int, mode: str):
    from fragile.explanations import create

    return create("integrated_gradients", model, steps=steps, **MODES[mode])


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmHWM: peak resident set, VmRSS: now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def child_memory(steps: int, mode: str, size: int, threads: int) -> dict:
    from fragile import attacks

    model, x = _setup(size, threads)
    ex = _explainer(model, steps, mode)
    rss0 = _status("VmRSS")
    t0 = time.perf_counter()
    attacks.run(model, ex, x, "topk", eps=8, steps=1, beta=10.0)
    return {"rss_before": rss0, "peak": _status("VmHWM"), "seconds": time.perf_counter() - t0}


def child_time(steps: int, size: int, threads: int, repeats: int) -> dict:
    import torch

    from fragile.attacks import saliency
    from fragile.attacks.objectives import TopK

    model, x = _setup(size, threads)
    t = torch.tensor([0])
    sal0 = saliency(_explainer(model, steps, "replay").attribute(x, target=t))
    state = TopK().prepare(sal0, None)

    def gradient(ex):
        xa = x.clone().requires_grad_(True)
        loss = TopK().loss(saliency(ex.surrogate(10.0).attribute(xa, target=t, create_graph=True)), None, state)
        return torch.autograd.grad(loss.sum(), xa)[0]

    explainers = {mode: _explainer(model, steps, mode) for mode in MODES}
    grads = {mode: gradient(ex) for mode, ex in explainers.items()}  # warm-up, and the gradients agree
    diff = max(float((grads[m] - grads["before"]).abs().max()) for m in MODES)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(repeats):
        for mode, ex in explainers.items():
            t0 = time.perf_counter()
            gradient(ex)
            times[mode].append(time.perf_counter() - t0)
    return {"median": {m: statistics.median(v) for m, v in times.items()}, "max_grad_diff": diff,
            "grad_scale": float(grads["before"].abs().max())}


def _run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs="+")
    args = ap.parse_args()
    if args.child:
        kind, steps, *rest = args.child
        if kind == "memory":
            result = child_memory(int(steps), rest[0], args.size, args.threads)
        else:
            result = child_time(int(steps), args.size, args.threads, args.repeats)
        print(json.dumps(result))
        return

    gb = 1e9
    print(f"SqueezeNet 1.0, one {args.size}x{args.size} image, one top-k attack iteration, {args.threads} thread(s)")
    print(f"{'M':>4} {'mode':>8} {'RSS before GB':>14} {'peak GB':>8} {'attack s':>9}")
    peaks: dict[str, list[tuple[int, float]]] = {m: [] for m in MODES}
    for steps in args.steps:
        for mode in MODES:
            seen = peaks[mode]
            projected = seen[-1][1] * steps / seen[-1][0] if seen else 0.0
            if projected > 0.8 * _available():
                print(f"{steps:>4} {mode:>8}   skipped: projected peak {projected / gb:.1f} GB > 80% of the "
                      f"{_available() / gb:.1f} GB available")
                continue
            r = _run_child(["memory", str(steps), mode, "--size", str(args.size), "--threads", str(args.threads)])
            seen.append((steps, r["peak"]))
            print(f"{steps:>4} {mode:>8} {r['rss_before'] / gb:>14.2f} {r['peak'] / gb:>8.2f} {r['seconds']:>9.1f}",
                  flush=True)
    print(f"\ntime of the attack's gradient through the map, median of {args.repeats} interleaved repeats")
    print(f"{'M':>4} " + " ".join(f"{m + ' s':>10}" for m in MODES) + f" {'chunked/before':>15} {'replay/before':>14}"
          f" {'replay/chunked':>15} {'max |grad diff|':>16}")
    for steps in args.steps:
        if any(s == steps for s, _ in peaks["before"]):
            r = _run_child(["time", str(steps), "--size", str(args.size), "--threads", str(args.threads),
                            "--repeats", str(args.repeats)])
            med = r["median"]
            print(f"{steps:>4} " + " ".join(f"{med[m]:>10.2f}" for m in MODES)
                  + f" {med['chunked'] / med['before']:>15.2f} {med['replay'] / med['before']:>14.2f}"
                  f" {med['replay'] / med['chunked']:>15.2f} {r['max_grad_diff']:>9.1e} of {r['grad_scale']:.1e}",
                  flush=True)
        else:
            print(f"{steps:>4}   skipped (the one-pass setting did not fit in memory)")


if __name__ == "__main__":
    main()
