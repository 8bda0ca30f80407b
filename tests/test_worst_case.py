"""Worst case beside average case: each random-perturbation metric and the attack that maximises the same
quantity inside the same ball (fragile.metrics.robustness.worst_vs_random / adversarial_scores)."""

from __future__ import annotations

import pytest
import torch
from conftest import plain_cnn

from fragile import attacks
from fragile.attacks.objectives import RelativeMapChange
from fragile.errors import FragileError
from fragile.explanations import create
from fragile.metrics import robustness as R

pytestmark = pytest.mark.filterwarnings("ignore:the softplus:UserWarning")  # beta 5 on a random net: PCC < 0.5


@pytest.fixture(scope="module")
def case():
    net = plain_cnn()
    x = torch.rand(5, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return net, create("gradient", net), x


def test_the_worst_case_is_the_attack_on_the_same_quantity(case):
    """At one radius the adversarial sensitivity is ||s' - s|| / ||s|| at the map_distance attack's result,
    and the Lipschitz ratio ||s' - s|| / ||x' - x|| at the same point."""
    net, ex, x = case
    kw = {"steps": 6, "beta": 5.0, "seed": 2}
    worst = R.adversarial_scores(ex, x, eps=16, quantities=("sensitivity", "lipschitz"), scales=(1.0,), **kw)
    res = attacks.run(net, ex, x, "map_distance", eps=16, step_size=4, **kw)
    d = (res.maps_adv - res.maps).flatten(1).norm(dim=1)
    ok = res.success
    torch.testing.assert_close(worst["sensitivity"][ok], (d / res.maps.flatten(1).norm(dim=1))[ok])
    torch.testing.assert_close(worst["lipschitz"][ok], (d / (res.x_adv - res.x).flatten(1).norm(dim=1))[ok])
    assert torch.isnan(worst["sensitivity"][~ok]).all()


def test_worst_vs_random_ratios(case):
    """The attack beats 12 random draws in the same ball on most images; the worst case of the average
    sensitivity is that of the max (the sup over the ball), and the random mean is below the random max."""
    _, ex, x = case
    out = R.worst_vs_random(ex, x, eps=16, samples=12, steps=8, scales=(0.5, 1.0), beta=5.0)
    assert set(out) == set(R.RANDOM_METRICS)
    for v in out.values():
        assert v["random"].shape == v["worst"].shape == v["ratio"].shape == (5,)
        torch.testing.assert_close(v["ratio"], v["worst"] / v["random"], equal_nan=True)
    assert float(out["max_sensitivity"]["ratio"].nanmedian()) > 1
    assert float(out["local_lipschitz"]["ratio"].nanmedian()) > 1
    torch.testing.assert_close(out["avg_sensitivity"]["worst"], out["max_sensitivity"]["worst"], equal_nan=True)
    assert bool((out["avg_sensitivity"]["random"] <= out["max_sensitivity"]["random"]).all())
    with pytest.raises(FragileError, match="unknown metrics"):
        R.worst_vs_random(ex, x, eps=8, metrics=("continuity",))


def test_relative_map_change_objective():
    s0 = torch.tensor([[[0.5, 0.0], [0.25, 0.25]]], dtype=torch.float64)
    s = torch.tensor([[[0.25, 0.25], [0.25, 0.25]]], dtype=torch.float64)
    obj = RelativeMapChange(eps_min=1e-6)
    state = obj.prepare(s0, None)
    expected = -torch.tensor([(0.25 / 0.5) ** 2 + (0.25 / 1e-6) ** 2]).sqrt()
    torch.testing.assert_close(obj.loss(s, None, state), expected.double())
    assert "relative_map_change" in attacks.available()
