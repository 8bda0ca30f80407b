"""Tutorial 1: audit the saliency maps of your own model.

Run it:  python docs/tutorials/audit_your_model.py          (a few minutes on 2 CPU cores)
         python docs/tutorials/audit_your_model.py --small  (seconds; what CI runs)

It writes audit_spearman.png and audit_output.txt into docs/tutorials/figures/ (or --out).
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

import torch

import fragile
from fragile.data import load_foolbox_samples
from fragile.metrics import topk_names
from fragile.models import create

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--small", action="store_true", help="tiny sizes (a smoke test, numbers mean little)")
p.add_argument("--out", type=Path, default=Path(__file__).parent / "figures", help="where figures and text go")
args = p.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

# --- 1. Your model: any nn.Module in eval mode that takes (N, C, H, W). --------------------------------------
# Here we stand in for "your model" with a CIFAR-10 ResNet-20 as a training script leaves it: a plain
# nn.Module that expects *normalised* inputs (x - mean) / std. (We take it out of fragile's wrapper so the
# example runs offline; replace these two lines by your own network and its state_dict.)
net = create("resnet20_cifar10", pretrained=True)[1]      # the bare CifarResNet
net.eval()
mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]   # what it was trained with
classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# --- 2. Your images: raw pixels in [0, 1], shape (N, C, H, W), with their true labels. -------------------------
# fragile normalises them itself (mean/std below), so eps stays in pixel units of 255.
x, labels = load_foolbox_samples("cifar10")                # 20 CIFAR-10 test images shipped with foolbox
print(f"images {tuple(x.shape)}, pixel range [{x.min():.2f}, {x.max():.2f}]")

# --- 3. One call. ----------------------------------------------------------------------------------------------
if args.small:    # a smoke test: one method, 4 images, a fixed surrogate (skips the beta probe), tiny checks
    settings = {"methods": ["gradient"], "attacks": ["random_sign", "topk"], "eps": [8], "steps": 3, "limit": 4,
                "attack_settings": {"beta": 10.0},
                "checks": {"images": 2, "samples": 2, "scales": [1.0], "sanity_groups": 2}}
else:             # the audit's methods and attacks at fewer images and iterations than `fragile audit`
    settings = {"methods": ["gradient", {"name": "integrated_gradients", "steps": 8}, {"name": "smoothgrad", "samples": 6}],
                "attacks": ["random_sign", "topk", "mass_center"], "eps": [2, 4, 8], "steps": 10, "limit": 8}
torch.manual_seed(0)
result = fragile.audit(net, (x, labels), mean=mean, std=std, classes=classes, log=None, **settings)
print(result)      # images covered; what the attacks did (iterations, surrogate beta, convergence); the verdict:
                   # robustness, faithfulness and sanity per method with 95% CIs, the ranking and the caveats

# --- 4. The numbers behind the verdict: one row per image x method x attack x eps. -----------------------------
rows = result.rows
topk = topk_names(rows.columns)[0]          # the top-k intersection column, e.g. "top100_intersection"
print(rows[["image_id", "method", "attack", "eps", "success", "spearman", topk]].head(8).to_string())
table = (rows.groupby(["method", "attack", "eps"])["spearman"]
         .agg(["mean", "count"]).rename(columns={"count": "successes"}))
print(table.round(3).to_string())     # failed images (success == 0) have NaN metrics: not counted

# --- 5. A figure: Spearman rank correlation of each map with its attacked version, per eps. ------------------
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

attacks = sorted(rows.attack.unique())
fig, axes = plt.subplots(1, len(attacks), figsize=(3.2 * len(attacks), 2.8), sharey=True, squeeze=False)
for ax, attack in zip(axes[0], attacks):
    for method, part in rows[rows.attack == attack].groupby("method"):
        means = part.groupby("eps")["spearman"].mean()
        ax.plot(means.index, means.values, marker="o", label=method)
    ax.set_title(attack, fontsize=9)
    ax.set_xlabel("eps (of 255)")
axes[0, 0].set_ylabel("Spearman (map vs attacked map)")
axes[0, -1].legend(fontsize=7)
fig.tight_layout()
fig.savefig(args.out / "audit_spearman.png", dpi=110)
summary = "\n".join(textwrap.fill(line, 110) for line in str(result).splitlines())   # wrapped for the docs page
(args.out / "audit_output.txt").write_text(f"{summary}\n\n{table.round(3).to_string()}\n")
print(f"wrote {args.out / 'audit_spearman.png'}")
