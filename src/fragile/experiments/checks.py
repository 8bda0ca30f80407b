"""The checks a sweep runs after its attacks (config key ``checks``; the default audit has them): per method,
the random-perturbation robustness metrics beside their worst case in the same ball
(``fragile.metrics.robustness.worst_vs_random``) and the model-parameter randomisation sanity check
(``fragile.metrics.sanity``), on the first ``images`` images of the sweep.

Each method's result is one JSON file ``STORE/checks/<method>.json`` (per-image values, so reports can give
bootstrap intervals), written atomically when it is finished; a rerun reuses the files of the same config
(the store itself refuses another config, model or images). Reports read these files and recompute nothing.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from fragile.errors import FragileError
from fragile.experiments.parts import remove_stale_temps, write_atomic

DEFAULTS = {
    "images": 8,          # the first n images of the sweep (class-balanced prefix)
    "eps": None,          # None: the sweep's largest eps (pixel units)
    "samples": 10,        # random perturbations per image
    "steps": None,        # attack iterations per radius; None: the sweep's attack_settings.steps
    "scales": [0.5, 1.0],  # radii eps * scale of the adversarial estimates
    "metrics": ["max_sensitivity", "avg_sensitivity", "local_lipschitz", "relative_input_stability",
                "relative_output_stability"],
    "sanity_groups": 4,   # layers cut into this many top-down groups (None: every layer)
    "sanity_modes": ["cascading", "independent"],
}


def resolve_checks(value) -> dict:
    """``checks: true`` (the defaults), or a mapping of DEFAULTS' keys; anything else refused naming the key."""
    from fragile.metrics.robustness import RANDOM_METRICS
    from fragile.metrics.sanity import MODES

    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise FragileError(f"checks must be true or a mapping with keys {', '.join(DEFAULTS)}, got {value!r}")
    unknown = sorted(set(value) - set(DEFAULTS))
    if unknown:
        raise FragileError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in checks; "
                           f"valid keys: {', '.join(sorted(DEFAULTS))}")
    out = {**DEFAULTS, **value}
    for key, allow_none in (("images", False), ("samples", False), ("steps", True), ("sanity_groups", True)):
        v = out[key]
        if not (v is None and allow_none) and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise FragileError(f"checks.{key} must be a positive integer{' or null' if allow_none else ''}, got {v!r}")
    if out["eps"] is not None and (isinstance(out["eps"], bool) or not isinstance(out["eps"], (int, float))
                                   or not math.isfinite(out["eps"]) or out["eps"] <= 0):
        raise FragileError(f"checks.eps must be a positive number (pixel units) or null, got {out['eps']!r}")
    scales = out["scales"]
    if (not isinstance(scales, list) or not scales
            or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= 1 for s in scales)):
        raise FragileError(f"checks.scales must be a non-empty list of numbers in (0, 1], got {scales!r}")
    for key, known in (("metrics", RANDOM_METRICS), ("sanity_modes", MODES)):
        v = out[key]
        if not isinstance(v, list) or any(m not in known for m in v):
            raise FragileError(f"checks.{key} must be a list of {', '.join(known)}, got {v!r}")
    out["scales"] = [float(s) for s in scales]
    return out


def _path(store_path, method: str, defence: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=," else "_" for c in f"{method}__{defence}")
    return Path(store_path) / "checks" / f"{safe}.json"


def run_checks(model, cfg: dict, x: torch.Tensor, store_path, *, log=print) -> int:
    """Run the configured checks for every method x defence of ``cfg`` not yet stored; returns how many ran."""
    from fragile.defenses import create as create_defence
    from fragile.experiments.config import config_hash, label
    from fragile.experiments.runner import _method_params, sweep_beta

    checks, s = cfg["checks"], cfg["attack_settings"]
    eps = float(checks["eps"] or max(cfg["eps"]))
    xs = x[: checks["images"]]
    h = config_hash(cfg)
    ran = 0
    for method in cfg["methods"]:
        for defence in cfg["defences"]:
            path = _path(store_path, label(method), label(defence))
            if path.exists() and json.loads(path.read_text()).get("config_hash") == h:
                continue
            started = time.perf_counter()
            explainer = create_defence(defence["name"], model, method["name"], _method_params(model, method),
                                       **{k: v for k, v in defence.items() if k != "name"})
            result = check_method(explainer, xs, eps=eps, checks=checks, steps=checks["steps"] or s["steps"],
                                  beta=sweep_beta(model, x, s["beta"]), reduce=s["reduce"], pixel_scale=s["pixel_scale"])
            result.update({"method": label(method), "defence": label(defence), "config_hash": h,
                           "seconds": time.perf_counter() - started})
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temps(path.parent)
            text = json.dumps(result, allow_nan=True)
            write_atomic(path, lambda fh, text=text: fh.write(text.encode()))
            log(f"checks {label(method)} / {label(defence)}: {result['seconds']:.0f} s")
            ran += 1
    return ran


def _values(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().cpu().double()]


def check_method(explainer, x: torch.Tensor, *, eps: float, checks: dict, steps: int, beta, reduce: str = "abs_sum",
                 pixel_scale: float = 255.0, seed: int = 0) -> dict:
    """The checks of one explainer on ``x`` as a JSON-serialisable dict: ``worst_vs_random`` {metric: {random,
    worst, ratio: per-image lists}}, ``sanity`` {mode: {layers, randomised, spearman, ssim: per step, per image}},
    the settings and the seconds each part took."""
    from fragile.metrics.robustness import worst_vs_random
    from fragile.metrics.sanity import model_parameter_randomisation

    out = {"images": int(x.shape[0]), "eps": eps, "samples": checks["samples"], "steps": steps,
           "scales": checks["scales"], "beta": list(beta) if isinstance(beta, tuple) else beta, "seconds_part": {}}
    started = time.perf_counter()
    if checks["metrics"]:
        wvr = worst_vs_random(explainer, x, eps=eps, metrics=checks["metrics"], samples=checks["samples"], steps=steps,
                              scales=checks["scales"], beta=beta, reduce=reduce, seed=seed, pixel_scale=pixel_scale)
        out["worst_vs_random"] = {m: {k: _values(v) for k, v in d.items()} for m, d in wvr.items()}
    out["seconds_part"]["worst_vs_random"] = time.perf_counter() - started
    started = time.perf_counter()
    out["sanity"] = {}
    for mode in checks["sanity_modes"]:
        res = model_parameter_randomisation(explainer, x, mode=mode, groups=checks["sanity_groups"], seed=seed,
                                            reduce=reduce)
        out["sanity"][mode] = {"layers": res["layers"], "randomised": res["randomised"],
                               "total_layers": sum(len(g) for g in res["layers"]),
                               "spearman": [_values(r) for r in res["spearman"]],
                               "ssim": [_values(r) for r in res["ssim"]]}
    out["seconds_part"]["sanity"] = time.perf_counter() - started
    return out


def load_checks(store_path) -> list[dict]:
    """Every stored check result of a store (one dict per method x defence), in file-name order."""
    folder = Path(store_path) / "checks"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
