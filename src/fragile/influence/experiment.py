"""Ghorbani et al. Fig. 4 on data available here: a binary task from two CIFAR-10 classes (JPEG test
set: 500 + 500 training images, 100 + 100 test images) on the frozen features of the pretrained
CIFAR ResNet-20 (64-d penultimate layer), logistic regression head, exact Hessian."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fragile.influence.attack import InfluenceModel, compare, influence_attack
from fragile.influence.logistic import fit_logistic
from fragile.metrics.statistics import Interval, bootstrap_ci, paired_difference_ci


class Penultimate(nn.Module):
    """The pooled features of a Preprocessed CifarResNet (everything but the last linear layer)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        """The 64-d pooled features of ``x: (N, 3, 32, 32)`` raw pixels in [0, 1]."""
        net = self.model[1]
        out = net.relu(net.bn1(net.conv1(self.model[0](x))))
        return net.flatten(net.pool(net.layer3(net.layer2(net.layer1(out)))))


def binary_task(classes=(0, 8), n_train: int = 500, n_test: int = 100):
    """Two CIFAR-10 classes (default airplane 0 and ship 8) from the JPEG test set relabelled 0 / 1:
    ``{"train": (x, y), "test": (x, y)}`` with ``n_train`` and ``n_test`` images per class.
    """
    from fragile.data import load_cifar10_jpeg

    x, y = load_cifar10_jpeg("test", per_class=n_train + n_test)
    parts = {"train": ([], []), "test": ([], [])}
    for new_label, c in enumerate(classes):
        xs = x[y == c]
        parts["train"][0].append(xs[:n_train])
        parts["test"][0].append(xs[n_train:n_train + n_test])
        parts["train"][1].append(torch.full((n_train,), new_label))
        parts["test"][1].append(torch.full((n_test,), new_label))
    return {k: (torch.cat(v[0]), torch.cat(v[1])) for k, v in parts.items()}


def _per_image(before: torch.Tensor, after: torch.Tensor, kept: torch.Tensor) -> dict[str, np.ndarray]:
    """Per test image ``(n,)``: Spearman of the influence vectors before / after, top-5 overlap (fraction) and
    top-3 survivors (count); NaN where the attack changed the label (a missing value, never a score)."""
    five, three = compare(before, after, k=5), compare(before, after, k=3)
    values = {"spearman": five["spearman"], "top5_overlap": five["top5_overlap"],
              "top3_survivors": three["top3_overlap"] * 3}
    out = {}
    for name, v in values.items():
        v = v.detach().double().cpu().numpy().copy()
        v[~kept.cpu().numpy()] = np.nan
        out[name] = v
    return out


def run_influence(out: str | Path, *, classes=(0, 8), eps_list=(1, 2, 4, 8), n_attack: int = 50, damping: float = 1e-3,
                  beta: float = 10.0, device: str = "cpu", log=print) -> dict:
    """Ghorbani Fig. 4: fit the head, attack up to ``n_attack`` correctly classified test images at each eps
    (pixel units of 255) with the gradient-sign attack and the random-sign baseline, and write
    ``influence.json`` and ``fig4_influence.png`` into ``out``; returns the numbers.

    Per eps and attack: the mean Spearman between each test image's influence vector (over the training
    images) before and after, the mean top-5 overlap and the mean number of top-3 survivors, each over the
    images that kept their label, with its 95% bootstrap interval (``*_ci``: ``[mean, low, high, n]``); and
    ``paired``: per image, gradient sign minus random sign, over the images both kept (negative = the attack
    changes the influences more than random noise of the same L-inf size).
    """
    from fragile.devices import resolve_device
    from fragile.models import create

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(device)
    model = create("resnet20_cifar10", pretrained=True).to(device)
    extractor = Penultimate(model).eval()
    data = binary_task(classes)
    (xtr, ytr), (xte, yte) = ((t.to(device) for t in data[k]) for k in ("train", "test"))
    with torch.no_grad():
        phi_tr = extractor(xtr).double()
    theta = fit_logistic(phi_tr, ytr, damping)
    im = InfluenceModel(extractor, phi_tr, ytr, theta, damping)
    acc = float((im.predict(xte) == yte).double().mean())
    log(f"logistic head on ResNet-20 features, classes {classes}: test accuracy {acc:.3f}")
    ok = (im.predict(xte) == yte).nonzero().flatten()[:n_attack]
    x, y = xte[ok], yte[ok]
    before = im.helpfulness(x, y)
    results = {"classes": list(classes), "train": len(xtr), "test": len(xte), "test_accuracy": acc, "damping": damping,
               "attacked": len(x), "surrogate_beta": beta, "eps": {}}
    for eps in eps_list:
        row, per_image = {}, {}
        for kind in ("gradient_sign", "random_sign"):
            x_adv, kept = influence_attack(im, x, y, eps=eps, beta=beta, random=kind == "random_sign")
            after = im.helpfulness(x_adv, y)
            values = _per_image(before, after, kept)
            per_image[kind] = values
            row[kind] = {"label_kept": int(kept.sum())}
            for name, v in values.items():
                ci = bootstrap_ci(v)
                row[kind][name], row[kind][f"{name}_ci"] = ci.mean, list(ci)[:4]
            if kind == "gradient_sign" and eps == max(eps_list):
                example = (x[0].cpu(), x_adv[0].cpu(), before[0].cpu(), after[0].cpu(), bool(kept[0]))
        row["paired"] = {f"{name}: gradient_sign - random_sign":
                         list(paired_difference_ci(per_image["gradient_sign"][name], per_image["random_sign"][name]))[:4]
                         for name in per_image["gradient_sign"]}
        results["eps"][str(eps)] = row
        log(f"eps {eps}: " + " | ".join(
            f"{kind}: Spearman {Interval(*row[kind]['spearman_ci']).text()}, top-5 overlap "
            f"{Interval(*row[kind]['top5_overlap_ci']).text()} (n = {row[kind]['label_kept']})"
            for kind in ("gradient_sign", "random_sign")))
    (out / "influence.json").write_text(json.dumps(results, indent=1))
    try:
        from fragile.reporting.influence import influence_figure

        influence_figure(example, xtr.cpu(), out / "fig4_influence.png", eps=max(eps_list))
    except ImportError as err:
        log(f"no figure: {err}")
    return results

