"""Dataset readers on files the tests generate, safe unpacking, the downloader on a loopback server."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
from conftest import serve
import torch

from fragile.data.readers import (
    correct_subset, load_cifar10_pickle, load_fashion_mnist, load_image_folder, read_idx, safe_unpack,
)
from fragile.errors import FragileError
from fragile.models.download import download


def test_cifar10_pickle_batches(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (7, 3072), dtype=np.uint8)
    with open(tmp_path / "test_batch", "wb") as fh:
        pickle.dump({b"data": data, b"labels": [0, 1, 2, 3, 4, 5, 9]}, fh)
    with open(tmp_path / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    x, y, names = load_cifar10_pickle(tmp_path, "test")
    assert x.shape == (7, 3, 32, 32) and names[9] == "c9"
    # channel-major rows: the first 1024 bytes are the red plane
    assert torch.allclose(x[2, 0].flatten(), torch.from_numpy(data[2, :1024]).float() / 255)
    with pytest.raises(FragileError, match="data_batch_1"):
        load_cifar10_pickle(tmp_path, "train")


def _idx(path, arr, code):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.tobytes())


def test_idx_reader_and_fashion_mnist_layout(tmp_path):
    imgs = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, 0x08)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([3, 7], dtype=np.uint8), 0x08)
    assert np.array_equal(read_idx(tmp_path / "t10k-images-idx3-ubyte.gz"), imgs)
    x, y, names = load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (2, 1, 28, 28) and y.tolist() == [3, 7] and names[7] == "Sneaker"
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04"))
    with pytest.raises(FragileError, match="bad magic"):
        read_idx(tmp_path / "bad.gz")


def test_real_fashion_mnist_if_installed():
    from fragile.data.readers import FASHION_DIR

    if not FASHION_DIR.exists():
        pytest.fail(f"{FASHION_DIR} missing: `make test` installs the Debian package dataset-fashion-mnist")
    x, y, _ = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10


def test_image_folder_reader_with_grey_and_broken_files(tmp_path):
    from PIL import Image

    for cls in ("b", "a"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((5, 5), 200, np.uint8)).save(tmp_path / cls / "grey.png")  # greyscale -> RGB
    (tmp_path / "a" / "broken.jpg").write_bytes(b"xx")
    with pytest.warns(UserWarning, match="skipped 1"):
        x, y, names = load_image_folder(tmp_path)
    assert names == ("a", "b") and x.shape == (2, 3, 5, 5) and y.tolist() == [0, 1]


def test_image_folder_reader_scales_16_bit_pngs_by_65535(tmp_path):
    from PIL import Image

    a = np.array([[0, 255, 40000, 65535]], dtype=np.uint16)
    (tmp_path / "c").mkdir()
    Image.fromarray(a).save(tmp_path / "c" / "g16.png")  # mode I;16; PIL's convert("L") would clip at 255
    x, _, _ = load_image_folder(tmp_path, channels=1)
    assert torch.allclose(x[0, 0], torch.from_numpy(a / 65535.0).float(), atol=1e-6)


def _tar(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_safe_unpack_refuses_escaping_members(tmp_path):
    good, evil = tmp_path / "good.tar.gz", tmp_path / "evil.tar.gz"
    _tar(good, [("train/cat/0.jpg", b"x")])
    _tar(evil, [("../../escaped.txt", b"x")])
    assert (safe_unpack(good, tmp_path / "cache") / "train" / "cat" / "0.jpg").exists()
    with pytest.raises(FragileError, match="refused"):
        safe_unpack(evil, tmp_path / "cache2")
    assert not (tmp_path / "escaped.txt").exists()


def test_correct_subset_is_seeded_and_correct():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    x = torch.randn(200, 1, 2, 2)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::3] = 1 - y[::3]  # a third are wrong
    a, b = correct_subset(model, x, y, 50, seed=1), correct_subset(model, x, y, 50, seed=1)
    assert torch.equal(a, b) and len(set(a.tolist())) == 50
    with torch.no_grad():
        assert bool((model(x[a]).argmax(1) == y[a]).all())
    with pytest.raises(FragileError, match="only"):
        correct_subset(model, x, y, 199)


@pytest.fixture
def server(tmp_path):
    payload = b"weights" * 1000
    (tmp_path / "w.bin").write_bytes(payload)
    with serve(tmp_path) as url:
        yield url, hashlib.sha256(payload).hexdigest()


def test_download_verifies_and_caches(server, tmp_path):
    url, digest = server
    cache = tmp_path / "cache"
    path = download(f"{url}/w.bin", digest, cache=cache)
    assert path.read_bytes() == b"weights" * 1000
    assert download(f"{url}/w.bin", digest, cache=cache) == path  # cached
    with pytest.raises(FragileError, match="checksum mismatch"):
        download(f"{url}/w.bin", "0" * 64, cache=tmp_path / "other")
    assert not list((tmp_path / "other").iterdir())
    with pytest.raises(FragileError, match="download of"):
        download(f"{url}/missing.bin", digest, cache=cache)


def test_pretrained_weights_download_when_no_local_copy(tmp_path, monkeypatch):
    """With an empty FRAGILE_MODELS, ResNet-20 weights come from the (loopback) mirror, SHA-256 checked."""
    import shutil

    from fragile.models import create
    from fragile.settings import models_dir

    src = models_dir() / "cifar10_resnet_akamaster" / "pretrained_models" / "resnet20-12fca82f.th"
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(src, served / src.name)
    with serve(served) as url:
        monkeypatch.setenv("FRAGILE_MODELS", str(tmp_path / "empty"))
        monkeypatch.setenv("FRAGILE_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("FRAGILE_WEIGHTS_URL", url)
        model = create("resnet20_cifar10", pretrained=True)
        assert (tmp_path / "cache" / src.name).exists()
        reference = create("resnet20_cifar10", pretrained=True, weights=src)
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), reference(x))
        (served / src.name).write_bytes(b"tampered")
        (tmp_path / "cache" / src.name).unlink()
        with pytest.raises(FragileError, match="checksum mismatch"):
            create("resnet20_cifar10", pretrained=True)


def test_torchvision_models_need_the_extra(monkeypatch):
    import sys

    from fragile.models import create

    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without the extra
    with pytest.raises(FragileError, match=r"fragile\[vision\]"):
        create("torchvision:resnet18")
