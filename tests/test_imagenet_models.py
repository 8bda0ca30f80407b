"""ImageNet models available offline, checked end to end on real photos (FRAGILE_DATA)."""

from __future__ import annotations

import pytest
import torch

from fragile.data.imagenet import imagenet_class_names, load_imagenet_samples
from fragile.errors import FragileError
from fragile.models import create, softplus
from fragile.models.squeezenet import SqueezeNet10, decode_deep_compression
from fragile.settings import models_dir

SQUEEZE = models_dir() / "squeezenet_v1_0_deep_compression" / "compressed_SqueezeNet.net"


def _top1(model, size, n=100):
    x, y = load_imagenet_samples(size=size, limit=n)
    with torch.no_grad():
        pred = torch.cat([model(c) for c in x.split(50)]).argmax(1)
    return (pred == y).double().mean().item()


def test_squeezenet_deep_compression_decodes_to_a_working_classifier():
    """The data README measured 65.5% top-1 over all 1000 samples with an independent decoder."""
    model = create("squeezenet1_0_imagenet", pretrained=True)
    assert _top1(model, 227) >= 0.6
    net = model[1]
    header = torch.frombuffer(bytearray(SQUEEZE.read_bytes()[:104]), dtype=torch.int32)
    nonzero = torch.tensor([int((c.weight != 0).sum()) for c in net.conv_layers()], dtype=torch.int32)
    assert bool((nonzero <= header).all()) and int(nonzero.sum()) > 0.9 * int(header.sum())


def test_squeezenet_bad_files(tmp_path):
    short = tmp_path / "short.net"
    short.write_bytes(SQUEEZE.read_bytes()[:5000])
    with pytest.raises(FragileError, match="truncated"):
        decode_deep_compression(short, SqueezeNet10())
    with pytest.raises(FragileError, match="cannot read"):
        decode_deep_compression(tmp_path / "missing.net", SqueezeNet10())


def test_efficientnet_lite0_and_its_relu6_surrogate():
    model = create("efficientnet_lite0_imagenet", pretrained=True)
    assert _top1(model, 224) >= 0.75
    x, _ = load_imagenet_samples(size=224, limit=4)
    with torch.no_grad():
        y = model(x)
        with softplus(model, beta=1e3) as smooth:
            ys = smooth(x)
    assert torch.allclose(ys.argmax(1), y.argmax(1))
    assert (ys - y).abs().max() < 0.05 * y.abs().max()


def test_class_names_follow_synset_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish"
