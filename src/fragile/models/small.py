"""Small networks: Ghorbani et al.'s CIFAR-10 CNN (App. A) and a LeNet-like net for 28x28 images."""

from __future__ import annotations

from torch import nn


def ghorbani_cifar(num_classes: int = 10) -> nn.Sequential:
    """3 x conv96 (3x3), the last with stride 2; 3 x conv192, the last with stride 2; dense 1024; ReLU."""
    layers, c_in = [], 3
    for width in (96, 192):
        for i in range(3):
            layers += [nn.Conv2d(c_in, width, 3, stride=2 if i == 2 else 1, padding=1), nn.ReLU()]
            c_in = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(192 * 8 * 8, 1024), nn.ReLU(), nn.Linear(1024, num_classes))


def lenet(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """conv(32, 5) - pool - conv(64, 5) - pool - dense 128 - dense classes, for 28x28 inputs."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes))
