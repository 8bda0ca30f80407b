"""Image sources by name, for the command line.

- ``foolbox:<dataset>``  the 20 lossless foolbox samples (cifar10, mnist, ...), with labels
- ``cifar10:<n>``        the first n test JPEGs of each CIFAR-10 class, with labels
- ``imagenet:<n>``       the first n ImageNet sample photos (one per class), resized and center-cropped
- a folder or file path  PNG/JPEG files, converted to RGB and resized to ``size`` (no labels)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fragile.data.cifar10_jpeg import load_cifar10_jpeg
from fragile.data.samples import load_foolbox_samples
from fragile.errors import FragileError

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def load_images(spec: str, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x: (N, C, H, W) in [0, 1], labels or None)."""
    if spec.startswith("foolbox:"):
        return load_foolbox_samples(spec.split(":", 1)[1])
    if spec.startswith("cifar10:"):
        return load_cifar10_jpeg("test", per_class=int(spec.split(":", 1)[1]))
    if spec.startswith("imagenet:"):
        from fragile.data.imagenet import load_imagenet_samples

        side = size[0] if size else 224
        return load_imagenet_samples(size=side, resize=round(side * 256 / 224), limit=int(spec.split(":", 1)[1]))
    path = Path(spec)
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES) if path.is_dir() else [path]
    if not files or not files[0].exists():
        raise FragileError(f"no images found at {spec!r} (a folder of PNG/JPEG files, foolbox:<dataset> or cifar10:<n>)")
    images, unreadable = [], 0
    for f in files:
        try:
            img = Image.open(f).convert("RGB")
        except (OSError, ValueError):
            unreadable += 1
            continue
        if size is not None:
            img = img.resize((size[1], size[0]), Image.BILINEAR)
        images.append(np.asarray(img, dtype=np.float32) / 255.0)
    if unreadable:
        warnings.warn(f"skipped {unreadable} unreadable image file(s) of {len(files)} in {spec}", stacklevel=2)
    if not images:
        raise FragileError(f"none of the {len(files)} image files in {spec!r} could be read")
    if len({im.shape for im in images}) > 1:
        raise FragileError("images differ in size; pass a model with an input size so they can be resized")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), None
