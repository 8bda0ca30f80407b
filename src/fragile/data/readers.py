"""Readers for the formats users have. Each returns (x: (N, C, H, W) float32 in [0, 1], labels (N,),
class names).

- CIFAR-10 python-pickle batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``)
- image folders ``<root>/<class>/<file>`` (class index = sorted folder order)
- IDX files (MNIST / Fashion-MNIST, optionally gzipped)
- safe unpacking of tar archives into a cache (members escaping the cache are refused)
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import torch

from fragile.errors import FragileError
from fragile.models.outputs import model_output

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")


def load_cifar10_pickle(folder: str | Path, split: str = "test"):
    """CIFAR-10 from the python pickles (``data_batch_1..5`` for ``split="train"``, else ``test_batch``):
    ``(x: (N, 3, 32, 32) float32 in [0, 1], labels (N,), class names)``; names from ``batches.meta`` if present.
    """
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as fh:
                batch = pickle.load(fh, encoding="bytes")  # noqa: S301 -- the user's own CIFAR files
        except (OSError, pickle.UnpicklingError, EOFError) as err:
            raise FragileError(f"cannot read CIFAR-10 batch {path}: {err}") from None
        xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[b"labels"]))
    classes = tuple(f"class {i}" for i in range(10))
    meta = folder / "batches.meta"
    if meta.exists():
        with open(meta, "rb") as fh:
            classes = tuple(n.decode() for n in pickle.load(fh, encoding="bytes")[b"label_names"])  # noqa: S301
    y = torch.from_numpy(np.concatenate(ys)).long()
    if int(y.max()) >= len(classes) or int(y.min()) < 0:
        raise FragileError(f"label {int(y.max())} outside the {len(classes)} classes of {folder}")
    return torch.from_numpy(np.concatenate(xs)).float() / 255.0, y, classes


def load_image_folder(root: str | Path, per_class: int | None = None, size: tuple[int, int] | None = None,
                      channels: int = 3):
    """(x: (N, channels, H, W), labels, class names) of ``root/<class>/<files>``: the first ``per_class``
    files of each class in sorted order; every mode read as ``fragile.data.files`` says (16-bit / 65535),
    resized to ``size`` without keeping the aspect ratio."""
    from fragile.data.files import SUFFIXES, check_channels, open_image, resized, to_array

    check_channels(channels)
    root = Path(root)
    if not root.is_dir():
        raise FragileError(f"no image folder at {root}")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise FragileError(f"{root} has no class sub-folders")
    images, labels, bad = [], [], 0
    for idx, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in SUFFIXES)
        for f in files[:per_class]:
            try:
                img, white = open_image(f)
            except FragileError:
                raise
            except (OSError, ValueError, SyntaxError):
                bad += 1
                continue
            if size is not None:
                img = resized(img, size, "squash")
            images.append(to_array(img, white, channels))
            labels.append(idx)
    if bad:
        warnings.warn(f"skipped {bad} unreadable image file(s) in {root}", stacklevel=2)
    if not images:
        raise FragileError(f"no readable images under {root}")
    if len({im.shape for im in images}) > 1:
        raise FragileError(f"the images under {root} differ in size; pass size=(H, W)")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels), classes


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX array (the MNIST format): magic 0x0000 TT DD, big-endian dims, then data."""
    path = Path(path)
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with _open(path) as fh:
            data = fh.read()
    except OSError as err:
        raise FragileError(f"cannot read IDX file {path}: {err}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in dtypes:
        raise FragileError(f"{path} is not an IDX file (bad magic number)")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", ndim, 4).astype(int)
    dtype = np.dtype(dtypes[data[2]])
    count = int(np.prod(dims))
    if len(data) - 4 - 4 * ndim < count * dtype.itemsize:
        raise FragileError(f"{path} is truncated: expected {count} values of shape {tuple(dims)}")
    return np.frombuffer(data, dtype, count, 4 + 4 * ndim).reshape(dims)


FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def load_fashion_mnist(split: str = "test", root: str | Path | None = None):
    """Fashion-MNIST from IDX files (Debian package ``dataset-fashion-mnist`` by default)."""
    root = Path(root) if root else FASHION_DIR
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise FragileError(f"{root}: {len(images)} images but {len(labels)} labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64)), FASHION_MNIST_CLASSES


def safe_unpack(archive: str | Path, cache: str | Path) -> Path:
    """Unpack a tar archive into ``cache`` with the tarfile 'data' filter: absolute paths, members
    escaping the cache, links outside it and device files are refused."""
    archive, cache = Path(archive), Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    marker = cache / f".unpacked-{archive.name}"
    if marker.exists():
        return cache
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(cache, filter="data")
    except (tarfile.FilterError, tarfile.OutsideDestinationError) as err:
        raise FragileError(f"refused to unpack {archive}: {err}") from None
    except (OSError, tarfile.TarError) as err:
        raise FragileError(f"cannot unpack {archive}: {err}") from None
    marker.touch()
    return cache


def correct_subset(model, x: torch.Tensor, labels: torch.Tensor, n: int, seed: int = 0, batch_size: int = 256):
    """Indices of ``n`` correctly classified images in a seeded random order (Ghorbani sec. 4: 512
    correctly classified images)."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    chosen = []
    with torch.no_grad():
        for chunk in order.split(batch_size):
            ok = model_output(model, x[chunk]).argmax(1) == labels[chunk]
            chosen += chunk[ok].tolist()
            if len(chosen) >= n:
                break
    if len(chosen) < n:
        raise FragileError(f"only {len(chosen)} of {len(x)} images are classified correctly; asked for {n}")
    return torch.tensor(chosen[:n])
