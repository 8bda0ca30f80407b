"""Geometry against dense Hessians / Jacobians (torch.autograd.functional) and closed forms, float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd.functional import hessian, jacobian

from fragile.attacks import saliency
from fragile.errors import FragileError
from fragile.explanations import create
from fragile.geometry import (
    fragile_directions, hvp, lipschitz_adversarial, lipschitz_sampled, max_curvature, ssr_hessian,
    ssr_top_eigenvalue, top_hessian_eigen,
)
from fragile.geometry.hessian import score_fn
from fragile.models import softplus

SHAPE = (1, 2, 4, 4)


def small_net(act=None):
    torch.manual_seed(0)
    act = act or nn.ReLU()
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), act, nn.Flatten(), nn.Linear(48, 6), type(act)(),
                         nn.Linear(6, 3)).double().eval()


def dense_score_hessian(net, x, c, beta):
    with softplus(net, beta=beta) as smooth:
        return hessian(lambda z: smooth(z.view(SHAPE))[0, c], x.flatten()).detach()


X = torch.rand(SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_hvp_matches_dense_hessian():
    net = small_net()
    v = torch.randn(SHAPE, dtype=torch.float64)
    dense = dense_score_hessian(net, X, 1, 3.0)
    with softplus(net, beta=3.0) as smooth:
        ours = hvp(score_fn(smooth, 1), X, v)
    assert torch.allclose(ours.flatten(), dense @ v.flatten(), atol=1e-12)


def test_power_and_lanczos_match_eigh():
    net = small_net()
    dense = dense_score_hessian(net, X, 1, 3.0)
    w = torch.linalg.eigvalsh(dense)
    lam, vec = top_hessian_eigen(net, X, 1, beta=3.0, method="power", iters=500)
    assert lam.item() == pytest.approx(w[w.abs().argmax()].item(), rel=1e-4)  # power iteration stops at tol 1e-6
    vals, vecs = top_hessian_eigen(net, X, 1, beta=3.0, method="lanczos", k=3)
    assert np.allclose(vals[0].numpy(), np.sort(w.numpy())[::-1][:3], rtol=1e-8)
    hv = dense @ vecs[0, 0].flatten()
    assert torch.allclose(hv, vals[0, 0] * vecs[0, 0].flatten(), atol=1e-9)


class Ridge(nn.Module):
    """Ghorbani sec. 5 toy model S = g(w^T x) (and a second constant class)."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)
        self.g = nn.Softplus(beta=2.0)

    def forward(self, x):
        s = self.g(x.flatten(1) @ self.w)
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_toy_ridge_top_eigenvector_is_along_w():
    w = torch.randn(32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    model = Ridge(w).double().eval()
    lam, v = top_hessian_eigen(model, X, 0, beta=None, iters=200)
    cos = torch.dot(v.flatten(), w / w.norm()).abs()
    assert cos.item() == pytest.approx(1.0, abs=1e-9)
    z = (X.flatten() @ w).item()
    sig = 1 / (1 + np.exp(-2.0 * z))
    assert lam.item() == pytest.approx(2.0 * sig * (1 - sig) * float(w @ w), rel=1e-8)  # g'' ||w||^2


class TwoLayer(nn.Module):
    """Ghorbani App. I: S = sum_j v_j g(w_j^T x); H = sum_j v_j g''(w_j^T x) w_j w_j^T has rank <= h."""

    def __init__(self, h=3):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.W = nn.Parameter(torch.randn(h, 32, generator=g, dtype=torch.float64))
        self.v = nn.Parameter(torch.randn(h, generator=g, dtype=torch.float64))

    def forward(self, x):
        s = (nn.functional.softplus(x.flatten(1) @ self.W.T) * self.v).sum(1)
        return torch.stack([s, -s], 1)


def test_two_layer_hessian_eigenvectors_span_the_weights():
    model = TwoLayer().eval()
    vals, vecs = top_hessian_eigen(model, X, 0, beta=None, method="lanczos", k=3, which="LM")
    q, _ = torch.linalg.qr(model.W.detach().T)  # basis of span{w_j}
    for i in range(3):
        v = vecs[0, i].flatten()
        assert (q.T @ v).norm().item() == pytest.approx(1.0, abs=1e-8)
    dense = hessian(lambda z: model(z.view(SHAPE))[0, 0], X.flatten()).detach()
    assert torch.linalg.matrix_rank(dense).item() == 3


class SquaredNorm(nn.Module):
    def forward(self, x):
        s = x.flatten(1).pow(2).sum(1)
        return torch.stack([s, -s], 1)


def test_curvature_of_sphere_is_one_over_radius():
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) + 0.1
    kappa = max_curvature(SquaredNorm(), x, 0, beta=None, iters=50)
    assert torch.allclose(kappa, 1 / x.flatten(1).norm(dim=1), rtol=1e-8)


def test_curvature_matches_dense_shape_operator():
    net = small_net()
    dense = dense_score_hessian(net, X, 2, 5.0)
    with softplus(net, beta=5.0) as smooth:
        xg = X.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(smooth(xg)[0, 2], xg)
    g = g.flatten()
    n = g / g.norm()
    p = torch.eye(32, dtype=torch.float64) - torch.outer(n, n)
    w = torch.linalg.eigvalsh(p @ dense @ p / g.norm())
    ours = max_curvature(net, X, 2, beta=5.0, iters=1000)
    assert ours.item() == pytest.approx(w.abs().max().item(), rel=1e-5)


def test_fragile_direction_is_ghorbanis_top_singular_vector_of_the_score_hessian():
    """Ghorbani sec. 5 / App. I: the first right singular vector of d^2 S / dx^2 (S: the target logit of
    the softplus net) against the dense Hessian's eigenvector of largest |eigenvalue|; the angle to the
    normalised gradient, folded into [0, 90]."""
    net = small_net()
    ex = create("gradient", net, smooth_beta=4.0)
    out = fragile_directions(ex, X, 1, iters=3000, tol=0.0)
    dense = dense_score_hessian(net, X, 1, 4.0)
    w, vecs = torch.linalg.eigh(dense)
    top = vecs[:, w.abs().argmax()]
    with softplus(net, beta=4.0) as smooth:
        xg = X.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(smooth(xg)[0, 1], xg)
    assert out["singular_value"].item() == pytest.approx(w.abs().max().item(), rel=1e-9)
    assert abs(torch.dot(out["explanation_direction"].flatten(), top).item()) == pytest.approx(1.0, abs=1e-9)
    angle = np.degrees(np.arccos(abs(torch.dot(top, g.flatten() / g.norm()).item())))
    assert out["angle_degrees"].item() == pytest.approx(angle, abs=1e-4)  # |1 - dot| ~ 1e-14: ~1e-7 rad
    with pytest.raises(FragileError, match="beta="):  # a ReLU net without a surrogate has no curvature
        fragile_directions(create("gradient", net), X, 1)
    with pytest.raises(FragileError, match="definition"):
        fragile_directions(ex, X, 1, definition="jacobian")


def test_chance_controls_of_the_angles():
    """Random pairs in d dimensions: cosine ~ N(0, 1/d), so the angle's spread is about 57.3/sqrt(d) deg;
    seeded; fragile angles drawn from the control itself are 'as orthogonal as chance', angles of 80 deg
    in 3,072 dimensions are not."""
    from fragile.geometry.directions import beyond_chance, gradient_random_angles, random_pair_angles

    pairs = random_pair_angles(3072, 2000, seed=1)
    assert torch.equal(pairs, random_pair_angles(3072, 2000, seed=1))
    assert pairs.std().item() == pytest.approx(np.degrees(1 / np.sqrt(3072)), rel=0.1)
    assert abs(pairs.mean().item() - 90) < 0.1
    g = torch.randn(5, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    gr = gradient_random_angles(g, per_image=200, seed=3)
    assert gr.shape == (5, 200) and abs(gr.std().item() - pairs.std().item()) < 0.15
    folded = 90 - (random_pair_angles(3072, 1000, seed=4) - 90).abs()
    same = beyond_chance(folded.numpy(), pairs.numpy())
    assert same["verdict"] == "as orthogonal as chance" and same["fraction_beyond"] < 0.15
    assert same["band_deg"][0] < 90 < same["band_deg"][1]
    far = beyond_chance(np.full(100, 80.0), pairs.numpy())
    assert far["fraction_beyond"] == 1.0 and far["verdict"] == "less orthogonal than chance"
    assert beyond_chance(np.full(100, 89.99), pairs.numpy())["verdict"] == "more orthogonal than chance"


def test_fragile_direction_of_the_saliency_jacobian_definition():
    """The earlier definition: the top singular vector of d saliency / dx (dense Jacobian)."""
    net = small_net()
    ex = create("gradient", net, smooth_beta=4.0)
    out = fragile_directions(ex, X, 1, iters=300, definition="saliency_jacobian")
    jac = jacobian(lambda z: saliency(ex.attribute(z.view(SHAPE), target=1, create_graph=True)).flatten(),
                   X.flatten())
    u, s, vh = torch.linalg.svd(jac)
    assert out["singular_value"].item() == pytest.approx(s[0].item(), rel=1e-5)
    assert abs(torch.dot(out["explanation_direction"].flatten(), vh[0]).item()) == pytest.approx(1.0, abs=1e-5)
    assert 0 <= out["angle_degrees"].item() <= 90


def test_ssr_closed_form_is_exact_for_relu_networks():
    net = small_net()
    c = torch.tensor(1)

    def ce(z):
        return nn.functional.cross_entropy(net(z.view(SHAPE)), c.view(1))

    dense = hessian(ce, X.flatten()).detach()
    ours = ssr_hessian(net, X)[0]
    assert torch.allclose(ours, dense, atol=1e-10)
    assert ssr_top_eigenvalue(net, X).item() == pytest.approx(torch.linalg.eigvalsh(dense)[-1].item(), rel=1e-8)


def test_ssr_closed_form_is_the_gauss_newton_part_on_softplus_nets():
    """On a softplus net the exact Hessian is J^T A J + sum_c (p_c - y_c) d^2 z_c/dx^2; removing the
    second term (from dense per-logit Hessians) must leave exactly the closed form. (The neglected
    term is not small in general: it grows with beta near ReLU kinks, Dombrowski's curvature bound.)"""
    net = small_net()
    y = 1
    with softplus(net, beta=3.0) as smooth:
        def ce(z):
            return nn.functional.cross_entropy(smooth(z.view(SHAPE)), torch.tensor([y]))

        dense = hessian(ce, X.flatten()).detach()
        p = torch.softmax(smooth(X), 1)[0].detach()
        second = sum((p[c] - float(c == y)) * hessian(lambda z, c=c: smooth(z.view(SHAPE))[0, c], X.flatten()).detach()
                     for c in range(3))
        approx = ssr_hessian(smooth, X)[0]
    assert torch.allclose(dense - second, approx, atol=1e-12)


def test_lipschitz_estimates():
    """The sampled estimate is a running maximum: more samples (same seed, same first draws) never
    lower it; both estimates are positive ratios."""
    net = small_net()
    ex = create("gradient", net)
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    few = lipschitz_sampled(ex, x, eps=8, samples=8, batch_size=8)
    many = lipschitz_sampled(ex, x, eps=8, samples=24, batch_size=8)
    assert bool((many >= few).all()) and bool((few > 0).all())
    adversarial = lipschitz_adversarial(ex, x, eps=8, steps=10, beta=5.0)
    assert adversarial.shape == (3,) and bool((adversarial > 0).all())


def test_errors_for_zero_curvature_and_zero_gradient():
    net = small_net()
    with pytest.raises(FragileError, match="beta="):
        top_hessian_eigen(net, X, 0, beta=None)
    with pytest.raises(FragileError, match="zero gradient"):
        max_curvature(SquaredNorm(), torch.zeros(SHAPE, dtype=torch.float64), 0, beta=None)


def test_cli_geometry_writes_summary_and_figures(tmp_path):
    import json

    from fragile.cli import main

    assert main(["geometry", "--limit", "3", "--iters", "3", "--betas", "1", "10", "--lipschitz-images", "2",
                 "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "geometry.json").read_text())
    assert 0 <= data["angles"]["median"] <= 90 and data["angle_definition"] == "hessian"
    for name in ("random_pairs", "gradient_random"):
        control = data["angle_controls"][name]
        assert control["n"] == 3 and control["control_n"] >= 1000 and control["verdict"].endswith("chance")
        assert control["band_deg"][0] < 90 < control["band_deg"][1] and 0 <= control["fraction_beyond"] <= 1
    assert set(data["curvature"]) == {"1.0", "10.0"}
    assert {"gradient", "smoothgrad", "integrated_gradients"} == set(data["lipschitz"]["methods"])
    for name in ("angles.png", "curvature_vs_beta.png", "lipschitz.png"):
        assert (tmp_path / name).stat().st_size > 5_000


def test_analysis_killed_midway_resumes_to_the_clean_result(tmp_path, monkeypatch):
    """A run that dies during the curvature chunks keeps its finished chunks; the rerun computes only the
    rest and ends with the same arrays as an uninterrupted run."""
    import fragile.geometry.report as report

    net = small_net()
    x = torch.rand(5, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    settings = {"betas": (1.0, 10.0), "iters": 4, "lipschitz_images": 0, "batch_size": 2, "log": lambda *_: None}
    report.analyse(net, x, out=tmp_path / "clean", **settings)

    real, calls = report.max_curvature, []

    class Killed(Exception):
        pass

    def dies_on_fourth_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(report, "max_curvature", dies_on_fourth_chunk)
    with pytest.raises(Killed):
        report.analyse(net, x, out=tmp_path / "resumed", **settings)
    assert not (tmp_path / "resumed" / "geometry.json").exists()
    calls[:] = [1] * 10  # past the kill: count only what the rerun computes
    monkeypatch.setattr(report, "fragile_directions", lambda *a, **k: pytest.fail("angles recomputed"))
    report.analyse(net, x, out=tmp_path / "resumed", **settings)
    assert len(calls) - 10 == 3  # 6 curvature chunks (3 per beta), 3 stored before the kill
    clean = np.load(tmp_path / "clean" / "geometry_arrays.npz")
    resumed = np.load(tmp_path / "resumed" / "geometry_arrays.npz")
    for key in ("angles", "curvature"):
        np.testing.assert_array_equal(clean[key], resumed[key])
    # other images never reuse these parts
    monkeypatch.undo()
    report.analyse(net, x.flip(0), out=tmp_path / "resumed", **{**settings, "betas": ()})
    assert len(list((tmp_path / "resumed" / "parts").iterdir())) == 2
