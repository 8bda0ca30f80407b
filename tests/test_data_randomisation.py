"""Data-randomisation test (fragile.metrics.sanity.data_randomisation, Adebayo et al. 2018 sec. 4).

Quantus 0.6 has no data-randomisation metric (RandomLogit compares two classes of one model; MPRT and its
variants randomise parameters), so the oracle of the similarities is scipy.stats.spearmanr and
skimage.metrics.structural_similarity on maps computed here with torch.autograd (float64): equal to 1e-10
(float64 rounding; both are exact formulas on the same maps). Two tiny CNNs are trained from one
initialisation for 256 steps on 1024 Fashion-MNIST images, one on the true labels, one on permuted ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from fragile.data.readers import FASHION_DIR, load_fashion_mnist
from fragile.data.training_sets import shuffled_labels, training_data
from fragile.errors import FragileError
from fragile.explanations import create
from fragile.metrics import sanity

pytestmark = pytest.mark.skipif(not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                                reason="Fashion-MNIST IDX files not installed")


def tiny_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(8, 16, 5, stride=2, padding=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    (x, y), _ = training_data("fashion-mnist", limit=1024)
    xt, yt, _ = load_fashion_mnist("test")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions on 2 threads of a busy machine: up to 100x slower
    try:
        out = sanity.train_label_pair(tiny_cnn, (x, y), (xt[:2000], yt[:2000]), out=tmp_path_factory.mktemp("pair"),
                                      label_seed=1, seed=0, epochs=8, batch_size=32, lr=3e-3)
    finally:
        torch.set_num_threads(threads)
    return out, xt[2000:2008].double()


def test_the_shuffled_model_scores_chance_and_the_true_one_does_not(pair):
    out, _ = pair
    acc = out["test_accuracy"]
    assert acc["true"] > 0.6, acc
    assert acc["shuffled"] < 0.2, acc  # chance: 0.1
    assert len(out["history"]["true"]) == 8
    w0 = next(out["model"].parameters())
    w1 = next(out["random_model"].parameters())
    assert not torch.equal(w0, w1)


def _gradient(model, x, t):
    x = x.clone().requires_grad_(True)
    logit = model(x).gather(1, t.view(-1, 1)).sum()
    return torch.autograd.grad(logit, x)[0].detach()


def test_similarities_equal_scipy_and_skimage(pair):
    out, x = pair
    model, rand = out["model"].double(), out["random_model"].double()
    got = sanity.data_randomisation(create("gradient", model), x, random_model=rand)
    t = model(x).argmax(1)
    m0, m1 = _gradient(model, x, t).abs().sum(1).numpy(), _gradient(rand, x, t).abs().sum(1).numpy()
    rho = [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(m0, m1)]
    ssim = [structural_similarity(a / a.max(), b / b.max(), data_range=1.0) for a, b in zip(m0, m1)]
    np.testing.assert_allclose(got["spearman"].numpy(), rho, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["ssim"].numpy(), ssim, rtol=1e-10, atol=1e-12)
    assert got["spearman"].shape == got["ssim"].shape == (8,)
    raw = sanity.data_randomisation(create("gradient", model), x, random_model=rand, reduce=None)
    rho_raw = [spearmanr(a.ravel(), b.ravel()).statistic
               for a, b in zip(_gradient(model, x, t).numpy(), _gradient(rand, x, t).numpy())]
    np.testing.assert_allclose(raw["spearman"].numpy(), rho_raw, rtol=1e-10, atol=1e-12)
    assert torch.isnan(raw["ssim"]).all()  # raw (N, 1, H, W) maps: SSIM only for reduced maps


def test_the_explainer_copy_uses_the_random_model_and_callables_work(pair):
    """Guided backprop and SmoothGrad (an inner method holding the model) are copied onto the random model;
    a callable f(model, x, target) gives the same numbers as the Explainer. A map that ignores the model
    (the image itself) has similarity 1: it fails the test."""
    out, x = pair
    model, rand = out["model"].double(), out["random_model"].double()
    t = model(x).argmax(1)
    gbp = sanity.data_randomisation(create("guided_backprop", model), x, random_model=rand)
    fn = sanity.data_randomisation(lambda m, xx, tt: create("guided_backprop", m).attribute(xx, target=tt), x,
                                   model=model, random_model=rand)
    torch.testing.assert_close(gbp["spearman"], fn["spearman"], rtol=1e-12, atol=0)
    sg = create("smoothgrad", model, samples=3)
    a = sanity.data_randomisation(sg, x, random_model=rand, seed=4)
    twin_sg = create("smoothgrad", rand, samples=3)
    for ex in (sg, twin_sg):
        ex.reseed(4)
    m0, m1 = sg.attribute(x, target=t).abs().sum(1), twin_sg.attribute(x, target=t).abs().sum(1)
    rho = [spearmanr(p.ravel(), q.ravel()).statistic for p, q in zip(m0.numpy(), m1.numpy())]
    np.testing.assert_allclose(a["spearman"].numpy(), rho, rtol=1e-10, atol=1e-12)
    assert sg.model is model  # the user's explainer still explains the true model
    blind = sanity.data_randomisation(lambda m, xx, tt: xx.clone(), x, model=model, random_model=rand)
    assert torch.equal(blind["spearman"], torch.ones(8, dtype=torch.float64))


def test_bad_input_is_refused(pair):
    out, x = pair
    model = out["model"].double()
    ex = create("gradient", model)
    other = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).double()
    with pytest.raises(FragileError, match="architecture"):
        sanity.data_randomisation(ex, x, random_model=other)
    with pytest.raises(FragileError, match="nn.Module"):
        sanity.data_randomisation(ex, x, random_model="shuffled.pt")
    with pytest.raises(FragileError, match="model itself"):
        sanity.data_randomisation(ex, x, random_model=model)
    with pytest.raises(FragileError, match="with model="):
        sanity.data_randomisation(lambda m, xx, t: xx, x, random_model=out["random_model"])
    with pytest.raises(FragileError, match="4-D"):
        sanity.data_randomisation(ex, x[0], random_model=out["random_model"])
    with pytest.raises(FragileError, match="target"):
        sanity.data_randomisation(ex, x, random_model=out["random_model"], target=10)


def test_shuffled_labels_are_a_seeded_permutation():
    y = torch.arange(10).repeat(30)
    a, b = shuffled_labels(y, 3), shuffled_labels(y, 3)
    assert torch.equal(a, b) and not torch.equal(a, shuffled_labels(y, 4))
    assert torch.equal(a.bincount(), y.bincount()) and (a != y).float().mean() > 0.8
    (_, ys), (_, yt) = training_data("fashion-mnist", limit=500, shuffle_labels=3)
    (_, yy), (_, yt0) = training_data("fashion-mnist", limit=500)
    assert torch.equal(ys, shuffled_labels(yy, 3)) and torch.equal(yt, yt0)
    with pytest.raises(FragileError, match="1-D"):
        shuffled_labels(y.view(30, 10))
