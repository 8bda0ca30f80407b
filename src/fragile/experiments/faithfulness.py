"""Dombrowski et al. 2019 Fig. 7 (pixel flipping) with robustness beside it.

For each method (gradient, beta-smoothed gradients, SmoothGrad) and a random ranking: the accuracy
as pixels are set to the baseline in order of relevance (most relevant first), its AUC (lower = more
faithful), and the top-k intersection of the method's map under a top-k attack (higher = more
robust), so one can pick a method that is both. Each method's result is stored under ``out/parts/`` as
it finishes; a killed run resumes when rerun.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fragile import attacks
from fragile.experiments.parts import Parts, fingerprint, key_of, model_fingerprint
from fragile.explanations import create
from fragile.metrics import perturbation_curve, random_relevance, topk_names
from fragile.models.outputs import model_output


def default_methods(betas=(1.0, 3.0, 10.0), smoothgrad_samples: int = 20) -> dict[str, tuple[str, dict]]:
    """The methods of Dombrowski Fig. 7: ``{label: (method name, parameters)}`` for the plain gradient, the gradient
    beta-smoothed at each of ``betas``, and SmoothGrad with ``smoothgrad_samples`` noise samples.
    """
    methods = {"gradient": ("gradient", {})}
    for b in betas:
        methods[f"gradient beta={b:g}"] = ("gradient", {"smooth_beta": b})
    methods["smoothgrad"] = ("smoothgrad", {"samples": smoothgrad_samples})
    return methods


def run_faithfulness(model, x, labels, *, out: str | Path, methods: dict | None = None, steps: int = 20,
                     baseline: str = "zero", attack_steps: int = 10, eps: float = 8.0, log=print) -> dict:
    """Pixel-flipping curves (Dombrowski Fig. 7) and top-k robustness of each method; resumable, results under ``out``.

    ``x: (N, C, H, W)`` in the model's data range, ``labels: (N,)``; only correctly classified images are kept.
    For each of ``methods`` (default :func:`default_methods`) and a random ranking: the accuracy as ``steps``
    fractions of the pixels are set to ``baseline`` in order of relevance, its area under the curve (deletion
    AUC, accuracy and probability; lower = more faithful), and the mean top-k intersection of the map under a
    top-k attack of ``attack_steps`` iterations at ``eps`` (pixel units of 255) over the attack's successes.
    Writes ``faithfulness.json`` and the two figures (when matplotlib is installed) and returns the same dict.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = methods or default_methods()
    with torch.no_grad():
        pred = model_output(model, x).argmax(1)
    keep = pred == labels  # Fig. 7 tracks accuracy starting from correctly classified images
    x, labels = x[keep], labels[keep]
    parts = Parts(out, {"analysis": "faithfulness", "model": model_fingerprint(model), "images": fingerprint(x, labels),
                        "steps": steps, "baseline": baseline, "eps": eps, "attack_steps": attack_steps})
    results = {"images": int(len(x)), "steps": steps, "baseline": baseline, "eps": eps, "attack_steps": attack_steps,
               "methods": {}}

    def curve(relevance) -> dict:
        c = perturbation_curve(model, x, relevance, target=labels, labels=labels, steps=steps, baseline=baseline)
        return {"accuracy_curve": c["correct"].mean(1), "fractions": c["fractions"],
                "auc_accuracy": c["auc_accuracy"], "auc_probability": c["auc_probability"]}

    def measure(method, params) -> dict:
        ex = create(method, model, **params)
        r = attacks.run(model, ex, x, "topk", eps=eps, steps=attack_steps)
        k_name = topk_names(r.metrics)[0]
        return {**curve(ex.attribute(x, target=labels)), "intersection": r.metrics[k_name], "success": r.success,
                "k_name": k_name}

    curves = {}
    for name, (method, params) in methods.items():
        m = parts.get(f"method-{key_of([method, params])}", lambda method=method, params=params: measure(method, params))
        k_name, success = str(m["k_name"]), m["success"].astype(bool)
        rob = float(m["intersection"][success].mean())
        curves[name] = m["accuracy_curve"].tolist()
        results["methods"][name] = {"method": method, "params": params,
                                    "deletion_auc_accuracy": float(m["auc_accuracy"].mean()),
                                    "deletion_auc_probability": float(m["auc_probability"].mean()),
                                    f"{k_name}_under_topk_attack": rob, "attack_successes": int(success.sum())}
        log(f"{name:22s} deletion AUC (accuracy) {results['methods'][name]['deletion_auc_accuracy']:.3f}   "
            f"{k_name} under attack {rob:.3f}")
    c = parts.get("random", lambda: curve(random_relevance(x, seed=0)))
    curves["random"] = c["accuracy_curve"].tolist()
    results["methods"]["random"] = {"deletion_auc_accuracy": float(c["auc_accuracy"].mean()),
                                    "deletion_auc_probability": float(c["auc_probability"].mean())}
    log(f"{'random':22s} deletion AUC (accuracy) {results['methods']['random']['deletion_auc_accuracy']:.3f}")
    results["fractions"] = c["fractions"].tolist()
    results["accuracy_curves"] = curves
    (out / "faithfulness.json").write_text(json.dumps(results, indent=1))
    try:
        from fragile.reporting.faithfulness import deletion_curves, robustness_vs_faithfulness

        deletion_curves(results, out / "fig7_pixel_flipping.png")
        robustness_vs_faithfulness(results, out / "robustness_vs_faithfulness.png")
    except ImportError as err:
        log(f"no figures: {err}")
    return results
