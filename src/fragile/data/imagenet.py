"""The ImageNet sample folder: ``nXXXXXXXX_<name>.JPEG``, class index = rank of the synset id in sorted
order (0..999). Images are resized (shorter side to ``resize``) and center-cropped to ``size``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fragile.errors import FragileError
from fragile.settings import data_dir


def _folder(root=None) -> Path:
    folder = Path(root) if root else data_dir() / "imagenet_samples"
    if not folder.is_dir():
        raise FragileError(f"no ImageNet sample folder at {folder} (set FRAGILE_DATA)")
    return folder


@lru_cache(maxsize=4)
def _files(root=None) -> tuple[Path, ...]:
    return tuple(sorted(_folder(root).glob("n*_*.JPEG")))


def imagenet_class_names(root=None) -> tuple[str, ...]:
    """Class names in index order; generic names if the sample folder is absent."""
    try:
        files = _files(root)
    except FragileError:
        return tuple(f"class {i}" for i in range(1000))
    return tuple(f.stem.split("_", 1)[1].replace("_", " ") for f in sorted(files, key=lambda p: p.stem.split("_")[0]))


def center_crop(img: Image.Image, size: int, resize: int) -> np.ndarray:
    """torchvision's ``Resize(resize)`` + ``CenterCrop(size)``: the shorter side scaled to ``resize`` (bilinear),
    then the central ``size`` x ``size`` square, as a ``(size, size[, C])`` float32 array in [0, 1].
    """
    w, h = img.size
    scale = resize / min(w, h)
    img = img.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0


def load_imagenet_samples(size: int = 224, resize: int = 256, limit: int | None = None, root=None):
    """(x: (N, 3, size, size) in [0, 1], labels (N,)); greyscale photos are converted to RGB."""
    files = _files(root)
    synsets = sorted(f.stem.split("_")[0] for f in files)
    index = {s: i for i, s in enumerate(synsets)}
    chosen = files[:limit] if limit else files
    x = np.stack([center_crop(Image.open(f).convert("RGB"), size, resize) for f in chosen])
    labels = torch.tensor([index[f.stem.split("_")[0]] for f in chosen])
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), labels
