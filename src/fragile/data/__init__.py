"""Dataset readers (offline copies under FRAGILE_DATA)."""

from fragile.data.cifar10_jpeg import load_cifar10_jpeg
from fragile.data.images import Images, load_image_set, load_images, model_channels
from fragile.data.samples import load_foolbox_samples
from fragile.data.sampling import classes_covered

__all__ = ["Images", "classes_covered", "load_cifar10_jpeg", "load_foolbox_samples", "load_image_set", "load_images",
           "model_channels"]
