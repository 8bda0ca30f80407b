"""Map metrics on degenerate inputs, and property tests (hypothesis) against independent oracles:
scipy.stats.spearmanr / pearsonr, scipy.spatial.distance.cosine, skimage.metrics.structural_similarity,
scipy.ndimage.center_of_mass, numpy. Values are drawn from an integer grid (or a set of 4 values, for
ties) so that the references are well conditioned and a tolerance of 1e-10 is round-off, not luck."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import center_of_mass as ndi_center_of_mass
from scipy.spatial.distance import cosine as scipy_cosine
from scipy.stats import pearsonr, spearmanr
from skimage.metrics import structural_similarity

from fragile.errors import FragileError
from fragile.metrics import (
    DegenerateMapWarning, center_of_mass, center_shift, cosine_distance, mse, pcc, spearman, ssim, topk_intersection,
)

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)  # bounded, seeded, no files
GRID = st.integers(-1000, 1000).map(float)
TIES = st.sampled_from([0.0, 1.0, 2.0, 3.0])
TOL = 1e-10


@st.composite
def pairs(draw, min_side=1, max_side=6, nonneg=False):
    """Two (N, H, W) float64 maps of one shape, values from the grid or from a small set (ties)."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(min_side, max_side)), draw(st.integers(max(min_side, 2), max_side)))
    values = draw(st.sampled_from([GRID, TIES]))
    a, b = (np.abs(draw(arrays(np.float64, shape, elements=values))) if nonneg else
            draw(arrays(np.float64, shape, elements=values)) for _ in range(2))
    return torch.from_numpy(a), torch.from_numpy(b)


@st.composite
def any_map(draw, min_side=7, max_side=9):
    """A (N, H, W) map of any kind: grid or tied values, all-zero, constant; times 10**e, |e| <= 300."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side)))
    kind = draw(st.sampled_from(["grid", "ties", "zero", "constant"]))
    if kind in ("grid", "ties"):
        m = draw(arrays(np.float64, shape, elements=GRID if kind == "grid" else TIES))
    else:
        m = np.full(shape, 0.0 if kind == "zero" else draw(st.sampled_from([-2.0, 0.5, 7.0])))
    return torch.from_numpy(m * 10.0 ** draw(st.integers(-300, 300)))


def _constant(v: np.ndarray) -> bool:
    return bool(np.all(v == v[0]))


def _zero(v: np.ndarray) -> bool:
    return bool(np.all(v == 0))


def _reference(fa, fb, oracle, identical, undefined):
    """Our convention around an oracle: identical pairs score ``identical``, undefined ones NaN."""
    if np.array_equal(fa, fb):
        return identical
    if undefined(fa) or undefined(fb):
        return math.nan
    return oracle(fa, fb)


def _call(fn, *args, **kw):
    """fn(*args) and the DegenerateMapWarning messages it emitted."""
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn(*args, **kw)
    degenerate = [str(w.message) for w in rec if issubclass(w.category, DegenerateMapWarning)]
    assert len(degenerate) == len(rec), [str(w.message) for w in rec]  # no other warning either
    return out, degenerate


def _check_warning(name, expected, messages):
    """Exactly one warning, naming the metric and the number of NaN images, iff some are NaN."""
    n_nan = int(np.isnan(expected).sum())
    if n_nan:
        assert len(messages) == 1 and messages[0].startswith(f"{name}: undefined for {n_nan} of {len(expected)} images")
    else:
        assert messages == []


ORACLES = {  # name: (ours, oracle on flat rows, value for identical pairs, undefined for)
    "spearman": (spearman, lambda u, v: spearmanr(u, v).statistic, 1.0, _constant),
    "pcc": (pcc, lambda u, v: pearsonr(u, v).statistic, 1.0, _constant),
    "cosine_distance": (cosine_distance, scipy_cosine, 0.0, _zero),
    "mse": (mse, lambda u, v: np.mean((u - v) ** 2), 0.0, lambda v: False),
}


@pytest.mark.parametrize("name", list(ORACLES))
@PROPERTY
@given(ab=pairs())
def test_map_metric_matches_scipy_oracle(name, ab):
    ours_fn, oracle, identical, undefined = ORACLES[name]
    a, b = ab
    ours, messages = _call(ours_fn, a, b)
    fa, fb = a.flatten(1).numpy(), b.flatten(1).numpy()
    expected = np.array([_reference(fa[i], fb[i], oracle, identical, undefined) for i in range(len(fa))])
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=TOL, equal_nan=True)
    _check_warning(name, expected, messages)


@PROPERTY
@given(ab=pairs(), k_frac=st.floats(0, 1))
def test_topk_intersection_matches_stable_argsort(ab, k_frac):
    a, b = ab
    fa, fb = a.flatten(1).numpy(), b.flatten(1).numpy()
    k = 1 + int(k_frac * (fa.shape[1] - 1))
    top = lambda v: set(np.argsort(-v, kind="stable")[:k])  # noqa: E731  ties: lower index first
    expected = [len(top(fa[i]) & top(fb[i])) / k for i in range(len(fa))]
    np.testing.assert_allclose(topk_intersection(a, b, k).numpy(), expected, rtol=0, atol=0)


@PROPERTY
@given(ab=pairs(min_side=7, max_side=10), factor=st.sampled_from([None, 0.5, 1.0, 4.0]))
def test_ssim_matches_scikit_image(ab, factor):
    """data_range None (the range of both), or a multiple of it given per image: a data_range far
    below the values' scale makes the formula ill-conditioned (c2 drowns in round-off), for both."""
    a, b = ab
    both = torch.cat([a.flatten(1), b.flatten(1)], 1)
    ranges = (both.amax(1) - both.amin(1)).numpy()
    given_range = None if factor is None else torch.from_numpy(factor * ranges)
    ours, messages = _call(ssim, a, b, data_range=given_range)
    expected = []
    for x, y, r in zip(a.numpy(), b.numpy(), ranges * (factor or 1.0)):
        expected.append(1.0 if np.array_equal(x, y) else structural_similarity(x, y, win_size=7, data_range=r))
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=TOL)
    assert messages == []


@PROPERTY
@given(ab=pairs(nonneg=True))
def test_center_of_mass_and_shift_match_ndimage(ab):
    a, b = ab
    com, messages = _call(center_of_mass, a)
    expected = np.array([ndi_center_of_mass(m) if m.sum() > 0 else (math.nan, math.nan) for m in a.numpy()])
    np.testing.assert_allclose(com.numpy(), expected, rtol=0, atol=TOL, equal_nan=True)
    _check_warning("center_of_mass", expected[:, 0], messages)
    shift, messages = _call(center_shift, a, b)
    cb = np.array([ndi_center_of_mass(m) if m.sum() > 0 else (math.nan, math.nan) for m in b.numpy()])
    expected = np.linalg.norm(expected - cb, axis=1)
    expected[[np.array_equal(x, y) for x, y in zip(a.numpy(), b.numpy())]] = 0.0
    np.testing.assert_allclose(shift.numpy(), expected, rtol=0, atol=TOL, equal_nan=True)
    _check_warning("center_shift", expected, messages)


IDENTITY = [(spearman, 1.0), (pcc, 1.0), (cosine_distance, 0.0), (ssim, 1.0), (mse, 0.0),
            (lambda a, b: topk_intersection(a, b, 10), 1.0), (center_shift, 0.0)]


@PROPERTY
@given(m=any_map())
def test_identical_maps_score_identical_whatever_the_values(m):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DegenerateMapWarning (nor any other) for identical maps
        for fn, value in IDENTITY:
            assert torch.all(fn(m, m.clone()) == value)


SYMMETRIC = [spearman, pcc, cosine_distance, mse, lambda a, b: topk_intersection(a, b, 3)]


@PROPERTY
@given(ab=pairs(min_side=7, max_side=8))
def test_metrics_are_symmetric(ab):
    a, b = ab
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateMapWarning)
        for fn in [*SYMMETRIC, ssim]:
            np.testing.assert_allclose(fn(a, b).numpy(), fn(b, a).numpy(), rtol=0, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(center_shift(a.abs(), b.abs()).numpy(), center_shift(b.abs(), a.abs()).numpy(),
                                   rtol=0, atol=1e-12, equal_nan=True)


@PROPERTY
@given(ab=pairs(), ea=st.integers(-300, 300), eb=st.integers(-300, 300))
def test_invariant_to_positive_scaling_over_the_float64_range(ab, ea, eb):
    """pcc, Spearman, cosine distance and top-k of (10^ea a, 10^eb b) equal those of (a, b) where the
    metric is defined (scaling can make an identical pair non-identical: that is the convention).
    Tolerance 1e-12: an identical pair scores 1 exactly, its scaled copy 1 up to round-off."""
    a, b = ab
    sa, sb = a * 10.0 ** ea, b * 10.0 ** eb
    flat_a, flat_b = a.flatten(1), b.flatten(1)
    ok = ~((flat_a == flat_a[:, :1]).all(1) | (flat_b == flat_b[:, :1]).all(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateMapWarning)
        for fn in (pcc, cosine_distance, spearman):
            np.testing.assert_allclose(fn(sa, sb)[ok].numpy(), fn(a, b)[ok].numpy(), rtol=0, atol=1e-12)
    k = max(1, flat_a.shape[1] // 2)
    assert torch.equal(topk_intersection(sa, sb, k), topk_intersection(a, b, k))


@PROPERTY
@given(ab=pairs(min_side=7, max_side=8), e=st.integers(-300, 300))
def test_ssim_invariant_to_a_common_positive_scaling(ab, e):
    """With data_range None (the range of both maps), c1 and c2 scale with the maps."""
    a, b = ab
    np.testing.assert_allclose(ssim(a * 10.0 ** e, b * 10.0 ** e).numpy(), ssim(a, b).numpy(), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize("m", [torch.zeros(2, 8, 8), torch.full((2, 8, 8), 3.0), torch.rand(2, 8, 8) * 1e-30,
                               torch.rand(2, 8, 8).double() * 1e30, torch.rand(2, 8, 8).double() * 1e300],
                         ids=["zero", "constant", "tiny", "huge", "1e300"])
def test_identical_degenerate_maps(m):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn, value in IDENTITY:
            assert torch.all(fn(m, m.clone()) == value)


def test_pcc_of_tiny_maps_is_not_clamped():
    """Regression: the norm product was clamped at 1e-30, so pcc(a, a) ~ 0 for maps ~1e-30."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 50, generator=g, dtype=torch.float64), torch.rand(3, 50, generator=g, dtype=torch.float64)
    for scale in (1e-30, 1e-200, 1e30, 1e200):
        assert torch.allclose(pcc(a * scale, b * scale), pcc(a, b), rtol=0, atol=1e-12)
        assert torch.allclose(cosine_distance(a * scale, b), cosine_distance(a, b), rtol=0, atol=1e-12)
        assert torch.allclose(pcc(a * scale, a), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)


def _batch(degenerate):
    """Three images: a degenerate map against two random maps, then two random maps."""
    g = torch.Generator().manual_seed(1)
    b = torch.rand(3, 6, 6, generator=g, dtype=torch.float64)
    return torch.stack([degenerate, degenerate, b[2].flip(0)]), b


@pytest.mark.parametrize("name, fn, degenerate", [
    ("spearman", spearman, torch.full((6, 6), 2.0)),
    ("pcc", pcc, torch.full((6, 6), -1e-30)),
    ("pcc", pcc, torch.zeros(6, 6)),
    ("cosine_distance", cosine_distance, torch.zeros(6, 6)),
    ("center_shift", center_shift, torch.zeros(6, 6)),
])
def test_undefined_pairs_give_nan_and_one_warning(name, fn, degenerate):
    a, b = _batch(degenerate.double())
    with pytest.warns(DegenerateMapWarning, match=rf"^{name}: undefined for 2 of 3 images") as rec:
        out = fn(a, b)
    assert len(rec) == 1
    assert torch.isnan(out[:2]).all()
    assert out[2].item() == pytest.approx(fn(a[2:], b[2:])[0].item(), abs=1e-15)  # unaffected by the others
    with pytest.warns(DegenerateMapWarning, match=rf"^{name}: undefined for 2 of 3"):
        fn(b, a)  # either side


def test_center_of_mass_of_an_empty_map_is_nan_with_zero_gradient():
    m = torch.rand(2, 5, 5, dtype=torch.float32)
    m[0] = 0
    m.requires_grad_(True)
    with pytest.warns(DegenerateMapWarning, match=r"^center_of_mass: undefined for 1 of 2 images"):
        c = center_of_mass(m)
    assert c.dtype == torch.float32 and torch.isnan(c[0]).all() and torch.isfinite(c[1]).all()
    c[1].sum().backward()
    assert torch.isfinite(m.grad).all() and torch.all(m.grad[0] == 0) and m.grad[1].abs().sum() > 0


def test_cosine_distance_of_a_constant_map_is_defined():
    a, b = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cosine_distance(a, b).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-15)
        assert cosine_distance(a, -a).item() == 2.0


def test_ssim_of_two_different_constant_maps_follows_the_formula():
    """Flat windows: the contrast-structure term is c2 / c2 = 1, the luminance term
    (2 u v + c1) / (u^2 + v^2 + c1) with c1 = (0.01 R)^2."""
    u, v = 0.2, 0.6
    a, b = torch.full((1, 8, 8), u, dtype=torch.float64), torch.full((1, 8, 8), v, dtype=torch.float64)
    for r in (1.0, None):  # None: R = the range of both maps, 0.4
        c1 = (0.01 * (r if r is not None else v - u)) ** 2
        expected = (2 * u * v + c1) / (u * u + v * v + c1)
        assert ssim(a, b, data_range=r).item() == pytest.approx(expected, rel=1e-12)
        ref = structural_similarity(a[0].numpy(), b[0].numpy(), data_range=r if r is not None else v - u)
        assert ssim(a, b, data_range=r).item() == pytest.approx(ref, rel=1e-12)


def test_ssim_with_data_range_zero():
    a = torch.rand(2, 8, 8, dtype=torch.float64)
    with pytest.warns(DegenerateMapWarning, match=r"^ssim: undefined for 2 of 2 images"):
        assert torch.isnan(ssim(a, a.flip(1), data_range=0)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.all(ssim(a, a.clone(), data_range=0) == 1)
        z = torch.zeros(2, 8, 8)
        assert torch.all(ssim(z, z.clone()) == 1)  # data_range None is 0 here: identical maps are 1


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, [1.0, 2.0, 3.0]])
def test_ssim_refuses_bad_data_range(bad):
    with pytest.raises(FragileError, match="data_range"):
        ssim(torch.rand(2, 8, 8), torch.rand(2, 8, 8), data_range=bad)


def test_topk_ties_are_broken_by_position():
    a = torch.tensor([[3.0, 1.0, 3.0, 3.0, 0.0]])  # top 2: features 0 and 2
    b = torch.tensor([[0.0, 0.0, 3.0, 3.0, 3.0]])  # top 2: features 2 and 3
    assert topk_intersection(a, b, 2).item() == 0.5
    assert topk_intersection(torch.ones(1, 5), torch.arange(5.0).flip(0)[None], 2).item() == 1.0


METRICS = {
    "spearman": spearman, "pcc": pcc, "cosine_distance": cosine_distance, "mse": mse, "ssim": ssim,
    "topk_intersection": lambda a, b: topk_intersection(a, b, 5), "center_shift": center_shift,
    "center_of_mass": lambda a, b: center_of_mass(a),
}


@pytest.mark.parametrize("name", list(METRICS))
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("side", [0, 1])
def test_non_finite_maps_are_refused(name, value, side):
    maps = [torch.rand(2, 8, 8), torch.rand(2, 8, 8)]
    maps[side][1, 3, 4] = value
    if name == "center_of_mass" and side == 1:
        maps.reverse()
    with pytest.raises(FragileError, match=rf"^{name}: maps must be finite, got NaN or inf in 1 of 2 images"):
        METRICS[name](*maps)


def test_center_shift_refuses_different_shapes():
    with pytest.raises(FragileError, match="center_shift: maps must have the same shape"):
        center_shift(torch.rand(2, 8, 8), torch.rand(2, 8, 9))
