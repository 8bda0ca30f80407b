"""The foolbox sample images named ``<dataset>_<index>_<label>.<ext>`` (lossless PNGs; JPEGs for imagenet)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fragile.errors import FragileError
from fragile.settings import data_dir


def foolbox_files(dataset: str = "cifar10", root: str | Path | None = None) -> list[Path]:
    """The sample files of ``dataset`` in index order."""
    folder = Path(root) if root else data_dir() / "foolbox_samples" / "foolbox" / "data"
    files = sorted(folder.glob(f"{dataset}_*_*.*"), key=lambda p: int(p.stem.split("_")[1]))
    if not files:
        raise FragileError(f"no {dataset} samples in {folder} (set FRAGILE_DATA to the shared data folder)")
    return files


def load_foolbox_samples(dataset: str = "cifar10", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x: (20, C, H, W) float32 in [0, 1], labels: (20,) long) for cifar10, cifar100, mnist, ..."""
    files = foolbox_files(dataset, root)
    imgs = [np.asarray(Image.open(f), dtype=np.float32) / 255.0 for f in files]
    if len({im.shape for im in imgs}) > 1:
        raise FragileError(f"the {dataset} samples differ in size; load them with "
                           f"load_image_set('foolbox:{dataset}', size=..., resize='center_crop')")
    x = torch.from_numpy(np.stack(imgs))
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
    labels = torch.tensor([int(f.stem.split("_")[2]) for f in files])
    return x.contiguous(), labels
