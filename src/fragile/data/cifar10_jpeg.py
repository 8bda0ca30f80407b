"""CIFAR-10 as JPEG folders ``<root>/<split>/<class>/NNNN.jpg`` (class index = alphabetical order)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fragile.errors import FragileError
from fragile.settings import data_dir


def load_cifar10_jpeg(split: str = "test", per_class: int | None = None,
                      root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x: (M, 3, 32, 32) float32 in [0, 1], labels: (M,)); the first ``per_class`` files of each class
    in sorted order (deterministic), or all."""
    folder = Path(root) if root else data_dir() / "cifar10_jpeg" / split
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if len(classes) != 10:
        raise FragileError(f"expected 10 class folders in {folder}, found {len(classes)} "
                           "(set FRAGILE_DATA; the train split must be unpacked from train.tar.gz)")
    images, labels = [], []
    for idx, name in enumerate(classes):
        files = sorted((folder / name).glob("*.jpg"))[:per_class]
        images += [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255.0 for f in files]
        labels += [idx] * len(files)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels)
