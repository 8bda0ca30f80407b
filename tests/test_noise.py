"""Noise streams of SmoothGrad / Uniform Gradient: fresh vs fixed noise, reseeding, shallow copies,
and the Monte-Carlo expectation (of the map and of the EOT gradient through it) on models where it is
known in closed form. Float64, tiny models, few samples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import plain_cnn
from fragile.errors import FragileError
from fragile.explanations import create

NOISY = ["smoothgrad", "uniform_gradient"]


class Power(nn.Module):
    """Scores (f(x), -f(x)) with f(x) = sum(x^p) / p!, for p = 2 (grad x) or 3 (grad x^2 / 2)."""

    def __init__(self, p: int):
        super().__init__()
        self.p = p

    def forward(self, x):
        f = x.pow(self.p).flatten(1).sum(1) / (2 if self.p == 2 else 6)
        return torch.stack([f, -f], 1)


def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 4)).double().eval()


@pytest.fixture
def x():
    return torch.rand(2, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _ixg(name, **kw):
    """x * grad on a linear model: the map is linear in the noise, so it shows every draw."""
    return create(name, linear(), method="gradient_x_input", samples=3, **kw)


def _calls(ex, x, k, target=1):
    return [ex.attribute(x, target=target) for _ in range(k)]


@pytest.mark.parametrize("name", NOISY)
def test_fresh_noise_differs_per_call_fixed_noise_does_not(name, x):
    a, b = _calls(_ixg(name), x, 2)
    assert not torch.allclose(a, b)
    a, b = _calls(_ixg(name, noise_mode="fixed"), x, 2)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NOISY)
def test_first_fresh_draw_is_the_fixed_draw_of_the_same_seed(name, x):
    fresh, fixed = _ixg(name, seed=4), _ixg(name, seed=4, noise_mode="fixed")
    assert torch.equal(fresh.attribute(x, target=1), fixed.attribute(x, target=1))


@pytest.mark.parametrize("name", NOISY)
def test_reseed_reproduces_the_sequence_and_seeds_differ(name, x):
    ex = _ixg(name)
    ex.reseed(11)
    first = _calls(ex, x, 3)
    ex.reseed(11)
    again = _calls(ex, x, 3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    ex.reseed(12)
    assert not any(torch.allclose(a, b) for a, b in zip(first, _calls(ex, x, 3)))
    other = _calls(_ixg(name, seed=1), x, 3)
    assert not any(torch.allclose(a, b) for a, b in zip(_calls(_ixg(name, seed=0), x, 3), other))


def test_seed_none_comes_from_torch_global_rng(x):
    net = linear()

    def draw():
        return create("smoothgrad", net, method="gradient_x_input", samples=3, seed=None).attribute(x, target=1)

    torch.manual_seed(3)
    a = draw()
    torch.manual_seed(3)
    b, c = draw(), draw()
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_reseed_reaches_a_nested_noise_method(x):
    inner = create("uniform_gradient", linear(), method="gradient_x_input", samples=2)
    ex = create("smoothgrad", linear(), method=inner, samples=2)
    ex.reseed(5)
    first = _calls(ex, x, 2)
    _calls(inner, x, 1)  # advance the inner stream on its own
    ex.reseed(5)
    assert all(torch.equal(a, b) for a, b in zip(first, _calls(ex, x, 2)))


@pytest.mark.parametrize("name", NOISY)
def test_surrogate_and_original_draw_independent_noise_reproducibly(name, x):
    """On a linear model the softplus surrogate changes nothing, so equal maps mean equal noise. The
    copies share one stream: successive (independent) draws, reproducible after ``reseed``."""
    ex = _ixg(name)
    early = ex.surrogate(10.0)  # made before the reseed: shares the stream, so is reset too
    ex.reseed(7)
    run = [ex.surrogate(10.0).attribute(x, target=1, create_graph=True).detach(), ex.attribute(x, target=1),
           early.attribute(x, target=1)]
    assert not torch.allclose(run[0], run[1]) and not torch.allclose(run[1], run[2])
    ex.reseed(7)
    again = [ex.surrogate(10.0).attribute(x, target=1, create_graph=True).detach(), ex.attribute(x, target=1),
             early.attribute(x, target=1)]
    assert all(torch.equal(a, b) for a, b in zip(run, again))
    fixed = _ixg(name, noise_mode="fixed")  # common random numbers: the same draw for both
    assert torch.equal(fixed.surrogate(10.0).attribute(x, target=1), fixed.attribute(x, target=1))


@pytest.mark.parametrize("name", NOISY)
def test_noise_average_of_a_linear_model_is_its_gradient(name, x):
    net = linear()
    grad = create("gradient", net).attribute(x, target=1)
    for h in _calls(create(name, net, samples=3), x, 3):
        torch.testing.assert_close(h, grad, rtol=1e-12, atol=1e-14)


def _check_mean(values: list[torch.Tensor], expected: torch.Tensor, k: int) -> None:
    """Monte-Carlo check: the mean of k fresh calls is within 5 standard errors (empirical std of the
    calls / sqrt(k)) of the analytic expectation, per element (two-sided 5-sigma: ~6e-7 per element,
    and the seeds are fixed). The calls must actually vary (fresh noise)."""
    stack = torch.stack(values)
    se = stack.std(0) / k**0.5
    assert float(se.min()) > 0
    assert bool(((stack.mean(0) - expected).abs() <= 5 * se).all()), float(((stack.mean(0) - expected) / se).abs().max())


@pytest.mark.parametrize("name", NOISY)
def test_fresh_mean_converges_to_the_expected_map(name, x):
    """f = sum(x^2)/2: E[grad f(x + n)] = x. f = sum(x^3)/6: E[(x + n)^2 / 2] = (x^2 + Var n) / 2, with
    Var n = sigma^2 (Gaussian, sigma = 0.15) or r^2 / 3 (uniform on [-r, r], r = 0.1)."""
    k = 200
    var = 0.15**2 if name == "smoothgrad" else 0.1**2 / 3
    quad = create(name, Power(2).eval(), samples=4)
    _check_mean(_calls(quad, x, k, target=0), x, k)
    cubic = create(name, Power(3).eval(), samples=4)
    _check_mean(_calls(cubic, x, k, target=0), (x**2 + var) / 2, k)


@pytest.mark.parametrize("name", NOISY)
def test_attack_gradient_through_fresh_noise_is_the_eot_gradient(name, x):
    """L = sum(w * h(x)) with f = sum(x^3)/6: dL/dx = mean_s w * (x + n_s), so E[dL/dx] = w * x."""
    k = 200
    w = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    ex = create(name, Power(3).eval(), samples=4)
    grads = []
    for _ in range(k):
        xa = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad((ex.attribute(xa, target=0, create_graph=True) * w).sum(), xa)
        grads.append(g)
    _check_mean(grads, w * x, k)


def test_is_smooth():
    net = plain_cnn()
    expected = {("gradient", ()): False, ("gradient", (("smooth_beta", 3.0),)): True, ("smoothgrad", ()): True,
                ("uniform_gradient", ()): True, ("integrated_gradients", ()): True, ("lrp", ()): False}
    for (name, params), smooth in expected.items():
        ex = create(name, net, **dict(params))
        assert ex.is_smooth is smooth, name
    assert create("gradient", net).surrogate(10.0).is_smooth


def test_bad_noise_mode_and_seeds_are_refused():
    with pytest.raises(FragileError, match="noise_mode"):
        create("smoothgrad", linear(), noise_mode="frozen")
    with pytest.raises(FragileError, match="seed"):
        create("smoothgrad", linear(), seed=1.5)
    with pytest.raises(FragileError, match="seed"):
        create("smoothgrad", linear()).reseed("0")
