"""``attacks.run(subsample=...)``: the gradient step on an unbiased estimate of the map from a random subset of IG's
path points or fewer noise samples; the evaluation on the full method (issue 17.3)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import plain_cnn

from fragile import attacks
from fragile.attacks.objectives import create as create_objective
from fragile.errors import FragileError
from fragile.explanations import create
from fragile.explanations.integrated import IntegratedGradients
from fragile.explanations.subsample import subsample_size, subsampler

pytestmark = pytest.mark.filterwarnings("ignore:the softplus")  # beta=5 on the tiny random net: fine here


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = plain_cnn()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, x


def _on_subset(ig: IntegratedGradients, subset) -> IntegratedGradients:
    """``ig`` on the given path points (what ``subsampled`` draws at random)."""
    clone = ig.subsampled(len(subset), torch.Generator())
    clone._subset = torch.tensor(subset)
    return clone


@pytest.mark.parametrize("rule,steps", [("right", 5), ("trapezoid", 4)])
def test_ig_subset_estimator_is_exactly_unbiased_over_all_subsets(setup, rule, steps):
    """The mean over all C(5, 2) subsets of the estimator's map, and of the float64 gradient of a linear function of
    it (through the softplus surrogate, two-pass replay over chunks of 1 point), is the full IG's: exact up to
    float64 rounding (1e-12 relative; the maps are ~1e-2)."""
    net, x = setup
    ig = create("integrated_gradients", net, steps=steps, rule=rule, batch_size=1).smoothed(3.0)
    points = ig.average_points()
    assert points == 5
    v = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def map_and_grad(e):
        xa = x.clone().requires_grad_(True)
        h = e.attribute(xa, create_graph=True)
        (g,) = torch.autograd.grad((v * h).sum(), xa)
        return h.detach(), g

    full_h, full_g = map_and_grad(ig)
    pairs = [map_and_grad(_on_subset(ig, s)) for s in itertools.combinations(range(points), 2)]
    mean_h = torch.stack([h for h, _ in pairs]).mean(0)
    mean_g = torch.stack([g for _, g in pairs]).mean(0)
    torch.testing.assert_close(mean_h, full_h, rtol=1e-12, atol=1e-12 * float(full_h.abs().max()))
    torch.testing.assert_close(mean_g, full_g, rtol=1e-12, atol=1e-12 * float(full_g.abs().max()))
    assert not torch.allclose(pairs[0][0], full_h)  # one subset alone is not the full map


def test_seeded_random_subsets_average_to_the_full_map(setup):
    """The attack's sampler draws a fresh subset per call: over 400 draws (m = 3 of 10 points) every element of the
    mean map lies within 5 standard errors of the full map (the per-draw standard deviation estimated from the
    draws; over 576 elements a false alarm has probability < 1e-3), and each point is drawn 3/10 of the time to
    within 5 binomial standard deviations."""
    net, x = setup
    ig = create("integrated_gradients", net, steps=10)
    full = ig.attribute(x)
    sample = subsampler(ig, 3, seed=0)
    draws, counts = [], torch.zeros(10)
    for _ in range(400):
        e = sample(ig)
        counts[e._subset] += 1
        draws.append(e.attribute(x))
    d = torch.stack(draws)
    se = d.std(0) / math.sqrt(len(draws))
    assert bool(((d.mean(0) - full).abs() <= 5 * se + 1e-15).all())
    assert float((counts / 400 - 0.3).abs().max()) <= 5 * math.sqrt(0.3 * 0.7 / 400)
    again = subsampler(ig, 3, seed=0)
    assert torch.equal(again(ig)._subset, subsampler(ig, 3, seed=0)(ig)._subset)  # seeded


def test_noise_subsample_is_fewer_fresh_samples_from_the_same_stream(setup):
    """SmoothGrad subsampled to m samples is the m-sample SmoothGrad drawing from the explainer's own stream (which
    it advances); fixed noise is refused."""
    net, x = setup
    sg = create("smoothgrad", net, samples=6, seed=4)
    sg2 = create("smoothgrad", net, samples=2, seed=4)
    sg.reseed(7), sg2.reseed(7)
    sub = sg.subsampled(2, torch.Generator())
    torch.testing.assert_close(sub.attribute(x), sg2.attribute(x), rtol=0, atol=0)
    torch.testing.assert_close(sg.subsampled(2, torch.Generator()).attribute(x), sg2.attribute(x), rtol=0, atol=0)
    fixed = create("smoothgrad", net, samples=6, noise_mode="fixed")
    with pytest.raises(FragileError, match="noise_mode='fixed'"):
        subsampler(fixed, 2, seed=0)  # at the boundary, before the attack starts


@pytest.mark.parametrize("bad", [0, 11, -1, 0.0, 1.5, -0.2, float("nan"), float("inf"), True, "0.2", [2]])
def test_bad_subsample_values_are_refused(setup, bad):
    net, x = setup
    ig = create("integrated_gradients", net, steps=10)
    with pytest.raises(FragileError, match="subsample"):
        attacks.run(net, ig, x, "topk", eps=8, steps=1, beta=5.0, subsample=bad)


@pytest.mark.parametrize("name", ["gradient", "lrp", "gradient_x_input"])
def test_methods_without_path_or_noise_refuse_subsample_by_name(setup, name):
    net, x = setup
    with pytest.raises(FragileError, match=f"'{name}' is not an average"):
        attacks.run(net, create(name, net), x, "topk", eps=8, steps=1, beta=5.0, subsample=0.5)


def test_subsample_sizes():
    """Fractions round to the nearest integer (at least 1); the full count, or 1.0, is no subsampling."""
    ig = create("integrated_gradients", plain_cnn(), steps=20)
    assert [subsample_size(ig, s) for s in (None, 0.2, 0.1, 0.01, 4, 20, 1.0)] == [None, 4, 2, 1, 4, None, None]
    assert subsample_size(create("integrated_gradients", plain_cnn(), steps=20, rule="trapezoid"), 21) is None


@pytest.mark.parametrize("name,params", [("integrated_gradients", {"steps": 6}), ("smoothgrad", {"samples": 4})])
def test_no_subsampling_is_the_full_attack_bit_for_bit(setup, name, params):
    """subsample None, P (all points) and 1.0 run the same attack to the bit (the sampler is the identity)."""
    net, x = setup
    ex = create(name, net, **params)
    assert subsampler(ex, None, 0)(ex) is ex and subsampler(ex, 1.0, 0)(ex) is ex
    every = ex.average_points()
    runs = [attacks.run(net, ex, x, "topk", eps=8, steps=4, beta=5.0, step_size=2, subsample=s)
            for s in (None, every, 1.0)]
    for r in runs[1:]:
        assert torch.equal(r.x_adv, runs[0].x_adv) and torch.equal(r.trajectory, runs[0].trajectory)


def test_gradient_steps_use_the_subset_and_evaluations_the_full_method(setup, monkeypatch):
    """With subsample=2 of 10 path points, every chunk of the gradient step (differentiated, create_graph) has 2 points,
    every evaluation's 10."""
    net, x = setup
    seen = []
    chunk = IntegratedGradients._path_chunk

    def spy(self, net_, x_, base, target, alphas, weights, create_graph):
        seen.append((create_graph, len(alphas)))
        return chunk(self, net_, x_, base, target, alphas, weights, create_graph)

    monkeypatch.setattr(IntegratedGradients, "_path_chunk", spy)
    ig = create("integrated_gradients", net, steps=10, batch_size=None)
    attacks.run(net, ig, x, "topk", eps=8, steps=3, beta=5.0, subsample=2)
    assert {n for graph, n in seen if graph} == {2} and {n for graph, n in seen if not graph} == {10}


@pytest.mark.parametrize("name,params,subsample", [("integrated_gradients", {"steps": 10}, 0.2),
                                                   ("smoothgrad", {"samples": 5}, 1),
                                                   ("uniform_gradient", {"samples": 5}, 2)])
def test_subsampled_attack_keeps_the_label_and_is_chosen_on_the_full_method(setup, name, params, subsample):
    """The returned example keeps its label on the original model, its objective is the full method's (with the
    evaluation's common noise), the setting is recorded, and the run is reproducible from its seed."""
    net, x = setup
    ex = create(name, net, **params)
    r = attacks.run(net, ex, x, "topk", eps=8, steps=5, beta=5.0, step_size=2, subsample=subsample)
    again = attacks.run(net, ex, x, "topk", eps=8, steps=5, beta=5.0, step_size=2, subsample=subsample)
    assert bool(r.success.any()) and r.settings["subsample"] == subsample
    with torch.no_grad():
        assert bool((net(r.x_adv).argmax(1) == r.label).all())
    evaluator = ex.independent_noise(1)  # the loop's evaluator (seed 0): its own stream, reseeded at every evaluation
    evaluator.reseed(1)  # (a no-op for IG)
    objective = create_objective("topk")
    p0 = torch.softmax(net(x), 1)
    state = objective.prepare(attacks.saliency(evaluator.attribute(x, target=r.label)), p0)
    evaluator.reseed(1)
    loss = objective.loss(attacks.saliency(evaluator.attribute(r.x_adv, target=r.label)), None, state)
    torch.testing.assert_close(r.objective[r.success], loss.double()[r.success], rtol=1e-10, atol=1e-12)
    assert torch.equal(again.x_adv, r.x_adv)


def _config(**settings):
    from fragile.experiments import config as config_mod

    return config_mod.resolve({"name": "t", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 2,
                               "methods": [{"name": "integrated_gradients", "steps": 4}], "attacks": ["topk"],
                               "eps": [8], "batch_size": 2, "threads": 1,
                               "attack_settings": {"steps": 2, "step_size": 2.0, **settings}})


def test_config_subsample_is_optional_checked_and_refused_for_methods_without_points():
    """``attack_settings.subsample``: optional (the hash of configs without it is kept), its form checked at load,
    and at ``check_units`` (``--dry-run``) every (method, defence) must have points to subsample."""
    from fragile.experiments.runner import check_units

    assert "subsample" not in _config()["attack_settings"]
    assert _config(subsample=0.5)["attack_settings"]["subsample"] == 0.5
    for bad in (0, 1.5, "0.2", True):
        with pytest.raises(FragileError, match="attack_settings.subsample"):
            _config(subsample=bad)
    net = plain_cnn()
    check_units(net, _config(subsample=2))
    gradient = {**_config(subsample=2), "methods": [{"name": "gradient"}]}
    with pytest.raises(FragileError, match=r"methods\[0\] \(gradient\).*'gradient' is not an average"):
        check_units(net, gradient)
    check_units(net, {**gradient, "defences": [{"name": "smoothgrad", "samples": 4}]})  # noise around it: fine
    with pytest.raises(FragileError, match=r"subsample=5: integrated_gradients averages 4"):
        check_units(net, _config(subsample=5))


def test_sweep_passes_subsample_to_the_attack(tmp_path, monkeypatch):
    from fragile.experiments import runner

    seen = []
    run = attacks.run

    def spy(*a, **kw):
        seen.append(kw.get("subsample"))
        return run(*a, **kw)

    monkeypatch.setattr(runner.attacks, "run", spy)
    out = runner.run_sweep(_config(subsample=0.5), tmp_path / "s", show_progress=False, log=lambda *a: None)
    assert out["ran"] == 1 and seen == [0.5]
