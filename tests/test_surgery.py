"""Reversible softplus surgery: replacement, restoration, stability, functional ReLU."""

from __future__ import annotations

import pytest
import torch
from captum.attr import Saliency
from conftest import plain_cnn, resnetish
from torch import nn

from fragile.errors import UnsupportedModelError
from fragile.explanations import create
from fragile.models import softplus
from fragile.models.smooth import SoftplusReLU, SoftplusReLU6


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True),
                                      nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU6(inplace=True)))
        self.blocks = nn.ModuleList([nn.ReLU()])
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.blocks[0](self.features(x)).flatten(1))


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.lin = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.lin(torch.nn.functional.relu(self.conv(x)).flatten(1))


def _leaves(model):
    return [(n, m) for n, m in model.named_modules()]


def test_softplus_replaces_every_relu_and_restores_exactly():
    model = Nested().eval()
    before = _leaves(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with softplus(model, beta=5.0) as smooth:
        kinds = [type(m) for _, m in model.named_modules()]
        assert nn.ReLU not in kinds and nn.ReLU6 not in kinds
        assert kinds.count(SoftplusReLU) == 2 and kinds.count(SoftplusReLU6) == 1
        smooth(torch.rand(2, 3, 8, 8))
    after = _leaves(model)
    assert [n for n, _ in before] == [n for n, _ in after]
    assert all(a is b for (_, a), (_, b) in zip(before, after))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_softplus_restores_on_exception():
    model = Nested().eval()
    before = _leaves(model)
    with pytest.raises(RuntimeError, match="boom"), softplus(model, beta=1.0):
        raise RuntimeError("boom")
    assert all(a is b for (_, a), (_, b) in zip(before, _leaves(model)))


def test_softplus_values_match_torch_softplus_and_relu6_formula():
    x = torch.linspace(-8, 14, 500, dtype=torch.float64)
    assert torch.allclose(SoftplusReLU(2.0)(x), torch.log1p(torch.exp(2.0 * x)) / 2.0)
    expected6 = torch.log1p(torch.exp(2.0 * x)) / 2.0 - torch.log1p(torch.exp(2.0 * (x - 6))) / 2.0
    assert torch.allclose(SoftplusReLU6(2.0)(x), expected6)


@pytest.mark.parametrize("beta", [1e2, 1e3, 1e4])
def test_large_beta_is_stable_and_approaches_relu(beta):
    torch.manual_seed(0)
    net = resnetish()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    with softplus(net, beta=beta) as smooth:
        y = smooth(x)
        (g,) = torch.autograd.grad(y[:, 0].sum(), x, create_graph=True)
        (h,) = torch.autograd.grad(g.pow(2).sum(), x)
    assert torch.isfinite(y).all() and torch.isfinite(g).all() and torch.isfinite(h).all()
    # |softplus_b - relu| <= log(2)/b per unit, so outputs converge like 1/beta
    assert torch.allclose(y, net(x), atol=50.0 / beta)


def test_smoothed_gradient_matches_captum_on_hand_built_softplus_copy():
    torch.manual_seed(0)
    net = plain_cnn()
    copy = nn.Sequential(*[nn.Softplus(beta=3.0) if isinstance(m, nn.ReLU) else m for m in net]).eval()
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3])
    ours = create("gradient", net, smooth_beta=3.0).attribute(x, target=t)
    theirs = Saliency(copy).attribute(x, target=t, abs=False)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-14)
    # and the user's model is ReLU again
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 3


def test_second_derivative_is_nonzero_and_matches_finite_differences():
    torch.manual_seed(0)
    net = plain_cnn()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    d = torch.randn_like(x)
    with softplus(net, beta=2.0) as smooth:
        def grad_dot(inp):
            (g,) = torch.autograd.grad(smooth(inp)[0, 1], inp, create_graph=True)
            return (g * d).sum()

        (hd,) = torch.autograd.grad(grad_dot(x), x)  # H d
        eps = 1e-6
        xp = (x + eps * d).detach().requires_grad_(True)
        xm = (x - eps * d).detach().requires_grad_(True)
        (gp,) = torch.autograd.grad(smooth(xp)[0, 1], xp)
        (gm,) = torch.autograd.grad(smooth(xm)[0, 1], xm)
    assert float(hd.abs().max()) > 1e-6
    assert torch.allclose(hd, (gp - gm) / (2 * eps), rtol=1e-5, atol=1e-9)


def test_functional_relu_is_smoothed_inside_the_block_only():
    torch.manual_seed(0)
    model = Functional().double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    before = model(x)
    with softplus(model, beta=2.0) as smooth:
        h = model.conv(x)
        expected = model.lin((torch.log1p(torch.exp(2.0 * h)) / 2.0).flatten(1))
        assert torch.allclose(smooth(x), expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(model(x), before)  # restored: ReLU again, no mode left active
    assert not torch.overrides._get_current_function_mode_stack()
    # the smoothed explainer sees the same surrogate
    ours = create("gradient", model, smooth_beta=2.0).attribute(x, target=1)
    copy = nn.Sequential(model.conv, nn.Softplus(beta=2.0), nn.Flatten(), model.lin)
    assert torch.allclose(ours, Saliency(copy).attribute(x, target=1, abs=False), rtol=1e-10, atol=1e-14)
    # rule methods accept it; the plain gradient is unchanged
    for name in ["deeplift", "guided_backprop", "lrp"]:
        assert create(name, model).attribute(x).shape == x.shape
    assert create("gradient", model).attribute(x).shape == x.shape


def test_rule_methods_refuse_modules_without_a_rule():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    for name in ["deeplift", "guided_backprop", "lrp"]:
        with pytest.raises(UnsupportedModelError, match=r"'1' \(GELU\).*gradient, gradient_x_input"):
            create(name, model)


def test_a_module_used_twice_is_swapped_at_every_use():
    """nn.Sequential(lin, relu, lin2, relu): the shared ReLU is smoothed at both places, and restored."""
    from fragile.models import softplus

    torch.manual_seed(0)
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 3), relu).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.nn.functional.softplus(net[2](torch.nn.functional.softplus(net[0](x), beta=2.0)), beta=2.0)
        with softplus(net, beta=2.0) as smooth:
            assert torch.allclose(smooth(x), expected, atol=1e-12)
    assert net[1] is relu and net[3] is relu
