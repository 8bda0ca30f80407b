"""Functional activations, hard activations and attention (issue 15, points 3 and 4).

Tiny hand-written float64 models, each written so its activations can be swapped for analytic
formulas (``model.run(x, **acts)``; ``forward`` uses the model's own functional or module
activations):

- ``CNN``: conv - relu - max pool - conv - relu - linear - relu - linear, with ``F.relu``,
  ``Tensor.relu``, ``torch.relu`` and ``F.max_pool2d`` (or the ``nn.ReLU`` / ``nn.MaxPool2d`` twin
  sharing the weights);
- ``MobileNet``: a MobileNetV3-like block (hardswish, depthwise conv, squeeze-excitation gated by
  hardsigmoid), module or functional activations;
- ``ConvNeXt``: patchify conv, depthwise conv, LayerNorm over channels, GELU MLP, layer scale, residual;
- ``ViT``: patch embedding, cls token, one attention block (``F.scaled_dot_product_attention`` or
  ``nn.MultiheadAttention``), LayerNorm, GELU MLP, cls or mean pooling, linear head;
- ``RowLSTM``: an LSTM over the image rows.

(a) the softplus surrogate's forward equals the analytic smooth functions; the model is restored
    after the ``with`` block; (b) d loss(map) / dx with ``create_graph=True`` matches central finite
    differences; (c) rule methods refuse what they have no rule for, naming the module; (d) DeepLIFT,
    guided backprop, LRP and PatternAttribution on the functional-ReLU CNN equal the module CNN.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

from fragile.errors import UnsupportedModelError
from fragile.explanations import create
from fragile.explanations.pattern import estimate_patterns
from fragile.models import softplus
from fragile.models.surgery import FunctionalActivationGuard

BETA = 2.0
WORKING = "gradient, gradient_x_input, integrated_gradients, smoothgrad, uniform_gradient"


def sp(z: torch.Tensor) -> torch.Tensor:
    """softplus_beta written out (Dombrowski eq. 8), independent of torch's softplus."""
    return torch.log1p(torch.exp(BETA * z)) / BETA


#: The analytic surrogates (fragile.models.smooth's table, written independently).
SMOOTH = {
    "relu": sp,
    "relu6": lambda z: sp(z) - sp(z - 6),
    "hardsigmoid": lambda z: (sp(z + 3) - sp(z - 3)) / 6,
    "hardswish": lambda z: z * (sp(z + 3) - sp(z - 3)) / 6,
}


def mods_stack() -> list:
    return torch.overrides._get_current_function_mode_stack()


# -- the models ---------------------------------------------------------------------------------------
class CNN(nn.Module):
    def __init__(self, functional: bool = True):
        super().__init__()
        self.functional = functional
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 12), nn.Linear(12, 5)
        if not functional:
            self.relu1, self.relu2, self.relu3, self.pool = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.MaxPool2d(2)

    def acts(self):
        if self.functional:
            return {"relu1": F.relu, "relu2": torch.Tensor.relu, "relu3": torch.relu,
                    "pool": lambda z: F.max_pool2d(z, 2)}
        return {"relu1": self.relu1, "relu2": self.relu2, "relu3": self.relu3, "pool": self.pool}

    def run(self, x, relu1, relu2, relu3, pool):
        x = relu2(self.conv2(pool(relu1(self.conv1(x)))))
        return self.fc2(relu3(self.fc1(x.flatten(1))))

    def forward(self, x):
        return self.run(x, **self.acts())

    @staticmethod
    def smooth():
        return {"relu1": sp, "relu2": sp, "relu3": sp, "pool": lambda z: F.max_pool2d(z, 2)}


class InvertedResidual(nn.Module):
    """depthwise conv - hardswish - squeeze-excitation (hardsigmoid gate) - 1x1 conv - hardswish."""

    def __init__(self, c: int, functional: bool):
        super().__init__()
        self.functional = functional
        self.dw, self.pw = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.Conv2d(c, c, 1)
        self.se1, self.se2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)
        if not functional:
            self.act1, self.se_relu, self.gate, self.act2 = nn.Hardswish(), nn.ReLU(), nn.Hardsigmoid(), nn.Hardswish()

    def acts(self):
        if self.functional:
            return {"act1": F.hardswish, "se_relu": F.relu, "gate": F.hardsigmoid, "act2": F.hardswish}
        return {"act1": self.act1, "se_relu": self.se_relu, "gate": self.gate, "act2": self.act2}

    def run(self, x, act1, se_relu, gate, act2):
        h = act1(self.dw(x))
        s = gate(self.se2(se_relu(self.se1(F.adaptive_avg_pool2d(h, 1)))))
        return act2(self.pw(h * s)) + x

    def forward(self, x):
        return self.run(x, **self.acts())


class MobileNet(nn.Module):
    def __init__(self, functional: bool = True):
        super().__init__()
        self.stem, self.block, self.head = nn.Conv2d(3, 8, 3, stride=2, padding=1), InvertedResidual(8, functional), nn.Linear(8, 5)

    def run(self, x, **acts):
        return self.head(self.block.run(self.stem(x), **acts).mean((2, 3)))

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))

    @staticmethod
    def smooth():
        return {"act1": SMOOTH["hardswish"], "se_relu": sp, "gate": SMOOTH["hardsigmoid"], "act2": SMOOTH["hardswish"]}


class ConvNeXt(nn.Module):
    """patchify - [depthwise conv - LayerNorm (channels) - Linear - GELU - Linear - layer scale] + x - mean - LayerNorm - head."""

    def __init__(self, functional: bool = False):
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 8, 2, stride=2), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.norm, self.pw1, self.pw2 = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8)
        self.gamma = nn.Parameter(torch.full((8,), 0.5))
        self.head_norm, self.head = nn.LayerNorm(8), nn.Linear(8, 5)
        self.gelu = F.gelu if functional else nn.GELU()

    def forward(self, x):
        x = self.stem(x)
        h = self.norm(self.dw(x).permute(0, 2, 3, 1))  # (N, H, W, C)
        h = self.gamma * self.pw2(self.gelu(self.pw1(h)))
        x = x + h.permute(0, 3, 1, 2)
        return self.head(self.head_norm(x.mean((2, 3))))


class Attention(nn.Module):
    """Multi-head self-attention on (N, L, D) by F.scaled_dot_product_attention or nn.MultiheadAttention."""

    def __init__(self, d: int, heads: int, kind: str):
        super().__init__()
        self.kind, self.heads = kind, heads
        if kind == "sdpa":
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        else:
            self.mha = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x):
        if self.kind != "sdpa":
            return self.mha(x, x, x, need_weights=self.kind == "mha_weights")[0]
        n, seq, d = x.shape
        q, k, v = self.qkv(x).view(n, seq, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, seq, d))


class ViT(nn.Module):
    def __init__(self, attention: str = "sdpa", pool: str = "cls", norm: bool = True, mlp_act=None):
        super().__init__()
        d = 8
        self.pool_kind = pool
        self.patch = nn.Conv2d(3, d, 4, stride=4)  # 8 x 8 image -> 4 tokens
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, d))
        self.pos = nn.Parameter(0.1 * torch.randn(1, 5, d))
        self.norm1, self.norm2, self.norm = (nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)) if norm else (
            nn.Identity(), nn.Identity(), nn.Identity())
        self.attn = Attention(d, 2, attention)
        self.fc1, self.act, self.fc2 = nn.Linear(d, 16), mlp_act or nn.GELU(), nn.Linear(16, d)
        self.head = nn.Linear(d, 5)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], 1) + self.pos
        t = t + self.attn(self.norm1(t))
        t = t + self.fc2(self.act(self.fc1(self.norm2(t))))
        t = self.norm(t)
        return self.head(t[:, 0] if self.pool_kind == "cls" else t.mean(1))


class RowLSTM(nn.Module):
    """An LSTM reading the image row by row: (N, C, H, W) -> sequence (N, H, C * W)."""

    def __init__(self):
        super().__init__()
        self.lstm, self.head = nn.LSTM(3 * 8, 10, batch_first=True), nn.Linear(10, 5)

    def forward(self, x):
        out, _ = self.lstm(x.permute(0, 2, 1, 3).flatten(2))
        return self.head(out[:, -1])


def build(cls, *args, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return cls(*args, **kw).double().eval()


def image(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


MODELS = {
    "cnn_functional": lambda: build(CNN, True),
    "cnn_modules": lambda: build(CNN, False),
    "mobilenet_functional": lambda: build(MobileNet, True),
    "mobilenet_modules": lambda: build(MobileNet, False),
    "convnext": lambda: build(ConvNeXt),
    "convnext_functional_gelu": lambda: build(ConvNeXt, True),
    "vit_sdpa_cls": lambda: build(ViT, "sdpa", "cls"),
    "vit_sdpa_mean": lambda: build(ViT, "sdpa", "mean"),
    "vit_mha": lambda: build(ViT, "mha", "cls"),
    "vit_mha_weights": lambda: build(ViT, "mha_weights", "mean"),
    "lstm": lambda: build(RowLSTM),
}


# -- (a) the surrogate's forward, and restoration -------------------------------------------------------
class Apply(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x.clone())  # clone: the in-place forms must not touch the test's tensor


ELEMENTWISE = {
    "F.relu": (F.relu, sp), "F.relu_inplace": (lambda z: F.relu(z, inplace=True), sp), "F.relu_": (F.relu_, sp),
    "torch.relu": (torch.relu, sp), "torch.relu_": (torch.relu_, sp),
    "Tensor.relu": (lambda z: z.relu(), sp), "Tensor.relu_": (lambda z: z.relu_(), sp),
    "F.relu6": (F.relu6, SMOOTH["relu6"]),
    "F.hardtanh": (lambda z: F.hardtanh(z, -2.0, 1.5), lambda z: -2.0 + sp(z + 2.0) - sp(z - 1.5)),
    "F.hardtanh_": (lambda z: F.hardtanh_(z, -2.0, 1.5), lambda z: -2.0 + sp(z + 2.0) - sp(z - 1.5)),
    "F.hardsigmoid": (F.hardsigmoid, SMOOTH["hardsigmoid"]), "F.hardswish": (F.hardswish, SMOOTH["hardswish"]),
    "F.leaky_relu": (lambda z: F.leaky_relu(z, 0.2), lambda z: 0.2 * z + 0.8 * sp(z)),
    "F.leaky_relu_": (lambda z: F.leaky_relu_(z, 0.2), lambda z: 0.2 * z + 0.8 * sp(z)),
    "nn.ReLU": (nn.ReLU(), sp), "nn.ReLU_inplace": (nn.ReLU(inplace=True), sp), "nn.ReLU6": (nn.ReLU6(), SMOOTH["relu6"]),
    "nn.Hardtanh": (nn.Hardtanh(-2.0, 1.5), lambda z: -2.0 + sp(z + 2.0) - sp(z - 1.5)),
    "nn.LeakyReLU": (nn.LeakyReLU(0.2), lambda z: 0.2 * z + 0.8 * sp(z)),
    "nn.Hardsigmoid": (nn.Hardsigmoid(), SMOOTH["hardsigmoid"]), "nn.Hardswish": (nn.Hardswish(), SMOOTH["hardswish"]),
}
ALREADY_SMOOTH = {
    "F.gelu": F.gelu, "F.silu": F.silu, "torch.tanh": torch.tanh, "torch.sigmoid": torch.sigmoid,
    "F.softplus": F.softplus, "F.elu": F.elu, "nn.GELU": nn.GELU(), "nn.SiLU": nn.SiLU(), "nn.Tanh": nn.Tanh(),
    "nn.Sigmoid": nn.Sigmoid(), "nn.Softplus": nn.Softplus(), "nn.ELU": nn.ELU(),
}
GRID = torch.linspace(-6, 6, 241, dtype=torch.float64)  # |beta * shifted x| <= 18: softplus never linearised


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_surrogate_of_each_activation_is_the_analytic_function_inside_the_block_only(name):
    fn, analytic = ELEMENTWISE[name]
    model = Apply(fn)
    with softplus(model, beta=BETA) as smooth:
        assert torch.allclose(smooth(GRID), analytic(GRID), rtol=1e-12, atol=1e-13)
    assert torch.equal(model(GRID), fn(GRID.clone()))  # the hard function again
    assert mods_stack() == []


@pytest.mark.parametrize("name", sorted(ALREADY_SMOOTH))
def test_already_smooth_activations_are_left_alone(name):
    model = Apply(ALREADY_SMOOTH[name])
    with softplus(model, beta=BETA) as smooth:
        assert torch.equal(smooth(GRID), model(GRID))


@pytest.mark.parametrize("name", ["cnn_functional", "cnn_modules", "mobilenet_functional", "mobilenet_modules"])
def test_surrogate_of_piecewise_linear_models_is_analytic_and_restored(name):
    model, x = MODELS[name](), image()
    types_before = [type(m) for m in model.modules()]
    before = model(x)
    with softplus(model, beta=BETA) as smooth:
        out = smooth(x)
    expected = model.run(x, **model.smooth())  # outside the block: the analytic formulas only
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert (out - before).abs().max() > 1e-5  # the surrogate really differs from the hard model
    assert torch.equal(model(x), before)
    assert [type(m) for m in model.modules()] == types_before
    assert mods_stack() == [] and not model._forward_pre_hooks and not model._forward_hooks


@pytest.mark.parametrize("name", ["convnext", "convnext_functional_gelu", "vit_sdpa_cls", "vit_mha", "lstm"])
def test_surrogate_leaves_smooth_models_unchanged(name):
    model, x = MODELS[name](), image()
    with softplus(model, beta=BETA) as smooth:
        out = smooth(x)
    assert torch.allclose(out, model(x), rtol=1e-12, atol=1e-14)


def test_explainer_context_leaves_no_mode_hook_or_attention_flag_behind():
    model, x = MODELS["vit_sdpa_cls"](), image()
    flags = (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
             torch.backends.cuda.mem_efficient_sdp_enabled())
    before = model(x)
    create("gradient", model).attribute(x.clone().requires_grad_(True), target=0, create_graph=True)
    assert mods_stack() == [] and not model._forward_pre_hooks and not model._forward_hooks
    assert flags == (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
                     torch.backends.cuda.mem_efficient_sdp_enabled())
    assert torch.equal(model(x), before)


# -- twice-differentiable hard activations and attention ---------------------------------------------
def _away_from_kinks(n: int = 40) -> torch.Tensor:
    """Points in (-5, 5) at least 0.05 away from the kinks at -3 and 3 (finite differences step 1e-6)."""
    x = torch.linspace(-5, 5, n, dtype=torch.float64)
    x = x[((x + 3).abs() > 0.05) & ((x - 3).abs() > 0.05)]
    return x.clone().requires_grad_(True)


@pytest.mark.parametrize("fn", [F.hardswish, F.hardsigmoid, nn.Hardswish(), nn.Hardsigmoid()],
                         ids=["F.hardswish", "F.hardsigmoid", "nn.Hardswish", "nn.Hardsigmoid"])
def test_hard_activations_have_a_double_backward_inside_the_guard(fn):
    x = _away_from_kinks()
    with FunctionalActivationGuard():
        assert gradcheck(fn, (x,)) and gradgradcheck(fn, (x,))
        inside = fn(GRID)
    assert torch.allclose(inside, fn(GRID), rtol=0, atol=1e-15)  # the same function as PyTorch's
    # and the same first derivative, at the kinks x = -3, 3 (on the grid) too; up to 5e-9 because
    # PyTorch's hardsigmoid backward multiplies by 1/6 rounded to float32
    g = GRID.clone().requires_grad_(True)
    with FunctionalActivationGuard():
        (d_inside,) = torch.autograd.grad(fn(g).sum(), g)
    (d_native,) = torch.autograd.grad(fn(g).sum(), g)
    assert torch.allclose(d_inside, d_native, rtol=0, atol=1e-8)
    kinks = (GRID.abs() - 3).abs() < 1e-12
    assert kinks.sum() == 2 and torch.equal(d_inside[kinks], d_native[kinks])


def test_pytorch_lacks_these_double_backwards_outside_the_guard():
    """Why the guard reroutes them (torch 2.13): hardsigmoid_backward and the flash CPU attention
    kernel have no derivative."""
    x = _away_from_kinks()
    (g,) = torch.autograd.grad(F.hardsigmoid(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="hardsigmoid_backward"):
        g.sum().backward()
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(F.scaled_dot_product_attention(q, q, q).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="scaled_dot_product"):
        g.pow(2).sum().backward()
    with FunctionalActivationGuard():
        (g,) = torch.autograd.grad(F.scaled_dot_product_attention(q, q, q).sum(), q, create_graph=True)
    g.pow(2).sum().backward()
    assert torch.isfinite(q.grad).all()
    with FunctionalActivationGuard():
        assert gradgradcheck(lambda t: F.scaled_dot_product_attention(t, t, t), (q.detach().requires_grad_(True),))


# -- (b) the gradient of a loss on the map, against finite differences ------------------------------
EPS, RTOL, ATOL = 1e-5, 1e-6, 1e-9
GRADIENT_METHODS = {
    "gradient": {}, "gradient_x_input": {}, "integrated_gradients": {"steps": 8},
    "smoothgrad": {"samples": 4, "scale": 0.1, "noise_mode": "fixed"},
    "uniform_gradient": {"samples": 4, "radius": 0.1, "noise_mode": "fixed"},
}


def check_map_gradient(explainer, x: torch.Tensor, target: int = 1, seed: int = 0) -> float:
    """d L / dx of L(x) = <w, h(x)> + ||h(x)||^2 (h the map, w fixed Gaussian) by autograd through
    the map (create_graph=True), against central differences (L(x + eps d) - L(x - eps d)) / (2 eps)
    along two random directions d. eps = 1e-5 in float64: truncation ~ eps^2 |L'''| ~ 1e-10,
    rounding ~ 1e-16 |L| / eps ~ 1e-11, so |autograd - fd| <= 1e-6 |fd| + 1e-9 leaves a 100x margin."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape, generator=g, dtype=x.dtype)

    def loss(inp, graph):
        h = explainer.attribute(inp, target=target, create_graph=graph)
        return (w * h).sum() + h.pow(2).sum()

    xa = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(xa, True), xa)
    for _ in range(2):
        d = torch.randn(x.shape, generator=g, dtype=x.dtype)
        fd = float(loss(x + EPS * d, False) - loss(x - EPS * d, False)) / (2 * EPS)
        ours = float((grad * d).sum())
        assert abs(ours - fd) <= RTOL * abs(fd) + ATOL, (ours, fd)
    return float(grad.abs().max())


# (model, smooth_beta): piecewise-linear models with the surrogate, and MobileNet also without it
# (hardswish and hardsigmoid are twice differentiable away from their kinks).
CASES_B = [("cnn_functional", BETA), ("mobilenet_functional", BETA), ("mobilenet_modules", BETA),
           ("mobilenet_functional", None), ("mobilenet_modules", None), ("convnext", None),
           ("convnext_functional_gelu", None), ("vit_sdpa_cls", None), ("vit_sdpa_mean", None),
           ("vit_mha", None), ("vit_mha_weights", None), ("lstm", None)]


@pytest.mark.parametrize("method", sorted(GRADIENT_METHODS))
@pytest.mark.parametrize(("name", "beta"), CASES_B, ids=[f"{n}-beta{b}" for n, b in CASES_B])
def test_map_gradient_matches_finite_differences(name, beta, method):
    model = MODELS[name]()
    explainer = create(method, model, smooth_beta=beta, **GRADIENT_METHODS[method])
    assert check_map_gradient(explainer, image()) > 1e-6  # a non-trivial second derivative


@pytest.mark.parametrize("method", ["deeplift", "guided_backprop", "lrp"])
def test_rule_maps_of_the_functional_cnn_are_differentiable(method):
    explainer = create(method, MODELS["cnn_functional"](), smooth_beta=BETA)
    assert check_map_gradient(explainer, image()) > 1e-6


# -- (c) refusals -----------------------------------------------------------------------------------
class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class Gated(nn.Module):
    """A ReLU CNN with a sigmoid squeeze-excitation gate: every module has a rule, the product has not."""

    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.se = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), SqueezeExcite(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        return self.head(self.se(self.relu(self.conv(x))).mean((2, 3)))


class SoftmaxPool(nn.Module):
    """Softmax over channels inside forward."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.head(torch.softmax(self.conv(x), dim=1).mean((2, 3)))


RULE_METHODS = ["deeplift", "guided_backprop", "lrp", "deep_taylor", "pattern_attribution"]
REFUSALS = {
    "mobilenet_modules": r"module 'block\.act1' \(Hardswish\)",
    "mobilenet_functional": r"hardswish \(as Hardswish\) called in forward\(\) of 'block' \(InvertedResidual\)",
    "convnext": r"module 'norm' \(LayerNorm\)",
    "vit_sdpa_cls": r"module 'norm1' \(LayerNorm\)",
    "vit_mha": r"module 'norm1' \(LayerNorm\)",
    "lstm": r"module 'lstm' \(LSTM\)",
    "vit_sdpa_no_norm": r"scaled_dot_product_attention .* in forward\(\) of 'attn' \(Attention\)",
    "vit_mha_no_norm": r"module 'attn\.mha' \(MultiheadAttention\)",
    "gated": r"product of two input-dependent tensors .* in forward\(\) of 'se' \(SqueezeExcite\)",
    "softmax": r"softmax \(softmax\) in forward\(\) of the model \(SoftmaxPool\)",
}
#: PatternAttribution's estimator needs plain (ungrouped) convolutions: it stops at the depthwise conv.
OVERRIDES = {("mobilenet_functional", "pattern_attribution"): r"module 'block\.dw' \(Conv2d\)",
             ("mobilenet_modules", "pattern_attribution"): r"module 'block\.dw' \(Conv2d\)",
             ("convnext", "pattern_attribution"): r"module 'dw' \(Conv2d\)"}
EXTRA = {
    "vit_sdpa_no_norm": lambda: build(ViT, "sdpa", norm=False, mlp_act=nn.ReLU()),
    "vit_mha_no_norm": lambda: build(ViT, "mha", norm=False, mlp_act=nn.ReLU()),
    "gated": lambda: build(Gated),
    "softmax": lambda: build(SoftmaxPool),
}


def _make(name):
    return (MODELS.get(name) or EXTRA[name])()


@pytest.mark.parametrize("method", RULE_METHODS)
@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_rule_methods_refuse_what_they_have_no_rule_for(name, method):
    model, x = _make(name), image()
    kw = {"data": x} if method == "pattern_attribution" else {}
    with pytest.raises(UnsupportedModelError) as err:
        create(method, model, **kw).attribute(x, target=0)
    message = str(err.value)
    assert re.search(OVERRIDES.get((name, method), REFUSALS[name]), message), message
    assert WORKING in message and method in message
    assert mods_stack() == [] and not model._forward_pre_hooks  # nothing left behind by the refusal
    # ... while every gradient-type method works on it
    assert create("gradient", model).attribute(x, target=0).shape == x.shape


def test_grad_cam_names_its_layer_and_refuses_non_spatial_ones():
    model, x = MODELS["cnn_modules"](), image()
    cam = create("grad_cam", model)
    assert cam.layer_name == "conv2" and "layer='conv2'" in repr(cam)
    assert cam.attribute(x, target=0).shape == x.shape
    assert create("grad_cam", model, layer=model.conv1).layer_name == "conv1"
    with pytest.raises(UnsupportedModelError, match=r"'fc1' \(Linear\)"):
        create("grad_cam", model, layer="fc1")
    with pytest.raises(UnsupportedModelError, match=r"'lstm' \(LSTM\)"):
        create("grad_cam", MODELS["lstm"](), layer="lstm")
    with pytest.raises(UnsupportedModelError, match="needs a Conv2d"):
        create("grad_cam", MODELS["lstm"]())
    mobile = MODELS["mobilenet_modules"]()  # the last registered conv is the SE excitation on pooled features
    with pytest.raises(UnsupportedModelError, match=r"'block\.se2' \(Conv2d\) gives \(2, 8, 1, 1\)"):
        create("grad_cam", mobile).attribute(x, target=0)
    assert create("grad_cam", mobile, layer="block.pw").attribute(x, target=0).shape == x.shape
    vit = MODELS["vit_sdpa_cls"]()  # the patch embedding is spatial; the LayerNorm on tokens is not
    assert create("grad_cam", vit).layer_name == "patch"
    with pytest.raises(UnsupportedModelError, match=r"'norm' \(LayerNorm\) gives \(2, 5, 8\)"):
        create("grad_cam", vit, layer="norm").attribute(x, target=0)


# -- (d) functional ReLU = module ReLU --------------------------------------------------------------
@pytest.mark.parametrize("beta", [None, BETA])
@pytest.mark.parametrize("method", ["deeplift", "guided_backprop", "lrp", "pattern_attribution"])
def test_rule_methods_on_functional_relu_equal_the_module_twin(method, beta):
    functional, modules, x = MODELS["cnn_functional"](), MODELS["cnn_modules"](), image(3)
    modules.load_state_dict(functional.state_dict())
    kw = {"patterns": estimate_patterns(modules, image(16, seed=5))} if method == "pattern_attribution" else {}
    a, b = (create(method, m, smooth_beta=beta, **kw) for m in (functional, modules))
    t = torch.tensor([0, 2, 4])
    assert torch.allclose(a.attribute(x, target=t), b.attribute(x, target=t), rtol=0, atol=1e-10)
    # with create_graph: the maps and the gradient of a loss on them
    grads = []
    for e in (a, b):
        xa = x.clone().requires_grad_(True)
        h = e.attribute(xa, target=t, create_graph=True)
        grads.append(torch.autograd.grad(h.pow(2).sum(), xa)[0])
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-10)
    assert mods_stack() == []
