"""Canonizers (BatchNorm merge, residual sums) and LRP on residual networks, float64.

The network is a small torchvision-style ResNet written here (BasicBlock and Bottleneck, with and
without a downsample branch, random BatchNorm statistics, eval mode). Its block classes subclass the
torchvision classes conftest stubs, so zennit's ``ResNetCanonizer`` recognises them and is the
oracle. Tolerances: the canonical model computes the same function up to float64 rounding (~1e-15
relative; we allow 1e-10); LRP agrees with zennit to 1e-8 of the map's largest magnitude
(summation order only).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock as StubBasicBlock  # conftest's stub (or torchvision)
from torchvision.models.resnet import Bottleneck as StubBottleneck

from conftest import randomize_bn
from fragile.errors import FragileError, UnsupportedModelError
from fragile.explanations import create
from fragile.models import create as create_model
from fragile.models.canonizers import CanonicalBlock, Merged, Sum, canonized

T = torch.tensor([0, 3, 1, 4])


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def downsample(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


class BasicBlock(StubBasicBlock):
    """torchvision's BasicBlock (same children, same forward)."""

    def __init__(self, cin: int, planes: int, stride: int = 1, down: nn.Module | None = None):
        nn.Module.__init__(self)
        self.conv1, self.bn1 = conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv(planes, planes), nn.BatchNorm2d(planes)
        self.downsample = down

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class Bottleneck(StubBottleneck):
    """torchvision's Bottleneck (expansion 4)."""

    def __init__(self, cin: int, planes: int, stride: int = 1, down: nn.Module | None = None):
        nn.Module.__init__(self)
        self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv(planes, planes * 4, 1), nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = down

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet layout at 16x16: stem, BasicBlocks, Bottlenecks, pool, fc."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.conv1, self.bn1, self.relu = conv(3, 8), nn.BatchNorm2d(8), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2, downsample(8, 16, 2)))
        self.layer2 = nn.Sequential(Bottleneck(16, 4), Bottleneck(16, 8, 2, downsample(16, 32, 2)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet(seed: int = 0, biases: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    net = randomize_bn(ResNet(), seed).double().eval()
    if not biases:  # every bias of the canonical model zero: BN shift 0, fc bias 0
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.data.zero_()
                m.running_mean.zero_()
        net.fc.bias.data.zero_()
    return net


def images(n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def snapshot(net: nn.Module):
    return [(n, id(m)) for n, m in net.named_modules()], {k: v.clone() for k, v in net.state_dict().items()}


def assert_restored(net, before, x, y):
    modules, state = snapshot(net)
    assert modules == before[0]
    assert state.keys() == before[1].keys() and all(torch.equal(state[k], before[1][k]) for k in state)
    assert torch.equal(net(x), y)


def close(a, b, rtol=1e-8):
    a, b = a.detach(), b.detach()
    scale = float(b.abs().max())
    assert scale > 1e-12 and a.shape == b.shape
    assert torch.allclose(a, b, rtol=rtol, atol=rtol * scale), float((a - b).abs().max()) / scale


# -- (a) same function inside, the same model after ------------------------------------------------
def test_canonical_model_computes_the_same_function_and_is_restored():
    net, x = resnet(), images()
    y, before = net(x), snapshot(net)
    with canonized(net) as canon:
        close(canon(x), y, rtol=1e-10)
        originals = {i for _, i in before[0]}
        for m in canon.modules():  # the replacements are copies: hooks on them do not reach the model
            if id(m) not in originals:
                m.register_forward_hook(lambda *args: None)
        kinds = [type(m) for m in canon.modules()]
        assert kinds.count(CanonicalBlock) == 4 and kinds.count(Sum) == 4
        # every BatchNorm is merged: the stem's, 2 + 2 in the BasicBlocks, 3 + 3 in the Bottlenecks, 2 downsamples
        assert kinds.count(Merged) == 1 + (2 + 2) + (3 + 3) + 2
    assert_restored(net, before, x, y)
    assert not any(m._forward_hooks for m in net.modules())
    with pytest.raises(RuntimeError, match="boom"), canonized(net) as canon:
        canon(x)
        raise RuntimeError("boom")
    assert_restored(net, before, x, y)


def test_lrp_leaves_the_model_as_it_was():
    net, x = resnet(), images()
    y, before = net(x), snapshot(net)
    create("lrp", net).attribute(x, target=T)
    create("lrp", net, smooth_beta=3.0).attribute(x.clone().requires_grad_(True), target=T, create_graph=True)
    assert_restored(net, before, x, y)


def test_merged_layers_of_a_sequential():
    """conv -> BN and linear -> BN1d in an nn.Sequential are merged; a linear -> BN1d pair that sees a
    3-D tensor (BN over dim 1, the linear over the last) is refused, not merged wrongly."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 6),
                        nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    for bn in (net[1], net[5]):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.normal_()
        bn.bias.data.normal_()
    net = net.double().eval()
    x = images(3, 8)
    with canonized(net) as canon:
        assert isinstance(canon[1], Merged) and isinstance(canon[5], Merged)
        close(canon(x), net(x), rtol=1e-10)
    odd = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).double().eval()
    with canonized(odd) as canon, pytest.raises(UnsupportedModelError, match="canonize=False"):
        canon(torch.rand(2, 4, 4, dtype=torch.float64))


class PreActLookalike(nn.Module):
    """The children of a torchvision BasicBlock, but pre-activation order: the canonical form differs."""

    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1, self.relu = conv(c, c), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2 = conv(c, c), nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.conv1(self.relu(self.bn1(x)))
        return self.conv2(self.relu(self.bn2(out))) + x


def test_a_lookalike_block_is_left_as_it_is_with_a_warning():
    torch.manual_seed(0)
    net = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), PreActLookalike(4), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(4, 5))).double().eval()
    x = images()
    with pytest.warns(UserWarning, match=r"'1' \(PreActLookalike\).*computes something else"):
        ours = create("lrp", net).attribute(x, target=T)
    close(ours, create("lrp", net, canonize=False).attribute(x, target=T), rtol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # checked once per block
        create("lrp", net).attribute(x, target=T)


class CifarBasic(nn.Module):
    """kuangliu/pytorch-cifar's BasicBlock: F.relu in forward, ``shortcut`` an (empty) Sequential."""

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, planes, 3, stride), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes), nn.BatchNorm2d(planes)
        self.shortcut = downsample(cin, planes, stride) if stride != 1 or cin != planes else nn.Sequential()

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        out += self.shortcut(x)
        return F.relu(out)


class CifarBottleneck(nn.Module):
    def __init__(self, cin: int, planes: int):
        super().__init__()
        self.conv1, self.bn1 = conv(cin, planes, 1), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv(planes, planes), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv(planes, 4 * planes, 1), nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class CifarPreAct(nn.Module):
    """pytorch-cifar's PreActBlock: the children of its BasicBlock, another function."""

    def __init__(self, c: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c), conv(c, c)
        self.bn2, self.conv2 = nn.BatchNorm2d(c), conv(c, c)
        self.shortcut = nn.Sequential()

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        return self.conv2(F.relu(self.bn2(out))) + self.shortcut(x)


def cifar_style(biases: bool = False, preact: bool = False) -> nn.Module:
    torch.manual_seed(0)
    blocks = [CifarBasic(8, 8), CifarBasic(8, 16, 2), CifarBottleneck(16, 4)] + ([CifarPreAct(16)] if preact else [])
    net = nn.Sequential(conv(3, 8), nn.BatchNorm2d(8), nn.ReLU(), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, 5, bias=biases))
    net = randomize_bn(net).double().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d) and not biases:
            m.bias.data.zero_()
            m.running_mean.zero_()
    return net


def test_pytorch_cifar_blocks_with_functional_relu():
    """kuangliu/pytorch-cifar's blocks (F.relu, Sequential shortcuts) are canonized: same function,
    and LRP conserves without biases (canonized ~1e-10, raw > 1); its PreActBlock, with the same
    children, is recognised as another function and left as it is."""
    net, x = cifar_style(), images()
    with canonized(net) as canon:
        close(canon(x), net(x), rtol=1e-10)
        assert sum(isinstance(m, CanonicalBlock) for m in canon.modules()) == 3
    for rules in ("zplus_zb", "epsilon"):
        canon = conservation_error(create("lrp", net, **RULES[rules], **TINY), net, x, T)
        raw = conservation_error(create("lrp", net, canonize=False, **RULES[rules], **TINY), net, x, T)
        assert canon < 1e-8 and raw > 1, (rules, canon, raw)
    net = cifar_style(preact=True)
    with pytest.warns(UserWarning, match=r"'6' \(CifarPreAct\).*pytorch-cifar BasicBlock"):
        create("lrp", net).attribute(x, target=T)


# -- (b) against zennit with its canonizers ---------------------------------------------------------
def zennit_zplus_sum():
    """z+ on zennit's Sum (unit weights): Norm with the positive part of the inputs."""
    from zennit.core import BasicHook, Stabilizer
    from zennit.rules import NoMod

    stabilize = Stabilizer.ensure(1e-6)
    return BasicHook(input_modifiers=[lambda a: a.clamp(min=0)], param_modifiers=[NoMod(param_keys=[])],
                     output_modifiers=[lambda z: z], gradient_mapper=lambda g, outputs: g / stabilize(outputs[0]),
                     reducer=lambda inputs, grads: inputs[0] * grads[0])


def _zennit(net, x, target, rest, first=None, sums=None):
    from zennit.composites import SpecialFirstLayerMapComposite, layer_map_base
    from zennit.layer import Sum as ZennitSum
    from zennit.torchvision import ResNetCanonizer
    from zennit.types import Convolution

    layer_map = ([(ZennitSum, sums)] if sums is not None else []) + layer_map_base() + [
        (Convolution, rest), (nn.Linear, rest)]
    composite = SpecialFirstLayerMapComposite(layer_map=layer_map, canonizers=[ResNetCanonizer()],
                                              first_map=[(Convolution, first)] if first is not None else [])
    xi = x.clone().requires_grad_(True)
    with composite.context(net) as modified:
        assert sum(isinstance(m, ZennitSum) for m in modified.modules()) == 4  # it saw our blocks
        # zennit leaves each merged BatchNorm computing x / sqrt(1 + eps), not x; make it the identity
        # so the comparison is about the rules (its merge formula itself uses eps, as ours)
        for m in modified.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.fill_(1.0 - m.eps)
        out = modified(xi)
        (rel,) = torch.autograd.grad(out, xi, torch.zeros_like(out).scatter_(1, target[:, None], 1.0) * out)
    return rel


ZENNIT_CASES = ["epsilon", "zplus_zb_zsum", "zplus_zb"]


@pytest.mark.parametrize("case", ZENNIT_CASES)
def test_lrp_on_a_resnet_matches_zennit_with_its_canonizers(case):
    """epsilon everywhere and zB + z+ with z on the sums: zennit's own composites (``Norm`` on its
    ``Sum``) with ``ResNetCanonizer``; our default zB + z+ (z+ on the sums): the same with a z+ hook
    on zennit's ``Sum``."""
    from zennit.rules import Epsilon, ZBox, ZPlus

    net, x = resnet(), images()
    before = snapshot(net)
    if case == "epsilon":
        theirs = _zennit(net, x, T, Epsilon(epsilon=1e-6))
        params = {"rule": "epsilon", "first_rule": None, "epsilon": 1e-6, "stabilizer": 1e-6}
    elif case == "zplus_zb_zsum":
        theirs = _zennit(net, x, T, ZPlus(), ZBox(0.0, 1.0))
        params = {"sum_rule": "z"}
    else:
        theirs = _zennit(net, x, T, ZPlus(), ZBox(0.0, 1.0), sums=zennit_zplus_sum())
        params = {}  # the default composite: zB first (box = data range [0, 1]), z+ elsewhere and on sums
    ours = create("lrp", net, **params)
    close(ours.attribute(x, target=T), theirs)
    assert snapshot(net)[0] == before[0]
    # without the canonizer the maps differ (BatchNorm passed, relevance copied at each addition)
    raw = create("lrp", net, **params, canonize=False).attribute(x, target=T)
    assert float((raw - theirs).abs().max()) > 1e-2 * float(theirs.abs().max())


def test_sum_rule_follows_the_layer_rule():
    net = resnet()
    assert create("lrp", net).sum_rule == "zplus" and create("lrp", net, rule="alpha1beta0").sum_rule == "zplus"
    assert create("lrp", net, rule="epsilon").sum_rule == "z" and create("lrp", net, sum_rule="z").sum_rule == "z"
    with pytest.raises(FragileError, match="unknown sum rule"):
        create("lrp", net, sum_rule="epsilon")


# -- (c) conservation ------------------------------------------------------------------------------
def conservation_error(explainer, net, x, target) -> float:
    """max over images of |sum_i R_i - f_c(x)| / |f_c(x)|."""
    with torch.no_grad():
        f = net(x).gather(1, target[:, None])[:, 0]
    r = explainer.attribute(x, target=target).sum((1, 2, 3))
    return float(((r - f).abs() / f.abs()).max())


RULES = {"epsilon": {"rule": "epsilon", "first_rule": None}, "zplus": {"first_rule": None}, "zplus_zb": {}}
TINY = {"epsilon": 1e-12, "stabilizer": 1e-12}


@pytest.mark.parametrize("which", ["torchvision_style", "resnet20"])
@pytest.mark.parametrize("rules", ["epsilon", "zplus_zb"])
def test_canonizer_makes_lrp_conserve_on_resnets(rules, which):
    """Without biases (canonical model: BN shift and fc bias 0) the rules conserve relevance up to their
    stabiliser (1e-12) once the additions are sums; the raw model copies relevance at every addition.
    Measured relative errors max |sum R - f_c| / |f_c| (canonized / raw):

        torchvision-style net: epsilon 2.7e-10 / 18,  zB + z+ 2.0e-10 / 12   (z+ alone: the same)
        ResNet-20 (16x16):     epsilon 7.0e-11 / 6e8, zB + z+ 4.4e-11 / 440

    With biases (random BN statistics) the biases absorb relevance, and the canonizer still lowers the
    error: torchvision-style 5.4 / 347 (epsilon), 0.95 / 13 (zB + z+); ResNet-20 0.72 / 1e13, 0.51 / 378."""
    make, n = (resnet, 4) if which == "torchvision_style" else (cifar_resnet20, 2)
    errors = {}
    for biases in (False, True):
        net, x = make(biases=biases), images(n)
        for canonize in (True, False):
            explainer = create("lrp", net, canonize=canonize, **RULES[rules], **TINY)
            errors[biases, canonize] = conservation_error(explainer, net, x, T[:n])
    assert errors[False, True] < 1e-8 and errors[False, False] > 1, errors
    assert errors[True, True] < errors[True, False] / 10, errors


def test_z_on_sums_also_conserves():
    """The z rule on the sums conserves too, except where z+ layers below have nothing to distribute:
    a negative branch output whose positive-weight inputs are all 0 (1-14% of the neurons of the small
    net's 1x1 convs over 4-8 channels): 0.8% here, 5e-11 on ResNet-20."""
    for make, n, bound in [(resnet, 4, 2e-2), (cifar_resnet20, 2, 1e-8)]:
        net, x = make(biases=False), images(n)
        assert conservation_error(create("lrp", net, sum_rule="z", first_rule=None, **TINY), net, x, T[:n]) < bound


def cifar_resnet20(biases: bool = True) -> nn.Module:
    """fragile's ResNet-20 (option-A shortcuts, Normalize in front), random weights and BN statistics."""
    torch.manual_seed(0)
    net = randomize_bn(create_model("resnet20_cifar10")).double().eval()
    if not biases:
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.data.zero_()
                m.running_mean.zero_()
            if isinstance(m, nn.Linear):
                m.bias.data.zero_()
    return net


def test_resnet20_is_canonized():
    net, x = cifar_resnet20(), images(2)
    y = net(x)
    with canonized(net) as canon:
        kinds = [type(m) for m in canon.modules()]
        assert kinds.count(CanonicalBlock) == 9 and kinds.count(Merged) == 1 + 9 * 2  # stem + 2 per block
        close(canon(x), y, rtol=1e-10)


# -- (d) differentiable through the canonical model ------------------------------------------------
@pytest.mark.parametrize("rules", ["epsilon", "zplus_zb"])
def test_map_gradient_through_canonized_lrp_matches_finite_differences(rules):
    """d L / dx of L = <w, h(x)> + ||h(x)||^2 with h the canonized LRP map of the softplus(3) ResNet,
    by the double backward against central differences along two random directions (eps 1e-5,
    float64: truncation ~1e-10, rounding ~1e-11 relative; we allow 1e-6 relative)."""
    net = resnet()
    x = images(2)
    # epsilon 0.1: with eps 1e-6 the epsilon rule divides by near-zero pre-activations of the softplus
    # net (maps ~1e5..1e17), and finite differences of such a map measure nothing
    stable = {"epsilon": 0.1, "stabilizer": 0.1} if rules == "epsilon" else {}
    explainer = create("lrp", net, smooth_beta=3.0, **RULES[rules], **stable)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(x.shape, dtype=x.dtype, generator=g)

    def loss(inp, graph):
        h = explainer.attribute(inp, target=T[:2], create_graph=graph)
        return (w * h).sum() + h.pow(2).sum()

    xa = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(xa, True), xa)
    assert float(grad.abs().max()) > 0
    for _ in range(2):
        d = torch.randn(x.shape, dtype=x.dtype, generator=g)
        fd = float(loss(x + 1e-5 * d, False) - loss(x - 1e-5 * d, False)) / 2e-5
        ours = float((grad * d).sum())
        assert abs(ours - fd) <= 1e-6 * abs(fd) + 1e-9, (ours, fd)



def test_smoothing_reaches_the_canonical_blocks():
    """With smooth_beta the canonical blocks' activations are softplus too, also where the block calls
    F.relu (the canonical form has a ReLU module there): the pytorch-cifar net gives the maps of the
    same network written with torchvision's blocks (ReLU modules), smoothed or not."""
    net, x = cifar_style(biases=True), images()
    tv = nn.Sequential(conv(3, 8), nn.BatchNorm2d(8), nn.ReLU(), BasicBlock(8, 8),
                       BasicBlock(8, 16, 2, downsample(8, 16, 2)), Bottleneck(16, 4), nn.AdaptiveAvgPool2d(1),
                       nn.Flatten(), nn.Linear(16, 5)).double().eval()
    tv.load_state_dict({k.replace("shortcut", "downsample"): v for k, v in net.state_dict().items()})
    close(tv(x), net(x), rtol=1e-12)
    maps = {}
    for beta in (None, 3.0):
        maps[beta] = create("lrp", net, smooth_beta=beta).attribute(x, target=T)
        close(maps[beta], create("lrp", tv, smooth_beta=beta).attribute(x, target=T), rtol=1e-10)
    assert float((maps[3.0] - maps[None]).abs().max()) > 1e-2 * float(maps[None].abs().max())
