"""Tutorial 2: attack an explanation and look at it.

Run it:  python docs/tutorials/attack_an_explanation.py          (about a minute on 2 CPU cores)
         python docs/tutorials/attack_an_explanation.py --small  (seconds; what CI runs)

It writes attack_topk.png, attack_manipulate.png and attack_output.txt into docs/tutorials/figures/ (or --out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fragile import attacks
from fragile.data import load_foolbox_samples
from fragile.explanations import create
from fragile.models import create as create_model
from fragile.reporting import attack_panel

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--small", action="store_true", help="tiny sizes (a smoke test, numbers mean little)")
p.add_argument("--out", type=Path, default=Path(__file__).parent / "figures", help="where figures and text go")
args = p.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
n_images, steps = (2, 5) if args.small else (4, 60)
lines = []


def say(text: str) -> None:
    print(text)
    lines.append(text)


# A fragile model takes raw pixels in [0, 1] and carries its own normalisation and class names.
model = create_model("resnet20_cifar10", pretrained=True)
x, _ = load_foolbox_samples("cifar10")
x = x[:n_images]

# --- 1. The explanation: a differentiable function of the input. ---------------------------------------------
explainer = create("gradient", model)              # d logit_c / d x for the predicted class c
h = explainer.attribute(x)                          # (N, C, H, W), the shape of x
sal = attacks.saliency(h)                           # (N, H, W): sum_c |h_c|, normalised to sum 1
say(f"map {tuple(h.shape)} -> saliency {tuple(sal.shape)}, each sums to {float(sal[0].sum()):.3f}")

# --- 2. Ghorbani's top-k attack: push the most salient pixels' mass elsewhere, keep the label. ---------------
# eps and step_size are in pixel units of 255: eps=8 lets every pixel move by at most 8/255.
topk = attacks.run(model, explainer, x, "topk", eps=8, steps=steps, step_size=0.5)
s = topk.summary()
say(f"top-k attack, eps 8: {s['successes']}/{s['images']} images kept their label")
say(f"  {topk.settings['beta_note']}")          # which softplus surrogate beta="auto" chose, and why
say(f"  Spearman of the map before vs after: {s['spearman']:.3f} (95% CI [{s['spearman_ci'][0]:.3f}, "
    f"{s['spearman_ci'][1]:.3f}]); top-{topk.settings.get('k', 100)} intersection: "
    f"{s[next(k for k in s if k.endswith('_intersection') and not k.endswith('_ci'))]:.3f}")
say(f"  largest pixel change {255 * float((topk.x_adv - topk.x).abs().max()):.1f}/255; "
    f"images still improving at the last iteration (not converged): {topk.not_converged}")
attack_panel(topk, args.out / "attack_topk.png", n=n_images, class_names=model.class_names)

# --- 3. A baseline: one random +-eps draw per image. The iterative attack should be far stronger. -----------
rand = attacks.run(model, explainer, x, "random_sign", eps=8)
say(f"random sign, eps 8: Spearman {rand.summary()['spearman']:.3f} (vs {s['spearman']:.3f} under top-k)")

# --- 4. Dombrowski's manipulation: make image i's map look like image i-1's, output nearly unchanged. -------
target = attacks.saliency(explainer.attribute(x.roll(1, 0)))     # another image's map as the target
manip = attacks.run(model, explainer, x, attacks.create("manipulate", target_map=target), eps=255,
                    step="adam", lr=0.05, steps=steps if args.small else 4 * steps, beta=(10, 100))
m = manip.summary()
say(f"manipulate: {m['successes']}/{m['images']} kept their label; PCC with the target map "
    f"{m['target_pcc_before']:.2f} -> {m['target_pcc']:.2f}; image SSIM {m['image_ssim']:.4f}; "
    f"largest softmax change {m['output_change']:.4f}")

# Look at it: original map, target, manipulated map (the maps are (N, H, W) tensors).
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

columns = {"image": x, "its map": manip.maps, "target (another image's map)": target,
           "map after manipulation": manip.maps_adv, "manipulated image": manip.x_adv}
fig, axes = plt.subplots(n_images, len(columns), figsize=(2 * len(columns), 2 * n_images), squeeze=False)
for j, (title, images) in enumerate(columns.items()):
    for i in range(n_images):
        img = images[i].detach()
        axes[i, j].imshow(img.permute(1, 2, 0).clamp(0, 1).numpy() if img.dim() == 3 else img.numpy(),
                          cmap=None if img.dim() == 3 else "inferno")
        axes[i, j].axis("off")
    axes[0, j].set_title(title, fontsize=8)
fig.tight_layout()
fig.savefig(args.out / "attack_manipulate.png", dpi=110)

# Everything is a tensor you can keep working with: topk.x_adv (N, C, H, W), topk.maps / topk.maps_adv (N, H, W),
# topk.metrics[name] (N,), topk.success (N,), topk.reasons (why an image failed), topk.rows() (one dict per image).
assert topk.x_adv.shape == x.shape and topk.maps_adv.shape == sal.shape
(args.out / "attack_output.txt").write_text("\n".join(lines) + "\n")
print(f"wrote {args.out / 'attack_topk.png'} and {args.out / 'attack_manipulate.png'}")
