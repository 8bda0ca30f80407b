"""Step-size schedules for the scale-free Adam (issue 17.2): ``adam_cosine`` and ``adam_plateau``."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from fragile import attacks
from fragile.attacks.steps import STEPS, Adam, AdamCosine, AdamPlateau
from fragile.explanations import create


def _drive(rule, grad_fn, steps, delta0, loss_fn=None):
    """Run ``rule`` as the loop does (update, then observe with the best-so-far), without projection;
    returns the iterates, the best loss per image and the final state."""
    delta, state = delta0.clone(), rule.init(delta0)
    best = torch.full((delta0.shape[0],), math.inf, dtype=torch.float64)
    best_delta, iterates = delta.clone(), []
    for t in range(steps):
        delta, state = rule.update(delta, grad_fn(delta), state, t, 1.0, None)
        iterates.append(delta.clone())
        loss = (loss_fn or (lambda d: d.flatten(1).pow(2).sum(1)))(delta).double()
        better = loss < best
        best = torch.where(better, loss, best)
        best_delta = torch.where(better.view(-1, *[1] * (delta.dim() - 1)), delta, best_delta)
        delta, state = rule.observe(delta, state, loss=loss, best_delta=best_delta, best_loss=best, t=t,
                                    iterations=steps)
    return iterates, best, state


def test_rules_are_registered():
    assert STEPS["adam_cosine"] is AdamCosine and STEPS["adam_plateau"] is AdamPlateau


def test_cosine_lr_sequence_is_its_formula():
    # with a constant gradient Adam's bias-corrected direction is exactly 1 per coordinate (m^ = g, v^ = g^2, up
    # to the relative eps 1e-8), so each step's length is the learning rate itself: lr_t = lr (1 + cos(pi t/T)) / 2
    steps, lr = 40, 0.3
    rule = AdamCosine(lr, eps=0.0)
    iterates, _, _ = _drive(rule, lambda d: torch.ones_like(d, dtype=torch.float64), steps,
                         torch.zeros(1, 3, dtype=torch.float64))
    lengths = torch.stack([-(b - a)[0, 0] for a, b in zip([torch.zeros(1, 3, dtype=torch.float64)] + iterates, iterates)])
    expected = torch.tensor([lr * 0.5 * (1 + math.cos(math.pi * t / steps)) for t in range(steps)], dtype=torch.float64)
    torch.testing.assert_close(lengths, expected, rtol=1e-12, atol=0)
    assert AdamCosine.factor(0, steps) == 1.0 and AdamCosine.factor(steps // 2, steps) == pytest.approx(0.5)
    assert 0 < AdamCosine.factor(steps - 1, steps) < 0.01  # ~0 at the end of the budget


def test_cosine_needs_the_budget():
    rule = AdamCosine(0.1)
    d = torch.zeros(1, 2)
    d, state = rule.update(d, torch.ones_like(d), rule.init(d), 0, 1.0, None)
    with pytest.raises(RuntimeError, match="observe"):
        rule.update(d, torch.ones_like(d), state, 1, 1.0, None)


@pytest.mark.parametrize("name", ["adam", "adam_cosine", "adam_plateau"])
def test_scale_free(name):
    # a gradient 1e-12 times smaller (a manipulate loss without its prefactors) gives the same steps (float64;
    # only the relative eps 1e-8 * rms(sqrt(v^)) separates the directions, far below the tolerance)
    c = torch.tensor([[0.37, -0.52, 0.11, 0.9], [-0.2, 0.05, 0.6, -0.8]], dtype=torch.float64)
    grad = lambda d: 2 * (d - c) * (1 + (d - c).pow(2))  # noqa: E731 - a non-quadratic bowl
    loss = lambda d: (d - c).pow(2).sum(1)  # noqa: E731
    a, best_a, _ = _drive(STEPS[name](0.1), grad, 60, torch.zeros_like(c), loss)
    b, best_b, _ = _drive(STEPS[name](0.1), lambda d: 1e-12 * grad(d), 60, torch.zeros_like(c), loss)
    torch.testing.assert_close(torch.stack(a), torch.stack(b), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(best_a, best_b)


def _toy_loss(rule, steps=100, noise=1.0):
    """Best loss on an ill-conditioned quadratic sum_i a_i (d_i - c_i)^2 (a_i from 1 to 100), minimised from 0 with
    noisy gradients (+ noise * a_i * N(0, 1), as a surrogate's gradient of the evaluated objective) and scored
    exactly, as the loop scores iterates on the original model."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(4, 50, generator=g, dtype=torch.float64)
    a = torch.logspace(0, 2, 50, dtype=torch.float64)
    grad = lambda d: 2 * a * (d - c) + noise * a * torch.randn(d.shape, generator=g, dtype=torch.float64)  # noqa: E731
    _, best, _ = _drive(rule, grad, steps, torch.zeros_like(c), lambda d: (a * (d - c).pow(2)).sum(1))
    return float(best.mean())


def test_schedules_beat_constant_adam_on_a_toy_quadratic():
    # same budget (100 steps), same initial lr 0.3: constant Adam keeps jittering at its step length around the
    # minimum, the cosine decay and the plateau halving settle (measured 40.5 vs 14.9 / 7.7; constant Adam's best
    # over lr in {0.03, 0.1, 0.3, 1} is 16.4)
    constant = _toy_loss(Adam(0.3))
    cosine, plateau = _toy_loss(AdamCosine(0.3)), _toy_loss(AdamPlateau(0.3))
    assert cosine < constant / 2 and plateau < constant / 2


def test_plateau_halves_and_restarts_where_it_stalls():
    rule = AdamPlateau(0.5)
    c = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    _, best, state = _drive(rule, lambda d: 2 * (d - c), 100, torch.zeros_like(c), lambda d: (d - c).pow(2).sum(1))
    assert float(state["lr"].max()) < 0.5 / 4  # a 0.5 step on a 0.3-wide bowl oscillates: halved repeatedly


@pytest.mark.parametrize("name", ["adam_cosine", "adam_plateau"])
def test_schedules_keep_the_loops_guarantees(name):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(6 * 8 * 8, 4)).eval()
    net.bounds = (0.0, 1.0)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ex = create("gradient", net)
    target = attacks.saliency(ex.attribute(x.roll(1, 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attacks.run(net, ex, x, attacks.create("manipulate", target_map=target), eps=8, steps=12, step=name,
                        lr=2.0, beta=5.0)
    assert r.settings["step"] == name and r.settings["iterations"] == 12
    assert float((r.x_adv - r.x).abs().max()) <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert bool((net(r.x_adv).argmax(1) == net(x).argmax(1))[r.success].all())
    assert bool(r.success.any())
    after, before = r.metrics["target_mse"][r.success], r.metrics["target_mse_before"][r.success]
    assert bool((after <= before).all()) and bool((after < before).any())
