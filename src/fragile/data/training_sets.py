"""Training / test splits by name, for ``fragile train`` and the training comparison."""

from __future__ import annotations

import torch

from fragile.errors import FragileError


def shuffled_labels(y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """``y: (N,)`` permuted by the permutation ``torch.randperm(N)`` of a generator seeded with ``seed``: the
    same class frequencies, no relation left between an image and its label (the randomised labels of Zhang
    et al. 2017, used by Adebayo et al. 2018, sec. 4, for the data-randomisation test)."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1:
        raise FragileError(f"labels must be a 1-D tensor, got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}")
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(int(seed)))]


def training_data(spec: str, limit: int | None = None, test_per_class: int | None = None,
                  shuffle_labels: int | None = None):
    """((x_train, y_train), (x_test, y_test)) for 'fashion-mnist' or 'cifar10-jpeg' (train.tar.gz is
    unpacked safely into the cache on first use); ``limit`` takes a class-balanced prefix of the
    training set. ``shuffle_labels``: the seed of a permutation of the training labels
    (:func:`shuffled_labels`, after ``limit``); the test labels stay true, so a model trained on them
    scores near chance there."""
    (x, y), test = _training_data(spec, limit, test_per_class)
    return (x, y if shuffle_labels is None else shuffled_labels(y, shuffle_labels)), test


def _training_data(spec: str, limit: int | None, test_per_class: int | None):
    if spec == "fashion-mnist":
        from fragile.data.readers import load_fashion_mnist

        (x, y, _), (xt, yt, _) = load_fashion_mnist("train"), load_fashion_mnist("test")
        return (x[:limit], y[:limit]), (xt, yt)
    if spec == "cifar10-jpeg":
        from fragile.data.cifar10_jpeg import load_cifar10_jpeg
        from fragile.data.readers import load_image_folder, safe_unpack
        from fragile.models.download import cache_dir
        from fragile.settings import data_dir

        root = safe_unpack(data_dir() / "cifar10_jpeg" / "train.tar.gz", cache_dir() / "cifar10_jpeg")
        per_class = None if limit is None else max(1, limit // 10)
        x, y, _ = load_image_folder(root / "train", per_class=per_class)
        return (x, y), load_cifar10_jpeg("test", per_class=test_per_class)
    raise FragileError(f"unknown training data {spec!r}; choose fashion-mnist or cifar10-jpeg")
