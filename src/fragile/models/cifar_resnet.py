"""CIFAR-10 ResNet-20/32/44/56 (He et al. 2016, sec. 4.2; option-A shortcuts), as trained by
akamaster/pytorch_resnet_cifar10. Every ReLU is its own ``nn.ReLU`` module, so softplus surgery and
the propagation rules see them (the original code applies ``F.relu`` functionally)."""

from __future__ import annotations

import torch
from torch import nn

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by 2 and zero-pad the channels (option A)."""

    selects_inputs = True  # LRP: relevance passes by the gradient (a selection of inputs)

    def __init__(self, planes: int):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        """``(N, C, H, W) -> (N, C + 2 * (planes // 4), ceil(H / 2), ceil(W / 2))``: every second pixel in each
        direction, channels zero-padded on both sides.
        """
        return torch.nn.functional.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Residual block ``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))`` (two 3x3 convs).

    ``stride`` 2 halves H and W; the shortcut is :class:`ShortcutA` when stride or width change, else the identity.
    """
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = ShortcutA(planes) if (stride != 1 or in_planes != planes) else nn.Identity()

    def forward(self, x):
        """``(N, in_planes, H, W) -> (N, planes, H / stride, W / stride)``."""
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: widths 16-32-64, n blocks per stage, 10 classes."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x):
        """``(N, 3, 32, 32)`` normalised images -> ``(N, num_classes)`` logits."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(self.flatten(self.pool(out)))


DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9}
