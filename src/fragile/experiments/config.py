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
# top-k intersection metric for every attack (default: the top-k attack's own k, else 100 / 1000);
# ``noise_control: true``, beside every non-random attack its equal-norm random-noise control
# (fragile.experiments.controls), stored as attack ``<attack>_noise_control``; ``check_every``, evaluate the
# iterate on the original model only every that many iterations and after the last (attacks.run; default 1);
# ``precision``, 'float32' or 'bfloat16', the attack's gradient step under bf16 autocast (attacks.run; default float32);
# ``subsample``, an integer or a fraction in (0, 1] of the path points / noise samples each gradient step uses
# (attacks.run; every method of the sweep must be IG, SmoothGrad or Uniform Gradient, or wrapped in a noise defence)
# ``second_order``, 'exact' or 'difference', how the gradient step differentiates a gradient map (attacks.run;
# default exact; 'difference' needs every method of the sweep to be the simple gradient); ``step_output``, 'model' or
# 'surrogate', where manipulate's gradient step takes its output term (attacks.run; default model)
OPTIONAL_ATTACK_SETTINGS = ("k", "noise_control", "check_every", "precision", "subsample", "second_order",
                            "step_output")
# optional top-level keys, also without a default: ``checks``, the robustness (worst case vs random) and sanity
# checks run after the attacks (fragile.experiments.checks)
OPTIONAL_KEYS = ("checks",)


def _check_keys(d: dict, valid, where: str) -> None:
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise FragileError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
                           f"valid keys: {', '.join(sorted(valid))}")


def _items(values, where: str) -> list[dict]:
    if isinstance(values, (str, dict)):
        values = [values]
    if not isinstance(values, list) or not values:
        raise FragileError(f"{where} must be a name, a mapping with 'name', or a non-empty list of them, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, str) and v:
            out.append({"name": v})
        elif isinstance(v, dict) and isinstance(v.get("name"), str):
            out.append(dict(v))
        else:
            raise FragileError(f"each entry of {where} must be a name or a mapping with 'name', got {v!r}")
    labels = [label(item) for item in out]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise FragileError(f"{where} lists {', '.join(map(repr, twice))} twice (its results would overwrite each other)")
    return out


def _integer(value, key: str, minimum: int = 1, allow_none: bool = False):
    """An integer >= ``minimum`` (not a bool, not a float or a string), or None if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise FragileError(f"{key} must be {what}{' or null' if allow_none else ''}, got {value!r}")
    return value


def _flag(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise FragileError(f"{key} must be true or false, got {value!r}")
    return value


def resolve(raw: dict) -> dict:
    """Validate and fill defaults; raise FragileError naming any problem (with the key it is at)."""
    if not isinstance(raw, dict):
        raise FragileError(f"a sweep config must be a mapping, got {type(raw).__name__}")
    raw = {k: v for k, v in raw.items() if k not in ("kind", "description", "paper", "reduced")}
    _check_keys(raw, [*DEFAULTS, *OPTIONAL_KEYS], "the sweep config")
    cfg = {**DEFAULTS, **raw}
    if not isinstance(cfg["name"], str) or not cfg["name"].strip():
        raise FragileError(f"name must be a non-empty string (it names the store folder), got {cfg['name']!r}")
    cfg["model"] = _check_model(cfg["model"])
    _check_images(cfg)
    cfg["limit"] = _integer(cfg["limit"], "limit", allow_none=True)
    cfg["batch_size"] = _integer(cfg["batch_size"], "batch_size")
    # null / 'auto': fragile.threads' contention-aware choice when the sweep starts (not part of the results)
    cfg["threads"] = None if cfg["threads"] == "auto" else _integer(cfg["threads"], "threads", allow_none=True)
    for key in ("correct_only", "store_arrays", "faithfulness"):
        cfg[key] = _flag(cfg[key], key)
    cfg["methods"] = _items(cfg["methods"], "methods")
    cfg["attacks"] = _items(cfg["attacks"], "attacks")
    cfg["defences"] = _items(cfg["defences"], "defences")
    settings = cfg["attack_settings"] or {}
    if not isinstance(settings, dict):
        raise FragileError(f"attack_settings must be a mapping, got {settings!r}")
    _check_keys(settings, [*ATTACK_SETTINGS, *OPTIONAL_ATTACK_SETTINGS], "attack_settings")
    cfg["attack_settings"] = {**ATTACK_SETTINGS, **settings}
    _check_attack_settings(cfg["attack_settings"])
    eps = cfg["eps"] if isinstance(cfg["eps"], list) else [cfg["eps"]]
    if not eps:
        raise FragileError("eps must be a positive number or a non-empty list of them (pixel units), got []")
    cfg["eps"] = [_check_eps(e, cfg["attack_settings"]["pixel_scale"], f"eps[{i}]") for i, e in enumerate(eps)]
    if len(set(cfg["eps"])) < len(cfg["eps"]):
        raise FragileError(f"eps lists a value twice: {cfg['eps']}")
    seeds = cfg["seeds"] if isinstance(cfg["seeds"], list) else [cfg["seeds"]]
    if not seeds:
        raise FragileError("seeds must be an integer or a non-empty list of integers, got []")
    cfg["seeds"] = [_integer(s, f"seeds[{i}]", minimum=0) for i, s in enumerate(seeds)]
    if len(set(cfg["seeds"])) < len(cfg["seeds"]):
        raise FragileError(f"seeds lists a value twice: {cfg['seeds']}")
    _check_names(cfg)
    _check_parameters(cfg)
    if "checks" in cfg:
        from fragile.experiments.checks import resolve_checks

        cfg["checks"] = resolve_checks(cfg["checks"])
    return cfg


def _check_eps(value, pixel_scale: float, key: str) -> float:
    from fragile.attacks.loop import _check_eps as check

    try:
        return check(value, pixel_scale)
    except FragileError as err:
        raise FragileError(f"{key}: {err}") from None


def _check_images(cfg: dict) -> None:
    """``images``: an image spec (checked for its form here; files are read when the sweep runs); ``resize``."""
    from fragile.data.files import resize_policy
    from fragile.data.images import parse_spec

    if not isinstance(cfg["images"], str):
        raise FragileError(f"images must be an image spec string (a folder, cifar10:<n>, imagenet:<n>, "
                           f"foolbox:<set>), got {cfg['images']!r}")
    try:
        parse_spec(cfg["images"])
    except FragileError as err:
        raise FragileError(f"images: {err}") from None
    if cfg["resize"] is not None and not isinstance(cfg["resize"], str):
        raise FragileError(f"resize must be null, center_crop or squash, got {cfg['resize']!r}")
    try:
        resize_policy(cfg["resize"])
    except FragileError as err:
        raise FragileError(f"resize: {err}") from None


def check_common(body: dict, where: str = "the experiment") -> None:
    """The keys every named experiment shares (``model``, ``images``, ``resize``, ``limit``, ``correct_only``),
    for the kinds that are not sweeps (a sweep checks them in :func:`resolve`)."""
    if "model" in body:
        _check_model(body["model"])
    _check_images({"images": body.get("images", "cifar10:100"), "resize": body.get("resize")})
    _integer(body.get("limit"), "limit", allow_none=True)
    _flag(body.get("correct_only", True), "correct_only")


def check_keywords(func, params: dict, where: str) -> None:
    """Refuse keys ``func`` takes no keyword for, naming them and the valid ones."""
    import inspect

    sig = inspect.signature(func).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in sig):
        return
    valid = sorted(p.name for p in sig if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise FragileError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in {where}; "
                           f"valid keys: {', '.join(valid)}")


def _check_model(value):
    """``model``: a spec string, or a mapping of fragile.models.loading.CONFIG_KEYS (spec, weights, model_args,
    mean, std, bounds, classes, size, channels, trust_pickle); unknown keys are refused."""
    from fragile.models.loading import check_config

    return check_config(value)


def _check_attack_settings(s: dict) -> None:
    """The attack loop's own checks, at config time (so ``--dry-run`` refuses what the run would)."""
    from fragile.attacks.loop import _check_int, _positive, check_beta_setting, check_precision, check_step_output
    from fragile.attacks.steps import STEPS
    from fragile.attacks.threat import NORMS
    from fragile.explanations.postprocess import REDUCTIONS
    from fragile.attacks.second_order import check_second_order
    from fragile.explanations.subsample import check_subsample

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
        if "check_every" in s:
            _check_int(s["check_every"], "attack_settings.check_every")
        if "precision" in s:
            check_precision(s["precision"], "attack_settings.precision")
        if "subsample" in s:
            check_subsample(s["subsample"], "attack_settings.subsample")
        if "second_order" in s:
            check_second_order(s["second_order"], "attack_settings.second_order")
        if "step_output" in s:
            check_step_output(s["step_output"], s.get("second_order", "exact"), "attack_settings.step_output")
        if not isinstance(s.get("noise_control", False), bool):
            raise FragileError(f"attack_settings.noise_control must be true or false, got {s['noise_control']!r}")
    except FragileError as err:
        raise FragileError(str(err) if str(err).startswith("attack_settings.") else f"attack_settings: {err}") from None
    if s["step"] is not None and (not isinstance(s["step"], str) or s["step"] not in STEPS):
        raise FragileError(f"unknown attack_settings.step {s['step']!r}; choose one of {sorted(STEPS)}")
    if not isinstance(s["norm"], str) or s["norm"] not in NORMS:
        raise FragileError(f"unknown attack_settings.norm {s['norm']!r}; choose one of {sorted(NORMS)}")
    if not isinstance(s["reduce"], str) or s["reduce"] not in REDUCTIONS:
        raise FragileError(f"unknown attack_settings.reduce {s['reduce']!r}; choose one of {sorted(REDUCTIONS)}")


def _check_names(cfg: dict) -> None:
    from fragile.attacks import available as attack_names
    from fragile.defenses import available as defence_names
    from fragile.explanations import available as method_names

    for key, known in (("methods", method_names()), ("attacks", attack_names()), ("defences", defence_names())):
        for item in cfg[key]:
            if item["name"] not in known:
                raise FragileError(f"unknown {key[:-1]} {item['name']!r} in {key}; known: {', '.join(known)}")


#: Attack parameters the sweep runner supplies or reads itself (``region`` / ``segments`` make the mask of
#: ``targeted``; ``manipulate``'s target map is the next image's map); tensors cannot come from a config.
RUNNER_ATTACK_PARAMETERS = {"targeted": ("region", "segments")}
TENSOR_ATTACK_PARAMETERS = ("mask", "target_map")


def attack_parameters(name: str) -> list[str]:
    """The parameters attack ``name`` takes in a config: its objective's signature, tensors left out, plus what
    the runner reads (``RUNNER_ATTACK_PARAMETERS``)."""
    import inspect

    from fragile.attacks.objectives import _OBJECTIVES

    init = inspect.signature(_OBJECTIVES[name].__init__).parameters.values()
    names = {p.name for p in init if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return sorted((names - set(TENSOR_ATTACK_PARAMETERS)) | set(RUNNER_ATTACK_PARAMETERS.get(name, ())))


def _check_parameters(cfg: dict) -> None:
    """Method, attack and defence parameters against what each takes (the signatures), naming the valid ones;
    the values of attack parameters by building the objective (method values are checked on the model, at
    ``--dry-run`` and before a run: ``runner.check_units``)."""
    from fragile.defenses import parameters as defence_parameters
    from fragile.explanations.registry import check_parameters, parameters

    for i, item in enumerate(cfg["methods"]):
        params = {k: v for k, v in item.items() if k != "name"}
        data_ok = {"patterns", "reference_data"} & set(parameters(item["name"], params.get("method")))
        if data_ok and isinstance(params.get("data"), str):
            params.pop("data")  # an image spec: the runner turns it into patterns / reference data
        check_parameters(item["name"], params, where=f"methods[{i}]")
    for key, valid_of in (("attacks", attack_parameters), ("defences", defence_parameters)):
        for i, item in enumerate(cfg[key]):
            params = {k: v for k, v in item.items() if k != "name"}
            valid = valid_of(item["name"])
            unknown = sorted(set(params) - set(valid))
            if unknown:
                raise FragileError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                                   f"for {key[:-1]} {item['name']!r} in {key}[{i}]; valid: {', '.join(valid) or 'none'}")
            if key == "attacks":
                _check_attack_values(item, f"{key}[{i}]")


def _check_attack_values(item: dict, where: str) -> None:
    """Build the objective with stand-ins for what the runner supplies, so bad values fail at load."""
    import torch

    from fragile.attacks import create

    params = {k: v for k, v in item.items() if k != "name"}
    if item["name"] == "targeted":
        region = params.pop("region", None)
        params.pop("segments", None)
        if region != "slic" and not (isinstance(region, list) and len(region) == 4
                                     and all(isinstance(r, int) and not isinstance(r, bool) and r >= 0 for r in region)
                                     and region[0] < region[1] and region[2] < region[3]):
            raise FragileError(f"{where}: attack 'targeted' needs region: [r0, r1, c0, c1] (rows r0:r1, columns "
                               f"c0:c1, r0 < r1, c0 < c1) or 'slic', got {region!r}")
        params["mask"] = torch.eye(2)
    if item["name"] == "manipulate":
        params["target_map"] = torch.ones(1, 2, 2)
    try:
        create(item["name"], **params)
    except FragileError as err:
        raise FragileError(f"{where}: {err}") from None
    except (TypeError, ValueError) as err:
        raise FragileError(f"{where}: bad parameters for attack {item['name']!r}: {err}") from None


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
