"""PatternAttribution against the analytic answer of Kindermans et al.'s signal/distractor example.

Data x = a_s * s + a_d * d (signal s, distractor d). A filter w with w.a_s = 1 and w.a_d = 0 reads
out y = s exactly; the pattern the estimator must recover is the signal direction a_s (not w).
"""

from __future__ import annotations

import torch
from torch import nn

from fragile.explanations import create, estimate_patterns


def _toy(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    a_s = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    a_d = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    s = torch.randn(n, generator=g, dtype=torch.float64)
    d = torch.randn(n, generator=g, dtype=torch.float64)
    x = s[:, None] * a_s + d[:, None] * a_d
    w = torch.tensor([1.0, -1.0, 0.0, 0.0], dtype=torch.float64)  # w.a_s = 1, w.a_d = 0
    return x.view(n, 1, 2, 2), a_s, w


def test_linear_estimator_recovers_signal_direction():
    x, a_s, w = _toy()
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False)).double().eval()
    net[1].weight.data.copy_(w[None])
    p = estimate_patterns(net, x)["1"][0]
    assert torch.allclose(p, a_s, atol=0.02), p


def test_two_component_estimator_on_relu_unit_recovers_signal():
    x, a_s, w = _toy()
    lin = nn.Linear(4, 1, bias=False).double()
    lin.weight.data.copy_(w[None])
    net = nn.Sequential(nn.Flatten(), lin, nn.ReLU(), nn.Linear(1, 1, bias=False)).double().eval()
    net[3].weight.data.fill_(1.0)
    p = estimate_patterns(net, x)["1"][0]
    assert torch.allclose(p, a_s, atol=0.03), p


def test_pattern_attribution_is_w_times_a_backward():
    """For one linear layer the map is (w * a) regardless of x; the gradient would be w."""
    x, _, w = _toy()
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False)).double().eval()
    net[1].weight.data.copy_(w[None])
    patterns = estimate_patterns(net, x)
    h = create("pattern_attribution", net, patterns=patterns).attribute(x[:3], target=0)
    expected = (w * patterns["1"][0]).view(1, 1, 2, 2).expand(3, -1, -1, -1)
    assert torch.allclose(h, expected, atol=1e-12)
    assert torch.allclose(h[0].flatten(), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64), atol=0.02)
