"""BatchNorm folding for the attack's gradient step (fragile.models.fast), against the unfolded model in float64."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fragile import attacks
from fragile.explanations import create
from fragile.models import CifarResNet, Preprocessed
from fragile.models.cifar_resnet import CIFAR_MEAN, CIFAR_STD
from fragile.models.fast import batch_norm_folding, folding_plan


def _randomise_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)
    return model.eval()


def _resnet(dtype=torch.float64):
    torch.manual_seed(0)
    return _randomise_batch_norms(Preprocessed(CifarResNet(1), mean=CIFAR_MEAN, std=CIFAR_STD)).to(dtype)


def _map_and_its_gradient(model, x, beta=5.0):
    """The softplus surrogate's gradient map and the gradient of its squared norm (the double backward)."""
    sur = create("gradient", model).surrogate(beta)
    xa = x.clone().requires_grad_(True)
    g = sur.attribute(xa, target=torch.zeros(len(x), dtype=torch.long), create_graph=True)
    (h,) = torch.autograd.grad(g.pow(2).sum(), xa)
    return g.detach(), h


def test_folded_resnet_has_the_same_maps_and_double_backward_and_is_restored():
    model = _resnet()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    before = [type(m) for m in model.modules()]
    g0, h0 = _map_and_its_gradient(model, x)
    enter = batch_norm_folding(model, x)
    assert enter.folded == 7  # the stem, two per block in 3 stages of 1 block
    with enter():
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        g1, h1 = _map_and_its_gradient(model, x)
    assert [type(m) for m in model.modules()] == before
    torch.testing.assert_close(g1, g0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(h1, h0, rtol=1e-9, atol=1e-12 * float(h0.abs().max()))


class SkipAroundBatchNorm(nn.Module):
    """Has the stem's children (conv1, bn1, layer1) but uses conv1's output twice: folding would change it."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.layer1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Identity()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 8 * 8, 3))

    def forward(self, x):
        z = self.conv1(x)
        return self.head(self.layer1(self.bn1(z) + z))


def test_a_plan_that_changes_the_outputs_is_dropped():
    model = _randomise_batch_norms(SkipAroundBatchNorm())
    assert len(folding_plan(model)) == 2  # the stem pattern matches ...
    x = torch.rand(2, 3, 8, 8)
    enter = batch_norm_folding(model, x)
    assert enter.folded == 0  # ... but the check on x refuses it
    with enter():
        assert isinstance(model.bn1, nn.BatchNorm2d)


def test_attack_with_folding_keeps_its_guarantees_and_matches_the_plain_attack():
    """The gradient step on the folded model; every iterate evaluated on the original: successes keep the label
    on the original model, the result is reproducible, and it agrees with fast=False up to rare sign flips."""
    model = _resnet(torch.float32)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ex = create("gradient", model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = attacks.run(model, ex, x, "topk", eps=8, steps=4, beta=5.0, k=50)
        again = attacks.run(model, ex, x, "topk", eps=8, steps=4, beta=5.0, k=50)
        plain = attacks.run(model, ex, x, "topk", eps=8, steps=4, beta=5.0, k=50, fast=False)
    assert torch.equal(fast.x_adv, again.x_adv)
    with torch.no_grad():
        kept = model(fast.x_adv).argmax(1) == model(x).argmax(1)
    assert bool(kept[fast.success].all())
    differ = ((fast.x_adv - plain.x_adv).abs() > 1e-6).float().mean()
    assert float(differ) < 0.01 and float((fast.x_adv - plain.x_adv).abs().max()) <= 2 * 8 / 255 + 1e-6
    torch.testing.assert_close(fast.metrics["top50_intersection"], plain.metrics["top50_intersection"],
                               atol=0.1, rtol=0, equal_nan=True)


@pytest.mark.parametrize("method", ["lrp", "guided_backprop"])
def test_rule_based_methods_are_not_rewritten(method, monkeypatch):
    import fragile.models.fast as fast

    model = _resnet(torch.float32)
    monkeypatch.setattr(fast, "batch_norm_folding", lambda *a, **k: pytest.fail("folded for a rule-based method"))
    x = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attacks.run(model, create(method, model), x, "topk", eps=8, steps=1, beta=5.0, k=20)
