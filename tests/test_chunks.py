"""Two-pass differentiation through chunked maps (``fragile.explanations.chunks``): the replayed gradient
equals the one-pass gradient, and the graph held at any time is one chunk's.

Tolerance: float64 throughout; replay and one pass do the same arithmetic in a different order of summation
(the chunks' vector-Jacobian products are added instead of the chunks' maps), so the gradients agree to
rounding: atol 1e-10 on gradients of size ~1e-3..1 (observed <= 1e-17).
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch import nn

from fragile.errors import FragileError
from fragile.explanations import create
from fragile.explanations.chunks import CHUNK_ELEMENTS, chunk_param, points_per_chunk

ATOL = 1e-10


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3)).double().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _weights(x):
    return torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(2))


def _map_and_grad(ex, x, seed: int | None = None):
    """The map and d/dx of a nonlinear loss of it, (sum(w * h))^2 + sum(h^2)."""
    if seed is not None:
        ex.reseed(seed)
    xa = x.clone().requires_grad_(True)
    h = ex.attribute(xa, target=torch.tensor([1, 2]), create_graph=True)
    loss = (h * _weights(x)).sum() ** 2 + h.pow(2).sum()
    (g,) = torch.autograd.grad(loss, xa)
    return h.detach(), g


def _both(name, net, x, seed=None, **params):
    one = create(name, net, replay=False, **params)
    two = create(name, net, replay=True, **params)
    return _map_and_grad(one, x, seed), _map_and_grad(two, x, seed)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 14, None, "auto"])
@pytest.mark.parametrize("rule", ["right", "trapezoid"])
def test_ig_replay_gradient_equals_one_pass(x, batch_size, rule):
    """Chunks of 1 to all 7 path points per image (batch_size counts images: 2 per path point here)."""
    (h1, g1), (h2, g2) = _both("integrated_gradients", small_net(), x, steps=7, rule=rule, batch_size=batch_size,
                               smooth_beta=3.0)
    assert float(g1.abs().max()) > 1e-4
    torch.testing.assert_close(h2, h1, rtol=0, atol=ATOL)
    torch.testing.assert_close(g2, g1, rtol=0, atol=ATOL)


def test_ig_replay_with_a_data_baseline_and_on_the_relu_model(x):
    ref = torch.rand(5, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for extra in ({"smooth_beta": 2.0}, {}):
        (h1, g1), (h2, g2) = _both("integrated_gradients", small_net(), x, steps=5, batch_size=4,
                                   baseline="channel_mean", reference_data=ref, **extra)
        torch.testing.assert_close(h2, h1, rtol=0, atol=ATOL)
        torch.testing.assert_close(g2, g1, rtol=0, atol=ATOL)


def test_ig_gradient_reaches_a_baseline_tensor_that_requires_grad(x):
    net = small_net()
    grads = []
    for replay in (False, True):
        b = torch.full((1, 3, 1, 1), 0.3, dtype=torch.float64, requires_grad=True)
        ex = create("integrated_gradients", net, steps=5, batch_size=2, baseline=b, smooth_beta=3.0, replay=replay)
        h = ex.attribute(x, target=1, create_graph=True)
        grads.append(torch.autograd.grad((h * _weights(x)).sum(), b)[0])
    assert float(grads[0].abs().max()) > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["smoothgrad", "uniform_gradient"])
@pytest.mark.parametrize("noise_mode", ["fresh", "fixed"])
def test_noise_averaged_replay_reuses_the_calls_noise(x, name, noise_mode):
    """Fresh noise: the replay must draw this call's noise again (a new draw would change the gradient), and
    the stream must advance as in one pass (the next call's map is the same)."""
    net = small_net()
    params = {"samples": 5, "batch_size": 4, "noise_mode": noise_mode, "smooth_beta": 3.0}
    one, two = (create(name, net, replay=r, **params) for r in (False, True))
    (h1, g1), (h2, g2) = _map_and_grad(one, x, seed=4), _map_and_grad(two, x, seed=4)
    torch.testing.assert_close(h2, h1, rtol=0, atol=ATOL)
    torch.testing.assert_close(g2, g1, rtol=0, atol=ATOL)
    torch.testing.assert_close(two.attribute(x, target=1), one.attribute(x, target=1), rtol=0, atol=ATOL)


def test_smoothgrad_of_integrated_gradients_replays_both_levels(x):
    params = {"samples": 3, "batch_size": 2, "method": "integrated_gradients",
              "method_params": {"steps": 4, "batch_size": 2}, "smooth_beta": 3.0}
    net = small_net()
    one = create("smoothgrad", net, replay=False, **params)
    two = create("smoothgrad", net, replay=True, **params)
    two.inner.replay, one.inner.replay = True, False
    (h1, g1), (h2, g2) = _map_and_grad(one, x, seed=5), _map_and_grad(two, x, seed=5)
    torch.testing.assert_close(h2, h1, rtol=0, atol=ATOL)
    torch.testing.assert_close(g2, g1, rtol=0, atol=ATOL)


def test_the_surrogate_is_active_in_the_replay(x):
    """The backward runs after the attribute call has left the softplus context; the replay re-enters it,
    so its gradient is the surrogate's, not the ReLU model's."""
    net = small_net()
    ex = create("integrated_gradients", net, steps=5, batch_size=2)
    _, g_relu = _map_and_grad(ex, x)
    (_, g1), (_, g2) = _both("integrated_gradients", net, x, steps=5, batch_size=2, smooth_beta=1.0)
    torch.testing.assert_close(g2, g1, rtol=0, atol=ATOL)
    assert float((g2 - g_relu).abs().max()) > 1e-3
    assert not any(isinstance(m, nn.Softplus) or type(m).__module__.startswith("fragile") for m in net.modules())


def test_parameter_gradients_and_second_order_through_the_replayed_map(x):
    """Training-time regularisers differentiate the map w.r.t. the weights; Jacobian-vector products of the
    map (``geometry.directions``) differentiate the backward again. Both as in one pass."""
    net = small_net()
    results = []
    for replay in (False, True):
        ex = create("integrated_gradients", net, steps=5, batch_size=4, smooth_beta=3.0, replay=replay)
        xa = x.clone().requires_grad_(True)
        h = ex.attribute(xa, target=1, create_graph=True)
        w_grad = torch.autograd.grad(h.pow(2).sum(), net[0].weight, retain_graph=True)[0]
        u = torch.zeros_like(h, requires_grad=True)
        (jtu,) = torch.autograd.grad(h, xa, u, create_graph=True)
        (jv,) = torch.autograd.grad(jtu, u, _weights(x))  # J v
        no_weights = create("integrated_gradients", net, steps=5, batch_size=4, smooth_beta=3.0, replay=replay)
        h2 = no_weights.attribute(x, target=1, create_graph=True)  # x without grad: only the weights
        w_only = torch.autograd.grad(h2.sum(), net[2].bias)[0]
        results.append((w_grad, jv, w_only))
    for a, b in zip(*results):
        assert float(a.abs().max()) > 0
        torch.testing.assert_close(b, a, rtol=0, atol=ATOL)


class _Calls(nn.Module):
    """Counts the forward calls of the model it wraps."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, inp):
        self.calls += 1
        return self.net(inp)


@pytest.mark.parametrize(("batch_size", "forwards", "replayed"), [(None, 1, 0), (6, 3, 2), (2, 7, 6)])
def test_the_last_chunk_keeps_its_graph_and_only_the_others_are_replayed(x, batch_size, forwards, replayed):
    """7 path points x 2 images: one chunk costs one pass (nothing replayed); a second backward through the
    retained graph replays every chunk and gives the same gradient."""
    net = _Calls(small_net())
    ex = create("integrated_gradients", net, steps=7, batch_size=batch_size, smooth_beta=3.0)
    xa = x.clone().requires_grad_(True)
    loss = ex.attribute(xa, target=1, create_graph=True).pow(2).sum()
    assert net.calls == forwards
    (g1,) = torch.autograd.grad(loss, xa, retain_graph=True)
    assert net.calls == forwards + replayed
    (g2,) = torch.autograd.grad(loss, xa)
    assert net.calls == 2 * forwards + replayed
    torch.testing.assert_close(g2, g1, rtol=0, atol=ATOL)


def test_no_graph_without_create_graph(x):
    ex = create("integrated_gradients", small_net(), steps=5)
    h = ex.attribute(x.clone().requires_grad_(True), target=1)
    assert h.grad_fn is None and not h.requires_grad


class _SavedBytes:
    """Live bytes of tensors saved for backward (by autograd graphs built in the block), and their peak."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        size = t.numel() * t.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        holder = [t]
        weakref.finalize(holder_box := _Box(holder), self._free, size)
        return holder_box

    def _free(self, size):
        self.live -= size

    @staticmethod
    def unpack(box):
        return box.value[0]


class _Box:
    __slots__ = ("value", "__weakref__")

    def __init__(self, value):
        self.value = value


def _peak_saved(steps: int, replay: bool) -> int:
    net = small_net()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ex = create("integrated_gradients", net, steps=steps, batch_size=5, smooth_beta=3.0, replay=replay)
    meter = _SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        _map_and_grad_single(ex, x)
    return meter.peak


def _map_and_grad_single(ex, x):
    xa = x.clone().requires_grad_(True)
    torch.autograd.grad(ex.attribute(xa, target=1, create_graph=True).pow(2).sum(), xa)


def test_graph_held_is_one_chunk_not_all_path_points():
    """The peak of live saved tensors: one pass grows with the path points (chunks of 5), the replay stays at
    one chunk's (equal for 10 and 40 steps: same chunk, one map-sized tensor more or less)."""
    one = [_peak_saved(s, False) for s in (10, 40)]
    two = [_peak_saved(s, True) for s in (10, 40)]
    assert one[1] > 3 * one[0]
    assert two[1] <= 1.05 * two[0]
    assert two[1] < one[1] / 4


def test_auto_chunk_size_follows_the_image_size():
    imagenet, cifar = torch.zeros(1, 3, 224, 224), torch.zeros(1, 3, 32, 32)
    assert points_per_chunk("auto", imagenet, 100) == 5
    assert points_per_chunk("auto", cifar, 100) == 100
    assert points_per_chunk("auto", cifar.expand(64, -1, -1, -1), 100) == CHUNK_ELEMENTS // 3072 // 64
    assert points_per_chunk("auto", imagenet.expand(64, -1, -1, -1), 100) == 1  # at least one point
    assert points_per_chunk(None, imagenet, 100) == 100
    assert points_per_chunk(256, imagenet.expand(4, -1, -1, -1), 100) == 64
    assert create("integrated_gradients", small_net()).batch_size == "auto"
    assert create("smoothgrad", small_net()).batch_size == "auto"


@pytest.mark.parametrize("bad", [0, -1, "x", 2.5, True])
def test_bad_batch_size_is_refused(bad):
    with pytest.raises(FragileError, match="batch_size"):
        chunk_param(bad)
    with pytest.raises(FragileError, match="batch_size"):
        create("integrated_gradients", small_net(), batch_size=bad)
