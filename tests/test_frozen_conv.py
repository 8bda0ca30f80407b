"""fragile.models.frozen_conv: a convolution with constant weights, its first and second input derivatives, against
the module's own autograd in float64 (the oracle), for strides that leave a remainder, dilation, groups, 1-3 dims."""

import pytest
import torch
from torch import nn

from fragile.models import frozen_conv

CASES = [
    (nn.Conv2d(4, 6, 3, padding=1), (2, 4, 9, 9)),
    (nn.Conv2d(4, 6, 3, stride=2, padding=1), (2, 4, 10, 11)),  # output_padding 1 and 0
    (nn.Conv2d(4, 6, 5, stride=3, padding=2, dilation=2), (2, 4, 17, 16)),
    (nn.Conv2d(4, 8, 3, padding=1, groups=2), (2, 4, 8, 8)),
    (nn.Conv2d(4, 6, 1, bias=False), (2, 4, 5, 5)),
    (nn.Conv1d(3, 5, 4, stride=2, padding=1), (2, 3, 13)),
    (nn.Conv3d(2, 3, 3, stride=2, padding=1), (1, 2, 7, 6, 5)),
]


def _frozen(module):
    module = module.double()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@pytest.mark.parametrize("module,shape", CASES)
def test_value_and_two_derivatives_match_autograd(module, shape):
    torch.manual_seed(0)
    m = _frozen(module)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert frozen_conv.applies(m, m.weight, m.bias)

    def through(f):
        y = f(x)
        v = torch.randn_like(y, generator=torch.Generator().manual_seed(1))
        # a map that depends on x non-linearly: the gradient of a smooth function of the convolution
        (g,) = torch.autograd.grad((torch.nn.functional.softplus(y) * v).sum(), x, create_graph=True)
        u = torch.randn_like(g, generator=torch.Generator().manual_seed(2))
        (gg,) = torch.autograd.grad((g * u).sum(), x)
        return y, g, gg

    ours = through(lambda t: frozen_conv.conv(m, t, m.weight, m.bias))
    theirs = through(m)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("module,shape", CASES)
def test_conv_transpose_is_the_vjp(module, shape):
    m = _frozen(module)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    y = m(x)
    s = torch.randn_like(y)
    (vjp,) = torch.autograd.grad(y, x, s)
    torch.testing.assert_close(frozen_conv.conv_transpose(m, s, m.weight, x.shape), vjp, rtol=1e-12, atol=1e-12)


def test_refuses_trainable_or_unusual_convolutions():
    m = nn.Conv2d(2, 2, 3, padding=1)
    assert not frozen_conv.applies(m, m.weight, m.bias)  # trainable: the module's forward keeps weight gradients
    m.requires_grad_(False)
    assert frozen_conv.applies(m, m.weight, m.bias)
    assert not frozen_conv.applies(nn.Conv2d(2, 2, 3, padding="same").requires_grad_(False), m.weight, None)
    assert not frozen_conv.applies(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect").requires_grad_(False),
                                   m.weight, None)
    assert not frozen_conv.applies(nn.Linear(2, 2).requires_grad_(False), m.weight, None)
