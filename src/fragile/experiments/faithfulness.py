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
from fragile.metrics.statistics import Interval, bootstrap_ci, paired_difference_ci
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


def _auc_entries(curve: dict) -> dict:
    """Mean deletion AUCs (accuracy, probability) of one ranking with their bootstrap intervals over images."""
    out = {}
    for key in ("accuracy", "probability"):
        values = curve[f"auc_{key}"]
        out[f"deletion_auc_{key}"] = float(values.mean())
        out[f"deletion_auc_{key}_ci"] = list(bootstrap_ci(values))[:4]
    return out


def _ci_text(entry: dict) -> str:
    """``0.209 [0.181, 0.241] (n = 206)``: the deletion AUC (accuracy) of one entry of :func:`_auc_entries`."""
    ci = Interval(*entry["deletion_auc_accuracy_ci"])
    return f"{ci.text()} (n = {ci.n})"


def _paired_deletion(per_image: dict) -> dict:
    """``{"A - B": [mean, low, high, n]}`` of the per-image deletion AUC (accuracy): every ranking minus the
    random order, and every beta-smoothed gradient minus the gradient and minus SmoothGrad."""
    pairs = [(name, "random") for name in per_image if name != "random"]
    for name in per_image:
        if name.startswith("gradient beta="):
            pairs += [(name, other) for other in ("gradient", "smoothgrad") if other in per_image]
    return {f"{a} - {b}": list(paired_difference_ci(per_image[a], per_image[b]))[:4] for a, b in pairs}


def run_faithfulness(model, x, labels, *, out: str | Path, methods: dict | None = None, steps: int = 20,
                     baseline: str = "zero", attack_steps: int = 10, eps: float = 8.0, log=print) -> dict:
    """Pixel-flipping curves (Dombrowski Fig. 7) and top-k robustness of each method; resumable, results under ``out``.

    ``x: (N, C, H, W)`` in the model's data range, ``labels: (N,)``; only correctly classified images are kept.
    For each of ``methods`` (default :func:`default_methods`) and a random ranking: the accuracy as ``steps``
    fractions of the pixels are set to ``baseline`` in order of relevance, its area under the curve (deletion
    AUC, accuracy and probability; lower = more faithful), and the mean top-k intersection of the map under a
    top-k attack of ``attack_steps`` iterations at ``eps`` (pixel units of 255) over the attack's successes.
    Every mean comes with its 95% percentile-bootstrap interval over images (``*_ci``: ``[mean, low, high, n]``),
    and ``paired`` holds the per-image paired differences of the deletion AUC (accuracy) of every method minus
    the random order and of every beta-smoothed gradient minus the gradient and minus SmoothGrad (negative =
    more faithful), so a claim "A beats B" can be read off an interval that excludes 0.
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
    from fragile.data.sampling import classes_covered

    results = {"images": int(len(x)), "classes": classes_covered(labels),
               "steps": steps, "baseline": baseline, "eps": eps, "attack_steps": attack_steps,
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

    curves, per_image = {}, {}
    for name, (method, params) in methods.items():
        m = parts.get(f"method-{key_of([method, params])}", lambda method=method, params=params: measure(method, params))
        k_name, success = str(m["k_name"]), m["success"].astype(bool)
        curves[name] = m["accuracy_curve"].tolist()
        per_image[name] = m["auc_accuracy"]
        robust = m["intersection"].astype(float).copy()
        robust[~success] = float("nan")  # a failed attack is a missing value, never a perfect score
        rob = bootstrap_ci(robust)
        results["methods"][name] = {"method": method, "params": params, **_auc_entries(m),
                                    f"{k_name}_under_topk_attack": rob.mean,
                                    f"{k_name}_under_topk_attack_ci": list(rob)[:4],
                                    "attack_successes": int(success.sum())}
        log(f"{name:22s} deletion AUC (accuracy) {_ci_text(results['methods'][name])}   "
            f"{k_name} under attack {rob.text()} (n = {rob.n})")
    c = parts.get("random", lambda: curve(random_relevance(x, seed=0)))
    curves["random"] = c["accuracy_curve"].tolist()
    per_image["random"] = c["auc_accuracy"]
    results["methods"]["random"] = _auc_entries(c)
    results["paired"] = _paired_deletion(per_image)
    log(f"{'random':22s} deletion AUC (accuracy) {_ci_text(results['methods']['random'])}")
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
