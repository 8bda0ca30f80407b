"""Training-time regularisers do what they claim; training checkpoints and resumes exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from fragile.defenses.regularizers import create, loss_ig, pgd_attack, spectral_norm
from fragile.defenses.training import train
from fragile.errors import FragileError
from fragile.geometry import ssr_top_eigenvalue
from fragile.models import Preprocessed
from fragile.models.checkpoint import load_checkpoint


def tiny(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                        nn.Linear(8, 3))
    return Preprocessed(net, mean=(0.5,), std=(0.5,))


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g)
    y = (x[:, 0, :3].mean((1, 2)) * 3).long().clamp(max=2)
    return x, y


def test_spectral_norm_matches_matrix_norm():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5)
    assert spectral_norm(lin, iters=200).item() == pytest.approx(torch.linalg.matrix_norm(lin.weight, ord=2).item(), rel=1e-4)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    dense = jacobian(lambda v: nn.functional.conv2d(v.view(1, 2, 5, 5), conv.weight, None, 2, 1).flatten(),
                     torch.zeros(50)).detach()
    ref = torch.linalg.matrix_norm(dense, ord=2).item()
    assert spectral_norm(conv, (2, 5, 5), iters=300).item() == pytest.approx(ref, rel=1e-4)


def _steps(model, loss_fn, x, y, n=30, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(n):
        opt.zero_grad()
        loss_fn(model, x, y)[0].backward()
        opt.step()
    return model


def test_ssr_pixel_range_equals_the_eigenvalue_of_a_model_fed_0_255_pixels():
    """Wang trained on raw 0-255 pixels: ``pixel_range=255`` must give the lambda_max of the same network
    taking 0-255 inputs (an independent path: the rescaled model's own closed-form Hessian)."""
    x, y = data(n=8)
    model = tiny().eval()
    net255 = Preprocessed(model[1], mean=(0.5 * 255,), std=(0.5 * 255,), bounds=(0.0, 255.0)).eval()
    lam255 = ssr_top_eigenvalue(net255, x * 255).mean()
    _, logs = create("ssr", alpha=1.0, scale=1.0, pixel_range=255)(model, x, y)
    _, raw = create("ssr", alpha=1.0, scale=1.0)(model, x, y)
    assert logs["lambda_max"] == pytest.approx(lam255.item(), rel=1e-4)
    assert raw["lambda_max"] == pytest.approx(lam255.item() * 255**2, rel=1e-4)
    with pytest.raises(FragileError, match="pixel_range"):
        create("ssr", pixel_range=0)(model, x, y)


def test_ssr_lowers_the_top_hessian_eigenvalue():
    x, y = data()
    plain = _steps(tiny(), create("ce"), x, y)
    smooth = _steps(tiny(), create("ssr", alpha=0.5, scale=1e2), x, y)
    lam_plain = ssr_top_eigenvalue(plain.eval(), x).mean().item()
    lam_ssr = ssr_top_eigenvalue(smooth.eval(), x).mean().item()
    assert lam_ssr < 0.5 * lam_plain, (lam_ssr, lam_plain)


def test_lipschitz_regulariser_lowers_the_product_of_spectral_norms():
    x, y = data()
    plain = _steps(tiny(), create("ce"), x, y)
    reg = _steps(tiny(), create("lipschitz", weight=1.0), x, y)
    assert create("lipschitz")(reg, x, y)[1]["lipschitz_bound"] < create("lipschitz")(plain, x, y)[1]["lipschitz_bound"]


def test_pgd_points_stay_in_the_ball_and_raise_the_loss():
    model = tiny().eval()
    x, y = data(16)
    ce = lambda z: nn.functional.cross_entropy(model(z), y)  # noqa: E731
    for norm in ("linf", "l2"):
        adv = pgd_attack(ce, x, eps=0.1, steps=10, step_size=0.03, norm=norm, bounds=(0.0, 1.0))
        d = (adv - x).flatten(1)
        bound = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert bool((bound <= 0.1 + 1e-6).all()) and ce(adv) > ce(x)


def test_ig_of_the_loss_is_complete():
    """IG from x to x' sums to L(x') - L(x) (per image) as the number of points grows."""
    model = tiny().eval()
    x, y = data(4)
    x2 = (x + 0.05).clamp(0, 1)
    ig = loss_ig(model, x, x2, y, m=200, create_graph=False)
    with torch.no_grad():
        delta = nn.functional.cross_entropy(model(x2), y, reduction="none") - nn.functional.cross_entropy(model(x), y, reduction="none")
    assert torch.allclose(ig.flatten(1).sum(1), delta, atol=2e-3)
    loss, logs = create("ig_norm", m=4, steps=2)(tiny(), x, y)
    loss.backward()
    assert logs["ig_norm"] >= 0


def test_training_checkpoints_and_resume_equals_a_straight_run(tmp_path):
    (x, y), test = data(96), data(32, seed=1)
    kw = {"arch": "tiny", "train_data": (x, y), "test_data": test, "batch_size": 32, "lr": 1e-2, "log": lambda *a: None}
    torch.manual_seed(0)
    straight = tiny()
    train(straight, out=tmp_path / "a", epochs=2, **kw)
    first = tiny()
    train(first, out=tmp_path / "b", epochs=1, **kw)
    resumed = tiny(seed=5)  # different init: everything must come from the saved state
    hist = train(resumed, out=tmp_path / "b", epochs=2, **kw)["history"]
    assert [h["epoch"] for h in hist] == [1, 2]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert (tmp_path / "b" / "epoch_1.pt").exists() and (tmp_path / "b" / "epoch_2.pt").exists()
    with pytest.raises(FragileError, match="other settings"):
        train(tiny(), out=tmp_path / "b", epochs=3, **{**kw, "lr": 0.5})


def test_checkpoint_roundtrip_with_softplus_retraining(tmp_path):
    from fragile.models import create as create_model

    (x, y) = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    model = create_model("lenet_fashion_mnist")
    train(model, arch="lenet_fashion_mnist", train_data=(x, y), test_data=(x, y), out=tmp_path, epochs=1,
          softplus_beta=5.0, log=lambda *a: None)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    loaded = load_checkpoint(tmp_path / "last.pt")
    assert sum(isinstance(m, nn.Softplus) for m in loaded.modules()) == 3
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x))
    assert loaded.checkpoint_info["training"]["softplus_beta"] == 5.0
    bad = tmp_path / "other.pt"
    torch.save({"format": "fragile-checkpoint-v1", "arch": "resnet20_cifar10", "state_dict": model.state_dict()}, bad)
    with pytest.raises(FragileError, match="does not match architecture"):
        load_checkpoint(bad)


def test_unknown_regulariser():
    with pytest.raises(FragileError, match="unknown regulariser"):
        create("dropout_magic")
