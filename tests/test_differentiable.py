"""Gradients *through* the maps, checked by finite differences (torch.autograd.gradcheck, float64).

On softplus networks every map is a smooth function of x, so d(loss(h(x)))/dx from the double
backward must match central differences (gradcheck's default eps 1e-6, atol 1e-5, rtol 1e-3).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import plain_cnn, resnetish
from fragile.explanations import create, estimate_patterns

SMALL = {
    "gradient": {}, "gradient_x_input": {}, "integrated_gradients": {"steps": 3},
    "smoothgrad": {"samples": 2, "seed": 1, "noise_mode": "fixed"},
    "uniform_gradient": {"samples": 2, "seed": 1, "noise_mode": "fixed"},
    "deeplift": {"baseline": "zeros"}, "guided_backprop": {}, "lrp": {}, "deep_taylor": {},
    "lrp_epsilon": {"rule": "epsilon", "first_rule": None}, "grad_cam": {}, "pattern_attribution": {},
}


def _make(name, net, x, **extra):
    params = dict(SMALL[name])
    if name == "pattern_attribution":
        params["patterns"] = estimate_patterns(net, torch.rand(16, *x.shape[1:], dtype=x.dtype))
    method = "lrp" if name == "lrp_epsilon" else name
    return create(method, net, **params, **extra)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("make", [plain_cnn, resnetish], ids=["plain", "resnet"])
def test_gradcheck_through_map_on_softplus_net(name, make):
    torch.manual_seed(0)
    net = make()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    explainer = _make(name, net, x, smooth_beta=3.0)
    target = torch.tensor([1, 2])
    w = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(3))

    def loss(inp):
        return (explainer.attribute(inp, target=target, create_graph=True) * w).sum()

    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(xi), xi)
    assert float(g.abs().max()) > 0, "gradient through the map vanished"
    # a directional finite difference (full gradcheck of every pixel is slow for 12 methods x 2 nets)
    d = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(4))
    h = 1e-5
    with torch.no_grad():
        fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
    assert torch.allclose((g * d).sum(), fd, rtol=1e-4, atol=1e-8 * float(g.abs().sum())), (float((g * d).sum()), float(fd))


@pytest.mark.parametrize("name", ["gradient", "deeplift", "lrp", "guided_backprop"])
def test_full_gradcheck_small_input(name):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 3)).double().eval()
    explainer = create(name, net, smooth_beta=2.0)
    x = torch.rand(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp: explainer.attribute(inp, target=1, create_graph=True), (x,))


def test_relu_network_map_gradient_is_correct_where_defined():
    """On a ReLU net the gradient of the LRP/DeepLIFT maps is piecewise smooth: away from kinks the
    double backward equals finite differences."""
    torch.manual_seed(0)
    net = plain_cnn(pool="avg")
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for name in ["deeplift", "lrp"]:
        ex = create(name, net)

        def loss(inp, ex=ex):
            return ex.attribute(inp, target=1, create_graph=True).pow(2).sum()

        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(xi), xi)
        d = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(4))
        h = 1e-7  # small enough not to cross a ReLU kink for this seed
        with torch.no_grad():
            fd = (loss(x + h * d) - loss(x - h * d)) / (2 * h)
        assert float(g.abs().max()) > 0
        assert torch.allclose((g * d).sum(), fd, rtol=1e-4), (name, float((g * d).sum()), float(fd))


def test_gradient_flows_to_weights_through_map():
    """Training-time regularisers need d(map)/d(weights) too."""
    torch.manual_seed(0)
    net = plain_cnn()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    h = create("gradient", net, smooth_beta=2.0).attribute(x, target=0, create_graph=True)
    w = net[0].weight
    (g,) = torch.autograd.grad(h.pow(2).sum(), w)
    d = torch.randn_like(w)
    eps = 1e-6
    with torch.no_grad():
        w += eps * d
        up = create("gradient", net, smooth_beta=2.0).attribute(x, target=0).pow(2).sum()
        w -= 2 * eps * d
        down = create("gradient", net, smooth_beta=2.0).attribute(x, target=0).pow(2).sum()
        w += eps * d
    assert torch.allclose((g * d).sum(), (up - down) / (2 * eps), rtol=1e-5)


@pytest.mark.parametrize("beta", [None, 3.0], ids=["relu", "softplus"])
@pytest.mark.parametrize("make", [plain_cnn, resnetish], ids=["plain", "resnet"])
def test_lrp_zplus_skips_zero_term_after_activations_exactly(make, beta, monkeypatch):
    """After a ReLU / softplus the z+ rule drops its x^- W^- term (zero there): the map, its gradient w.r.t. the input
    and w.r.t. the weights are those of the full rule to the bit (float64)."""
    from fragile.explanations import lrp, modified

    torch.manual_seed(0)
    net = make()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(3))
    weight = next(m for m in net.modules() if isinstance(m, nn.Linear)).weight
    used = []
    forward = modified.RuleModule.forward

    def spy(self, z):
        used.append(self.rule_nonnegative is not None and modified.known_nonnegative(z))
        return forward(self, z)

    def run():
        xi = x.clone().requires_grad_(True)
        h = create("lrp", net, smooth_beta=beta).attribute(xi, target=1, create_graph=True)
        return (h.detach(), *torch.autograd.grad((h * w).pow(2).sum(), (xi, weight)))

    monkeypatch.setattr(modified.RuleModule, "forward", spy)
    fast = run()
    assert sum(used) >= 2, "the z+ layers after activations did not get the variant"
    monkeypatch.setattr(lrp.LinearRule, "for_nonnegative_input", lambda rule: None)
    full = run()
    for a, b in zip(fast, full):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["lrp", "deeplift", "guided_backprop"])
@pytest.mark.parametrize("beta", [None, 3.0], ids=["relu", "softplus"])
@pytest.mark.parametrize("make", [plain_cnn, resnetish], ids=["plain", "resnet"])
def test_chain_copy_reuses_the_true_copys_values_exactly(make, beta, name, monkeypatch):
    """With a graph, the chain copy's value at every rule is the true copy's output, computed once (each rule's forward
    runs once per copy but the chain: LRP's convolutions once, not twice). The map and its gradients w.r.t. the input
    and the weights are those of the rule forward computed again for the chain to the bit (float64)."""
    from fragile.explanations import modified

    torch.manual_seed(0)
    net = make()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(3))
    weight = next(m for m in net.modules() if isinstance(m, nn.Linear)).weight
    explainer = create(name, net, smooth_beta=beta)
    calls = []

    def run():
        xi = x.clone().requires_grad_(True)
        h = explainer.attribute(xi, target=1, create_graph=True)
        return (h.detach(), *torch.autograd.grad((h * w).pow(2).sum(), (xi, weight)))

    forward = modified.RuleModule.forward

    def counted(self, z):
        rule = self.rule_nonnegative if self.rule_nonnegative is not None and modified.known_nonnegative(z) else self.rule
        calls.append(z.shape[0] // self.layout.batch)
        original = rule.forward
        rule.forward = lambda v: (calls.append(-1), original(v))[1]
        try:
            return forward(self, z)
        finally:
            del rule.forward

    monkeypatch.setattr(modified.RuleModule, "forward", counted)
    reused = run()
    parts = [c for c in calls if c > 0]
    assert parts and calls.count(-1) == sum(p - 1 for p in parts)  # no rule forward for the chain
    monkeypatch.setattr(modified.RuleModule, "forward", forward)

    def recomputed(ctx, rule, chain, true, value, *extras):  # the chain's value computed again (before)
        ctx.rule = rule
        ctx.save_for_backward(true, *extras)
        return rule.forward(true)

    monkeypatch.setattr(modified._ModifiedFunction, "forward", staticmethod(recomputed))
    before = run()
    for a, b in zip(reused, before):
        assert torch.equal(a, b)
