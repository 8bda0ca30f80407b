"""Tutorial 4: train with SSR (Wang et al.'s Smooth Surface Regularization) and compare with natural training.

Run it:  python docs/tutorials/train_with_ssr.py          (a few minutes on 2 CPU cores)
         python docs/tutorials/train_with_ssr.py --small  (seconds; what CI runs)

The same training on the command line:
    fragile train --arch lenet_fashion_mnist --data fashion-mnist --regularizer ssr --param alpha=0.3 ...
It writes ssr_comparison.png and ssr_output.txt into docs/tutorials/figures/ (or --out).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from fragile import attacks
from fragile.data.training_sets import training_data
from fragile.defenses.training import train
from fragile.explanations import create
from fragile.geometry import ssr_top_eigenvalue
from fragile.models import create as create_model
from fragile.reporting.training import training_comparison_figure

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--small", action="store_true", help="tiny sizes (a smoke test, numbers mean little)")
p.add_argument("--out", type=Path, default=Path(__file__).parent / "figures", help="where figures and text go")
args = p.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
n_train, epochs, n_attack, steps, eps_list = (256, 1, 4, 4, [4, 16]) if args.small else (3000, 2, 16, 20, [2, 4, 8, 16])
lines = []


def say(text: str) -> None:
    print(text)
    lines.append(text)


# Fashion-MNIST (Debian's dataset-fashion-mnist): a class-balanced prefix of the training set, 1,000 test images.
(x, y), (xt, yt) = training_data("fashion-mnist", limit=n_train)
xt, yt = xt[:1000], yt[:1000]
say(f"training on {len(x)} images {tuple(x.shape[1:])}, testing on {len(xt)}")

# Each entry is a regulariser of fragile.defenses.regularizers with its parameters. SSR adds
# alpha * s * lambda_max(J^T (diag p - p p^T) J), the top eigenvalue of the closed-form input Hessian of the
# loss (Wang Def. 7); s = 1e6 on 0-255 pixels is the paper's setting (pixel_range=255).
regularizers = {"natural": ("ce", {}), "SSR": ("ssr", {"alpha": 0.3, "scale": 1e6, "pixel_range": 255})}
results = {"models": {}}
with tempfile.TemporaryDirectory() as tmp:
    for name, (reg, params) in regularizers.items():
        torch.manual_seed(0)                                   # the same initial weights for both
        model = create_model("lenet_fashion_mnist")            # untrained LeNet, raw pixels in [0, 1]
        history = train(model, arch="lenet_fashion_mnist", train_data=(x, y), test_data=(xt, yt), out=Path(tmp) / name,
                        epochs=epochs, batch_size=64, lr=2e-3, regularizer=reg, regularizer_params=params,
                        log=lambda *a: None)["history"]
        # Attack the gradient maps of correctly classified test images: the top-k attack, as Wang Fig. 4.
        with torch.no_grad():
            ok = model(xt[:200]).argmax(1) == yt[:200]
        xs = xt[:200][ok][:n_attack]
        sweep = attacks.run(model, create("gradient", model), xs, attacks.create("topk", k=20), eps=eps_list,
                            steps=steps, step_size=0.5)
        per_eps = {f"{e:g}": r.summary() for e, r in zip(eps_list, sweep)}
        curvature = float(ssr_top_eigenvalue(model, xs).detach().mean())   # what SSR penalises, on the attacked images
        results["models"][name] = {"test_accuracy": history[-1]["test_accuracy"], "per_eps": per_eps,
                                   "seconds_per_epoch": sum(h["seconds"] for h in history) / len(history)}
        worst = per_eps[f"{eps_list[-1]:g}"]
        say(f"{name:8s} accuracy {history[-1]['test_accuracy']:.3f}, {results['models'][name]['seconds_per_epoch']:.1f} "
            f"s/epoch, lambda_max {curvature:.3g}; at eps {eps_list[-1]}: Spearman {worst['spearman']:.3f} "
            f"[{worst['spearman_ci'][0]:.3f}, {worst['spearman_ci'][1]:.3f}], top-20 {worst['top20_intersection']:.3f} "
            f"(n = {worst['successes']}/{worst['images']})")

training_comparison_figure(results, args.out / "ssr_comparison.png")
(args.out / "ssr_output.txt").write_text("\n".join(lines) + "\n")
print(f"wrote {args.out / 'ssr_comparison.png'}")
