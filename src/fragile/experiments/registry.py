"""Named experiments: the YAML files shipped in ``experiments/configs``.

Each file has a ``kind`` (``sweep``, the default, or ``influence``, ``geometry``, ``faithfulness``,
``transfer``), a ``description``, the paper's claim (``paper``) and the reduced size used here
(``reduced``: overrides applied by ``fragile run NAME --reduced``). Sweeps are resolved by
:mod:`fragile.experiments.config`; the other kinds pass ``params`` to their function.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from fragile.errors import FragileError

CONFIGS = Path(__file__).parent / "configs"
META_KEYS = ("kind", "description", "paper", "reduced")


def names() -> list[str]:
    """The names of the shipped experiments (the YAML files in ``experiments/configs``), sorted."""
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def load_raw(spec: str) -> dict:
    """The mapping in the YAML file ``spec`` (a path, or the name of a shipped experiment), unresolved;
    :class:`FragileError` when there is no such file or it is not a YAML mapping.
    """
    path = Path(spec)
    if not path.exists():
        path = CONFIGS / f"{spec}.yaml"
    if not path.exists():
        raise FragileError(f"no config file {spec!r} and no shipped experiment of that name; shipped: {', '.join(names())}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise FragileError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise FragileError(f"{path} must hold a mapping")
    return raw


def set_path(raw: dict, dotted: str, value) -> None:
    """``attack_settings.steps=30`` style override."""
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise FragileError(f"cannot set {dotted}: {k} is not a mapping")
    node[keys[-1]] = value


def prepare(spec: str, *, reduced: bool = False, overrides: dict | None = None) -> tuple[str, dict, dict]:
    """(kind, body, meta) with the reduced-size overrides and the user's overrides applied."""
    raw = copy.deepcopy(load_raw(spec))
    meta = {k: raw.pop(k) for k in META_KEYS if k in raw}
    if reduced:
        for k, v in (meta.get("reduced") or {}).items():
            set_path(raw, k, v)
    for k, v in (overrides or {}).items():
        set_path(raw, k, v)
    return meta.get("kind", "sweep"), raw, meta
