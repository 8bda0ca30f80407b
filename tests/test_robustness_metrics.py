"""Random-perturbation robustness metrics (fragile.metrics.robustness) against Quantus 0.6 and closed forms.

Quantus is given the very perturbations we draw (its ``perturb_func`` returns our j-th perturbed batch at
its j-th call), so its MaxSensitivity, AvgSensitivity, LocalLipschitzEstimate, RelativeInputStability and
RelativeOutputStability must equal ours to float64 rounding; only ROS differs at 1e-6 relative, because
Quantus computes the logits of ``torch.Tensor(x)`` (float32 inputs) while we keep float64. With Quantus'
own noise (numpy's global stream) the two are only equal in distribution: medians within 10%.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import AsDouble, plain_cnn
from torch import nn

from fragile.errors import FragileError
from fragile.explanations import create
from fragile.geometry import lipschitz_sampled
from fragile.metrics import robustness as R

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def setup():
    net = plain_cnn()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, AsDouble(net).eval(), x, create("gradient", net)


def quantus_explain(explainer):
    def explain(model, inputs, targets, **kw):
        return explainer.attribute(torch.as_tensor(inputs, dtype=torch.float64), target=torch.as_tensor(targets)).numpy()
    return explain


def same_noise(x, **kw):
    """A Quantus perturb_func returning our perturbations, in order."""
    batches = iter(list(R.perturbations(x, **kw)))
    return lambda arr, indices, **_: next(batches).reshape(arr.shape).numpy()


def run_quantus(metric, model, x, explainer, target):
    return np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=None,
                             explain_func=quantus_explain(explainer), device="cpu", batch_size=64), dtype=float)


CASES = [  # (ours, Quantus class, its extra settings, relative tolerance)
    (R.max_sensitivity, "MaxSensitivity", {}, 1e-10),
    (R.avg_sensitivity, "AvgSensitivity", {}, 1e-10),
    (R.local_lipschitz_estimate, "LocalLipschitzEstimate", {"normalise": False}, 1e-8),  # Quantus adds 1e-10
    (R.relative_input_stability, "RelativeInputStability", {}, 1e-10),
    (R.relative_output_stability, "RelativeOutputStability", {}, 1e-5),                # float32 logits there
]


@pytest.mark.parametrize("ours, name, extra, rtol", CASES, ids=[c[1] for c in CASES])
def test_equals_quantus_on_the_same_noise(setup, ours, name, extra, rtol):
    net, model, x, ex = setup
    target = net(x).argmax(1)
    samples, eps, seed = 6, 20, 3
    metric = getattr(quantus, name)(nr_samples=samples, disable_warnings=True, perturb_func=same_noise(
        x, eps=eps, samples=samples, seed=seed), **extra)
    theirs = run_quantus(metric, model, x, ex, target)
    mine = ours(ex, x, eps=eps, samples=samples, seed=seed).numpy()
    assert np.isfinite(mine).all()
    np.testing.assert_allclose(mine, theirs, rtol=rtol)


@pytest.mark.parametrize("ours, name", [(R.local_lipschitz_estimate, "LocalLipschitzEstimate"),
                                        (R.max_sensitivity, "MaxSensitivity"),
                                        (R.relative_input_stability, "RelativeInputStability")])
def test_nan_when_the_prediction_changes_as_quantus(ours, name):
    """On a net with small margins eps 60/255 flips the labels of some images: those are NaN in both,
    the others equal."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).double().eval()
    model, ex = AsDouble(net).eval(), create("gradient", net)
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = net(x).argmax(1)
    kw = {"eps": 60, "samples": 8, "seed": 5}
    metric = getattr(quantus, name)(nr_samples=8, disable_warnings=True, perturb_func=same_noise(x, **kw),
                                    return_nan_when_prediction_changes=True,
                                    **({"normalise": False} if name == "LocalLipschitzEstimate" else {}))
    theirs = run_quantus(metric, model, x, ex, target)
    mine = ours(ex, x, return_nan_when_prediction_changes=True, **kw).numpy()
    assert np.isnan(mine).any() and not np.isnan(mine).all()
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(theirs))
    np.testing.assert_allclose(mine[~np.isnan(mine)], theirs[~np.isnan(theirs)], rtol=1e-8)
    kept = ours(ex, x, return_nan_when_prediction_changes=False, **kw).numpy()
    assert np.isfinite(kept).all()


def test_sensitivity_matches_quantus_default_noise_in_distribution(setup):
    """Quantus' default noise: uniform of radius 0.2 (= 51/255), not clipped, numpy's global stream."""
    net, model, x, ex = setup
    x16 = torch.rand(16, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = net(x16).argmax(1)
    for ours, name in ((R.max_sensitivity, "MaxSensitivity"), (R.avg_sensitivity, "AvgSensitivity")):
        np.random.seed(0)
        theirs = run_quantus(getattr(quantus, name)(nr_samples=30, disable_warnings=True), model, x16, ex, target)
        mine = ours(ex, x16, eps=51, samples=30, clip=False).numpy()
        assert 0.9 < np.median(mine / theirs) < 1.1


def test_any_callable_explanation_e_g_captum(setup):
    from captum.attr import Saliency

    net, _, x, ex = setup
    mine = R.max_sensitivity(ex, x, eps=8, samples=4)
    theirs = R.max_sensitivity(lambda m, xx, t: Saliency(m).attribute(xx, target=t, abs=False), x, eps=8, samples=4,
                               model=net)
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=0)
    with pytest.raises(FragileError, match="needs model="):
        R.max_sensitivity(lambda m, xx, t: xx, x, eps=8)
    with pytest.raises(FragileError, match="one finite map per input"):
        R.max_sensitivity(lambda m, xx, t: xx[:1], x, eps=8, model=net)


def test_closed_forms_on_a_linear_model():
    """f(x) = W x: the gradient map is the row of W (sensitivity and Lipschitz 0); gradient x input is
    x * w, so (e - e') / e = (x - x') / x and RIS = 1 exactly, and its Lipschitz ratio is
    ||w * dx|| / ||dx||."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double().eval()
    x = torch.rand(4, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    grad, gxi = create("gradient", net), create("gradient_x_input", net)
    kw = {"eps": 8, "samples": 5, "seed": 1}
    assert R.max_sensitivity(grad, x, **kw).abs().max() < 1e-12
    assert R.local_lipschitz_estimate(grad, x, **kw).abs().max() < 1e-12
    every = {**kw, "return_nan_when_prediction_changes": False}  # the closed forms hold for every sample
    torch.testing.assert_close(R.relative_input_stability(gxi, x, **every), torch.ones(4, dtype=torch.float64))
    w = net[1].weight[net(x).argmax(1)].detach().view(4, -1)
    dx = torch.stack([(xs - x).view(4, -1) for xs in R.perturbations(x, eps=8, samples=5, seed=1)])
    expected = ((w * dx).norm(dim=2) / dx.norm(dim=2)).amax(0)
    torch.testing.assert_close(R.local_lipschitz_estimate(gxi, x, **kw), expected)
    h = net(x).detach()
    dh = torch.stack([(net(xs).detach() - h).norm(dim=1) for xs in R.perturbations(x, eps=8, samples=5, seed=1)])
    num = torch.stack([((xs - x) / x).view(4, -1).norm(dim=1) for xs in R.perturbations(x, eps=8, samples=5, seed=1)])
    torch.testing.assert_close(R.relative_output_stability(gxi, x, **every), (num / dh).amax(0))


def test_batching_seeds_and_the_sampled_lipschitz_estimate(setup):
    net, _, x, ex = setup
    one = R.perturbation_scores(ex, x, eps=8, samples=5, batch_size=1, reduce="abs_sum")
    five = R.perturbation_scores(ex, x, eps=8, samples=5, batch_size=5, reduce="abs_sum")
    for q in (*R.QUANTITIES, "changed"):
        torch.testing.assert_close(one[q], five[q], rtol=1e-12, atol=0)
        assert one[q].shape == (5, 6)
    again = R.max_sensitivity(ex, x, eps=8, samples=5, seed=0)
    torch.testing.assert_close(again, R.max_sensitivity(ex, x, eps=8, samples=5, seed=0), rtol=0, atol=0)
    assert not torch.equal(again, R.max_sensitivity(ex, x, eps=8, samples=5, seed=1))
    torch.testing.assert_close(lipschitz_sampled(ex, x, eps=8, samples=5), one["lipschitz"].amax(0))
    xs = next(R.perturbations(x, eps=255, samples=1, bounds=(0.0, 1.0)))
    assert xs.min() >= 0 and xs.max() <= 1
    gauss = R.avg_sensitivity(ex, x, eps=8, samples=3, noise="gaussian")
    assert gauss.shape == (6,) and bool(torch.isfinite(gauss).all())
    with pytest.raises(FragileError, match="unknown noise"):
        R.max_sensitivity(ex, x, eps=8, noise="laplace")


def test_noise_averaged_methods_get_common_noise(setup):
    """SmoothGrad draws fresh noise at every call: with common_noise (default) e(x) and e(x') use the same
    draws, so a tiny perturbation barely moves the map; without, the Monte-Carlo noise of 4 samples does."""
    net, _, x, _ = setup
    sg = create("smoothgrad", net, samples=4)
    common = R.max_sensitivity(sg, x, eps=1e-4, samples=3)
    fresh = R.max_sensitivity(sg, x, eps=1e-4, samples=3, common_noise=False)
    assert float(common.max()) < 1e-3 < float(fresh.min())
    assert R.stochastic(sg) and not R.stochastic(create("gradient", net))


def test_aggregate_conventions():
    v = torch.tensor([[1.0, 5.0, float("nan")], [3.0, 2.0, float("nan")]], dtype=torch.float64)
    changed = torch.tensor([[False, True, False], [False, False, False]])
    torch.testing.assert_close(R.aggregate(v, changed, "max")[:2], torch.tensor([3.0, 5.0], dtype=torch.float64))
    assert torch.isnan(R.aggregate(v, changed, "max")[2])  # every sample undefined
    assert R.aggregate(v, changed, "max", skip_changed=True)[1] == 2.0
    assert torch.isnan(R.aggregate(v, changed, "max", return_nan_when_prediction_changes=True)[1])
    torch.testing.assert_close(R.aggregate(v, changed, "mean")[:2], torch.tensor([2.0, 3.5], dtype=torch.float64))
