"""Transfer (Wang et al. 2020 Fig. 5; Dombrowski et al. Fig. 4/5): attack one explanation, then measure
how the perturbation changes other explanations (other methods, or beta-smoothed versions).

The attack's perturbed images and each target's per-image metrics are stored under ``out/parts/`` as they
finish, so a killed run resumes when rerun with the same model, images and settings.

With ``attack_settings.noise_control: true`` every explanation is also measured on an equal-norm random
perturbation of each image (``fragile.experiments.controls``: the attack's L2 norm, inside its eps box and
the data bounds); those metrics carry the suffix ``_control`` beside the attack's (``pcc_to_target`` and
``pcc_to_target_control``), averaged over the images whose control kept the label.
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
from fragile.experiments.controls import equal_norm_noise
from fragile.experiments.parts import Parts, fingerprint, key_of, model_fingerprint
from fragile.explanations.base import model_bounds
from fragile.models.outputs import model_output
from fragile.metrics import mse, pcc, ssim

EXAMPLE_MAPS = 3  # images whose maps (before / after, per target) are kept for the figure
MAPS = ("map_before", "map_after", "target_map")
TO_ORIGINAL = ("spearman", "pcc", "ssim", "cosine_distance")


def _name(entry: dict) -> str:
    return entry.get("label") or label({"name": entry["method"], **{k: v for k, v in entry.items() if k != "method"}})


def for_source(source: dict, targets: list[dict]) -> list[dict]:
    """The targets of one source: an entry without ``method`` means the source's method (Dombrowski Fig. 4:
    the attacked method itself, beta-smoothed or under SmoothGrad)."""
    return [entry if "method" in entry else {"method": source["method"], **entry} for entry in targets]


def run_transfers(model, x, *, out: str | Path, sources: list[dict], targets: list[dict], log=print, **kw) -> dict:
    """``run_transfer`` for each source (Dombrowski Fig. 4: gradient and LRP) on the same images. One source
    writes ``transfer.json`` as ``run_transfer``; several write ``transfer.json`` = {"sources": {name:
    result}} and each source's figures as ``transfer-<name>.png`` / ``transfer_maps-<name>.png``."""
    if len(sources) == 1:
        return run_transfer(model, x, out=out, source=sources[0], targets=for_source(sources[0], targets), log=log, **kw)
    results = {}
    for source in sources:
        name = _name(source)
        log(f"source: {name}")
        results[name] = run_transfer(model, x, out=out, source=source, targets=for_source(source, targets),
                                     log=log, figures=name, **kw)
    res = {"sources": results}
    (Path(out) / "transfer.json").write_text(json.dumps(res, indent=1))
    return res


def run_transfer(model, x, *, out: str | Path, source: dict, targets: list[dict], attack: str = "topk",
                 eps: float = 4.0, attack_settings: dict | None = None, log=print, figures: str = "",
                 chunk: int | None = None) -> dict:
    """Attack ``source`` on x: (N, C, H, W), then compare every target's maps of x and x_adv.

    ``source``/``targets``: {"method": name, "defence": name, <params>} entries. Per target, means over
    the images with a label-preserving result of Spearman / PCC / SSIM to its own original map and, for
    ``manipulate`` (target = the next image's map of the source method), PCC / SSIM / MSE to that target.
    ``attack_settings.noise_control``: the same metrics for an equal-norm random perturbation, suffixed
    ``_control``. ``figures``: written as ``transfer-<figures>.png`` (and no ``transfer.json``) if given.
    ``chunk``: attack this many images at a time, each chunk stored as it finishes (a killed run loses at most
    the chunk in progress; default None: all images in one attack, stored once).
    """
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise FragileError(f"chunk must be a positive integer (images per stored attack), got {chunk!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"steps": 50, **(attack_settings or {})}
    noise = settings.pop("noise_control", False)
    if not isinstance(noise, bool):
        raise FragileError(f"attack_settings.noise_control must be true or false, got {noise!r}")
    parts = Parts(out, {"analysis": "transfer", "model": model_fingerprint(model), "images": fingerprint(x),
                        "source": source, "attack": attack, "eps": eps, "attack_settings": settings,
                        **({"chunk": chunk} if chunk is not None else {})})

    def build(entry):
        params = {k: v for k, v in entry.items() if k not in ("method", "defence", "defence_params", "label")}
        return create_defence(entry.get("defence", "none"), model, entry["method"], params,
                              **entry.get("defence_params", {}))

    src = build(source)
    target_maps = attacks.saliency(src.attribute(x.roll(1, 0))) if attack == "manipulate" else None

    def run_attack(lo: int = 0, hi: int = len(x)) -> dict:
        s = dict(settings)
        tm = None if target_maps is None else target_maps[lo:hi]
        objective = (attacks.create("manipulate", target_map=tm, output_tol=s.pop("output_tol", 0.05))
                     if attack == "manipulate" else attacks.create(attack))
        r = attacks.run(model, src, x[lo:hi], objective, eps=eps, **s)
        return {"x_adv": r.x_adv, "label": r.label, "success": r.success, "seconds": r.seconds, "k": r.settings["k"]}

    if chunk is None:
        adv = parts.get("attack", run_attack)
    else:
        bounds = [(lo, min(lo + chunk, len(x))) for lo in range(0, len(x), chunk)]
        pieces = []
        for lo, hi in bounds:
            pieces.append(parts.get(f"attack-{lo}-{hi}", lambda lo=lo, hi=hi: run_attack(lo, hi)))
            log(f"attack: images {hi} of {len(x)} stored")
        adv = {k: np.concatenate([p[k] for p in pieces]) for k in ("x_adv", "label", "success")}
        adv.update(seconds=sum(float(p["seconds"]) for p in pieces), k=pieces[0]["k"])
    ok = torch.from_numpy(adv["success"]).bool().to(x.device)
    if not bool(ok.any()):
        raise FragileError(f"the {attack} attack kept the label of none of the {len(x)} images at eps {eps:g}; "
                           "nothing to compare (lower eps, or raise output_tol for manipulate)")
    x0, x1 = x[ok], torch.from_numpy(adv["x_adv"]).to(x)[ok]
    labels = torch.from_numpy(adv["label"]).to(x.device)[ok]
    low, high = model_bounds(model)
    control = None
    if noise:
        def draw_control() -> dict:
            gen = torch.Generator().manual_seed(int(settings.get("seed", 0)) + 1)
            radius = eps * (high - low) / float(settings.get("pixel_scale", 255.0))
            xc = (x0 + equal_norm_noise(x0, x1 - x0, eps=radius, low=low, high=high,
                                        norm=settings.get("norm", "linf"), generator=gen)).clamp(low, high)
            with torch.no_grad():
                kept = torch.cat([model_output(model, c).argmax(1) for c in xc.split(64)]) == labels
            return {"x_control": xc, "kept": kept}

        control = parts.get("noise-control", draw_control)
        xc = torch.from_numpy(control["x_control"]).to(x)
        kept = torch.from_numpy(control["kept"]).to(x.device)

    def measure(entry) -> dict:
        ex = build(entry)
        if control is not None:  # the control's maps share the noise of the maps before and after
            s0, s1, sc = transfer_maps(ex, x0, x1, xc, target=labels)
        else:
            s0, s1 = transfer_maps(ex, x0, x1, target=labels)
        metrics = map_metrics(s0, s1, x0, x1, k=int(adv["k"]), data_range=high - low)
        row = {f"{k}_to_original": v for k, v in metrics.items() if k in TO_ORIGINAL or k.endswith("_intersection")}
        row.update({"map_before": s0[:EXAMPLE_MAPS], "map_after": s1[:EXAMPLE_MAPS]})
        t = None if target_maps is None else target_maps[ok]
        if t is not None:
            row.update({"pcc_to_target": pcc(s1, t), "ssim_to_target": ssim(s1, t), "mse_to_target": mse(s1, t),
                        "target_map": t[:EXAMPLE_MAPS]})
        if control is not None:
            row["l2_perturbation"] = metrics["l2"]
            nan = torch.full_like(s0[:, 0, 0], float("nan"), dtype=torch.float64)
            mc = map_metrics(s0, sc, x0, xc, k=int(adv["k"]), data_range=high - low)
            extra = {f"{k}_to_original": v for k, v in mc.items() if k in TO_ORIGINAL or k.endswith("_intersection")}
            extra["l2_perturbation"] = mc["l2"]
            if t is not None:
                extra.update({"pcc_to_target": pcc(sc, t), "ssim_to_target": ssim(sc, t), "mse_to_target": mse(sc, t)})
            row.update({f"{k}_control": torch.where(kept, v.double(), nan) for k, v in extra.items()})
        return row

    rows, examples = {}, {}
    for entry in [source, *targets]:
        name = _name(entry)
        key = f"target-{key_of(entry)}" + ("-noise-control" if control is not None else "")  # not by label
        per_image = parts.get(key, lambda entry=entry: measure(entry))
        rows[name] = {k: float(np.nanmean(v)) if k.endswith("_control") else float(np.mean(v))
                      for k, v in per_image.items() if k not in MAPS}
        examples[name] = per_image
        log(f"{name:40s} " + "  ".join(f"{k} {v:.3f}" for k, v in rows[name].items()))
    res = {"source": source, "attack": attack, "eps": eps, "images": int(len(x)), "successes": int(ok.sum()),
           "attack_seconds": float(adv["seconds"]), "targets": rows, **transfer_intervals(examples)}
    if control is not None:
        res["noise_control"] = {"images": int(len(kept)), "label_kept": int(kept.sum()),
                                "l2_attack_mean": float((x1 - x0).flatten(1).norm(dim=1).mean()),
                                "l2_control_mean": float((xc - x0).flatten(1).norm(dim=1).mean())}
    suffix = f"-{_slug(figures)}" if figures else ""
    if not figures:
        (out / "transfer.json").write_text(json.dumps(res, indent=1))
    try:
        from fragile.reporting.transfer import transfer_bars, transfer_map_grid

        transfer_bars(res, out / f"transfer{suffix}.png")
        transfer_map_grid(examples, out / f"transfer_maps{suffix}.png", source=_name(source))
    except ImportError as err:
        log(f"no figures: {err}")
    return res


#: The metrics a transfer verdict rests on, compared between every pair of explanations on the same images.
PAIRED_METRICS = ("spearman_to_original", "pcc_to_target")


def transfer_intervals(per_image: dict[str, dict]) -> dict:
    """From ``{explanation: {metric: (n,) per image}}``: ``intervals`` (every metric's mean [95% bootstrap CI] and
    n, as ``[mean, low, high, n]``), ``attack_minus_control`` (each metric minus its ``*_control``, paired per
    image over the images the control kept) and ``paired`` (``"A - B"`` for every pair of explanations, the
    :data:`PAIRED_METRICS` paired per image)."""
    from itertools import combinations

    from fragile.metrics.statistics import bootstrap_ci, paired_difference_ci

    def values(v):
        return np.asarray(v, dtype=float).reshape(-1)

    out = {"intervals": {}, "attack_minus_control": {}, "paired": {}}
    for name, metrics in per_image.items():
        numeric = {k: values(v) for k, v in metrics.items() if k not in MAPS}
        out["intervals"][name] = {k: list(bootstrap_ci(v))[:4] for k, v in numeric.items()}
        out["attack_minus_control"][name] = {k: list(paired_difference_ci(v, numeric[f"{k}_control"]))[:4]
                                             for k, v in numeric.items() if f"{k}_control" in numeric}
    for a, b in combinations(per_image, 2):
        out["paired"][f"{a} - {b}"] = {m: list(paired_difference_ci(values(per_image[a][m]), values(per_image[b][m])))[:4]
                                       for m in PAIRED_METRICS if m in per_image[a] and m in per_image[b]}
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
