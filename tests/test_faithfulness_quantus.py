"""Infidelity, ROAD, region perturbation, Monotonicity, MonotonicityCorrelation and Sufficiency
(fragile.metrics.{infidelity, road, region, monotonicity, sufficiency}) against Quantus 0.6 on the same model,
inputs and maps.

The inputs are float32 values held in float64 (Quantus feeds the model float32 tensors; the AsDouble wrapper
computes in float64 on both sides), so where the protocol is deterministic the two agree to rounding. Where
Quantus draws random numbers it cannot be given, its draws are recorded through its perturb_func and given to
ours; where Quantus 0.6 itself is wrong or fails, the test says so and uses another oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import AsDouble
from torch import nn

from fragile.errors import FragileError
from fragile.explanations import create
from fragile.metrics.infidelity import infidelity
from fragile.metrics.monotonicity import monotonicity, monotonicity_correlation
from fragile.metrics.region import patch_grid, region_perturbation
from fragile.metrics.road import NEIGHBOURS, linear_imputation, road
from fragile.metrics.sufficiency import explanation_distances, sufficiency

quantus = pytest.importorskip("quantus")


class Recording(AsDouble):
    """The float64 net for Quantus' float32 tensors; records every output."""

    def __init__(self, net):
        super().__init__(net)
        self.outputs = []

    def forward(self, x):
        out = super().forward(x)
        self.outputs.append(out.detach().clone())
        return out


def _rand(*shape, seed):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)).double()  # float32 values


def _net(channels, size, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * size * size, 3)).double().eval()


@pytest.fixture(scope="module")
def case():
    net = _net(3, 16, 0)
    x = _rand(4, 3, 16, 16, seed=1)
    h = create("gradient_x_input", net).attribute(x)
    return net, x, h, net(x).argmax(1)


def _quantus(metric, net, x, a, t, **call):
    model = Recording(net).eval()
    out = metric(model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a.numpy(), device="cpu", **call)
    return out, model


# -- region perturbation ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("patch_size, regions, baseline", [(4, 10, "black"), (5, 7, "black"), (3, 12, 0.25)])
def test_region_perturbation_equals_quantus(case, patch_size, regions, baseline):
    """Same non-overlapping grid (5 and 3 do not divide 16: Quantus' padded grid), MoRF order of the patch sums,
    cumulative replacement; Quantus' per-image result is the curve f(x) - f(x^(k)), k = 1..R (softmax)."""
    net, x, h, t = case
    theirs, _ = _quantus(quantus.RegionPerturbation(patch_size=patch_size, regions_evaluation=regions, abs=False,
                                                    normalise=False, perturb_baseline=baseline, disable_warnings=True),
                         net, x, h, t)
    mine = region_perturbation(net, x, h, patch_size=patch_size, regions_evaluation=regions, baseline=baseline)
    np.testing.assert_allclose(mine["curve"].T.numpy(), np.asarray(theirs), rtol=0, atol=1e-12)
    torch.testing.assert_close(mine["aopc"], mine["curve"].sum(0) / (regions + 1))


def test_patch_grid_is_quantus_padded_grid():
    """16 px, patch 5: padding 4 -> 2 before, so the rows are 2 + 5 + 5 + 4 = 16 pixels of 4 patch rows."""
    grid, n = patch_grid(16, 16, 5)
    assert n == 16 and grid.shape == (16, 16)
    assert torch.bincount(grid[:, 0]).tolist() == [3, 0, 0, 0, 5, 0, 0, 0, 5, 0, 0, 0, 3]


def test_region_perturbation_lerf_and_random(case):
    """LERF removes the least relevant patches first; 'random' is seeded."""
    net, x, h, t = case
    morf = region_perturbation(net, x, h, patch_size=4, regions_evaluation=16, output="logit")
    lerf = region_perturbation(net, x, h, patch_size=4, regions_evaluation=16, order="lerf", output="logit")
    torch.testing.assert_close(morf["curve"][-1], lerf["curve"][-1])  # all 16 patches removed either way
    r1 = region_perturbation(net, x, h, patch_size=4, regions_evaluation=5, order="random", seed=3)
    r2 = region_perturbation(net, x, h, patch_size=4, regions_evaluation=5, order="random", seed=3)
    torch.testing.assert_close(r1["curve"], r2["curve"])


# -- infidelity -------------------------------------------------------------------------------------------------------

def _infidelity_reference(net, x, a, t, p, fill):
    """Quantus' protocol written out per image, patch and step in float64 (fill: (N,) value per image)."""
    n, _, h, w = x.shape
    ph0, pw0 = ((-h) % p) // 2, ((-w) % p) // 2
    blocks = [(i, j) for i in range(-ph0, h, p) for j in range(-pw0, w, p)]
    out = np.zeros(n)
    for m in range(n):
        xi, ai = x[m].numpy(), a[m].numpy()
        y0 = net(x[m:m + 1])[0, t[m]].item()
        xp, errs = xi.copy(), []
        for i, j in blocks:
            xp[:, max(i, 0):i + p, max(j, 0):j + p] = fill[m]
            drop = y0 - net(torch.from_numpy(xp)[None])[0, t[m]].item()
            errs.append((np.sum(ai * (xi - xp)) - drop) ** 2)
        out[m] = np.mean(errs)
    return out


def test_infidelity_equals_quantus(case):
    """Black baseline, patch sizes 4 and 8, logits (Quantus' defaults but the patch sizes); white and softmax."""
    net, x, h, t = case
    theirs, _ = _quantus(quantus.Infidelity(perturb_patch_sizes=[4, 8], n_perturb_samples=2, disable_warnings=True),
                         net, x, h, t)
    mine = infidelity(net, x, h, perturb_patch_sizes=[4, 8], n_perturb_samples=2)
    np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), rtol=1e-10)
    theirs, _ = _quantus(quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, perturb_baseline="white",
                                            disable_warnings=True), net, x, h, t, softmax=True)
    mine = infidelity(net, x, h, perturb_patch_sizes=4, baseline="white", output="softmax")
    np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), rtol=1e-10)


def test_infidelity_patch_not_dividing_the_image(case):
    """Quantus 0.6 indexes the unpadded image with the padded grid's indices and fails when p does not divide H;
    ours uses its padded grid with cut border patches, checked against the loop reference."""
    net, x, h, t = case
    with pytest.raises(IndexError):
        _quantus(quantus.Infidelity(perturb_patch_sizes=[5], n_perturb_samples=1, disable_warnings=True), net, x, h, t)
    mine = infidelity(net, x, h, perturb_patch_sizes=5, n_perturb_samples=1)
    ref = _infidelity_reference(net, x, h, t, 5, x.reshape(4, -1).amin(1).numpy())
    np.testing.assert_allclose(mine.numpy(), ref, rtol=1e-10)


def test_infidelity_uniform_baseline(case):
    """'uniform' draws a value per image, patch and sample (np.random in Quantus, a seeded generator here: not
    the same stream). Oracles: a degenerate range [c, c] is the constant baseline c; the seed reproduces."""
    net, x, h, t = case
    const = infidelity(net, x, h, perturb_patch_sizes=8, baseline=0.3)
    degenerate = infidelity(net, x, h, perturb_patch_sizes=8, baseline="uniform", uniform_range=(0.3, 0.3),
                            n_perturb_samples=3)
    torch.testing.assert_close(degenerate, const, rtol=1e-10, atol=0)
    r1 = infidelity(net, x, h, perturb_patch_sizes=8, baseline="uniform", n_perturb_samples=3, seed=1)
    r2 = infidelity(net, x, h, perturb_patch_sizes=8, baseline="uniform", n_perturb_samples=3, seed=1)
    torch.testing.assert_close(r1, r2)
    assert not torch.allclose(r1, const)


# -- ROAD -------------------------------------------------------------------------------------------------------------

def test_linear_imputation_equals_quantus_on_three_channels(case):
    """Quantus' noisy_linear_imputation (noise 0: its noise is np.random's), per image, on random masks."""
    from quantus.functions.perturb_func import noisy_linear_imputation

    _, x, _, _ = case
    mask = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(3)) < torch.tensor([0.05, 0.3, 0.6, 0.95]).view(4, 1, 1)
    mine = linear_imputation(x, mask, noise=0.0)
    for i in range(4):
        theirs = noisy_linear_imputation(x[i].numpy(), np.nonzero(mask[i].numpy().reshape(-1))[0], noise=0.0)
        np.testing.assert_allclose(mine[i].numpy(), theirs, rtol=0, atol=1e-12)
    torch.testing.assert_close(mine[:, :, ~mask[0]][0], x[0][:, ~mask[0]])  # kept pixels unchanged


def test_linear_imputation_solves_the_neighbour_equation(case):
    """Independently of Quantus: every imputed pixel is the weighted mean of its in-image neighbours (eq. 5)."""
    _, x, _, _ = case
    mask = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(8)) < 0.5
    out = linear_imputation(x[:1], mask, noise=0.0)[0].numpy()
    for r, q in zip(*np.nonzero(mask[0].numpy())):
        nb = [(r + dr, q + dq, wt) for dr, dq, wt in NEIGHBOURS if 0 <= r + dr < 16 and 0 <= q + dq < 16]
        mean = sum(wt * out[:, rr, qq] for rr, qq, wt in nb) / sum(wt for _, _, wt in nb)
        np.testing.assert_allclose(out[:, r, q], mean, atol=1e-12)


def test_linear_imputation_noise(case):
    """Noise std 0.05, seeded: the noisy minus the noise-free imputation is ~N(0, 0.05^2) on the removed pixels
    (3 x 1536 draws: the std within 10 %) and 0 elsewhere."""
    _, x, _, _ = case
    mask = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(4)) < 0.5
    diff = linear_imputation(x, mask, noise=0.05, seed=2) - linear_imputation(x, mask, noise=0.0)
    inside = diff.permute(0, 2, 3, 1)[mask]
    assert abs(float(inside.std()) / 0.05 - 1) < 0.1 and abs(float(inside.mean())) < 0.01
    assert float(diff.permute(0, 2, 3, 1)[~mask].abs().max()) == 0.0
    torch.testing.assert_close(linear_imputation(x, mask, noise=0.05, seed=2), linear_imputation(x, mask, noise=0.05, seed=2))


def test_road_equals_quantus_on_one_channel_images():
    """Noise 0, the default percentages 1..99 (step 2), one-channel images (Quantus 0.6's ROAD fails with more:
    it indexes the per-pixel imputation with channel-flattened indices); Quantus returns the curve only."""
    net = _net(1, 16, 1)
    x = _rand(6, 1, 16, 16, seed=5)
    h, t = create("gradient_x_input", net).attribute(x), net(x).argmax(1)
    theirs, _ = _quantus(quantus.ROAD(noise=0.0, normalise=False, disable_warnings=True), net, x, h, t)
    mine = road(net, x, h, noise=0.0)
    assert list(theirs) == mine["percentages"].tolist() == list(range(1, 100, 2))
    np.testing.assert_array_equal(mine["curve"].numpy(), np.array(list(theirs.values())))
    assert mine["correct"].shape == (50, 6) and mine["auc"].shape == (6,)


def test_road_quantus_fails_on_three_channels(case):
    net, x, h, t = case
    with pytest.raises(IndexError):
        _quantus(quantus.ROAD(noise=0.0, normalise=False, disable_warnings=True), net, x, h, t)
    out = road(net, x, h, percentages=[10, 50, 90], noise=0.0)
    assert out["correct"].shape == (3, 4)


def test_road_noise_is_seeded_per_percentage(case):
    """The noise is drawn per percentage from its own seed: the same curve whatever the forward-pass chunking."""
    net, x, h, _ = case
    pcts = [10, 30, 50, 70, 90]
    small = road(net, x, h, percentages=pcts, noise=0.2, batch_size=8, seed=4)
    large = road(net, x, h, percentages=pcts, noise=0.2, seed=4)
    torch.testing.assert_close(small["correct"], large["correct"])
    lerf = road(net, x, h, percentages=pcts, order="lerf", noise=0.0)
    assert lerf["auc"].shape == (4,) and bool(((lerf["auc"] >= 0) & (lerf["auc"] <= 0.8)).all())


# -- Monotonicity -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("step", [64, 256])
def test_monotonicity_equals_quantus_with_the_papers_perturbation(case, step):
    """Quantus 0.6's default perturb_func replaces the baseline image's features by the baseline (nothing changes,
    every map is "monotonic", checked below); with a perturb_func inserting the features of x (Arya et al.) it
    gives our booleans, and its recorded softmax scores are our curve."""
    net, x, h, t = case
    flat = x.numpy().reshape(4, -1)

    def reveal(arr, indices, **kw):
        out, rows = arr.copy(), np.arange(arr.shape[0])[:, None]
        out[rows, indices] = flat[rows, indices]
        return out

    theirs, model = _quantus(quantus.Monotonicity(features_in_step=step, abs=False, normalise=False, perturb_func=reveal,
                                                  disable_warnings=True), net, x, h, t)
    mine, curve = monotonicity(net, x, h, features_in_step=step, return_curve=True)
    assert mine.tolist() == list(theirs)
    recorded = torch.softmax(torch.stack(model.outputs[-curve.shape[0]:]), 2)
    torch.testing.assert_close(curve, recorded.gather(2, t.view(1, 4, 1).expand(curve.shape[0], 4, 1))[..., 0],
                               rtol=0, atol=1e-12)
    if step == 256:
        assert 0 < sum(mine.tolist()) < 4  # both outcomes occur
    default, _ = _quantus(quantus.Monotonicity(features_in_step=step, disable_warnings=True), net, x, h, t)
    assert all(default)


def test_monotonicity_correlation_equals_quantus_on_the_same_draws(case):
    """Quantus draws one uniform value per image, group and sample from np.random; its perturb_func is wrapped to
    record them, and they are given to ours as fill_values."""
    from quantus.functions.perturb_func import batch_baseline_replacement_by_indices

    net, x, h, t = case
    used = []

    def recording(arr, indices, **kw):
        out = batch_baseline_replacement_by_indices(arr, indices, **kw)
        used.append(torch.from_numpy(out[np.arange(arr.shape[0]), indices[:, 0]].copy()))
        return out

    np.random.seed(3)
    theirs, _ = _quantus(quantus.MonotonicityCorrelation(features_in_step=64, nr_samples=5, abs=False, normalise=False,
                                                         perturb_func=recording, disable_warnings=True), net, x, h, t)
    mine = monotonicity_correlation(net, x, h, features_in_step=64, n_samples=5, fill_values=torch.stack(used).view(12, 5, 4))
    np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), rtol=0, atol=1e-12)
    theirs, _ = _quantus(quantus.MonotonicityCorrelation(features_in_step=128, nr_samples=2, perturb_baseline="black",
                                                         abs=False, normalise=False, disable_warnings=True),
                         net, x, h, t, softmax=False)
    mine = monotonicity_correlation(net, x, h, features_in_step=128, n_samples=2, baseline="black", output="logit")
    np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), rtol=0, atol=1e-12)
    seeded = monotonicity_correlation(net, x, h, features_in_step=64, n_samples=5, seed=1)
    assert seeded.shape == (4,) and bool(((seeded >= -1) & (seeded <= 1)).all())


# -- Sufficiency ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clusters():
    """Ten maps in three clusters, a linear model whose predicted classes are mixed."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 3)).double().eval()
    with torch.no_grad():
        net[1].bias.copy_(torch.tensor([0.3, -0.4, 0.1]))
    x = _rand(10, 1, 6, 6, seed=4)
    base = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    a = base[torch.arange(10) % 3] + 0.05 * torch.randn(10, 1, 6, 6, generator=torch.Generator().manual_seed(6),
                                                        dtype=torch.float64)
    return net, x, a, net(x).argmax(1)


def test_explanation_distances_are_scipys_seuclidean(clusters):
    from scipy.spatial.distance import cdist

    _, _, a, _ = clusters
    flat = a.reshape(10, -1).numpy()
    np.testing.assert_allclose(explanation_distances(a).numpy(), cdist(flat, flat, "seuclidean"), atol=1e-12)
    np.testing.assert_allclose(explanation_distances(a, "euclidean").numpy(), cdist(flat, flat), atol=1e-12)


@pytest.mark.parametrize("threshold", [0.3, 0.4, 0.6])
def test_sufficiency_equals_quantus(clusters, threshold):
    """Quantus divides the distance matrix by its maximum before thresholding (also with normalise=False)."""
    net, x, a, t = clusters
    theirs, _ = _quantus(quantus.Sufficiency(threshold=threshold, abs=False, normalise=False, disable_warnings=True),
                         net, x, a, t)
    mine = sufficiency(net, x, a, threshold=threshold)
    np.testing.assert_allclose(mine.numpy(), np.asarray(theirs), rtol=0, atol=1e-12)
    assert 0 < float(mine.sum()) < 10


def test_sufficiency_leaves_out_constant_features(clusters):
    """A feature constant over the batch makes scipy's seuclidean 0 / 0 = NaN everywhere and Quantus scores 0; ours
    leaves it out. Oracle: the definition in numpy (scipy's distances on the other features, divided by their
    maximum, thresholded)."""
    from scipy.spatial.distance import cdist

    net, x, a, t = clusters
    a = a.clone()
    a[:, 0, 0, 0] = 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        broken, _ = _quantus(quantus.Sufficiency(threshold=0.6, abs=False, normalise=False, disable_warnings=True),
                             net, x, a, t)
    assert not any(broken)
    flat = a.reshape(10, -1).numpy()[:, 1:]
    d = cdist(flat, flat, "seuclidean")
    near = (d / d.max() <= 0.6) & ~np.eye(10, dtype=bool)
    same = t.numpy()[None] == t.numpy()[:, None]
    expected = np.where(near.sum(1) > 0, (near & same).sum(1) / np.maximum(near.sum(1), 1), 0.0)
    mine = sufficiency(net, x, a, threshold=0.6)
    np.testing.assert_allclose(mine.numpy(), expected, atol=1e-12)
    assert float(mine.sum()) > 0


# -- bad input --------------------------------------------------------------------------------------------------------

def _calls(net, x, h):
    return {
        "region": lambda **kw: region_perturbation(net, x, kw.pop("a", h), **kw),
        "infidelity": lambda **kw: infidelity(net, x, kw.pop("a", h), **kw),
        "road": lambda **kw: road(net, x, kw.pop("a", h), **kw),
        "monotonicity": lambda **kw: monotonicity(net, x, kw.pop("a", h), **kw),
        "monotonicity_correlation": lambda **kw: monotonicity_correlation(net, x, kw.pop("a", h), **kw),
        "sufficiency": lambda **kw: sufficiency(net, x, kw.pop("a", h), **kw),
    }


def test_bad_input_is_refused(case):
    net, x, h, _ = case
    calls = _calls(net, x, h)
    nan = h.clone()
    nan[1, 0, 2, 2] = float("nan")
    for name, call in calls.items():
        with pytest.raises(FragileError, match="finite"):
            call(a=nan)
        with pytest.raises(FragileError, match=r"\(N, C, H, W\)"):
            call(a=h[:, :2])
        with pytest.raises(FragileError, match=r"\(N, C, H, W\)"):
            call(a=h[:3])
        with pytest.raises(FragileError, match="tensor"):
            call(a=h.numpy())
        with pytest.raises(FragileError, match="x "):
            {"region": region_perturbation, "infidelity": infidelity, "road": road, "monotonicity": monotonicity,
             "monotonicity_correlation": monotonicity_correlation, "sufficiency": sufficiency}[name](net, x[0], h[0])
    bad = [("region", {"patch_size": 0}, "patch_size"), ("region", {"patch_size": 17}, "patch_size"),
           ("region", {"order": "best"}, "order"), ("region", {"baseline": "grey"}, "baseline"),
           ("region", {"regions_evaluation": 1.5}, "regions_evaluation"), ("region", {"output": "prob"}, "output"),
           ("infidelity", {"perturb_patch_sizes": []}, "perturb_patch_sizes"),
           ("infidelity", {"perturb_patch_sizes": [4, 32]}, "perturb_patch_sizes"),
           ("infidelity", {"n_perturb_samples": 0}, "n_perturb_samples"), ("infidelity", {"loss": "mae"}, "loss"),
           ("infidelity", {"baseline": float("nan")}, "baseline"),
           ("infidelity", {"baseline": "uniform", "uniform_range": (1, 0)}, "uniform_range"),
           ("road", {"percentages": [10, 100]}, "percentages"), ("road", {"percentages": []}, "percentages"),
           ("road", {"noise": -1.0}, "noise"), ("road", {"order": "random"}, "order"),
           ("road", {"target": 5}, "target"),
           ("monotonicity", {"features_in_step": 0}, "features_in_step"),
           ("monotonicity_correlation", {"n_samples": 0}, "n_samples"),
           ("monotonicity_correlation", {"eps": float("nan")}, "eps"),
           ("monotonicity_correlation", {"features_in_step": 384, "n_samples": 2, "fill_values": torch.zeros(3, 2, 4)},
            "fill_values"),
           ("sufficiency", {"threshold": -0.1}, "threshold"), ("sufficiency", {"distance": "cosine"}, "distance")]
    for name, kw, match in bad:
        with pytest.raises(FragileError, match=match):
            calls[name](**kw)
    with pytest.raises(FragileError, match="at least 2"):
        sufficiency(net, x[:1], h[:1])
    with pytest.raises(FragileError, match="mask"):
        linear_imputation(x, torch.zeros(4, 16, 15, dtype=torch.bool))
