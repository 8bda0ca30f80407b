"""Layer-wise relevance propagation (Bach et al. 2015; Montavon et al. 2017; Dombrowski et al. 2019 eq. 3).

Relevance starts at the explained score, R_out = f_c(x) e_c, and is redistributed layer by layer.
For a linear layer z = f(a; W, b) every rule here has the form

    R_in = sum_j k_j * a_j * [J_j^T (R_out / stab(sum_j k_j f(a_j; theta_j)))]

with modified inputs a_j, modified parameters theta_j and signs k_j:

    epsilon:  a = x,                          theta = (W, b)                      k = (+1)
    zplus:    a = (x^+, x^-),                 theta = ((W^+, b^+), (W^-, 0))       k = (+1, +1)
              (= alpha1-beta0; for the non-negative inputs after a ReLU: x W^+ only, and so computed:
              the x^- term, identically zero there, is skipped)
    zb:       a = (x, l, h),                  theta = ((W, b), (W^+, b^+), (W^-, b^-))  k = (+1, -1, -1)
              (Dombrowski eq. 3: bounded input l <= x <= h, used in the first layer)

``stab(z) = z + eps * sign(z)`` (sign(0) = +1). Activations, BatchNorm and the input normalisation pass
relevance through unchanged, average pooling uses the z rule (``Norm``), max pooling routes relevance to
the arg-max (its gradient), and modules that only select/pad inputs (flag ``selects_inputs = True``,
e.g. the option-A ResNet shortcut) pass it by their gradient.

Residual networks. With ``canonize=True`` (default) the model is first rewritten by
:func:`fragile.models.canonizers.canonized` (reversibly, inside the explainer's ``with`` block):
BatchNorms merged into the conv/linear layer before them, and the addition of recognised residual
blocks (torchvision ``BasicBlock`` / ``Bottleneck``, the CIFAR ResNets) made an explicit ``Sum``
module. A sum is a linear layer with unit weights, and by default it gets the composite's rule
``rule`` for such a layer (``sum_rule``):

    z      (rule epsilon / z):  R_i = a_i / stab(sum_j a_j) R       relevance in proportion to the
                                                                     contributions (zennit's ``Norm``)
    zplus  (rule zplus):        R_i = a_i^+ / stab(sum_j a_j^+) R   to the positive contributions

Both conserve relevance. They differ where the branch and the shortcut have opposite signs: z gives
the negative one negative relevance and the other more than R; z+ keeps relevance non-negative, as
the z+ layers around it do. On the softplus surrogate (``smooth_beta``) z is unstable: a sum near 0
still receives relevance (softplus(0) > 0) and divides it by ~``stabilizer`` (pretrained ResNet-20:
beta-10 maps 140x larger than the unsmoothed one, Spearman 0.70 to it; with z+ 0.97x, 0.998). zennit's
``ResNetCanonizer`` with its built-in composites is ``sum_rule="z"``. Additions written in ``forward``
of other blocks receive the gradient, so relevance is copied to both branches; conservation then
fails there (as with ``canonize=False``).

The default composite (Dombrowski et al.) is zB in the first conv/linear layer, z+ in all others; the
name ``deep_taylor`` is the same z+/zB composite (Montavon et al. 2017). Every step is a differentiable
torch expression, so ``create_graph=True`` gives the gradient of the map (on ReLU networks it is
piecewise constant; use ``smooth_beta`` for a non-zero second derivative).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from fragile.errors import FragileError
from fragile.explanations.base import Explainer, model_bounds
from fragile.explanations.modified import (
    AVGPOOL,
    LINEAR,
    MAXPOOL,
    KeepsSign,
    Layout,
    RuleModule,
    check_rules,
    elementwise,
    handles,
    is_activation,
    modified_input_grad,
    rule_surgery,
    vjp,
)
from fragile.models import frozen_conv
from fragile.models.canonizers import Sum, canonized
from fragile.models.preprocessing import Normalize
from fragile.models.smooth import SoftplusReLU

PASS = (nn.modules.batchnorm._BatchNorm,)
#: Modules whose output values are some of their input's: a non-negative input stays known as such through them.
KEEPS_SIGN = (*MAXPOOL, nn.Flatten, nn.Unflatten, nn.Dropout)


def stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps * sign(z)`` with sign(0) = +1."""
    return z + torch.where(z >= 0, z.new_tensor(eps), z.new_tensor(-eps))


def _keep(p, name):
    return p


def _pos(p, name):
    return p.clamp(min=0)


def _neg(p, name):
    return p.clamp(max=0)


def _neg_nobias(p, name):
    return torch.zeros_like(p) if name == "bias" else p.clamp(max=0)


class LinearRule:
    """Generic rule: ``terms`` = [(input modifier, parameter modifier, sign k)] (module docstring).

    ``nonnegative_terms``: the terms that remain for an input known to be >= 0 (None: the same terms).
    """

    def __init__(self, module: nn.Module, terms, eps: float, nonnegative_terms=None):
        self.module, self.terms, self.eps = module, terms, eps
        self.nonnegative_terms = nonnegative_terms

    def for_nonnegative_input(self) -> LinearRule | None:
        """The rule with only ``nonnegative_terms``, for an input known to be >= 0 (the output of a ReLU, softplus,
        ...: ``fragile.explanations.modified``); None when no term drops out.

        Exact: for x >= 0 the z+ rule's term ``(x^-, W^-, 0)`` is zero, in ``z`` (a convolution of zeros, no
        bias) and in ``R_in`` (``x^- * ...``); ``x^+ = x``, with the same derivative (``clamp`` passes the gradient
        at 0). The map is the same to the bit (up to the sign of zeros). Its derivative differs only where the
        input is exactly 0 *and* has a non-zero derivative: there ``x^-`` has derivative 1, so the full rule adds
        ``J_-^T s`` (a one-sided derivative at the kink; after a ReLU whose pre-activation is exactly 0; never after
        softplus, whose output is 0 only where its derivative underflows to 0 too).
        """
        if self.nonnegative_terms is None:
            return None
        return LinearRule(self.module, self.nonnegative_terms, self.eps)

    def _f(self, a, param_mod):
        params = {n: param_mod(p, n) for n, p in self.module.named_parameters(recurse=False)}
        return _layer(self.module, a, params)

    def forward(self, x):
        """The layer's ordinary output ``module(x)``."""
        return _layer(self.module, x, dict(self.module.named_parameters(recurse=False)))

    def backward(self, relevance, x, graph):
        """``R_in = sum_j k_j * a_j * J_j^T (R_out / stab(sum_j k_j f(a_j; theta_j)))`` (module docstring).

        ``relevance``: R_out, the layer's output shape; ``x``: the true copy's layer input; returns R_in, shaped
        like ``x``. ``graph``: build a differentiable graph (``create_graph=True``).
        """
        inputs = [mod_in(x) for mod_in, _, _ in self.terms]
        z = _signed_sum(k * self._f(a, pm) if k != 1.0 else self._f(a, pm) for a, (_, pm, k) in zip(inputs, self.terms))
        s = relevance / stabilize(z, self.eps)
        return _signed_sum(k * a * self._transposed(s, x, pm, graph) if k != 1.0 else a * self._transposed(s, x, pm, graph)
                           for a, (_, pm, k) in zip(inputs, self.terms))

    def _transposed(self, s, x, param_mod, graph):
        """``J^T s`` of the affine ``f(.; theta)`` (independent of where it is evaluated), shaped like ``x``.

        A convolution (zero padding given as numbers): the transposed convolution of ``s`` with the rule's weights
        (:func:`fragile.models.frozen_conv.conv_transpose`), without the forward pass on zeros autograd would need to
        get there; its own derivative is one convolution (the ``aten.convolution_backward`` op it replaced computed a
        weight-gradient convolution besides). Other layers: that vjp.
        """
        m = self.module
        if frozen_conv.zero_padded(m):
            with torch.set_grad_enabled(graph):
                return frozen_conv.conv_transpose(m, s, param_mod(m.weight, "weight"), x.shape)
        u = torch.zeros_like(x, requires_grad=True)
        return vjp(self._f(u, param_mod), u, s, graph)


def _layer(module: nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``module`` on ``x`` with ``params``; a convolution with constant parameters (the canonizer's merged layers, a
    frozen model) by :func:`fragile.models.frozen_conv.conv`, whose double backward computes no unused weight
    gradient (the same values and input derivatives up to float rounding)."""
    weight, bias = params.get("weight"), params.get("bias")
    if weight is not None and frozen_conv.applies(module, weight, bias):
        return frozen_conv.conv(module, x, weight, bias)
    return functional_call(module, params, (x,))


def _signed_sum(terms):
    """The sum of an iterable of tensors, from the first (no ``0 +``: one addition less per layer)."""
    it = iter(terms)
    total = next(it)
    for t in it:
        total = total + t
    return total


def epsilon_rule(module, *, eps=1e-6, **_):
    """The epsilon rule for a conv/linear ``module``: ``a = x``, ``theta = (W, b)``, ``stab`` with ``eps``."""
    return LinearRule(module, [(lambda x: x, _keep, 1.0)], eps)


def zplus_rule(module, *, stabilizer=1e-6, **_):
    """The z+ (alpha1-beta0) rule for a conv/linear ``module``: terms ``(x^+, W^+, b^+)`` and ``(x^-, W^-, 0)``,
    stabilised with ``stabilizer``.
    """
    return LinearRule(module, [(lambda x: x.clamp(min=0), _pos, 1.0),
                               (lambda x: x.clamp(max=0), _neg_nobias, 1.0)], stabilizer,
                      nonnegative_terms=[(_identity, _pos, 1.0)])


def _identity(x):
    return x


def zb_rule(module, *, low, high, stabilizer=1e-6, **_):
    """The zB rule (Dombrowski eq. 3) for the first conv/linear ``module``, inputs bounded by ``low <= x <= high``
    (tensors broadcastable to the layer input): terms ``(x, W, b) - (l, W^+, b^+) - (h, W^-, b^-)``.
    """
    return LinearRule(module, [(lambda x: x, _keep, 1.0),
                               (lambda x: torch.broadcast_to(low.to(x), x.shape), _pos, -1.0),
                               (lambda x: torch.broadcast_to(high.to(x), x.shape), _neg, -1.0)],
                      stabilizer)


#: Rules for conv/linear layers, by name.
RULES: dict[str, Callable] = {
    "epsilon": epsilon_rule,
    "z": lambda module, **kw: epsilon_rule(module, eps=kw.get("stabilizer", 1e-6)),
    "zplus": zplus_rule,
    "alpha1beta0": zplus_rule,
    "zb": zb_rule,
}


class PassRule:
    """Relevance passes unchanged (activations, BatchNorm); the input normalisation undoes its
    channel flip so relevance stays aligned with the raw image. ``output_nonnegative``: ``f(x) >= 0`` for every
    ``x`` (ReLU, softplus, ...), so the next layer's rule may drop terms that are zero on such inputs."""

    def __init__(self, f, flip: bool = False, output_nonnegative: bool = False):
        self.f, self.flip, self.output_nonnegative = f, flip, output_nonnegative

    def forward(self, x):
        """``f(x)``: the module's ordinary value."""
        return self.f(x)

    def backward(self, relevance, x, graph):
        """``relevance`` unchanged (channels flipped back when the normalisation reversed them, ``flip``)."""
        return relevance.flip(1) if self.flip else relevance


def nonnegative_activation(module: nn.Module) -> bool:
    """Whether the activation ``module``'s value is >= 0 for every input, exactly in floating point: ReLU, ReLU6 /
    Hardtanh with ``min_val >= 0`` (clamps), the softplus surrogate of ReLU and ``nn.Softplus`` with ``beta > 0``
    (``log1p(exp(.)) >= 0``), Sigmoid. Not the other surrogates (differences of softplus terms)."""
    if isinstance(module, nn.ReLU) or type(module) in (SoftplusReLU, nn.Sigmoid):  # ReLU: computed as a clamp
        return True
    if isinstance(module, nn.Hardtanh):  # a clamp
        return module.min_val >= 0
    return type(module) is nn.Softplus and module.beta > 0


def norm_rule(module, *, stabilizer=1e-6, **_):
    """z rule for parameter-free linear layers (average pooling; its output is >= 0 where its input is)."""
    rule = LinearRule(module, [(lambda x: x, _keep, 1.0)], stabilizer)
    rule.preserves_nonnegative = True
    return rule


class SumRule:
    """A residual sum of stacked summands ``a: (N, K, ...)`` (unit weights, so W^- = 0 for z+):

        z:   R_i = a_i / stab(sum_j a_j) R            z+:  R_i = a_i^+ / stab(sum_j a_j^+) R
    """

    def __init__(self, positive: bool, eps: float):
        self.positive, self.eps = positive, eps

    def forward(self, a):
        """``(N, K, ...) -> (N, ...)``: the sum of the K stacked summands."""
        return a.sum(1)

    def backward(self, relevance, a, graph):
        """Relevance of each summand, ``(N, ...) -> (N, K, ...)``: ``R_i = a_i / stab(sum_j a_j) R`` (z), or with ``a^+``
        in place of ``a`` (z+). ``a``: the true copy's stacked summands.
        """
        a = a.clamp(min=0) if self.positive else a
        return a * (relevance / stabilize(a.sum(1), self.eps)).unsqueeze(1)


#: Rules for residual sums, by name; and the sum rule each layer rule implies by default.
SUM_RULES: dict[str, Callable] = {"z": lambda module, *, stabilizer: SumRule(False, stabilizer),
                                  "zplus": lambda module, *, stabilizer: SumRule(True, stabilizer)}
_SUM_RULE_OF = {"zplus": "zplus", "alpha1beta0": "zplus"}


def _first_layer(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, LINEAR)), None)


def default_box(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """zB bounds at the first layer: the raw data range mapped through the model's Normalize."""
    low, high = model_bounds(model)
    norm = next((m for m in model.modules() if isinstance(m, Normalize)), None)
    if norm is None:
        return torch.tensor(low), torch.tensor(high)
    ones = torch.ones_like(norm.mean)
    with torch.no_grad():
        return norm(ones * low), norm(ones * high)


_HANDLED = handles(*LINEAR, *AVGPOOL, *MAXPOOL, Sum)


def _supports(module: nn.Module) -> bool:
    """The modules LRP has a rule for; also an empty ``nn.Sequential`` (an identity shortcut)."""
    return _HANDLED(module) or (type(module) is nn.Sequential and len(module) == 0)


class LRP(Explainer):
    """LRP composite: ``first_rule`` in the first conv/linear layer, ``rule`` in the other convs,
    ``linear_rule`` (default: ``rule``) in the other dense layers. Rules: {rules}.

    ``low``/``high``: zB bounds in the first layer's input space (default: the model's data range
    through its ``Normalize``). ``epsilon``: epsilon of the epsilon rule; ``stabilizer``: the others'
    (and the sums'). ``canonize``: merge BatchNorms and make residual additions ``Sum`` modules first
    (module docstring); ``False``: the rules on the model as it is. ``sum_rule``: ``"z"`` or
    ``"zplus"`` for those sums (default: ``"zplus"`` when ``rule`` is z+, else ``"z"``).
    """

    name = "lrp"
    needs_modules = True
    #: max pooling, Flatten, Dropout, ... pass relevance by their gradient
    supports = staticmethod(_supports)

    def __init__(self, model, *, rule: str = "zplus", first_rule: str | None = "zb",
                 linear_rule: str | None = None, epsilon: float = 1e-6, stabilizer: float = 1e-6,
                 low=None, high=None, canonize: bool = True, sum_rule: str | None = None, **kw):
        super().__init__(model, **kw)
        for r in (rule, first_rule, linear_rule):
            if r is not None and r not in RULES:
                raise FragileError(f"unknown LRP rule {r!r}; choose one of {sorted(RULES)}")
        self.rule, self.first_rule, self.linear_rule = rule, first_rule, linear_rule or rule
        self.epsilon, self.stabilizer = float(epsilon), float(stabilizer)
        if sum_rule is not None and sum_rule not in SUM_RULES:
            raise FragileError(f"unknown sum rule {sum_rule!r}; choose one of {sorted(SUM_RULES)}")
        self.canonize = bool(canonize)
        self.sum_rule = sum_rule or _SUM_RULE_OF.get(rule, "z")
        box = default_box(model)
        self.low = torch.as_tensor(box[0] if low is None else low, dtype=torch.float32)
        self.high = torch.as_tensor(box[1] if high is None else high, dtype=torch.float32)
        check_rules(self, model)
        self._layout = Layout()

    def _replacer(self, model):
        first = _first_layer(model) if self.first_rule else None
        kw = {"eps": self.epsilon, "stabilizer": self.stabilizer, "low": self.low, "high": self.high}

        def replace(m):
            if isinstance(m, LINEAR):
                name = self.first_rule if m is first else (self.linear_rule if isinstance(m, nn.Linear) else self.rule)
                return RuleModule(m, RULES[name](m, **kw), self._layout)
            if isinstance(m, Sum):
                return RuleModule(m, SUM_RULES[self.sum_rule](m, stabilizer=self.stabilizer), self._layout)
            if isinstance(m, AVGPOOL):
                return RuleModule(m, norm_rule(m, stabilizer=self.stabilizer), self._layout)
            if isinstance(m, Normalize):
                return RuleModule(m, PassRule(m, flip=m.bgr), self._layout)
            if is_activation(m):
                return RuleModule(m, PassRule(elementwise(m), output_nonnegative=nonnegative_activation(m)),
                                  self._layout)
            if isinstance(m, PASS):
                return RuleModule(m, PassRule(m), self._layout)
            if isinstance(m, KEEPS_SIGN):  # their gradient, and the mark of non-negative inputs passed on
                return KeepsSign(m)
            return None

        return replace

    @contextlib.contextmanager
    def context(self):
        """The canonical model (``canonize``), then as for every method: softplus-smoothed if asked
        (the canonical blocks' activations included), then the rules."""
        with contextlib.ExitStack() as stack:
            if self.canonize:
                stack.enter_context(canonized(self.model))
            yield stack.enter_context(super().context())

    @contextlib.contextmanager
    def _surgery(self, model):
        with rule_surgery(self, model, self._replacer(model)):  # _replacer sees the canonical model
            yield model

    def _attribute(self, net, x, target, create_graph):
        return modified_input_grad(self, net, self._layout, x, target, create_graph, relevance_seed=True)


class DeepTaylor(LRP):
    """Deep Taylor decomposition: the z+ / zB composite (Montavon et al. 2017)."""

    name = "deep_taylor"

    def __init__(self, model, **kw):
        kw.setdefault("rule", "zplus")
        kw.setdefault("first_rule", "zb")
        super().__init__(model, **kw)


LRP.__doc__ = LRP.__doc__.format(rules=", ".join(sorted(RULES)))
