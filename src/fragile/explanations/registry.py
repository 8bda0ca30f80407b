"""The registry of explanation methods: ``create(name, model, **params)``."""

from __future__ import annotations

import inspect

from fragile.errors import FragileError
from fragile.explanations.base import Explainer

_REGISTRY: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: register an :class:`Explainer` subclass under its ``name`` for :func:`create`."""
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
    check_parameters(name, params)
    try:
        return _REGISTRY[name](model, **params)
    except FragileError:
        raise
    except (TypeError, ValueError) as err:  # a value of the wrong type deep in a constructor
        raise FragileError(f"bad parameters for {name!r}: {err}") from None


def parameters(name: str, method=None) -> list[str]:
    """The keyword parameters method ``name`` takes (from the signatures of its class's ``__init__`` and of the
    classes its ``**kw`` reach); a noise-averaged method also takes those of its inner ``method``."""
    if name not in _REGISTRY:
        raise FragileError(f"unknown explanation method {name!r}; known: {', '.join(available())}")
    names: set[str] = set()
    for klass in _REGISTRY[name].__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = list(inspect.signature(init).parameters.values())[2:]  # self, model
        names |= {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        if klass is Explainer or not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    if {"method", "method_params"} <= names:  # noise averaging: the rest goes to the inner method
        inner = method if isinstance(method, str) and method in _REGISTRY else "gradient"
        names |= set(parameters(inner)) if inner != name else set()
    return sorted(names)


def check_parameters(name: str, params: dict, where: str | None = None) -> None:
    """Refuse parameters method ``name`` does not take, naming them and the valid ones."""
    valid = parameters(name, params.get("method"))
    unknown = sorted(set(params) - set(valid))
    if unknown:
        at = f" in {where}" if where else ""
        raise FragileError(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for "
                           f"method {name!r}{at}; valid: {', '.join(valid)}")
