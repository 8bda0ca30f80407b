"""Every method against an independent implementation (captum, zennit), float64.

Tolerances: float64 throughout, so agreement is to ~1e-10 relative; we allow 1e-8 (atol scaled by
the map magnitude) to absorb summation-order differences.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    DeepLift as CaptumDeepLift,
)
from captum.attr import (
    GuidedBackprop as CaptumGuided,
)
from captum.attr import (
    InputXGradient,
    LayerAttribution,
    LayerGradCam,
    Saliency,
)
from captum.attr import (
    IntegratedGradients as CaptumIG,
)

from conftest import plain_cnn, resnetish
from fragile.explanations import create


def close(a, b, rtol=1e-8):
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max()) + 1e-30
    assert a.shape == b.shape
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * scale), float((a - b).abs().max()) / scale
    assert scale > 1e-12  # a non-trivial map


TARGET = torch.tensor([0, 3, 1, 4])


def test_gradient_matches_captum_saliency(net, x):
    ours = create("gradient", net).attribute(x, target=TARGET)
    close(ours, Saliency(net).attribute(x, target=TARGET, abs=False))


def test_gradient_x_input_matches_captum(net, x):
    ours = create("gradient_x_input", net).attribute(x, target=TARGET)
    close(ours, InputXGradient(net).attribute(x, target=TARGET))


@pytest.mark.parametrize("output", ["softmax", "log_softmax"])
def test_output_options_match_captum_on_wrapped_model(net, x, output):
    wrapped = torch.nn.Sequential(net, torch.nn.Softmax(1) if output == "softmax" else torch.nn.LogSoftmax(1))
    ours = create("gradient", net, output=output).attribute(x, target=TARGET)
    close(ours, Saliency(wrapped).attribute(x, target=TARGET, abs=False))


def test_default_target_is_prediction(net, x):
    pred = net(x).argmax(1)
    close(create("gradient", net).attribute(x), Saliency(net).attribute(x, target=pred, abs=False))


@pytest.mark.parametrize("baseline", ["zeros", "pixel_mean", "channel_mean", "tensor"])
def test_integrated_gradients_matches_captum(net, x, baseline):
    ref_data = torch.rand(10, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    expected_base = {
        "zeros": torch.zeros_like(x),
        "pixel_mean": ref_data.mean(0, keepdim=True).expand_as(x),
        "channel_mean": ref_data.mean((0, 2, 3), keepdim=True).expand_as(x),
        "tensor": torch.full_like(x, 0.3),
    }[baseline]
    ours = create("integrated_gradients", net, steps=16, reference_data=ref_data,
                  baseline=expected_base[:1] if baseline == "tensor" else baseline).attribute(x, target=TARGET)
    theirs = CaptumIG(net).attribute(x, baselines=expected_base.contiguous(), target=TARGET, n_steps=16,
                                     method="riemann_right")
    close(ours, theirs)


def test_integrated_gradients_trapezoid_matches_captum(net, x):
    ours = create("integrated_gradients", net, steps=10, rule="trapezoid").attribute(x, target=TARGET)
    theirs = CaptumIG(net).attribute(x, target=TARGET, n_steps=11, method="riemann_trapezoid")
    # captum evaluates the same 11 points k/10 but weights them 1/11 (halved at the ends), so its
    # weights sum to 1 - 1/11; the trapezoid rule weights them 1/10. Same points, rescaled sum.
    # captum builds its alphas with float32 linspace: agreement to ~1e-7, not 1e-10.
    close(ours, theirs * 11 / 10, rtol=1e-6)


def test_integrated_gradients_chunking_does_not_change_result(net, x):
    a = create("integrated_gradients", net, steps=12, batch_size=None).attribute(x, target=TARGET)
    b = create("integrated_gradients", net, steps=12, batch_size=5).attribute(x, target=TARGET)
    close(a, b, rtol=1e-12)


@pytest.mark.parametrize("name,noise", [("smoothgrad", "randn"), ("uniform_gradient", "rand")])
def test_noise_averaging_matches_captum_saliency_at_same_noise(net, x, name, noise):
    samples, seed, scale = 6, 3, 0.2
    key = "scale" if name == "smoothgrad" else "radius"
    ours = create(name, net, samples=samples, seed=seed, **{key: scale}).attribute(x, target=TARGET)
    g = torch.Generator().manual_seed(seed)
    draw = getattr(torch, noise)((samples, *x.shape), generator=g, dtype=x.dtype)
    eps = draw * scale if noise == "randn" else (2 * draw - 1) * scale
    sal = Saliency(net)
    theirs = torch.stack([sal.attribute(x + e, target=TARGET, abs=False) for e in eps]).mean(0)
    close(ours, theirs)


def test_smoothgrad_wraps_other_methods(net, x):
    ours = create("smoothgrad", net, method="gradient_x_input", samples=4, seed=0, scale=0.1).attribute(x, target=TARGET)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn((4, *x.shape), generator=g, dtype=x.dtype) * 0.1
    ixg = InputXGradient(net)
    close(ours, torch.stack([ixg.attribute(x + e, target=TARGET) for e in eps]).mean(0))


# captum 0.9's max-pool DeepLIFT rule is wrong here (captum issue #1276, and its maps violate
# summation-to-delta by up to 100% on max-pool nets, measured while writing these tests). So captum
# is the oracle on average-pool nets; max pooling is checked against a loop-per-window reference
# below and by summation-to-delta (test_axioms).
def test_deeplift_matches_captum(x):
    torch.manual_seed(0)
    net = plain_cnn(pool="avg")
    base = torch.full_like(x, 0.2)
    ours = create("deeplift", net, baseline=base).attribute(x, target=TARGET)
    theirs = CaptumDeepLift(net).attribute(x, baselines=base, target=TARGET)
    close(ours, theirs, rtol=1e-7)


def _maxpool_deeplift_reference(x, x0, w, k):
    """Slow, obvious DeepLIFT of  y = w . flatten(maxpool_k(x))  (non-overlapping windows): each
    window's output difference max(x_W) - max(x0_W) is credited to the arg-max of x (the part
    max(y, y0) - y0) and of x0 (the part y - max(y, y0)), divided among nothing else."""
    n, c, h, wd = x.shape
    out = torch.zeros_like(x)
    wv = w.view(c, h // k, wd // k)
    for b in range(n):
        for ch in range(c):
            for i in range(h // k):
                for j in range(wd // k):
                    win, win0 = x[b, ch, i*k:(i+1)*k, j*k:(j+1)*k], x0[b, ch, i*k:(i+1)*k, j*k:(j+1)*k]
                    y, y0 = win.max(), win0.max()
                    a, a0 = divmod(int(win.argmax()), k), divmod(int(win0.argmax()), k)
                    top = max(y, y0)
                    out[b, ch, i*k + a[0], j*k + a[1]] += wv[ch, i, j] * (top - y0)
                    out[b, ch, i*k + a0[0], j*k + a0[1]] += wv[ch, i, j] * (y - top)
    return out


def test_deeplift_maxpool_matches_loop_reference(x):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3 * 4 * 4, 1, bias=False).double()
    net = torch.nn.Sequential(torch.nn.MaxPool2d(2), torch.nn.Flatten(), lin).eval()
    x0 = torch.rand(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(9))
    ours = create("deeplift", net, baseline=x0).attribute(x, target=0)
    close(ours, _maxpool_deeplift_reference(x, x0, lin.weight.detach()[0], 2), rtol=1e-10)


def test_deeplift_matches_captum_on_residual_net(x):
    torch.manual_seed(0)
    net = resnetish(pool="avg")
    ours = create("deeplift", net).attribute(x, target=TARGET)
    close(ours, CaptumDeepLift(net).attribute(x, baselines=torch.zeros_like(x), target=TARGET), rtol=1e-7)


def test_guided_backprop_matches_captum(net, x):
    ours = create("guided_backprop", net).attribute(x, target=TARGET)
    close(ours, CaptumGuided(net).attribute(x, target=TARGET))


def test_grad_cam_matches_captum(net, x):
    layer = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    ours = create("grad_cam", net).attribute(x, target=TARGET)
    cam = LayerGradCam(net, layer).attribute(x, target=TARGET, relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear")
    close(ours, theirs.expand_as(x))


def test_inplace_relu_gives_same_maps(x):
    for name in ["deeplift", "guided_backprop", "lrp", "gradient"]:
        torch.manual_seed(0)
        a = create(name, plain_cnn(inplace=False), smooth_beta=None).attribute(x, target=TARGET)
        torch.manual_seed(0)
        b = create(name, plain_cnn(inplace=True)).attribute(x, target=TARGET)
        close(b, a, rtol=1e-12)


# ---- LRP against zennit ---------------------------------------------------------------------

def _zennit_lrp(net, x, target, first, rest, linear):
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.types import Convolution

    linear_map = [(torch.nn.Linear, linear)] if linear is not None else []
    composite = SpecialFirstLayerMapComposite(
        layer_map=layer_map_base() + [(Convolution, rest)] + linear_map,
        first_map=[(Convolution, first)] if first is not None else [])
    xi = x.clone().requires_grad_(True)
    with composite.context(net) as modified:
        out = modified(xi)
        seed = torch.zeros_like(out).scatter_(1, target[:, None], 1.0) * out
        (rel,) = torch.autograd.grad(out, xi, seed)
    return rel


@pytest.mark.parametrize("rest,linear", [("zplus", None), ("epsilon", None), ("zplus", "epsilon")])
def test_lrp_matches_zennit(net, x, rest, linear):
    from zennit.rules import Epsilon, ZBox, ZPlus

    low, high = torch.zeros(1, 3, 1, 1, dtype=x.dtype), torch.ones(1, 3, 1, 1, dtype=x.dtype)
    rules = {"zplus": ZPlus(), "epsilon": Epsilon(epsilon=1e-6)}
    theirs = _zennit_lrp(net, x, TARGET, ZBox(low, high), rules[rest],
                         rules[linear] if linear else rules[rest])
    ours = create("lrp", net, rule=rest, linear_rule=linear, first_rule="zb", low=low, high=high,
                  canonize=False).attribute(x, target=TARGET)  # the rules alone; canonizers: test_canonizers.py
    close(ours, theirs, rtol=1e-7)


def test_deep_taylor_is_zb_zplus_composite(x):
    from zennit.rules import ZBox, ZPlus

    torch.manual_seed(0)
    net = plain_cnn()
    theirs = _zennit_lrp(net, x, TARGET, ZBox(0.0, 1.0), ZPlus(), ZPlus())
    close(create("deep_taylor", net, canonize=False).attribute(x, target=TARGET), theirs, rtol=1e-7)
    close(create("lrp", net, canonize=False).attribute(x, target=TARGET), theirs, rtol=1e-7)


def test_lrp_zb_bounds_follow_preprocessing(x):
    """With a Preprocessed model the zB box is the data range [0, 1] mapped through Normalize."""
    from zennit.rules import ZBox, ZPlus

    from fragile.models import Preprocessed

    torch.manual_seed(0)
    inner = plain_cnn()
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    model = Preprocessed(inner, mean=mean, std=std).double().eval()
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    theirs = _zennit_lrp(inner, (x - m) / s, TARGET, ZBox((0 - m) / s, (1 - m) / s), ZPlus(), ZPlus())
    close(create("lrp", model, canonize=False).attribute(x, target=TARGET), theirs, rtol=1e-7)


@pytest.mark.parametrize("name", ["gradient", "gradient_x_input", "deeplift", "lrp", "guided_backprop",
                                  "integrated_gradients"])
def test_attribute_with_output_equals_separate_calls(net, x, name):
    """The attack loop's fused call must give the plain map and the unmodified model's output, also
    right after a create_graph call (which stacks copies inside the modified network)."""
    ex = create(name, net, **({"steps": 4} if name == "integrated_gradients" else {}))
    ex.smoothed(3.0).attribute(x.clone().requires_grad_(True), target=TARGET, create_graph=True)
    h, out = ex.attribute_with_output(x, TARGET)
    close(h, ex.attribute(x, target=TARGET), rtol=1e-12)
    close(out, net(x), rtol=1e-12)
