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
