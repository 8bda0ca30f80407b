"""Transfer (Wang et al. 2020 Fig. 5; Dombrowski et al. Fig. 4/5): attack one explanation, then measure
how the perturbation changes other explanations (other methods, or beta-smoothed versions)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fragile import attacks
from fragile.defenses import create as create_defence
from fragile.experiments.config import label
from fragile.metrics import mse, pcc, spearman, ssim


def run_transfer(model, x, *, out: str | Path, source: dict, targets: list[dict], attack: str = "topk",
                 eps: float = 4.0, attack_settings: dict | None = None, log=print) -> dict:
    """``source``/``targets``: {"method": name, "defence": name, <params>} entries."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"steps": 50, **(attack_settings or {})}

    def build(entry):
        params = {k: v for k, v in entry.items() if k not in ("method", "defence", "defence_params", "label")}
        return create_defence(entry.get("defence", "none"), model, entry["method"], params,
                              **entry.get("defence_params", {}))

    src = build(source)
    if attack == "manipulate":
        objective = attacks.create("manipulate", target_map=attacks.saliency(src.attribute(x.roll(1, 0))),
                                   output_tol=settings.pop("output_tol", 0.05))
    else:
        objective = attacks.create(attack)
    result = attacks.run(model, src, x, objective, eps=eps, **settings)
    ok = result.success
    rows = {}
    for entry in [source, *targets]:
        name = entry.get("label") or label({"name": entry["method"], **{k: v for k, v in entry.items() if k != "method"}})
        ex = build(entry)
        s0 = attacks.saliency(ex.attribute(result.x[ok], target=result.label[ok]))
        s1 = attacks.saliency(ex.attribute(result.x_adv[ok], target=result.label[ok]))
        row = {"spearman_to_original": float(spearman(s0, s1).mean()),
               "pcc_to_original": float(pcc(s0, s1).mean()), "ssim_to_original": float(ssim(s0, s1).mean())}
        if attack == "manipulate":
            t = objective.prepare(s0, torch.zeros(1))["target"]
            row.update({"pcc_to_target": float(pcc(s1, t).mean()), "ssim_to_target": float(ssim(s1, t).mean()),
                        "mse_to_target": float(mse(s1, t).mean())})
        rows[name] = row
        log(f"{name:40s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    res = {"source": source, "attack": attack, "eps": eps, "images": int(len(x)), "successes": int(ok.sum()),
           "attack_seconds": result.seconds, "targets": rows}
    (out / "transfer.json").write_text(json.dumps(res, indent=1))
    return res
