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
