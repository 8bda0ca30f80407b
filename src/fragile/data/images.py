"""Image sets by name, for the command line and the configs.

- ``foolbox:<dataset>``         the 20 lossless foolbox samples (cifar10, cifar100, mnist, fashionMNIST, imagenet)
- ``cifar10:<n>[:seed=<s>]``    a seeded random sample of n CIFAR-10 test JPEGs spread over the 10 classes
- ``imagenet:<n>[:seed=<s>]``   a seeded random sample of n of the 1000 ImageNet sample photos (n distinct
  classes), by default resized and center-cropped (the ImageNet evaluation convention)
- a folder ``[:<n>][:seed=<s>]`` image files; with class sub-folders ``folder/<class>/<files>`` the labels are
  the sorted sub-folder index and the class names the sub-folder names (the torchvision ImageFolder rule),
  without them no labels. ``n`` draws a seeded random sample (class-balanced with sub-folders).
- a single image file

Samples with labels are in round-robin class order (``fragile.data.sampling``), so any prefix (a sweep's
``limit``) is class-balanced too; the default seed is 0. Every image has an id: its file path relative to the
folder (for the named sets: relative to ``FRAGILE_DATA``). How files of each mode, size and channel count
are read: ``fragile.data.files``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fragile.data.files import SUFFIXES, check_channels, is_grey, open_image, resize_policy, resized, to_array
from fragile.data.sampling import balanced_sample, classes_covered
from fragile.errors import FragileError

FOOLBOX_SETS = ("cifar10", "cifar100", "mnist", "fashionMNIST", "imagenet")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class Images:
    """An image set: ``x: (N, C, H, W)`` float32 in [0, 1], ``labels: (N,)`` long or None, ``ids`` (file
    paths), ``class_names`` (index -> name) or None, ``source`` ('cifar10', 'imagenet', 'foolbox',
    'folder' or 'file')."""

    x: torch.Tensor
    labels: torch.Tensor | None
    ids: tuple[str, ...]
    class_names: tuple[str, ...] | None = None
    source: str = "folder"

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index) -> Images:
        """The images at ``index`` (a slice, a boolean mask or indices), in that order."""
        every = torch.arange(len(self.x))
        keep = (every[index] if isinstance(index, slice) else every[torch.as_tensor(index).cpu()]).reshape(-1)
        return Images(self.x[keep.to(self.x.device)],
                      None if self.labels is None else self.labels[keep.to(self.labels.device)],
                      tuple(self.ids[i] for i in keep.tolist()), self.class_names, self.source)

    def covered(self) -> str:
        """Which classes the set covers, e.g. '10 classes, 3-4 images each'."""
        return classes_covered(self.labels, self.class_names)


def load_images(spec: str, size: tuple[int, int] | None = None, resize: str | None = None,
                channels: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x: (N, C, H, W) in [0, 1], labels or None) of ``load_image_set``."""
    images = load_image_set(spec, size=size, resize=resize, channels=channels, seed=seed)
    return images.x, images.labels


def load_image_set(spec: str, size: tuple[int, int] | None = None, resize: str | None = None,
                   channels: int | None = None, seed: int = 0) -> Images:
    """The image set named by ``spec`` (see the module docstring).

    ``size = (H, W)``: the size the model takes (e.g. ``model.input_size``). ``resize``: None (default)
    refuses any image of another size, naming the file (no silent squash of a 224 x 224 photo to 32 x 32);
    ``"center_crop"`` (torchvision's Resize(S * 256/224) + CenterCrop(S)) or ``"squash"`` resize every
    image to ``size``. Without ``size`` all images must share one size. ``imagenet:<n>`` photos differ in
    size and are always resized, by ``"center_crop"`` unless ``"squash"`` is asked for (default size 224).

    ``channels``: 1 or 3 (grey -> RGB by repetition, RGB -> grey by ITU-R 601 luma); None: the named sets
    as stored (foolbox mnist is grey), image files as RGB. ``seed``: of the random sample, unless the spec
    names one (``cifar10:200:seed=3``)."""
    check_channels(channels)
    size = check_size(size)
    policy = resize_policy(resize)
    kind, arg, n, spec_seed = parse_spec(spec)
    seed = seed if spec_seed is None else spec_seed
    if kind == "foolbox":
        return _foolbox(arg, size, policy, channels)
    if kind == "cifar10":
        from fragile.settings import data_dir

        root = data_dir() / "cifar10_jpeg" / "test"
        files, labels, classes = _class_folder_sample(root, n, seed, 10)
        if classes is None or len(classes) != 10:
            raise FragileError(f"expected 10 class folders in {root}, found {0 if classes is None else len(classes)} "
                               "(set FRAGILE_DATA)")
        return _read(files, labels, classes, "cifar10", size, policy, channels, spec, base=data_dir())
    if kind == "imagenet":
        return _imagenet(n, seed, size, policy, channels, spec)
    return _path(Path(arg), n, seed, size, policy, channels, spec)


def parse_spec(spec: str) -> tuple[str, str, int | None, int | None]:
    """(kind, argument, n, seed) of an image spec; kind is 'foolbox', 'cifar10', 'imagenet' or 'path'."""
    if not isinstance(spec, str) or not spec:
        raise FragileError(f"an image spec must be a non-empty string, got {spec!r}")
    if spec.startswith("foolbox:"):
        dataset = spec.split(":", 1)[1]
        if dataset not in FOOLBOX_SETS:
            raise FragileError(f"unknown foolbox sample set {dataset!r} in {spec!r}; choose one of {', '.join(FOOLBOX_SETS)}")
        return "foolbox", dataset, None, None
    if Path(spec).exists():
        return "path", spec, None, None
    parts, n, seed = spec.split(":"), None, None
    while len(parts) > 1 and (_integer(parts[-1]) or parts[-1].startswith("seed=")):
        last = parts.pop()
        if last.startswith("seed="):
            if seed is not None or not last[5:].isdigit():
                raise FragileError(f"bad seed {last!r} in image spec {spec!r}: an integer >= 0 (e.g. cifar10:200:seed=3)")
            seed = int(last[5:])
        elif n is not None:
            raise FragileError(f"two image counts in image spec {spec!r}")
        else:
            n = int(last)
    head = ":".join(parts)
    if n is not None and n < 1:
        raise FragileError(f"the number of images in {spec!r} must be a positive integer, got {n}")
    named = head.split(":", 1)[0]
    if named in ("cifar10", "imagenet"):
        if head != named:
            raise FragileError(f"bad image spec {spec!r}: {named}:<n>[:seed=<s>] with n a positive integer "
                               f"(e.g. {named}:200)")
        if n is None:
            raise FragileError(f"{head}:<n> needs a number of images, e.g. {head}:200 (got {spec!r})")
        return head, head, n, seed
    return "path", head, n, seed


def check_size(size) -> tuple[int, int] | None:
    """None, or ``(H, W)`` of positive integers (an int S means ``(S, S)``)."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else size
    try:
        h, w = pair
    except (TypeError, ValueError):
        raise FragileError(f"size must be (H, W) of positive integers, got {size!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in (h, w)):
        raise FragileError(f"size must be (H, W) of positive integers, got {size!r}")
    return int(h), int(w)


def _integer(text: str) -> bool:
    """A count in an image spec: digits, or a minus sign and digits (refused as not positive)."""
    return text.isdigit() or (text.startswith("-") and text[1:].isdigit())


def model_channels(model: nn.Module) -> int | None:
    """The input channels of a model: ``model.input_channels`` or ``model.channels`` (set by
    ``fragile.models.loading``) if given, else the first Conv2d's, else None."""
    for attr in ("input_channels", "channels"):
        given = getattr(model, attr, None)
        if isinstance(given, int) and not isinstance(given, bool):
            return given
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if first is None else int(first.in_channels)


def align_labels(images: Images, model_class_names: Sequence[str] | None) -> Images:
    """Labels of a folder set in the model's class indices: sub-folders named like the model's classes
    (case, '_' / '-' / ' ' ignored) get those indices; folders named by integers are taken as indices;
    otherwise the sorted sub-folder index stays (torchvision's ImageFolder convention, the one a model trained
    on such a folder uses). Named sets (cifar10, imagenet, foolbox) are already in their standard order."""
    if images.source != "folder" or images.class_names is None or images.labels is None:
        return images
    names = images.class_names
    if model_class_names is not None:
        index = {_norm(c): i for i, c in enumerate(model_class_names)}
        if all(_norm(c) in index for c in names):
            mapping = torch.tensor([index[_norm(c)] for c in names])
            return Images(images.x, mapping[images.labels.cpu()].to(images.labels.device), images.ids,
                          tuple(model_class_names), images.source)
    if all(c.isdigit() for c in names):
        mapping = torch.tensor([int(c) for c in names])
        return Images(images.x, mapping[images.labels.cpu()].to(images.labels.device), images.ids, None,
                      images.source)
    return images


def _norm(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _image_files(folder: Path, recursive: bool) -> list[Path]:
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in found if f.suffix.lower() in SUFFIXES and f.is_file() and _visible(f, folder))


def _class_folder_sample(root: Path, n: int | None, seed: int, expect: int | None = None):
    """(files, labels or None, class names or None) of a folder: class sub-folders interleaved (seeded)."""
    if not root.is_dir():
        raise FragileError(f"no image folder at {root} (set FRAGILE_DATA for the named sets)")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    groups = [(d.name, _image_files(d, recursive=True)) for d in subdirs]
    groups = [(name, files) for name, files in groups if files]
    top = _image_files(root, recursive=False)
    if groups and top:
        raise FragileError(f"{root} has both image files ({top[0].name}, ...) and class sub-folders "
                           f"({', '.join(name for name, _ in groups[:3])}, ...); put every image in a class "
                           "folder, or none")
    if not groups:
        if not top:
            return [], None, None
        order = np.random.default_rng(seed).permutation(len(top))[:n] if n is not None else range(len(top))
        return [top[i] for i in order], None, None
    chosen = balanced_sample([files for _, files in groups], n, seed)
    return [f for _, f in chosen], [g for g, _ in chosen], tuple(name for name, _ in groups)


def _path(path: Path, n, seed, size, policy, channels, spec) -> Images:
    if path.is_dir():
        files, labels, classes = _class_folder_sample(path, n, seed)
        source = "folder"
    else:
        files, labels, classes, source = ([path] if path.exists() else []), None, None, "file"
        path = path.parent
    if not files:
        raise FragileError(f"no images found at {spec!r} (a folder of PNG/JPEG files, foolbox:<dataset>, "
                           "cifar10:<n> or imagenet:<n>)")
    return _read(files, labels, classes, source, size, policy, channels if channels else 3, spec, base=path)


def _imagenet(n, seed, size, policy, channels, spec) -> Images:
    from fragile.data.imagenet import _files, imagenet_class_names
    from fragile.settings import data_dir

    files = _files()
    if n > len(files):
        raise FragileError(f"{spec!r}: only {len(files)} ImageNet sample photos")
    index = {s: i for i, s in enumerate(sorted(f.stem.split("_")[0] for f in files))}
    chosen = [f for _, f in balanced_sample([[f] for f in files], n, seed)]
    labels = [index[f.stem.split("_")[0]] for f in chosen]
    size = tuple(size) if size is not None else (224, 224)
    return _read(chosen, labels, imagenet_class_names(), "imagenet", size, policy or "center_crop", channels, spec,
                 base=data_dir())


FOOLBOX_CLASSES = {"cifar10": CIFAR10_CLASSES, "mnist": tuple(str(i) for i in range(10))}


def _foolbox(dataset, size, policy, channels) -> Images:
    from fragile.data.samples import foolbox_files
    from fragile.settings import data_dir

    files = foolbox_files(dataset)
    labels = [int(f.stem.split("_")[2]) for f in files]
    return _read(files, labels, _foolbox_classes(dataset), "foolbox", size, policy, channels, f"foolbox:{dataset}",
                 base=data_dir())


def _foolbox_classes(dataset: str) -> tuple[str, ...] | None:
    if dataset == "fashionMNIST":
        from fragile.data.readers import FASHION_MNIST_CLASSES

        return FASHION_MNIST_CLASSES
    if dataset == "imagenet":
        from fragile.data.imagenet import imagenet_class_names

        return imagenet_class_names()
    return FOOLBOX_CLASSES.get(dataset)


def _relative(f: Path, base: Path) -> str:
    try:
        return f.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return f.name


def _read(files, labels, classes, source, size, policy, channels, spec, base: Path) -> Images:
    """Read ``files`` (skipping unreadable ones with a warning) into an Images set."""
    if policy is not None and size is None:
        raise FragileError(f"resize policy {policy!r} needs a target size (the model's input size or --size H W)")
    size = None if size is None else (int(size[0]), int(size[1]))
    images, kept, unreadable, first = [], [], 0, None
    for i, f in enumerate(files):
        name = _relative(f, base)
        try:
            img, white = open_image(f, name)
        except FragileError:
            raise
        except (OSError, ValueError, SyntaxError):
            unreadable += 1
            continue
        shape = (img.size[1], img.size[0])
        if policy is None:
            if size is not None and shape != size:
                raise FragileError(
                    f"{name} is {shape[0]}x{shape[1]} but the model takes {size[0]}x{size[1]}; ask for a resize "
                    "policy: resize='center_crop' (shorter side + center crop, the torchvision convention) or "
                    "'squash' (CLI: --size H W)")
            if first is not None and shape != first[1]:
                raise FragileError(f"images differ in size: {first[0]} is {first[1][0]}x{first[1][1]}, {name} is "
                                   f"{shape[0]}x{shape[1]}; give a size and a resize policy (CLI: --size H W)")
            first = first or (name, shape)
        else:
            img = resized(img, size, policy)
        images.append((img, white))
        kept.append((i, name))
    if unreadable:
        warnings.warn(f"skipped {unreadable} unreadable image file(s) of {len(files)} in {spec}", stacklevel=3)
    if not images:
        raise FragileError(f"none of the {len(files)} image files in {spec!r} could be read")
    if channels is None:
        channels = 1 if all(is_grey(img) for img, _ in images) else 3
    x = torch.from_numpy(np.stack([to_array(img, white, channels) for img, white in images]))
    y = None if labels is None else torch.tensor([labels[i] for i, _ in kept], dtype=torch.long)
    return Images(x, y, tuple(name for _, name in kept), None if classes is None else tuple(classes), source)
