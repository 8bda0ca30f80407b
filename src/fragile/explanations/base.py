"""The explainer interface shared by every method.

``explainer.attribute(x, target=None, create_graph=False)`` returns a map with the shape of
``x: (N, C, H, W)``. The explained score is ``output(model(x))[n, target[n]]`` with ``output`` one
of ``logit`` (default, Ghorbani et al.), ``softmax`` or ``log_softmax``. With
``create_graph=True`` the map is a differentiable function of ``x``.

``smooth_beta`` computes the method on the softplus(beta) version of the model (beta-smoothing,
Dombrowski et al. 2019, sec. 4), e.g. ``create("gradient", model, smooth_beta=1.0)``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fragile.errors import FragileError
from fragile.models.outputs import OUTPUT_KEY, check_output_key, class_scores, match_input, model_output, run_model
from fragile.models.smooth import check_beta, smooth_replacer
from fragile.models.surgery import FunctionalActivationGuard, check_eval_mode, swapped

OUTPUTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "logit": lambda y: y,
    "softmax": lambda y: torch.softmax(y, dim=1),
    "log_softmax": lambda y: torch.log_softmax(y, dim=1),
}


def check_input(x: torch.Tensor) -> torch.Tensor:
    """Validate an image batch ``x: (N, C, H, W)`` of finite floats."""
    if not isinstance(x, torch.Tensor):
        raise FragileError(f"x must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise FragileError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FragileError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise FragileError("x is an empty batch (N = 0)")
    if not bool(torch.isfinite(x).all()):
        raise FragileError("x contains NaN or inf values")
    return x


def check_target(target, n: int, num_classes: int, device) -> torch.Tensor:
    """``target``: int or (N,) integer tensor/sequence -> (N,) long tensor on ``device``."""
    try:
        t = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise FragileError(f"target must be None, an int or an (N,) integer tensor, got {target!r}") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise FragileError(f"target must be an int or integer tensor, got dtype {t.dtype}")
    t = t.long()
    if t.dim() == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise FragileError(f"target must be an int or have shape ({n},), got shape {tuple(t.shape)}")
    if bool(((t < 0) | (t >= num_classes)).any()):
        raise FragileError(f"target {t.tolist()} out of range: the model has {num_classes} classes")
    return t


def int_param(value, name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    """A method parameter that must be an integer >= ``minimum`` (not a bool, float or string)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise FragileError(f"{name} must be an integer >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def float_param(value, name: str, minimum: float = 0.0) -> float:
    """A method parameter that must be a finite real number >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < minimum:
        raise FragileError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def check_map(h: torch.Tensor, method: str) -> None:
    """A map computed from finite input must be finite: refuse NaN / inf (overflow in the backward pass)."""
    bad = ~torch.isfinite(h.detach()).reshape(h.shape[0], -1).all(1)
    if bool(bad.any()):
        raise FragileError(f"{method}: the map is NaN or inf for {int(bad.sum())} of {h.shape[0]} images (the backward "
                           "pass overflowed: inputs far outside the data range, or extreme method parameters)")


def model_bounds(model: nn.Module) -> tuple[float, float]:
    """The raw data range (low, high) the model declares (``Preprocessed``), else (0, 1)."""
    return getattr(model, "bounds", (0.0, 1.0))


class Explainer:
    """Base class. Subclasses implement :meth:`_attribute` (and optionally :meth:`_surgery`).

    ``output_key``: where the class scores are when the model returns a mapping or an object (default
    ``"logits"``); tuples give their first element, single-logit binary models two classes
    (``fragile.models.outputs``). ``x`` is cast to the model's dtype; the map is in that dtype.
    """

    name = "explainer"
    #: Whether maps depend on replacing activation modules (then functional ones are routed to the rules).
    needs_modules = False
    #: Whether the map is a smooth function of x even on a piecewise-linear (ReLU) network (noise
    #: averaging, path integrals); see :attr:`is_smooth`.
    smooth_in_input = False
    #: Whether the map is computed by plain autograd through the model's own modules (no rules, no hooks on
    #: named layers): then the attack's gradient step may run on ``fragile.models.fast``'s rewrite of the model.
    plain_autograd = False

    def __init__(self, model: nn.Module, *, output: str = "logit", smooth_beta: float | None = None,
                 output_key: str = OUTPUT_KEY):
        if not isinstance(model, nn.Module):
            raise FragileError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(output, str) or output not in OUTPUTS:
            raise FragileError(f"unknown output {output!r}; choose one of {sorted(OUTPUTS)}")
        self.model = model
        self.output = output
        self.output_key = check_output_key(output_key)
        self.smooth_beta = None if smooth_beta is None else check_beta(smooth_beta)

    # -- public ---------------------------------------------------------------------------
    def attribute(self, x: torch.Tensor, target=None, create_graph: bool = False) -> torch.Tensor:
        """Explanation map of ``x: (N, C, H, W)`` for ``target`` (None: the predicted class)."""
        x = match_input(self.model, check_input(x))
        check_eval_mode(self.model)
        if target is None:
            target = self.predict(x)
        with torch.enable_grad(), self.context() as net:  # maps are gradients: work under no_grad too
            attr = self._attribute(net, x, target, create_graph)
        check_map(attr, self.name)
        return attr if create_graph else attr.detach()

    def attribute_with_output(self, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
        """(map, raw model output (N, K)) of the unmodified forward, sharing one pass where the method
        allows (gradient-type methods); used by the attack loop's per-iteration check."""
        x = match_input(self.model, check_input(x))
        check_eval_mode(self.model)
        with torch.enable_grad(), self.context() as net:
            attr, out = self._attribute_with_output(net, x, target)
        check_map(attr, self.name)
        if out is None:  # outside the context: the unmodified model
            with torch.no_grad():
                out = model_output(self.model, x, self.output_key)
        return attr.detach(), out.detach()

    def _attribute_with_output(self, net, x, target):
        """(map, raw output or None); None: the output is computed separately on the unmodified model."""
        return self._attribute(net, x, target, False), None

    def attribute_with_step_output(self, x: torch.Tensor, target) -> tuple[torch.Tensor, torch.Tensor]:
        """(map (N, C, H, W), raw output (N, K)) of ``x``, both with their graph (``create_graph``): the output of
        the network the map is computed on (softplus(``smooth_beta``) if set, else the model), as the Dombrowski
        reference's gradient step takes its output term (``attacks.run(step_output='surrogate')``). Gradient-type
        methods take both from one forward pass (one forward and one backward fewer than the map and a separate
        output); the others run that network's forward once more."""
        x = match_input(self.model, check_input(x))
        check_eval_mode(self.model)
        with torch.enable_grad(), self.context() as net:
            attr, out = self._attribute_with_step_output(net, x, target)
        check_map(attr, self.name)
        if out is None:  # outside the method's surgery: the (smoothed) network's plain forward
            with torch.enable_grad(), self._smoothing(), FunctionalActivationGuard(self.model):
                out = model_output(self.model, x, self.output_key)
        return attr, out

    def _attribute_with_step_output(self, net, x, target):
        """(map with its graph, output of the smoothed network with its graph, or None: computed separately)."""
        return self._attribute(net, x, target, True), None

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted class of the (unmodified) model, (N,)."""
        x = match_input(self.model, check_input(x))
        with torch.no_grad():
            return model_output(self.model, x, self.output_key).argmax(dim=1)

    def smoothed(self, beta: float | None) -> Explainer:
        """The same method on the softplus(beta) model (a shallow copy; ``None``: the original)."""
        clone = copy.copy(self)
        clone.smooth_beta = None if beta is None else check_beta(beta)
        return clone

    def surrogate(self, beta: float | None) -> Explainer:
        """What an attack differentiates: the explanation itself if it is already beta-smoothed (a
        defence is attacked directly, Dombrowski sec. 4.2), else its softplus(beta) version."""
        return self if self.smooth_beta is not None else self.smoothed(beta)

    @property
    def is_smooth(self) -> bool:
        """True when the map is a smooth function of the input even on a piecewise-linear (ReLU)
        network: beta-smoothed (``smooth_beta`` set), or smooth by construction (``smooth_in_input``:
        noise-averaged methods, integrated gradients)."""
        return self.smooth_beta is not None or self.smooth_in_input

    def reseed(self, seed: int) -> None:
        """Restart any randomness of the method from ``seed`` (the attack loop's seed), so a run is
        reproducible. No-op for deterministic methods; noise-averaged ones restart their stream."""

    def independent_noise(self, seed: int) -> Explainer:
        """This explainer drawing from a noise stream of its own, started at ``seed`` (a noise-averaged method:
        a shallow copy whose stream is not shared with this one; deterministic methods: ``self``)."""
        return self

    def average_points(self) -> int | None:
        """How many terms (path points, noise samples) the map is an average of, which an attack's gradient step may
        subsample (``fragile.explanations.subsample``); None: the map is not such an average (this base class)."""
        return None

    def subsampled(self, points: int, generator: torch.Generator) -> Explainer:
        """An unbiased estimator of this map from ``points`` of its :meth:`average_points` terms, the subset drawn
        from ``generator`` (CPU); only methods whose :meth:`average_points` is an int define it."""
        raise FragileError(f"{self.name} is not an average over path points or noise samples: it has nothing to "
                           "subsample")

    def __call__(self, x, target=None, create_graph=False):
        """``explainer(x, target, create_graph)`` is :meth:`attribute`: the map of ``x: (N, C, H, W)``, same shape."""
        return self.attribute(x, target=target, create_graph=create_graph)

    # -- model surgery --------------------------------------------------------------------
    @contextlib.contextmanager
    def context(self) -> Iterator[nn.Module]:
        """The model as this method sees it: softplus-smoothed if asked, then method surgery."""
        with self._smoothing(), self._surgery(self.model) as net, FunctionalActivationGuard(self.model):
            yield net  # the guard: functional activations, SDPA

    @contextlib.contextmanager
    def _smoothing(self) -> Iterator[None]:
        """The model's activations swapped for softplus(``smooth_beta``) inside (nothing if it is None)."""
        with swapped(self.model, smooth_replacer(self.smooth_beta)) if self.smooth_beta is not None \
                else contextlib.nullcontext():
            yield

    @contextlib.contextmanager
    def _surgery(self, model: nn.Module) -> Iterator[nn.Module]:
        yield model

    # -- helpers for subclasses -----------------------------------------------------------
    def _scores(self, net: nn.Module, x: torch.Tensor, target, raw: bool = False):
        """(transformed outputs (N, K), target (N,)[, raw outputs])."""
        out = class_scores(run_model(net, x), x.shape[0], self.output_key)
        y = OUTPUTS[self.output](out)
        t = check_target(target, x.shape[0], y.shape[1], x.device)
        return (y, t, out) if raw else (y, t)

    def _input_grad(self, net: nn.Module, x: torch.Tensor, target, create_graph: bool,
                    with_output: bool = False):
        """Gradient of the target score at the input (and the raw output if ``with_output``)."""
        xg = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
        y, t, out = self._scores(net, xg, target, raw=True)
        seed = torch.zeros_like(y).scatter_(1, t[:, None], 1.0)
        (g,) = torch.autograd.grad(y, xg, seed, create_graph=create_graph)
        return (g, out) if with_output else g

    def _attribute(self, net: nn.Module, x: torch.Tensor, target, create_graph: bool) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output={self.output!r}, smooth_beta={self.smooth_beta})"
