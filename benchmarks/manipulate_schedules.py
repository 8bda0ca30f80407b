"""Fewer iterations to the paper's manipulate quality (issue 17.2): Adam step-size schedules against Dombrowski et
al.'s setting (Adam, lr 2e-4 normalised = 0.0115 pixel units of 255, softplus beta 10 -> 100, 1,500 iterations)
on the pretrained SqueezeNet v1.0 at 227x227.

    python benchmarks/manipulate_schedules.py [--images 2] [--paper-steps 1500] [--fractions 5 10]
        [--rules adam_cosine adam_plateau] [--lr-scale 4] [--constant] [--threads 1] [--out curves.json]
        [--reuse curves.json]

Manipulate attack (map weight 1e11, output weight 1e6, output tolerance 0.05, eps 255 = only the data range) of
the gradient maps toward the next image's map (the sweep runner's target). Prints per setting the iterations,
the wall time, the final PCC / SSIM / MSE of the attacked map to the target and the output change (means with
their 95% bootstrap intervals over the images), the fraction of the paper setting's effect (the gain in PCC to
the target over the clean map's), and the iteration at which the setting first reaches the paper setting's
final PCC; then the quality-vs-iterations curves (the best qualifying iterate's PCC to the target after each
tenth of the budget, recorded from the loop's own evaluations on the original model). Every iteration costs the
same (one gradient of the objective on the surrogate, one evaluation on the model), so iterations are time.

A schedule with T = paper_steps / f iterations starts at lr_0 = lr_scale * 0.0115 * f (its steps then sum, for
the cosine, to lr_scale / 2 times the paper's total step length); ``--constant`` adds constant Adam at lr_0
(the larger step without its schedule; the paper's lr for T iterations is the paper's own curve at T). The paper
setting is the expensive part: ``--out`` writes every setting's curves and metrics to JSON (after each
setting), ``--reuse`` reads the rows of such a file (same images and seed; a row's name fixes its rule,
iterations and lr) instead of recomputing them.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from fragile import attacks
from fragile.attacks.objectives import Manipulate
from fragile.data import load_images
from fragile.explanations import create
from fragile.metrics import bootstrap_ci, mse, pcc, ssim
from fragile.models import create as create_model

PAPER_LR = 0.0115  # Dombrowski's Adam lr 2e-4 on normalised inputs, in pixel units of 255 (x 0.226 x 255)
METRICS = ("target_pcc", "target_ssim", "target_mse", "output_change")


class RecordedManipulate(Manipulate):
    """Manipulate whose evaluations on the original model (the loop calls ``loss`` without a graph there) are
    recorded: per call the loss, whether the iterate qualifies (label kept, output within tolerance) and the
    PCC / SSIM / MSE of the map to the target and the softmax. Call 0 is the clean image, call t + 1 iteration t."""

    def __init__(self, target_map, **kwargs):
        super().__init__(target_map, **kwargs)
        self.records = []

    def loss(self, sal, p, state):
        """The manipulate loss, recorded when evaluated without a graph."""
        out = super().loss(sal, p, state)
        if not torch.is_grad_enabled():
            p0, t = state["p0"], state["target"]
            ok = (p.argmax(1) == p0.argmax(1)) & ((p - p0).abs().amax(1) <= self.output_tol)
            self.records.append({"loss": out.double(), "ok": ok, "target_pcc": pcc(sal, t).double(),
                                 "target_ssim": ssim(sal, t).double(), "target_mse": mse(sal, t).double(),
                                 "p": p.detach().clone()})
        return out


def best_so_far_curve(records: list[dict], iterations: int, metric: str = "target_pcc") -> torch.Tensor:
    """(iterations + 1, N): ``metric`` of the best qualifying iterate after each iteration (row 0: clean)."""
    clean = records[0][metric]
    best_loss = torch.full_like(clean, float("inf"))
    value, rows = clean.clone(), [clean.clone()]
    for rec in records[1:iterations + 1]:
        better = rec["ok"] & (rec["loss"] < best_loss)
        best_loss = torch.where(better, rec["loss"], best_loss)
        value = torch.where(better, rec[metric], value)
        rows.append(value.clone())
    return torch.stack(rows)


def run_setting(model, ex, x, target, **settings) -> dict:
    """One attack run -> its metrics, curve of PCC to the target, seconds and iterations (JSON-ready)."""
    objective = RecordedManipulate(target)
    start = time.perf_counter()
    r = attacks.run(model, ex, x, objective, eps=255, beta=(10, 100), **settings)
    seconds = time.perf_counter() - start
    iterations = r.settings["iterations"]
    curve = best_so_far_curve(objective.records, iterations)
    return {"settings": settings, "iterations": iterations, "seconds": seconds,
            "success": r.success.tolist(), "pcc_before": r.metrics["target_pcc_before"].tolist(),
            "metrics": {m: r.metrics[m].tolist() for m in METRICS}, "curve": curve.mean(1).tolist()}


def first_reaching(curve: list[float], level: float) -> int | None:
    """The first iteration whose best-so-far mean PCC reaches ``level`` (None: never)."""
    return next((t for t, v in enumerate(curve) if v >= level), None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--paper-steps", type=int, default=1500)
    ap.add_argument("--fractions", type=int, nargs="*", default=[5, 10])
    ap.add_argument("--rules", nargs="*", default=["adam_cosine", "adam_plateau"])
    ap.add_argument("--lr-scale", type=float, nargs="+", default=[4.0],
                    help="lr_0 = lr_scale * 0.0115 * f for a schedule of paper_steps / f iterations")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write every setting's metrics and curves to this JSON file")
    ap.add_argument("--constant", action="store_true", help="also constant Adam at each schedule's lr_0")
    ap.add_argument("--reuse", help="read the rows present in this JSON file (written by --out) instead of running them")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the softplus")
    model = create_model("squeezenet1_0_imagenet", pretrained=True).eval()
    x, _ = load_images(f"imagenet:{args.images}", size=model.input_size)
    ex = create("gradient", model)
    target = attacks.saliency(ex.attribute(x.roll(1, 0)))  # the next image's map, as the sweep runner
    print(f"{len(x)} ImageNet sample images at {tuple(x.shape[-2:])}, SqueezeNet v1.0, gradient maps, "
          f"manipulate toward the next image's map, beta 10 -> 100, eps 255, {args.threads} thread(s)")

    paper_name = f"paper: adam {args.paper_steps} x {PAPER_LR}"
    settings = [(paper_name, {"step": "adam", "steps": args.paper_steps, "lr": PAPER_LR})]
    for f in args.fractions:
        steps = args.paper_steps // f
        for scale in args.lr_scale:
            lr = scale * PAPER_LR * f
            for rule in args.rules + (["adam"] if args.constant else []):
                settings.append((f"{rule} {steps} x {lr:.3g}", {"step": rule, "steps": steps, "lr": lr}))
    reused = {}
    if args.reuse:
        with open(args.reuse) as f:
            reused = json.load(f)
    rows = {}
    for name, s in settings:
        if name in reused:
            print(f"(row {name!r} read from {args.reuse})")
        rows[name] = reused[name] if name in reused else run_setting(model, ex, x, target, **s)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(rows, f)

    paper = rows[paper_name]
    before = sum(paper["pcc_before"]) / len(paper["pcc_before"])
    paper_pcc = bootstrap_ci(torch.tensor(paper["metrics"]["target_pcc"])).mean
    print(f"\nclean maps: mean PCC to the target {before:.3f}; paper's final PCC {paper_pcc:.3f}")
    print(f"{'setting':28s} {'it':>5s} {'s':>7s}  " + "  ".join(f"{m:>30s}" for m in METRICS)
          + "  effect  reaches paper PCC at")
    for name, row in rows.items():
        cis = [bootstrap_ci(torch.tensor(row["metrics"][m])) for m in METRICS]
        texts = [ci.text(".2e" if m in ("target_mse", "output_change") else ".3f") for ci, m in zip(cis, METRICS)]
        effect = (cis[0].mean - before) / (paper_pcc - before)
        reach = first_reaching(row["curve"], paper_pcc)
        print(f"{name:28s} {row['iterations']:5d} {row['seconds']:7.0f}  " + "  ".join(f"{t:>30s}" for t in texts)
              + f"  {effect:6.1%}  {'-' if reach is None else reach:>6}  ({sum(row['success'])}/{len(x)} ok)")

    print("\nquality vs iterations: mean PCC to the target of the best qualifying iterate after each tenth of the budget")
    for name, row in rows.items():
        n = row["iterations"]
        points = [round(i * n / 10) for i in range(11)]
        print(f"{name:28s} " + " ".join(f"{row['curve'][p]:.3f}@{p}" for p in points))


if __name__ == "__main__":
    main()
