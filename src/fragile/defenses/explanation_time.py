"""Explanation-time defences, by name: each turns (method, params) into a defended explainer.

- ``none``:              the method itself
- ``beta``:              beta-smoothing (Dombrowski et al. sec. 4): the method on the softplus(beta) model
- ``smoothgrad``:        SmoothGrad around the method (Dombrowski sec. 4.3 / footnote 7)
- ``uniform_gradient``:  Uniform Gradient around the method (Wang et al. Def. 8)
"""

from __future__ import annotations

from collections.abc import Callable

from fragile.errors import FragileError
from fragile.explanations import create as create_explainer
from fragile.explanations.base import Explainer


def _none(model, method: str, params: dict) -> Explainer:
    return create_explainer(method, model, **params)


def _beta(model, method: str, params: dict, beta: float = 3.0) -> Explainer:
    return create_explainer(method, model, smooth_beta=beta, **params)


def _noise(kind: str):
    def wrap(model, method: str, params: dict, **kw) -> Explainer:
        return create_explainer(kind, model, method=method, method_params=params, **kw)

    return wrap


DEFENSES: dict[str, Callable[..., Explainer]] = {
    "none": _none, "beta": _beta, "smoothgrad": _noise("smoothgrad"), "uniform_gradient": _noise("uniform_gradient"),
}


def available() -> list[str]:
    """The defence names ``create`` accepts, sorted."""
    return sorted(DEFENSES)


def parameters(name: str) -> list[str]:
    """The parameters defence ``name`` takes: ``beta`` for ``beta``, the noise method's own for the others."""
    from fragile.explanations.registry import parameters as method_parameters

    if name not in DEFENSES:
        raise FragileError(f"unknown defence {name!r}; known: {', '.join(available())}")
    if name in ("smoothgrad", "uniform_gradient"):
        return sorted(set(method_parameters(name)) - {"method", "method_params", "output", "output_key", "smooth_beta"})
    return ["beta"] if name == "beta" else []


def create(name: str, model, method: str, method_params: dict | None = None, **params) -> Explainer:
    """``create("beta", model, "gradient", beta=3.0)``: the defended explainer."""
    if name not in DEFENSES:
        raise FragileError(f"unknown defence {name!r}; known: {', '.join(available())}")
    try:
        return DEFENSES[name](model, method, dict(method_params or {}), **params)
    except TypeError as err:
        raise FragileError(f"bad parameters for defence {name!r}: {err}") from None
