"""Shared fixtures: small random CNNs in float64 covering the layer types the engine must handle."""

from __future__ import annotations

import contextlib
import http.server
import threading
import sys
import types

import pytest
import torch
from torch import nn

torch.set_num_threads(2)


def _stub_torchvision() -> None:
    """zennit 0.5.1 imports torchvision only for two ResNet block classes; torchvision would pull a
    CUDA torch here, so tests give zennit a tiny stub with those two names."""
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
        return
    except ImportError:
        pass
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
    resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
    models.resnet = resnet
    tv.models = models
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})


_stub_torchvision()


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


class AsDouble(nn.Module):
    """Quantus feeds ``torch.Tensor(x)`` (float32) to the model; this wraps a float64 net and casts x back."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.double())


def plain_cnn(inplace: bool = False, bias: bool = True, pool: str = "max") -> nn.Module:
    """conv - relu - {max,avg}pool - conv - BN - relu - avgpool - linear - relu - linear."""
    pool_layer = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias), nn.ReLU(inplace=inplace), pool_layer,
        nn.Conv2d(6, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8), nn.ReLU(inplace=inplace),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 2 * 2, 12, bias=bias), nn.ReLU(inplace=inplace),
        nn.Linear(12, 5, bias=bias),
    )
    return randomize_bn(net).double().eval()


class Block(nn.Module):
    def __init__(self, c: int, inplace: bool):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu2 = nn.ReLU(inplace=inplace)

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + x)


class ResNetish(nn.Module):
    """conv - BN - relu - residual block - maxpool - residual block - global avgpool - linear."""

    def __init__(self, inplace: bool = False, pool: str = "max"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=inplace))
        self.block1 = Block(6, inplace)
        self.pool = nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)
        self.block2 = Block(6, inplace)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x):
        return self.head(self.block2(self.pool(self.block1(self.stem(x)))))


def resnetish(inplace: bool = False, pool: str = "max") -> nn.Module:
    return randomize_bn(ResNetish(inplace, pool)).double().eval()



NETS = {"plain": plain_cnn, "resnet": resnetish}


@pytest.fixture(params=sorted(NETS))
def net(request):
    torch.manual_seed(0)
    return NETS[request.param]()


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(1)
    return torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)


@contextlib.contextmanager
def serve(folder):
    """A static HTTP server on loopback for ``folder``; yields its base URL."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(folder), **kw)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
