"""Sweep configuration: YAML -> validated, fully resolved dict with a stable hash.

A sweep is images x methods x attacks x eps x defences x seeds. Items of ``methods``, ``attacks`` and
``defences`` are a name or a mapping ``{name: ..., <params>}``. Unknown keys are errors that name the
key and list the valid ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fragile.errors import FragileError

DEFAULTS: dict[str, Any] = {
    "name": "sweep",
    "model": "resnet20_cifar10",
    "images": "cifar10:20",
    "resize": None,   # None: refuse images of another size than the model's; "center_crop" or "squash"
    "limit": None,
    "correct_only": True,
    "methods": ["gradient"],
    "attacks": ["random_sign", "topk", "mass_center"],
    "eps": [2, 4, 8],
    "defences": ["none"],
    "seeds": [0],
    "attack_settings": {},
    "batch_size": 16,
    "store_arrays": True,
    "threads": None,
    "faithfulness": False,
}

# eps, step_size and lr in pixel units of ``pixel_scale``; beta 'auto': chosen for the model (attacks.surrogate)
ATTACK_SETTINGS = {"steps": 300, "step": None, "step_size": 0.5, "lr": 0.05, "norm": "linf", "beta": "auto",
                   "early_stop": None, "reduce": "abs_sum", "pixel_scale": 255.0}
# optional, without a default (so configs that leave them out keep their hash): ``k``, the k of the
# top-k intersection metric for every attack (default: the top-k attack's own k, else 100 / 1000)
OPTIONAL_ATTACK_SETTINGS = ("k",)


def _check_keys(d: dict, valid, where: str) -> None:
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise FragileError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
                           f"valid keys: {', '.join(sorted(valid))}")


def _items(values, where: str) -> list[dict]:
    if isinstance(values, (str, dict)):
        values = [values]
    out = []
    for v in values:
        if isinstance(v, str):
            out.append({"name": v})
        elif isinstance(v, dict) and isinstance(v.get("name"), str):
            out.append(dict(v))
        else:
            raise FragileError(f"each entry of {where} must be a name or a mapping with 'name', got {v!r}")
    return out


def resolve(raw: dict) -> dict:
    """Validate and fill defaults; raise FragileError naming any problem."""
    if not isinstance(raw, dict):
        raise FragileError(f"a sweep config must be a mapping, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k not in ("kind", "description", "paper", "reduced")}
    _check_keys(raw, DEFAULTS, "the sweep config")
    cfg = {**DEFAULTS, **raw}
    cfg["model"] = _check_model(cfg["model"])
    cfg["methods"] = _items(cfg["methods"], "methods")
    cfg["attacks"] = _items(cfg["attacks"], "attacks")
    cfg["defences"] = _items(cfg["defences"], "defences")
    settings = cfg["attack_settings"] or {}
    if not isinstance(settings, dict):
        raise FragileError("attack_settings must be a mapping")
    _check_keys(settings, [*ATTACK_SETTINGS, *OPTIONAL_ATTACK_SETTINGS], "attack_settings")
    cfg["attack_settings"] = {**ATTACK_SETTINGS, **settings}
    _check_attack_settings(cfg["attack_settings"])
    eps = cfg["eps"] if isinstance(cfg["eps"], list) else [cfg["eps"]]
    if not eps or any(not isinstance(e, (int, float)) or e <= 0 for e in eps):
        raise FragileError(f"eps must be positive numbers, got {cfg['eps']!r}")
    cfg["eps"] = [float(e) for e in eps]
    seeds = cfg["seeds"] if isinstance(cfg["seeds"], list) else [cfg["seeds"]]
    cfg["seeds"] = [int(s) for s in seeds]
    if int(cfg["batch_size"]) < 1:
        raise FragileError("batch_size must be >= 1")
    _check_names(cfg)
    return cfg


def _check_model(value):
    """``model``: a spec string, or a mapping of fragile.models.loading.CONFIG_KEYS (spec, weights, model_args,
    mean, std, bounds, classes, size, channels, trust_pickle); unknown keys are refused."""
    from fragile.models.loading import check_config

    return check_config(value)


def _check_attack_settings(s: dict) -> None:
    """The attack loop's own checks, at config time (so ``--dry-run`` refuses what the run would)."""
    from fragile.attacks.loop import _check_int, _positive, check_beta_setting
    from fragile.attacks.steps import STEPS
    from fragile.attacks.threat import NORMS

    try:
        _check_int(s["steps"], "attack_settings.steps")
        _positive(s["step_size"], "attack_settings.step_size")
        _positive(s["lr"], "attack_settings.lr")
        _positive(s["pixel_scale"], "attack_settings.pixel_scale")
        check_beta_setting(s["beta"])
        if s["early_stop"] is not None:
            _check_int(s["early_stop"], "attack_settings.early_stop")
        if s.get("k") is not None:
            _check_int(s["k"], "attack_settings.k")
    except FragileError as err:
        raise FragileError(f"in attack_settings: {err}") from None
    if s["step"] is not None and s["step"] not in STEPS:
        raise FragileError(f"unknown attack_settings.step {s['step']!r}; choose one of {sorted(STEPS)}")
    if s["norm"] not in NORMS:
        raise FragileError(f"unknown attack_settings.norm {s['norm']!r}; choose one of {sorted(NORMS)}")


def _check_names(cfg: dict) -> None:
    from fragile.attacks import available as attack_names
    from fragile.defenses import available as defence_names
    from fragile.explanations import available as method_names

    for key, known in (("methods", method_names()), ("attacks", attack_names()), ("defences", defence_names())):
        for item in cfg[key]:
            if item["name"] not in known:
                raise FragileError(f"unknown {key[:-1]} {item['name']!r} in {key}; known: {', '.join(known)}")


def load(path: str | Path) -> dict:
    """Read a YAML sweep config and resolve it."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise FragileError(f"{path} is not valid YAML: {err}") from None
    except OSError as err:
        raise FragileError(f"cannot read config {path}: {err}") from None
    return resolve(raw or {})


def config_hash(cfg: dict) -> str:
    """Stable hash of the resolved config (what determines the results)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def label(item: dict) -> str:
    """'name' or 'name(k=v,...)' for a method / attack / defence entry."""
    params = {k: v for k, v in item.items() if k != "name"}
    return item["name"] if not params else item["name"] + "(" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + ")"
