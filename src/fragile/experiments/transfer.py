"""Transfer (Wang et al. 2020 Fig. 5; Dombrowski et al. Fig. 4/5): attack one explanation, then measure
how the perturbation changes other explanations (other methods, or beta-smoothed versions).

The attack's perturbed images and each target's per-image metrics are stored under ``out/parts/`` as they
finish, so a killed run resumes when rerun with the same model, images and settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fragile import attacks
from fragile.attacks.loop import map_metrics
from fragile.attacks.transfer import transfer_maps
from fragile.defenses import create as create_defence
from fragile.errors import FragileError
from fragile.experiments.config import label
from fragile.experiments.parts import Parts, fingerprint, key_of, model_fingerprint
from fragile.explanations.base import model_bounds
from fragile.metrics import mse, pcc, ssim

EXAMPLE_MAPS = 3  # images whose maps (before / after, per target) are kept for the figure
MAPS = ("map_before", "map_after", "target_map")
TO_ORIGINAL = ("spearman", "pcc", "ssim", "cosine_distance")


def _name(entry: dict) -> str:
    return entry.get("label") or label({"name": entry["method"], **{k: v for k, v in entry.items() if k != "method"}})


def run_transfer(model, x, *, out: str | Path, source: dict, targets: list[dict], attack: str = "topk",
                 eps: float = 4.0, attack_settings: dict | None = None, log=print) -> dict:
    """Attack ``source`` on x: (N, C, H, W), then compare every target's maps of x and x_adv.

    ``source``/``targets``: {"method": name, "defence": name, <params>} entries. Per target, means over
    the images with a label-preserving result of Spearman / PCC / SSIM to its own original map and, for
    ``manipulate`` (target = the next image's map of the source method), PCC / SSIM / MSE to that target.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"steps": 50, **(attack_settings or {})}
    parts = Parts(out, {"analysis": "transfer", "model": model_fingerprint(model), "images": fingerprint(x),
                        "source": source, "attack": attack, "eps": eps, "attack_settings": settings})

    def build(entry):
        params = {k: v for k, v in entry.items() if k not in ("method", "defence", "defence_params", "label")}
        return create_defence(entry.get("defence", "none"), model, entry["method"], params,
                              **entry.get("defence_params", {}))

    src = build(source)
    target_maps = attacks.saliency(src.attribute(x.roll(1, 0))) if attack == "manipulate" else None

    def run_attack() -> dict:
        s = dict(settings)
        objective = (attacks.create("manipulate", target_map=target_maps, output_tol=s.pop("output_tol", 0.05))
                     if attack == "manipulate" else attacks.create(attack))
        r = attacks.run(model, src, x, objective, eps=eps, **s)
        return {"x_adv": r.x_adv, "label": r.label, "success": r.success, "seconds": r.seconds, "k": r.settings["k"]}

    adv = parts.get("attack", run_attack)
    ok = torch.from_numpy(adv["success"]).bool().to(x.device)
    if not bool(ok.any()):
        raise FragileError(f"the {attack} attack kept the label of none of the {len(x)} images at eps {eps:g}; "
                           "nothing to compare (lower eps, or raise output_tol for manipulate)")
    x0, x1 = x[ok], torch.from_numpy(adv["x_adv"]).to(x)[ok]
    labels = torch.from_numpy(adv["label"]).to(x.device)[ok]

    def measure(entry) -> dict:
        s0, s1 = transfer_maps(build(entry), x0, x1, labels)
        low, high = model_bounds(model)
        metrics = map_metrics(s0, s1, x0, x1, k=int(adv["k"]), data_range=high - low)
        row = {f"{k}_to_original": v for k, v in metrics.items() if k in TO_ORIGINAL or k.endswith("_intersection")}
        row.update({"map_before": s0[:EXAMPLE_MAPS], "map_after": s1[:EXAMPLE_MAPS]})
        if target_maps is not None:
            t = target_maps[ok]
            row.update({"pcc_to_target": pcc(s1, t), "ssim_to_target": ssim(s1, t), "mse_to_target": mse(s1, t),
                        "target_map": t[:EXAMPLE_MAPS]})
        return row

    rows, examples = {}, {}
    for entry in [source, *targets]:
        name = _name(entry)
        per_image = parts.get(f"target-{key_of(entry)}", lambda entry=entry: measure(entry))  # not by label
        rows[name] = {k: float(np.mean(v)) for k, v in per_image.items() if k not in MAPS}
        examples[name] = per_image
        log(f"{name:40s} " + "  ".join(f"{k} {v:.3f}" for k, v in rows[name].items()))
    res = {"source": source, "attack": attack, "eps": eps, "images": int(len(x)), "successes": int(ok.sum()),
           "attack_seconds": float(adv["seconds"]), "targets": rows}
    (out / "transfer.json").write_text(json.dumps(res, indent=1))
    try:
        from fragile.reporting.transfer import transfer_bars, transfer_map_grid

        transfer_bars(res, out / "transfer.png")
        transfer_map_grid(examples, out / "transfer_maps.png", source=_name(source))
    except ImportError as err:
        log(f"no figures: {err}")
    return res
