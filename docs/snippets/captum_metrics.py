"""Pass captum attributions into fragile's metrics, and measure how a fragile attack moves captum's maps.

Run it:  python docs/snippets/captum_metrics.py   (seconds; tests/test_tutorials.py runs it in CI)
"""

from __future__ import annotations

import torch
from captum.attr import IntegratedGradients, Saliency

from fragile import attacks
from fragile.data import load_foolbox_samples
from fragile.explanations import create
from fragile.metrics import spearman, topk_intersection
from fragile.models import create as create_model

model = create_model("resnet20_cifar10", pretrained=True)     # raw pixels in [0, 1]; any nn.Module works
x, _ = load_foolbox_samples("cifar10")
x = x[:4]
with torch.no_grad():
    target = model(x).argmax(1)

# captum returns a tensor shaped like the input, (N, C, H, W); fragile's metrics take batched tensors
# (N, ...) -> (N,). attacks.saliency turns a map into the (N, H, W) saliency the attacks work on:
# sum over channels of |h|, normalised to sum 1 per image.
h_captum = Saliency(model).attribute(x, target=target, abs=False)
h_fragile = create("gradient", model).attribute(x, target=target)
rho = spearman(attacks.saliency(h_captum), attacks.saliency(h_fragile))
print(f"captum Saliency vs fragile gradient: Spearman {rho.tolist()}")      # 1.0 per image: the same map
assert torch.allclose(rho, torch.ones_like(rho))

# Attacks need d map / d x (a second derivative), which captum's attributions do not give: attack fragile's
# gradient map, then look at what the perturbed images do to captum's integrated gradients (a transfer).
result = attacks.run(model, create("gradient", model), x, "topk", eps=8, steps=10)
ig = IntegratedGradients(model)
before = attacks.saliency(ig.attribute(x, target=target, n_steps=16))
after = attacks.saliency(ig.attribute(result.x_adv, target=target, n_steps=16))
print(f"captum IG after a top-k attack on the gradient (eps 8/255): Spearman {spearman(before, after).mean():.3f}, "
      f"top-100 intersection {topk_intersection(before, after, k=100).mean():.3f}")
