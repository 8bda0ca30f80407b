"""Model-parameter randomisation (fragile.metrics.sanity) against Quantus 0.6's MPRT and by construction.

Quantus re-initialises each layer with ``reset_parameters`` after ``torch.manual_seed(seed + 1)`` (the same
seed for every layer); ours uses ``seed + 1 + i`` for the i-th layer from the top. For the comparison its
calls are mapped to our seeds; then its Spearman values per layer equal ours (scipy's spearmanr of the
flattened raw maps, reduce=None, against our batched ranks: 1e-10).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import AsDouble, plain_cnn
from torch import nn

from fragile.errors import FragileError
from fragile.explanations import create
from fragile.metrics import sanity
from fragile.metrics.similarity import spearman, ssim


def images(n=4, size=8, seed=0):
    return torch.rand(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode, order", [("cascading", "top_down"), ("independent", "independent")])
def test_spearman_equals_quantus_mprt(monkeypatch, mode, order):
    quantus = pytest.importorskip("quantus")
    net = plain_cnn()
    model = AsDouble(net).eval()
    x = images()
    ex = create("gradient", model)
    target = net(x).argmax(1)
    names = sanity.randomizable_layers(model)   # top-down; Quantus' independent order is bottom-up
    seed = 7
    real_seed, calls = torch.manual_seed, []

    def ours_for_theirs(seed=None):      # Quantus calls torch.manual_seed(seed=seed + 1), once per layer
        k = len(calls)
        calls.append(k)
        top_down_index = k if order == "top_down" else len(names) - 1 - k
        return real_seed(seed + top_down_index)

    def explain(model, inputs, targets, **kw):
        return create("gradient", model).attribute(torch.as_tensor(inputs, dtype=torch.float64),
                                                   target=torch.as_tensor(targets)).numpy()

    metric = quantus.MPRT(layer_order=order, seed=seed, normalise=False, abs=False, disable_warnings=True)
    monkeypatch.setattr(torch, "manual_seed", ours_for_theirs)
    theirs = metric(model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=None, explain_func=explain,
                    device="cpu")
    monkeypatch.setattr(torch, "manual_seed", real_seed)
    mine = sanity.model_parameter_randomisation(ex, x, mode=mode, seed=seed, reduce=None)
    assert mine["layers"] == [[n] for n in names] and len(calls) == len(names)
    by_layer = {name[0]: row for name, row in zip(mine["layers"], mine["spearman"].numpy())}
    for name in names:
        np.testing.assert_allclose(by_layer[name], np.asarray(theirs[name]), rtol=1e-10, atol=1e-12)
    assert mine["randomised"] == (list(range(1, len(names) + 1)) if mode == "cascading" else [1] * len(names))


def test_the_users_model_and_global_random_state_are_untouched():
    net = plain_cnn()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    out = sanity.model_parameter_randomisation(create("gradient", net), images(size=8), groups=2)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    assert out["spearman"].shape == (2, 4) and out["randomised"] == [2, 5]  # conv | conv, bn, linear, linear
    again = sanity.model_parameter_randomisation(create("gradient", net), images(size=8), groups=2)
    torch.testing.assert_close(out["spearman"], again["spearman"], rtol=0, atol=0)


def test_groups_split_top_down_and_refuse_bad_counts():
    names = [f"l{i}" for i in range(7)]
    assert sanity.layer_groups(names, 3) == [["l0", "l1"], ["l2", "l3", "l4"], ["l5", "l6"]]
    assert sanity.layer_groups(names, 10) == [[n] for n in names]
    with pytest.raises(FragileError, match="groups"):
        sanity.layer_groups(names, 0)
    with pytest.raises(FragileError, match="no layer"):
        sanity.layer_groups([], 2)
    with pytest.raises(FragileError, match="mode"):
        sanity.model_parameter_randomisation(create("gradient", plain_cnn()), images(), mode="bottom_up")


def test_a_map_that_ignores_the_model_fails_and_the_gradient_passes():
    """An 'explanation' that is the image itself (edge-detector-like, Adebayo Fig. 1) keeps similarity 1
    after full randomisation; the gradient's maps change. SSIM is that of max-normalised |maps|."""
    net = plain_cnn()
    x = images(n=6, size=8, seed=3)
    blind = sanity.model_parameter_randomisation(lambda m, xx, t: xx.clone(), x, model=net, groups=3)
    assert torch.equal(blind["spearman"][-1], torch.ones(6, dtype=torch.float64))
    assert torch.equal(blind["ssim"][-1], torch.ones(6, dtype=torch.float64))
    grad = sanity.model_parameter_randomisation(create("gradient", net), x, groups=3)
    assert float(grad["spearman"][-1].mean()) < 0.6
    m0 = create("gradient", net).attribute(x).abs().sum(1)
    assert grad["ssim"].shape == (3, 6) and bool((grad["ssim"] <= 1).all())
    unit = m0 / m0.flatten(1).amax(1).view(-1, 1, 1)
    torch.testing.assert_close(ssim(unit, unit, data_range=1.0), torch.ones(6, dtype=torch.float64))
    assert spearman(m0, m0).eq(1).all()


def test_noise_averaged_methods_get_common_noise_on_every_model():
    """SmoothGrad: every copy is reseeded before each call, so two copies (and two calls) draw the same noise
    and differences between maps come from the randomised weights alone."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).double().eval()
    ex = create("smoothgrad", net, samples=4)
    x = images(n=3, size=8, seed=4)
    t = net(x).argmax(1)
    (g1, m1), (g2, _) = sanity._copy(ex, net, 0), sanity._copy(ex, net, 0)
    assert m1 is not net and torch.equal(g1(x, t), g2(x, t)) and torch.equal(g1(x, t), g1(x, t))
    out = sanity.model_parameter_randomisation(ex, x, mode="independent")
    again = sanity.model_parameter_randomisation(ex, x, mode="independent")
    assert out["spearman"].shape == (2, 3)
    torch.testing.assert_close(out["spearman"], again["spearman"], rtol=0, atol=0)
