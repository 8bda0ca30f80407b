"""FaithfulnessCorrelation and IROF (fragile.metrics.faithfulness) against Quantus 0.6 on the same random
subsets / superpixels, and by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import AsDouble
from torch import nn

from fragile.errors import FragileError
from fragile.explanations import create
from fragile.metrics.faithfulness import faithfulness_correlation, irof, slic_segments

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)).double().eval()
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    h = create("gradient_x_input", net).attribute(x)
    return net, AsDouble(net).eval(), x, h, net(x).argmax(1)


def test_faithfulness_correlation_equals_quantus_on_the_same_subsets(case):
    """Quantus draws its subsets with np.random.choice (and, per run, unused baseline candidates from the same
    stream); its perturb_func is wrapped to record the subsets it used, which are then given to ours."""
    from quantus.functions.perturb_func import batch_baseline_replacement_by_indices

    net, model, x, h, t = case
    used = []

    def recording(arr, indices, **kw):
        used.append(torch.from_numpy(indices.copy()))
        return batch_baseline_replacement_by_indices(arr, indices, **kw)

    np.random.seed(3)
    theirs = quantus.FaithfulnessCorrelation(nr_runs=12, subset_size=40, return_aggregate=False, disable_warnings=True,
                                             perturb_func=recording)(
        model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=h.numpy(), device="cpu")
    mine = faithfulness_correlation(net, x, h, subsets=torch.stack(used))
    np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), rtol=1e-8)
    runs, size = 12, 40
    seeded = faithfulness_correlation(net, x, h, runs=runs, subset_size=size, seed=1)
    assert seeded.shape == (4,) and bool(((seeded >= -1) & (seeded <= 1)).all())
    with pytest.raises(FragileError, match="subset_size"):
        faithfulness_correlation(net, x, h, subset_size=10**6)


def test_faithfulness_correlation_of_a_linear_model_is_one():
    """f(x) = w . x with the zero baseline: the output drop is exactly sum_S w_i x_i = the attribution sum
    of gradient x input, so the correlation is 1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double().eval()
    x = torch.rand(3, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    h = create("gradient_x_input", net).attribute(x)
    r = faithfulness_correlation(net, x, h, runs=20, subset_size=8, baseline="zero")
    torch.testing.assert_close(r, torch.ones(3, dtype=torch.float64))


def test_irof_equals_quantus_with_a_constant_baseline(monkeypatch):
    """Same SLIC superpixels (Quantus: slic(image, start_label=0)), baseline 0, one-channel images: Quantus 0.6's
    IROF builds a (B, 1, H, W) mask that its own perturb function refuses for B x 3 x H x W images, and calls
    np.trapz, which numpy 2.4 removed (the test gives it np.trapezoid, the same rule)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)).double().eval()
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    h, t = create("gradient_x_input", net).attribute(x), net(x).argmax(1)
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    theirs = quantus.IROF(perturb_baseline=0.0, return_aggregate=False, disable_warnings=True)(
        model=AsDouble(net).eval(), x_batch=x.numpy(), y_batch=t.numpy(), a_batch=h.numpy(), device="cpu",
        softmax=True)
    out = irof(net, x, h, baseline=0.0)
    np.testing.assert_allclose(out["aoc"].numpy(), np.asarray(theirs), rtol=1e-6)  # Quantus: float32 inputs
    assert out["curve"].shape == (int(out["segments"].max()), 4)
    seg = slic_segments(x)
    assert seg.shape == (4, 16, 16) and int(seg.min()) == 0


def test_irof_orders_segments_by_mean_relevance():
    """Two segments (left / right halves) and a model that reads only the left half: relevance on the left
    removes the evidence first (a large area over the curve), relevance on the right last."""
    class LeftHalf(nn.Module):
        def forward(self, x):
            s = x[..., :4].mean((1, 2, 3))
            return torch.stack([s * 10, -s * 10], 1)

    x = torch.full((1, 3, 8, 8), 0.9, dtype=torch.float64)
    seg = torch.zeros(1, 8, 8, dtype=torch.long)
    seg[..., 4:] = 1
    left = torch.zeros(1, 8, 8, dtype=torch.float64)
    left[..., :4] = 1
    good = irof(LeftHalf(), x, left, segments=seg, baseline=0.0)
    bad = irof(LeftHalf(), x, 1 - left, segments=seg, baseline=0.0)
    assert float(good["aoc"]) > float(bad["aoc"])
    torch.testing.assert_close(bad["curve"][0], torch.ones(1, dtype=torch.float64))
