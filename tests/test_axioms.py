"""Axioms that hold by construction of the methods: completeness, summation-to-delta, conservation."""

from __future__ import annotations

import pytest
import torch
from conftest import plain_cnn, resnetish

from fragile.explanations import create

T = torch.tensor([0, 3, 1, 4])


def _score(net, x, t):
    with torch.no_grad():
        return net(x).gather(1, t[:, None]).squeeze(1)


def test_integrated_gradients_completeness_improves_with_steps(net, x):
    delta = _score(net, x, T) - _score(net, torch.zeros_like(x), T)
    errors = []
    for steps in (2, 8, 32, 256):
        ig = create("integrated_gradients", net, steps=steps).attribute(x, target=T)
        errors.append(float((ig.sum((1, 2, 3)) - delta).abs().max()))
    assert errors[-1] < 0.02 * float(delta.abs().max()), errors
    assert errors[-1] < errors[0], errors


@pytest.mark.parametrize("make", [lambda: plain_cnn(pool="max"), lambda: resnetish(pool="max"),
                                  lambda: plain_cnn(inplace=True)], ids=["maxpool", "resnet", "inplace"])
def test_deeplift_summation_to_delta(x, make):
    torch.manual_seed(0)
    net = make()
    base = torch.full_like(x, 0.3)
    h = create("deeplift", net, baseline=base).attribute(x, target=T)
    delta = _score(net, x, T) - _score(net, base, T)
    assert torch.allclose(h.sum((1, 2, 3)), delta, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rules", [("zb", "zplus"), (None, "zplus"), (None, "epsilon")])
def test_lrp_conserves_relevance_without_biases(x, rules):
    """With zero biases z+, zB and epsilon (up to the stabiliser, 1e-12 here) conserve: sum_i R_i = f_c(x).
    BatchNorm passes relevance, pooling conserves; the plain net has no residual additions."""
    torch.manual_seed(0)
    net = plain_cnn(bias=False)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data.zero_()
            m.running_mean.zero_()
    first, rest = rules
    r = create("lrp", net, first_rule=first, rule=rest, epsilon=1e-12, stabilizer=1e-12).attribute(x, target=T)
    assert torch.allclose(r.sum((1, 2, 3)), _score(net, x, T), rtol=1e-6)


def test_lrp_with_biases_does_not_conserve_exactly(x):
    """The check above can fail: with biases the z+ rule absorbs relevance."""
    torch.manual_seed(0)
    net = plain_cnn(bias=True)
    r = create("lrp", net, first_rule=None, rule="zplus", stabilizer=1e-12).attribute(x, target=T)
    assert not torch.allclose(r.sum((1, 2, 3)), _score(net, x, T), rtol=1e-6)
