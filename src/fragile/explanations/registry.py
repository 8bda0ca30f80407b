"""The registry of explanation methods: ``create(name, model, **params)``."""

from __future__ import annotations

from fragile.errors import FragileError
from fragile.explanations.base import Explainer

_REGISTRY: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of the registered methods."""
    return sorted(_REGISTRY)


def create(name: str, model, **params) -> Explainer:
    """An explainer for ``model``: ``create("integrated_gradients", model, steps=100)``.

    Every method accepts ``output`` ('logit', 'softmax', 'log_softmax') and ``smooth_beta``
    (beta-smoothing: the method on the softplus(beta) model).
    """
    if name not in _REGISTRY:
        raise FragileError(f"unknown explanation method {name!r}; known: {', '.join(available())}")
    try:
        return _REGISTRY[name](model, **params)
    except TypeError as err:  # unexpected keyword
        raise FragileError(f"bad parameters for {name!r}: {err}") from None
