"""RelativeRepresentationStability, Continuity and Consistency against Quantus 0.6 on the same inputs.

- RRS (fragile.metrics.robustness): Quantus gets our perturbations (its ``perturb_func`` returns our j-th
  batch at its j-th call). It computes the representation from ``torch.Tensor(x)`` (float32), so the images and
  the perturbations are quantised to multiples of 2^-16 (exact in float32): then the two agree to float64
  rounding (1e-10). Without the quantisation they differ at ~2e-5 relative (float32 inputs there).
- Continuity (fragile.metrics.continuity) is deterministic (translations): equal to 1e-9 relative, Quantus'
  +1e-9 in the denominator of ratios of order 1 - 10. Quantus normalises by the batch max; it is given
  ``normalise_axes=(1, 2, 3)`` (per image, ours).
- Consistency (fragile.metrics.consistency) is a count: equal where ours is defined (Quantus' +1e-9 in the
  denominator again); where no other image shares the discretised map ours is NaN and Quantus' 0.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import AsDouble, plain_cnn
from torch import nn

from fragile.errors import FragileError
from fragile.explanations import create
from fragile.metrics import robustness as R
from fragile.metrics.consistency import consistency, top_k, top_n_sign
from fragile.metrics.continuity import continuity, shifts, translate

quantus = pytest.importorskip("quantus")


def quantus_explain(explainer):
    def explain(model, inputs, targets, **kw):
        return explainer.attribute(torch.as_tensor(inputs, dtype=torch.float64), target=torch.as_tensor(targets)).numpy()
    return explain


def call(metric, net, x, explainer, target, **kw):
    return np.asarray(metric(model=AsDouble(net).eval(), x_batch=x.numpy(), y_batch=target.numpy(), a_batch=None,
                             explain_func=quantus_explain(explainer), device="cpu", **kw), dtype=float)


def cnn(seed=0):
    """conftest's plain CNN with seeded weights (plain_cnn draws them from the global stream, left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return plain_cnn()


def small_net(seed=0):
    """conv(3 -> 4) - ReLU - linear to 3 classes, float64, seeded (the global stream left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).double().eval()


def quantised(t):
    return (t * 2**16).round() / 2**16


@pytest.fixture
def float32_exact_noise(monkeypatch):
    """Our perturbations rounded to multiples of 2^-16 (the metric draws them through R.perturbations)."""
    draw = R.perturbations

    def perturbations(x, **kw):
        for xs in draw(x, **kw):
            yield quantised(xs)
    monkeypatch.setattr(R, "perturbations", perturbations)
    return perturbations


def same_noise(draw, x, **kw):
    batches = iter(list(draw(x, **kw)))
    return lambda arr, indices, **_: next(batches).reshape(arr.shape).numpy()


def images(n=6, size=8, seed=1):
    return torch.rand(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# -- relative representation stability ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ours, theirs", [({"layer_names": ["3"]}, {"layer_names": ["net.3"]}),
                                          ({"layer_indices": [3, 8]}, {"layer_indices": [3, 8]}),
                                          ({}, {})], ids=["name", "indices", "every_layer"])
def test_rrs_equals_quantus_on_the_same_noise(float32_exact_noise, ours, theirs):
    """Layer i of our ``net`` is Quantus' ``net.i`` of the AsDouble wrapper (its own class and Sequentials are
    not candidates, so the indices agree)."""
    net = cnn()
    x = quantised(images())
    ex = create("gradient", net)
    target = net(x).argmax(1)
    kw = {"eps": 20, "samples": 6, "seed": 3}
    metric = quantus.RelativeRepresentationStability(nr_samples=6, disable_warnings=True, **theirs,
                                                     perturb_func=same_noise(float32_exact_noise, x, **kw))
    expected = call(metric, net, x, ex, target)
    mine = R.relative_representation_stability(ex, x, batch_size=1, **kw, **ours).numpy()
    assert np.isfinite(mine).all()
    np.testing.assert_allclose(mine, expected, rtol=1e-10)


def test_rrs_nan_when_the_prediction_changes_as_quantus(float32_exact_noise):
    net = small_net()
    x = quantised(images())
    ex = create("gradient", net)
    kw = {"eps": 60, "samples": 8, "seed": 5}
    metric = quantus.RelativeRepresentationStability(nr_samples=8, disable_warnings=True, layer_indices=[0],
                                                     perturb_func=same_noise(float32_exact_noise, x, **kw))
    expected = call(metric, net, x, ex, net(x).argmax(1))
    mine = R.relative_representation_stability(ex, x, layer_indices=[0], **kw).numpy()
    assert np.isnan(mine).any() and not np.isnan(mine).all()
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(expected))
    np.testing.assert_allclose(mine[~np.isnan(mine)], expected[~np.isnan(expected)], rtol=1e-10)


def test_rrs_closed_form_and_float64_reference():
    """Independent of Quantus: a float64 loop over the samples with the representation read off by hand
    (the first conv's output = ``net[0](x)``); on a linear model with L = the logits h = W x and gradient x
    input, (e - e') / e = (x - x') / x, so RRS = max_j ||(x - x_j) / x|| / ||(h - h_j) / h||."""
    net = cnn()
    x = images(n=4, seed=2)
    ex = create("gradient", net)
    kw = {"eps": 8, "samples": 5, "seed": 1}
    mine = R.relative_representation_stability(ex, x, layer_names=["0"], return_nan_when_prediction_changes=False, **kw)
    t = net(x).argmax(1)
    e0, l0 = ex.attribute(x, target=t).flatten(1), net[0](x).detach().flatten(1)
    rel = lambda a: a + (a == 0) * 1e-6  # noqa: E731
    ref = torch.stack([((ex.attribute(xs, target=t).flatten(1) - e0) / rel(e0)).norm(dim=1)
                       / ((net[0](xs).detach().flatten(1) - l0) / rel(l0)).norm(dim=1).clamp(min=1e-6)
                       for xs in R.perturbations(x, **kw)]).amax(0)
    torch.testing.assert_close(mine, ref, rtol=1e-12, atol=0)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double().eval()
    x = images(n=4, size=4, seed=3) * 0.8 + 0.1
    gxi = create("gradient_x_input", lin)
    h = lin(x).detach()
    expected = torch.stack([((xs - x) / x).flatten(1).norm(dim=1) / ((lin(xs).detach() - h) / h).norm(dim=1)
                            for xs in R.perturbations(x, **kw)]).amax(0)
    got = R.relative_representation_stability(gxi, x, layer_names=["1"], return_nan_when_prediction_changes=False, **kw)
    torch.testing.assert_close(got, expected)


def test_hidden_layers_follow_quantus_and_refuse_bad_selections():
    net = cnn()
    names = [n for n, _ in R.hidden_layers(net)]
    assert names == [str(i) for i in range(11)]   # the Sequential itself is no candidate
    assert [n for n, _ in R.hidden_layers(net, layer_indices=[-1, 0])] == ["0", "10"]
    assert [n for n, _ in R.hidden_layers(AsDouble(net), layer_names=["net.4"])] == ["net.4"]
    x = images(n=2)
    ex = create("gradient", net)
    for kw, match in (({"layer_names": ["3"], "layer_indices": [1]}, "not both"),
                      ({"layer_names": ["conv9"]}, "unknown layer names"),
                      ({"layer_indices": [11]}, "out of range"),
                      ({"layer_indices": []}, "out of range")):
        with pytest.raises(FragileError, match=match):
            R.relative_representation_stability(ex, x, eps=8, samples=2, **kw)
    with pytest.raises(FragileError, match="unknown quantities"):
        R.perturbation_scores(ex, x, eps=8, quantities=("rss",))

    class Twice(nn.Module):
        def forward(self, x):
            return x, x

    class TupleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.twice, self.body = Twice(), small_net()

        def forward(self, x):
            return self.body(self.twice(x)[0])

    tn = TupleNet()
    every = R.relative_representation_stability(create("gradient", tn), x, eps=8, samples=2)
    assert every.shape == (2,)  # the default selection leaves the tuple output out
    with pytest.raises(FragileError, match="one tensor with a row per image"):
        R.relative_representation_stability(create("gradient", tn), x, eps=8, samples=2, layer_names=["twice"])


@pytest.mark.filterwarnings("ignore:the softplus:UserWarning")  # beta 5 on a random net: PCC < 0.5
def test_rrs_worst_case_comes_from_the_attack_loop():
    """The adversarial RRS is the relative_map_change attack's result (the RIS / ROS attack) evaluated with
    the representation's denominator; worst_vs_random reports it beside the random estimate."""
    from fragile import attacks

    net = cnn()
    x = images(n=4, seed=4)
    ex = create("gradient", net)
    kw = {"steps": 4, "beta": 5.0, "seed": 2}
    worst = R.adversarial_scores(ex, x, eps=16, quantities=("rrs",), scales=(1.0,), layer_names=["3"], **kw)
    res = attacks.run(net, ex, x, "relative_map_change", eps=16, step_size=4, **kw)
    rel = lambda a: a + (a == 0) * 1e-6  # noqa: E731
    num = ((res.maps_adv - res.maps).flatten(1) / rel(res.maps.flatten(1))).norm(dim=1)
    l0, l1 = net[3](net[2](net[1](net[0](res.x)))).detach().flatten(1), net[:4](res.x_adv).detach().flatten(1)
    den = ((l1 - l0) / rel(l0)).norm(dim=1).clamp(min=1e-6)
    ok = res.success
    assert ok.any()
    torch.testing.assert_close(worst["rrs"][ok], (num / den)[ok])
    out = R.worst_vs_random(ex, x, eps=16, samples=4, steps=4, scales=(1.0,), beta=5.0,
                            metrics=("relative_representation_stability",), layer_names=["3"])
    v = out["relative_representation_stability"]
    assert v["random"].shape == v["worst"].shape == (4,)
    torch.testing.assert_close(v["worst"], worst["rrs"], equal_nan=True)


# -- continuity --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("nr_steps", [8, 5, 16])
@pytest.mark.parametrize("normalise", [True, False])
def test_continuity_equals_quantus(nr_steps, normalise):
    net = cnn()
    x = images()
    ex = create("gradient", net)
    metric = quantus.Continuity(nr_steps=nr_steps, normalise=normalise, disable_warnings=True,
                                normalise_func_kwargs={"normalise_axes": (1, 2, 3)})
    expected = call(metric, net, x, ex, net(x).argmax(1))
    mine = continuity(ex, x, nr_steps=nr_steps, normalise=normalise, batch_size=3).numpy()
    assert np.isfinite(mine).all()
    np.testing.assert_allclose(mine, expected, rtol=1e-9)


def test_continuity_nan_when_the_prediction_changes():
    """Quantus 0.6 cannot be the oracle here: its ``return_nan_when_prediction_changes=True`` writes
    ``np.NaN``, removed in NumPy 2. NaN exactly where a shift changes the predicted class (checked by hand),
    Quantus' values (without NaN) elsewhere."""
    net = small_net()
    x = images(n=8)
    ex = create("gradient_x_input", net)
    pred = net(x).argmax(1)
    metric = quantus.Continuity(nr_steps=3, disable_warnings=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)})
    expected = call(metric, net, x, ex, pred)
    mine = continuity(ex, x, nr_steps=3, return_nan_when_prediction_changes=True).numpy()
    flips = torch.stack([net(translate(x, s)).argmax(1) != pred for s in shifts(8, 3)]).any(0).numpy()
    assert flips.any() and not flips.all()
    np.testing.assert_array_equal(np.isnan(mine), flips)
    np.testing.assert_allclose(mine[~flips], expected[~flips], rtol=1e-9)


def test_translation_and_the_continuity_formula_by_hand():
    """translate() against numpy slicing, the shift schedule against Quantus' formula, and continuity
    against a float64 loop of the paper's ratio, in the y direction (which Quantus 0.6 cannot do)."""
    x = images(n=2, size=8)
    xs = translate(x, 2, direction="x").numpy()
    low = x.numpy().reshape(2, -1).min(1)
    np.testing.assert_array_equal(xs[..., 2:], x.numpy()[..., :-2])
    assert (xs[..., :2] == low[:, None, None, None]).all()
    up = translate(x, -4, direction="y", baseline=0.5).numpy()
    np.testing.assert_array_equal(up[:, :, :4], x.numpy()[:, :, 4:])
    assert (up[:, :, 4:] == 0.5).all() and (translate(x, 9).numpy() == low[:, None, None, None]).all()
    assert shifts(28, 28) == list(range(-26, 29, 2)) and shifts(8, 17) == list(range(-7, 9)) + [8]

    net = cnn()
    ex = create("gradient", net)
    t = net(x).argmax(1)
    unit = lambda e: e.abs().flatten(1) / e.abs().flatten(1).amax(1, keepdim=True)  # noqa: E731
    e0 = unit(ex.attribute(x, target=t))
    ratios = []
    for s in shifts(8, 4):
        xt = translate(x, s, direction="y", baseline="mean")
        d = (xt - x).flatten(1).norm(dim=1)
        r = (unit(ex.attribute(xt, target=t)) - e0).abs().sum(1) / d
        ratios.append(torch.where(d > 0, r, torch.full_like(r, float("nan"))))
    expected = torch.stack(ratios).nan_to_num(-1.0).amax(0)
    torch.testing.assert_close(continuity(ex, x, nr_steps=4, direction="y", baseline="mean"), expected)


def test_continuity_refuses_bad_input():
    net = cnn()
    ex = create("gradient", net)
    x = images(n=2)
    for kw, match in (({"nr_steps": 0}, "nr_steps"), ({"nr_steps": 18}, "nr_steps"), ({"direction": "z"}, "direction"),
                      ({"baseline": "random"}, "baseline"), ({"baseline": None}, "baseline"),
                      ({"batch_size": 0}, "batch_size")):
        with pytest.raises(FragileError, match=match):
            continuity(ex, x, **kw)
    with pytest.raises(FragileError, match="4-D"):
        continuity(ex, x[0])
    with pytest.raises(FragileError, match="needs model="):
        continuity(lambda m, xx, t: xx, x, nr_steps=4)


# -- consistency -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def population():
    """40 images on a net predicting 3 classes (26 / 10 / 4); a third of the first row's pixels of channel 0
    set to 0, so gradient x input has several sign patterns among the first entries."""
    net = small_net()
    x = images(n=40, seed=2)
    x[:, 0, 0, :4] *= torch.rand(40, 4, generator=torch.Generator().manual_seed(3)) > 0.35
    return net, x, create("gradient_x_input", net)


@pytest.mark.parametrize("abs_, n", [(True, 5), (False, 5), (True, 3)])
def test_consistency_equals_quantus(population, abs_, n):
    net, x, ex = population
    pred = net(x).argmax(1)
    assert len(pred.unique()) == 3
    metric = quantus.Consistency(abs=abs_, disable_warnings=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
                                 discretise_func=functools.partial(quantus.functions.discretise_func.top_n_sign, n=n))
    expected = call(metric, net, x, ex, pred, batch_size=64)
    mine = consistency(ex, x, abs=abs_, n=n, batch_size=16).numpy()
    defined = ~np.isnan(mine)
    assert defined.sum() >= 10 and 0 < np.nanmean(mine) <= 1
    np.testing.assert_allclose(mine[defined], expected[defined], rtol=1e-8)
    assert (expected[~defined] == 0).all()


def test_consistency_by_hand_and_the_discretisers():
    """A float64/python reference of m_i on given codes and classes (a callable discretiser returning them)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 2 * 2, 3)).double().eval()
    x = images(n=7, size=2, seed=5)
    pred = net(x).argmax(1).tolist()
    codes = torch.tensor([[0], [1], [0], [1], [0], [2], [1]])
    mine = consistency(create("gradient", net), x, discretise=lambda maps: codes)
    for i in range(7):
        partners = [j for j in range(7) if j != i and codes[j] == codes[i]]
        ref = sum(pred[j] == pred[i] for j in partners) / len(partners) if partners else float("nan")
        assert mine[i].item() == pytest.approx(ref, nan_ok=True)
    m = torch.tensor([[0.0, -2.0, 3.0, 1.0], [5.0, 0.5, 0.0, -1.0]])
    assert top_n_sign(m, 3).tolist() == [[0.0, -1.0, 1.0], [1.0, 1.0, 0.0]]
    assert top_k(m, 2).tolist() == [[2, 3], [0, 1]]
    assert consistency(create("gradient", net), x, discretise="top_k", n=2).shape == (7,)


def test_consistency_refuses_bad_input(population):
    net, x, ex = population
    for kw, match in (({"discretise": "rank"}, "unknown discretise"), ({"discretise": 3}, "discretise"),
                      ({"n": 0}, "n must be"), ({"discretise": lambda m: m[:2]}, "one row per map")):
        with pytest.raises(FragileError, match=match):
            consistency(ex, x, **kw)
    with pytest.raises(FragileError, match="N >= 2"):
        consistency(ex, x[:1])
    with pytest.raises(FragileError, match="target"):
        consistency(ex, x, target=7)
