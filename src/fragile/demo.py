"""``fragile demo``: explain a pretrained CIFAR-10 ResNet-20 with every method, and see how much each
map changes under random sign noise of 8/255 (Ghorbani's baseline perturbation)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from fragile.data import load_cifar10_jpeg, load_foolbox_samples
from fragile.explanations import available, create, estimate_patterns, reduce_channels
from fragile.metrics import spearman, topk_intersection
from fragile.models import create as create_model
from fragile.models.outputs import model_output


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_demo(out: str | Path = "demo-output", device: str = "cpu", eps: float = 8 / 255, k: int = 100) -> dict:
    """``fragile demo``: every explanation method on the pretrained CIFAR-10 ResNet-20 and the 20 foolbox samples.

    Per method: its time relative to one forward + backward pass, and the mean Spearman correlation and top-``k``
    intersection between the maps of the images and of the images plus random sign noise of ``eps`` (in the
    [0, 1] data range: 8/255 by default; Ghorbani's baseline perturbation), maps reduced over channels. Writes
    ``results.json`` and ``maps.png`` (four images' maps) to ``out`` and returns the results dict.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_model("resnet20_cifar10", pretrained=True).to(device)
    x, labels = load_foolbox_samples("cifar10")
    x, labels = x.to(device), labels.to(device)
    with torch.no_grad():
        pred = model_output(model, x).argmax(1)
    print(f"ResNet-20 on the 20 lossless CIFAR-10 foolbox samples: {int((pred == labels).sum())}/20 correct")
    ref, _ = load_cifar10_jpeg("test", per_class=20)
    patterns = estimate_patterns(model, ref.to(device))
    noise = eps * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).to(device)
    x_noisy = (x + noise).clamp(0, 1)
    params = {"pattern_attribution": {"patterns": patterns}}
    (_, t_fb) = _timed(lambda: torch.autograd.grad(model_output(model, x.clone().requires_grad_()).gather(1, pred[:, None]).sum(),
                                                    model.parameters().__next__()))
    rows, maps = [], {}
    for name in available():
        explainer = create(name, model, **params.get(name, {}))
        h, seconds = _timed(lambda e=explainer: e.attribute(x, target=pred))
        h_noisy = explainer.attribute(x_noisy, target=pred)
        m, m_noisy = reduce_channels(h), reduce_channels(h_noisy)
        rows.append({"method": name, "time_vs_forward_backward": seconds / t_fb,
                     "spearman_random_sign": float(spearman(m, m_noisy).mean()),
                     f"top{k}_intersection_random_sign": float(topk_intersection(m, m_noisy, k).mean())})
        maps[name] = m[:4].cpu()
        print(f"{name:22s} time x{rows[-1]['time_vs_forward_backward']:7.1f}   Spearman {rows[-1]['spearman_random_sign']:.3f}"
              f"   top-{k} {rows[-1][f'top{k}_intersection_random_sign']:.3f}")
    result = {"model": "resnet20_cifar10", "images": 20, "eps": eps, "k": k, "methods": rows}
    (out / "results.json").write_text(json.dumps(result, indent=2))
    _plot(x[:4].cpu(), maps, out / "maps.png")
    print(f"wrote {out / 'results.json'} and {out / 'maps.png'}")
    return result


def _plot(x, maps, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'fragile[report]'): no figure")
        return
    names = list(maps)
    fig, axes = plt.subplots(len(x), len(names) + 1, figsize=(1.3 * (len(names) + 1), 1.4 * len(x)))
    for i in range(len(x)):
        axes[i, 0].imshow(x[i].permute(1, 2, 0).numpy())
        for j, name in enumerate(names):
            axes[i, j + 1].imshow(maps[name][i].numpy(), cmap="inferno")
            if i == 0:
                axes[i, j + 1].set_title(name.replace("_", "\n"), fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
