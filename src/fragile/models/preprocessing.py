"""Preprocessing carried with the model, so every method sees raw pixels.

Explanations, eps-balls and data bounds are all stated in the raw image scale (e.g. [0, 1]);
the wrapper maps raw pixels to what the network was trained on:

    z = (flip(x) * scale - mean) / std
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(flip(x) * scale - mean) / std`` per channel; ``bgr=True`` reverses the channel order."""

    def __init__(self, mean: Sequence[float], std: Sequence[float] | float = 1.0,
                 scale: float = 1.0, bgr: bool = False):
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t.expand_as(mean_t).clone())
        self.scale = float(scale)
        self.bgr = bool(bgr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` raw pixels -> the network's input ``(flip(x) * scale - mean) / std``, in ``x``'s dtype."""
        if self.bgr:
            x = x.flip(1)
        return (x * self.scale - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Preprocessed(nn.Sequential):
    """``Preprocessed(net, mean=..., std=...)``: raw pixels in ``bounds`` -> ``net``.

    Attributes: ``bounds`` (low, high) of the raw data, used for eps-balls, noise scales
    (SmoothGrad sigma is relative to ``high - low``) and the LRP zB bounds.
    """

    def __init__(self, net: nn.Module, *, mean: Sequence[float], std: Sequence[float] | float = 1.0,
                 scale: float = 1.0, bgr: bool = False, bounds: tuple[float, float] = (0.0, 1.0)):
        super().__init__(Normalize(mean, std, scale=scale, bgr=bgr), net)
        self.bounds = (float(bounds[0]), float(bounds[1]))
