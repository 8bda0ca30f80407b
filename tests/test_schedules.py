"""APGD's step-size schedule for sign steps (Croce & Hein 2020) in the attack loop."""

from __future__ import annotations

import math
import warnings

import torch

from fragile import attacks
from fragile.attacks.steps import APGD
from fragile.explanations import create


def test_checkpoints_are_apgds():
    # Croce & Hein 2020, sec. 3.2: p_0 = 0, p_1 = 0.22, p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06); for 100
    # iterations the checkpoints of their paper and code
    assert APGD.checkpoints(100) == {22, 41, 57, 70, 80, 87, 93, 99}
    assert APGD.checkpoints(20) == {4, 7, 9, *range(10, 21)} and APGD.checkpoints(1) == {1}


def _quadratic_run(rule, steps, size=0.3):
    """Minimise |delta - c|^2 by the rule's steps inside |delta| <= 1: a fixed large sign step oscillates,
    a halving schedule settles."""
    c = torch.tensor([[0.37, -0.52, 0.11, 0.9]])
    delta, state = torch.zeros_like(c), rule.init(torch.zeros_like(c))
    best, best_delta = torch.tensor([math.inf]), delta
    for t in range(steps):
        grad = 2 * (delta - c)
        delta, state = rule.update(delta, grad, state, t, 1.0, None)
        delta = delta.clamp(-1, 1)
        loss = (delta - c).pow(2).sum(1)
        better = loss < best
        best = torch.where(better, loss, best)
        best_delta = torch.where(better[:, None], delta, best_delta)
        delta, state = rule.observe(delta, state, loss=loss, best_delta=best_delta, best_loss=best, t=t, iterations=steps)
    return float(best)


def test_apgd_halves_its_step_where_fixed_sign_steps_oscillate():
    from fragile.attacks.steps import Sign

    fixed = _quadratic_run(Sign(0.3), 60)
    scheduled = _quadratic_run(APGD(0.3), 60)
    assert scheduled < fixed / 20 and fixed > 0.05  # measured: 0.0016 vs 0.089


def test_apgd_attack_keeps_the_loops_guarantees():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(6 * 8 * 8, 4)).eval()
    net.bounds = (0.0, 1.0)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = attacks.run(net, create("gradient", net), x, "topk", eps=8, steps=12, step="apgd", beta=5.0, k=10)
    assert r.settings["step"] == "apgd" and r.settings["iterations"] == 12
    assert float((r.x_adv - r.x).abs().max()) <= 8 / 255 + 1e-6
    with torch.no_grad():
        assert bool((net(r.x_adv).argmax(1) == net(x).argmax(1))[r.success].all())
    assert bool(r.success.any()) and bool((r.metrics["top10_intersection"][r.success] < 1).any())
