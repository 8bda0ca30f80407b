"""SqueezeNet v1.0 (Iandola et al. 2016) for ImageNet, the network Ghorbani et al. attack, loaded from
the Deep Compression file of songhan/SqueezeNet-Deep-Compression (decoder written from the format
description in the shared data README):

- header: uint32[26], the number of non-zero weights of each conv layer (conv1, fire2..fire9 as
  squeeze1x1, expand1x1, expand3x3, conv_final);
- per layer: float32[256] codebook (entry 0 is 0), float32[out] biases, uint8[nnz] codes,
  uint8[(nnz - 1) // 2 + 1] position gaps packed two 4-bit values per byte, low nibble first;
- weight positions cumsum(gap + 1) - 1 into the flattened (out, in, kh, kw) array.

Input: 227x227, BGR, 0..255 minus the mean (104, 117, 123), carried by the ``Preprocessed`` wrapper.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fragile.errors import FragileError

FIRES = [(96, 16, 64), (128, 16, 64), (128, 32, 128), (256, 32, 128), (256, 48, 192), (384, 48, 192),
         (384, 64, 256), (512, 64, 256)]  # (in, squeeze, expand) of fire2..fire9


class Fire(nn.Module):
    """Fire module (Iandola et al. 2016, sec. 3.2): a 1x1 squeeze conv, then 1x1 and 3x3 expand convs side by side,
    each followed by its own ``nn.ReLU``.
    """
    def __init__(self, inplanes: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze, self.squeeze_relu = nn.Conv2d(inplanes, squeeze, 1), nn.ReLU()
        self.expand1x1, self.expand1x1_relu = nn.Conv2d(squeeze, expand, 1), nn.ReLU()
        self.expand3x3, self.expand3x3_relu = nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU()

    def forward(self, x):
        """``(N, inplanes, H, W) -> (N, 2 * expand, H, W)``: the two expand branches concatenated on channels."""
        s = self.squeeze_relu(self.squeeze(x))
        return torch.cat([self.expand1x1_relu(self.expand1x1(s)), self.expand3x3_relu(self.expand3x3(s))], 1)


class SqueezeNet10(nn.Module):
    """SqueezeNet v1.0 without bypass (Iandola et al. 2016, Table 1), layers in the Deep Compression file's order.

    Takes the Caffe input (BGR, 0..255 minus the mean; :func:`fragile.models.imagenet.squeezenet_v1_0` wraps it
    for [0, 1] RGB pixels).
    """
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        f = [Fire(*cfg) for cfg in FIRES]
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 7, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            f[0], f[1], f[2], nn.MaxPool2d(3, 2, ceil_mode=True), f[3], f[4], f[5], f[6],
            nn.MaxPool2d(3, 2, ceil_mode=True), f[7])
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512, num_classes, 1, padding=1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        """``(N, 3, 227, 227)`` -> ``(N, num_classes)`` class scores (averaged ReLU outputs of the final 1x1 conv,
        so non-negative).
        """
        return self.classifier(self.features(x))

    def conv_layers(self) -> list[nn.Conv2d]:
        """The 26 conv layers in the order of the Deep Compression file."""
        convs = [self.features[0]]
        for fire in (m for m in self.features if isinstance(m, Fire)):
            convs += [fire.squeeze, fire.expand1x1, fire.expand3x3]
        return convs + [self.classifier[1]]


def decode_deep_compression(path: str | Path, model: SqueezeNet10) -> None:
    """Fill ``model``'s conv weights and biases from a Deep Compression file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FragileError(f"cannot read SqueezeNet weights {path}: {err}") from None
    convs = model.conv_layers()
    nnz = np.frombuffer(data, dtype="<u4", count=len(convs))
    offset = 4 * len(convs)
    for conv, n in zip(convs, nnz.tolist()):
        out, numel = conv.weight.shape[0], conv.weight.numel()
        need = 4 * 256 + 4 * out + n + (n - 1) // 2 + 1
        if offset + need > len(data) or n > numel:
            raise FragileError(f"{path} is truncated or not a Deep Compression SqueezeNet v1.0 file")
        codebook = np.frombuffer(data, "<f4", 256, offset)
        bias = np.frombuffer(data, "<f4", out, offset + 1024)
        codes = np.frombuffer(data, np.uint8, n, offset + 1024 + 4 * out)
        packed = np.frombuffer(data, np.uint8, (n - 1) // 2 + 1, offset + 1024 + 4 * out + n)
        gaps = np.stack([packed & 0x0F, packed >> 4], axis=1).ravel()[:n].astype(np.int64)
        positions = np.cumsum(gaps + 1) - 1
        if positions[-1] >= numel:
            raise FragileError(f"{path}: weight positions run past layer of {numel} weights")
        weight = np.zeros(numel, dtype=np.float32)
        weight[positions] = codebook[codes]
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight.reshape(conv.weight.shape)))
            conv.bias.copy_(torch.from_numpy(bias.copy()))
        offset += need
    if offset != len(data):
        raise FragileError(f"{path}: {len(data) - offset} unexpected trailing bytes")
