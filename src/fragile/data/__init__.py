"""Dataset readers (offline copies under FRAGILE_DATA)."""

from fragile.data.cifar10_jpeg import load_cifar10_jpeg
from fragile.data.images import load_images
from fragile.data.samples import load_foolbox_samples

__all__ = ["load_cifar10_jpeg", "load_foolbox_samples", "load_images"]
