"""The geometry analysis of a model on a set of images (``fragile geometry``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fragile.explanations import create
from fragile.experiments.parts import Parts, fingerprint, model_fingerprint
from fragile.explanations.gradient import chunked
from fragile.geometry.curvature import max_curvature
from fragile.geometry.directions import beyond_chance, fragile_directions, gradient_random_angles, random_pair_angles
from fragile.geometry.lipschitz import lipschitz_adversarial, lipschitz_sampled
from fragile.models.outputs import model_output


def _summary(v) -> dict:
    v = np.asarray(v, dtype=float)
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
            "n": int(v.size)}


LIPSCHITZ_METHODS = {
    "gradient": {},
    "smoothgrad": {"samples": 20},
    "integrated_gradients": {"steps": 20},
}


def analyse(model, x, *, out: str | Path, betas=(1, 3, 10, 30, 100), beta: float | str = 10.0, iters: int = 30,
            lipschitz_images: int = 50, lipschitz_eps: float = 8.0, lipschitz_samples: int = 20,
            batch_size: int = 50, definition: str = "hessian", control_pairs: int = 1000, control_seed: int = 0,
            log=print) -> dict:
    """Angles (surrogate beta) with their chance controls, max curvature per beta, sampled vs adversarial
    Lipschitz estimates.

    x: (N, C, H, W). ``beta``: the softplus surrogate of the angles and Lipschitz attacks, a number or
    ``"auto"`` (``fragile.attacks.surrogate.choose_beta`` on x). ``definition``: of the explanation-fragile
    direction (``fragile.geometry.directions``; ``"hessian"`` is Ghorbani's). The controls (Fig. 6a):
    ``control_pairs`` angles between random direction pairs in x's dimension and as many between the
    images' score gradients and random vectors (at least one per image), drawn from ``control_seed``;
    ``geometry.json`` says which fraction of the fragile-direction angles lies further from 90 deg than
    each control's 5-95% band. Every chunk of ``batch_size`` images (and each Lipschitz method) is stored
    under ``out/parts/`` as it finishes, so a killed run resumes where it stopped when rerun with the same
    model, images and settings.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    beta_note = "fixed"
    if beta == "auto":
        from fragile.attacks.surrogate import choose_beta

        choice = choose_beta(model, x)
        beta, beta_note = choice.beta, choice.describe()
        log(f"surrogate: {beta_note}")
    per_image = max(1, -(-int(control_pairs) // max(len(x), 1)))
    parts = Parts(out, {"analysis": "geometry", "model": model_fingerprint(model), "images": fingerprint(x),
                        "beta": beta, "iters": iters, "batch_size": batch_size, "lipschitz_eps": lipschitz_eps,
                        "lipschitz_samples": lipschitz_samples, "definition": definition,
                        "control_per_image": per_image, "control_seed": control_seed})
    with torch.no_grad():
        target = model_output(model, x).argmax(1)
    explainer = create("gradient", model, smooth_beta=beta)

    def per_chunk(name, compute) -> torch.Tensor:
        return torch.cat([torch.from_numpy(parts.get(f"{name}-{sl.start}", lambda sl=sl: {"v": compute(sl)})["v"])
                          for sl in chunked(len(x), batch_size)])

    def angle_chunk(sl) -> dict:
        d = fragile_directions(explainer, x[sl], target[sl], iters=iters, definition=definition)
        return {"v": d["angle_degrees"], "singular_value": d["singular_value"],
                "gradient_random": gradient_random_angles(d["prediction_direction"], per_image,
                                                          seed=control_seed + 1 + sl.start)}

    chunks = [parts.get(f"angles-{sl.start}", lambda sl=sl: angle_chunk(sl)) for sl in chunked(len(x), batch_size)]
    angles = torch.from_numpy(np.concatenate([c["v"] for c in chunks]))
    controls = {"random_pairs": random_pair_angles(x[0].numel(), int(control_pairs), seed=control_seed).numpy(),
                "gradient_random": np.concatenate([c["gradient_random"] for c in chunks]).ravel()}
    control_summary = {name: {"control_angles": _summary(c), **beyond_chance(angles.numpy(), c)}
                       for name, c in controls.items()}
    log(f"angles: {_summary(angles)}")
    for name, c in control_summary.items():
        log(f"control {name}: band {c['band_deg'][0]:.2f}-{c['band_deg'][1]:.2f} deg, fragile angles beyond it "
            f"{c['fraction_beyond']:.2f} (chance {c['expected_under_chance']:.2f}): {c['verdict']}")
    curv = []
    for b in betas:
        curv.append(per_chunk(f"curvature-beta{float(b):g}",
                              lambda sl, b=b: max_curvature(model, x[sl], target[sl], beta=float(b), iters=iters)))
        log(f"beta {b}: max curvature {_summary(curv[-1])}")
    xl, tl = x[:lipschitz_images], target[:lipschitz_images]
    lips = {}
    for name, params in (LIPSCHITZ_METHODS.items() if lipschitz_images else ()):
        ex = create(name, model, **params)
        est = parts.get(f"lipschitz-{name}-{lipschitz_images}", lambda ex=ex: {
            "sampled": lipschitz_sampled(ex, xl, eps=lipschitz_eps, samples=lipschitz_samples, target=tl),
            "adversarial": lipschitz_adversarial(ex, xl, eps=lipschitz_eps, steps=10, beta=beta, target=tl)})
        sampled, adversarial = est["sampled"], est["adversarial"]
        lips[name] = {"sampled": _summary(sampled), "adversarial": _summary(adversarial),
                      "adversarial_exceeds_sampled": float((adversarial > sampled).mean())}
        log(f"Lipschitz {name}: sampled {lips[name]['sampled']['median']:.3g}, "
            f"adversarial {lips[name]['adversarial']['median']:.3g}")
    result = {"images": int(len(x)), "surrogate_beta": beta, "surrogate_beta_note": beta_note, "iters": iters,
              "angles": _summary(angles), "angle_definition": definition, "dimension": int(x[0].numel()),
              "angle_controls": {"seed": control_seed, "band_percentiles": [5, 95], **control_summary},
              "curvature": {str(b): _summary(c) for b, c in zip(betas, curv)},
              "lipschitz": {"eps": lipschitz_eps, "images": int(len(xl)), "samples": lipschitz_samples,
                            "methods": lips, "method_params": LIPSCHITZ_METHODS}}
    (out / "geometry.json").write_text(json.dumps(result, indent=1))
    curv_arr = torch.stack(curv).numpy() if curv else np.zeros((0, len(x)))
    np.savez_compressed(out / "geometry_arrays.npz", angles=angles.numpy(), curvature=curv_arr,
                        betas=np.asarray(betas, dtype=float), control_random_pairs=controls["random_pairs"],
                        control_gradient_random=controls["gradient_random"])
    try:
        from fragile.reporting.geometry import angle_histogram, curvature_vs_beta, lipschitz_bars

        angle_histogram(angles.numpy(), out / "angles.png", controls=controls)
        if curv:
            curvature_vs_beta(list(betas), curv_arr, out / "curvature_vs_beta.png")
        if lips:
            lipschitz_bars({k: {"sampled": v["sampled"]["median"], "adversarial": v["adversarial"]["median"]}
                            for k, v in lips.items()}, out / "lipschitz.png")
    except ImportError as err:
        log(f"no figures: {err}")
    return result
