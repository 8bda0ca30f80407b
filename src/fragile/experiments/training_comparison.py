"""Wang et al. Fig. 4 / Table 3 at a size that fits here: the pretrained CIFAR ResNet-20 fine-tuned with
each regulariser (natural, SSR, Madry PGD, IG-NORM) on a class-balanced subset of the CIFAR-10 JPEG
training set; accuracy, training time per epoch, and robustness of its gradient maps under attack.
Training resumes from its per-epoch checkpoints; each model's finished result is stored under
``out/parts/`` and reused by a rerun with the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fragile import attacks
from fragile.data.training_sets import training_data
from fragile.defenses.training import train
from fragile.devices import resolve_device
from fragile.experiments.config import label
from fragile.experiments.parts import Parts
from fragile.explanations import create as create_explainer
from fragile.metrics import auc_log_eps
from fragile.models import create as create_model
from fragile.models.outputs import model_output

_NOT_MAP_METRICS = {"image_ssim", "linf", "l2", "output_change"}


def run_training_comparison(body: dict, out: str | Path, device: str = "cpu", log=print) -> dict:
    """Fine-tune ``body['model']`` with each of ``body['regularizers']`` and attack its gradient maps (Wang et al.
    Fig. 4 / Table 3); resumable, results under ``out``.

    Per regulariser: the test accuracy, seconds per epoch, the attack summary at each ``eps`` (pixel units of
    255) on correctly classified test images, and each map metric's area under its mean over log eps
    (``auc_<metric>``, normalised by the log range). Writes ``training_comparison.json`` and the figure (when
    matplotlib is installed) and returns the same dict.
    """
    out = Path(out)
    device = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    arch = body.get("model", "resnet20_cifar10")
    train_data, test_data = training_data(body.get("data", "cifar10-jpeg"), body.get("train_images", 2000),
                                          body.get("test_per_class", 100))
    n_att = body.get("attack_images", 32) * 4
    x_att, y_att = test_data[0][:n_att].to(device), test_data[1][:n_att].to(device)
    eps_list = body.get("eps", [2, 4, 8, 16])
    results = {"train_images": len(train_data[0]), "test_images": len(test_data[0]), "models": {}}
    parts = Parts(out, {"analysis": "training_comparison", **{k: v for k, v in body.items() if k != "regularizers"}})

    def train_and_attack(reg: dict, name: str) -> dict:
        params = {k: v for k, v in reg.items() if k != "name"}
        torch.manual_seed(0)
        model = create_model(arch, pretrained=body.get("pretrained", True)).to(device)
        # checkpoints live beside the parts of these settings: other settings never resume these weights
        hist = train(model, arch=arch, train_data=train_data, test_data=test_data, out=parts.dir / name.replace("/", "_"),
                     epochs=body.get("epochs", 1), batch_size=body.get("batch_size", 64), lr=body.get("lr", 1e-4),
                     regularizer=reg["name"], regularizer_params=params, log=log)["history"]
        with torch.no_grad():
            ok = model_output(model, x_att).argmax(1) == y_att
        xs = x_att[ok][: body.get("attack_images", 32)]
        ex = create_explainer("gradient", model)
        attack = body.get("attack", "topk")
        objective = attacks.create(attack, k=body["attack_k"]) if "attack_k" in body else attack
        results = attacks.run(model, ex, xs, objective, eps=eps_list, steps=body.get("attack_steps", 30))
        rows = {str(e): r.summary() for e, r in zip(eps_list, results)}
        # Wang Table 3: each map metric as the area under its mean over log eps (normalised by the log range)
        aucs = {f"auc_{m}": float(auc_log_eps(eps_list, [rows[str(e)][m] for e in eps_list], normalize=True))
                for m in results[0].metrics if m not in _NOT_MAP_METRICS}
        return {"test_accuracy": hist[-1]["test_accuracy"],
                "seconds_per_epoch": sum(h["seconds"] for h in hist) / len(hist),
                "attacked_images": len(xs), "per_eps": rows, **aucs}

    for reg in body["regularizers"]:
        name = label(reg)
        results["models"][name] = parts.get_json(f"model-{name.replace('/', '_')}", lambda reg=reg, name=name:
                                                 train_and_attack(reg, name))
        log(f"{name}: " + json.dumps({k: v for k, v in results["models"][name].items() if k != "per_eps"}))
    (out / "training_comparison.json").write_text(json.dumps(results, indent=1))
    try:
        from fragile.reporting.training import training_comparison_figure

        training_comparison_figure(results, out / "training_comparison.png")
    except ImportError as err:
        log(f"no figures: {err}")
    return results
