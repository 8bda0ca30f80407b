"""Batched map metrics against scipy (independent oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from fragile.errors import FragileError
from fragile.metrics import spearman, topk_intersection


def test_spearman_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (6, 7, 7), generator=g).double()  # many ties
    b = a + torch.randn(a.shape, generator=g, dtype=torch.float64)
    ours = spearman(a, b)
    theirs = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(6)]
    assert np.allclose(ours.numpy(), theirs, atol=1e-12)


def _scipy_rows(a, b):
    return np.array([spearmanr(u, v).statistic for u, v in zip(a.flatten(1).double().numpy(), b.flatten(1).double().numpy())])


def _stable_topk(a, b, k):
    top = lambda v: set(np.argsort(-v, kind="stable")[:k])  # noqa: E731  ties: lower index first
    return np.array([len(top(u) & top(v)) / k for u, v in zip(a.flatten(1).double().numpy(), b.flatten(1).double().numpy())])


def _tied(shape, levels, g, dtype=torch.float32):
    """Maps of ``levels`` signed levels, with zeros of both signs (-0.0 must tie with 0.0)."""
    m = (torch.rand(shape, generator=g) * levels).round().to(dtype) - levels // 2
    m.view(m.shape[0], -1)[:, ::7] = -0.0
    return m


@pytest.mark.parametrize("side, levels", [(32, 50), (32, 3), (224, 50), (224, 1000), (224, 2 ** 24)],
                         ids=["32-50levels", "32-3levels", "224-50levels", "224-1000levels", "224-untied"])
def test_spearman_and_topk_tie_heavy_float32_maps(side, levels):
    """The map sizes and tie densities of real saliency maps (50 levels: every position continues a run;
    2**24: the few ties of float32 noise), float32 as explainers give them: scipy's average ranks to 1e-12
    (our sums are exact integers, scipy's are float64 sums of ~D^3), top-k equal to a stable argsort."""
    g = torch.Generator().manual_seed(side + levels)
    a, b = _tied((3, side, side), levels, g), _tied((3, side, side), levels, g)
    b[1] = a[1].flip(0)  # a strongly (anti-)correlated pair besides independent ones
    np.testing.assert_allclose(spearman(a, b).numpy(), _scipy_rows(a, b), rtol=0, atol=1e-12)
    k = min(1000, side * side // 4)
    np.testing.assert_array_equal(topk_intersection(a, b, k).numpy(), _stable_topk(a, b, k))


def test_spearman_float64_values_too_close_to_carry_ranks():
    """float64 values that differ only in their lowest mantissa bits (here 2**-45 apart) cannot carry a rank
    in those bits: those rows are sorted by argsort, the others keep the fast path; both equal scipy."""
    g = torch.Generator().manual_seed(5)
    near = 1.0 + torch.randint(0, 40, (4, 30, 30), generator=g).double() * 2.0 ** -45
    far = torch.rand(4, 30, 30, generator=g, dtype=torch.float64)
    a = torch.where(torch.tensor([True, False, True, False])[:, None, None], near, far)
    b = torch.rand(4, 30, 30, generator=g, dtype=torch.float64) + near
    for x, y in ((a, b), (b, a), (a, a.flip(2)), (far, far.flip(1))):
        np.testing.assert_allclose(spearman(x, y).numpy(), _scipy_rows(x, y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.int64, torch.float64])
def test_spearman_other_dtypes(dtype):
    g = torch.Generator().manual_seed(6)
    a, b = _tied((3, 20, 20), 40, g, dtype), (torch.rand(3, 20, 20, generator=g) * 100).to(dtype)
    np.testing.assert_allclose(spearman(a, b).numpy(), _scipy_rows(a, b), rtol=0, atol=1e-12)
    k = 37
    np.testing.assert_array_equal(topk_intersection(a, b, k).numpy(), _stable_topk(a, b, k))


def test_cpu_paths_agree_with_the_torch_paths_used_on_cuda():
    """CUDA tensors take torch's sort (``_ranks``) and topk (``_top_k_mask``); on CPU tensors both give what
    the numpy paths give (checked on the device itself by ``test_rank_metrics_on_cuda``)."""
    from fragile.metrics.similarity import _rank_correlation, _ranks, _top_k_mask

    g = torch.Generator().manual_seed(7)
    for levels in (5, 50, 2 ** 24):
        a, b = _tied((6, 40, 40), levels, g), _tied((6, 40, 40), levels, g)
        fa, fb = a.flatten(1).double(), b.flatten(1).double()
        (ra, _), (rb, _) = _ranks(fa), _ranks(fb)
        np.testing.assert_allclose(spearman(a, b).numpy(), _rank_correlation(ra, rb).numpy(), rtol=0, atol=1e-15)
        ours = (_top_k_mask(fa, 100) & _top_k_mask(fb, 100)).sum(1).double() / 100
        assert torch.equal(topk_intersection(a, b, 100), ours)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rank_metrics_on_cuda():
    g = torch.Generator().manual_seed(8)
    for levels in (50, 2 ** 24):
        a, b = _tied((4, 224, 224), levels, g), _tied((4, 224, 224), levels, g)
        sp = spearman(a.cuda(), b.cuda())
        assert sp.device.type == "cuda"
        np.testing.assert_allclose(sp.cpu().numpy(), spearman(a, b).numpy(), rtol=0, atol=1e-12)
        assert torch.equal(topk_intersection(a.cuda(), b.cuda(), 1000).cpu(), topk_intersection(a, b, 1000))


def test_topk_intersection_against_set_reference():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(5, 10, 10, generator=g), torch.rand(5, 10, 10, generator=g)
    ours = topk_intersection(a, b, k=17)
    for i in range(5):
        sa = set(np.argsort(-a[i].flatten().numpy())[:17])
        sb = set(np.argsort(-b[i].flatten().numpy())[:17])
        assert ours[i].item() == pytest.approx(len(sa & sb) / 17)
    assert torch.all(topk_intersection(a, a, k=17) == 1)


def test_metric_errors():
    with pytest.raises(FragileError, match="same shape"):
        spearman(torch.rand(2, 4), torch.rand(2, 5))
    with pytest.raises(FragileError, match="k must be"):
        topk_intersection(torch.rand(2, 4), torch.rand(2, 4), k=5)


def test_pcc_mse_cosine_against_numpy_and_scipy():
    from scipy.spatial.distance import cosine
    from scipy.stats import pearsonr

    from fragile.metrics import cosine_distance, mse, pcc

    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(4, 3, 9, 9, generator=g, dtype=torch.float64), torch.randn(4, 3, 9, 9, generator=g, dtype=torch.float64)
    for i in range(4):
        fa, fb = a[i].flatten().numpy(), b[i].flatten().numpy()
        assert pcc(a, b)[i].item() == pytest.approx(pearsonr(fa, fb).statistic, abs=1e-12)
        assert mse(a, b)[i].item() == pytest.approx(((fa - fb) ** 2).mean(), abs=1e-12)
        assert cosine_distance(a, b)[i].item() == pytest.approx(cosine(fa, fb), abs=1e-12)


@pytest.mark.parametrize("shape", [(3, 16, 20), (2, 3, 12, 12)])
def test_ssim_matches_scikit_image(shape):
    from skimage.metrics import structural_similarity

    from fragile.metrics import ssim

    g = torch.Generator().manual_seed(3)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = ssim(a, b, data_range=1.0)
    for i in range(shape[0]):
        kw = {"channel_axis": 0} if len(shape) == 4 else {}
        ref = structural_similarity(a[i].numpy(), b[i].numpy(), data_range=1.0, **kw)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)


def test_center_of_mass_matches_scipy_ndimage():
    from scipy.ndimage import center_of_mass as ndi_com

    from fragile.metrics import center_of_mass, center_shift

    g = torch.Generator().manual_seed(4)
    m = torch.rand(3, 11, 17, generator=g, dtype=torch.float64) ** 4
    ours = center_of_mass(m)
    for i in range(3):
        assert np.allclose(ours[i].numpy(), ndi_com(m[i].numpy()), atol=1e-12)
    shifted = torch.roll(m, shifts=(2, 3), dims=(1, 2))
    ref = [np.linalg.norm(np.subtract(ndi_com(m[i].numpy()), ndi_com(shifted[i].numpy()))) for i in range(3)]
    assert np.allclose(center_shift(m, shifted).numpy(), ref, atol=1e-12)


def test_auc_log_eps_against_numpy_trapezoid():
    from fragile.metrics import auc_log_eps

    eps = [1, 2, 4, 8]
    vals = np.array([[0.9, 0.8], [0.7, 0.75], [0.5, 0.6], [0.2, 0.4]])
    ref = np.trapezoid(vals, np.log2(eps), axis=0)
    assert np.allclose(auc_log_eps(eps, vals).numpy(), ref)
    assert np.allclose(auc_log_eps(eps, vals, normalize=True).numpy(), ref / 3)
    with pytest.raises(FragileError, match="increasing"):
        auc_log_eps([2, 1], [0.1, 0.2])
