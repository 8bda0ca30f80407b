"""Tutorial 3: reproduce a paper figure at a tiny size (Ghorbani et al. Fig. 3 on CIFAR-10).

Run it:  python docs/tutorials/reproduce_a_figure.py          (a few minutes on 2 CPU cores)
         python docs/tutorials/reproduce_a_figure.py --small  (seconds; what CI runs)

The same experiment on the command line:  fragile run ghorbani-fig3-cifar --reduced --set limit=8 ...
It writes fig3_spearman.png, fig3_topk.png and fig3_summary.txt into docs/tutorials/figures/ (or --out).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from fragile.experiments import registry
from fragile.experiments.kinds import run_named

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--small", action="store_true", help="tiny sizes (a smoke test, numbers mean little)")
p.add_argument("--out", type=Path, default=Path(__file__).parent / "figures", help="where figures and text go")
args = p.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

NAME = "ghorbani-fig3-cifar"       # `fragile run --list` shows every shipped experiment
kind, body, meta = registry.prepare(NAME)
print(f"{NAME} ({kind}): {meta['description']}")
print(f"the paper's claim: {meta['paper']}")
print(f"paper size: {body['limit']} images, {body['attack_settings']['steps']} iterations, eps {body['eps']}")

# --reduced is the size that fits a 2-core CPU; on top of it we shrink further with overrides, exactly what
# `fragile run NAME --reduced --set key=value` does (dotted keys reach into mappings).
overrides = {"images": "cifar10:20", "limit": 8, "attack_settings.steps": 10, "eps": [1, 2, 4, 8],
             "methods": ["gradient", {"name": "integrated_gradients", "steps": 5}, "deeplift"]}
if args.small:
    overrides.update({"limit": 3, "attack_settings.steps": 3, "eps": [2, 8], "methods": ["gradient", "deeplift"]})

with tempfile.TemporaryDirectory() as tmp:
    # A result store: a rerun with the same settings resumes and skips the finished units.
    out = run_named(NAME, Path(tmp) / NAME, reduced=True, overrides=overrides, quiet=True, log=lambda *a: None,
                    command="python docs/tutorials/reproduce_a_figure.py" + (" --small" if args.small else ""))
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    print("figures redrawn from our numbers:", ", ".join(figures))
    shutil.copy(out / "figures" / "spearman_vs_eps.png", args.out / "fig3_spearman.png")
    topk = next(f for f in figures if f.startswith("top") and f.endswith("_vs_eps.png"))   # e.g. top100_..._vs_eps
    shutil.copy(out / "figures" / topk, args.out / "fig3_topk.png")
    summary = (out / "summary.md").read_text()     # the command, wall time, the claim beside our numbers

# summary.md links its figures relative to the run folder; here only the text is kept.
text = "\n".join(line for line in summary.splitlines() if "](" not in line)
(args.out / "fig3_summary.txt").write_text(text.replace(tmp, "runs").strip() + "\n")
print(text)
