"""Images as users have them (issue 15.6) and seeded class-balanced samples (issue 19.1): every PIL mode
against a numpy computation, resize policies and their refusal, class sub-folders, file-path ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fragile.data import Images, classes_covered, load_image_set, load_images, model_channels
from fragile.data.files import LUMA
from fragile.data.sampling import balanced_sample, interleave
from fragile.errors import FragileError

RNG = np.random.default_rng(0)


def _save(path, arr, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    img.save(path)
    return path


def _load(path, **kw) -> np.ndarray:
    return load_image_set(str(path), **kw).x[0].numpy()


# exact float32 arithmetic of the loader: value / white, luma as a float32 dot product
TOL = 1e-6


def test_grey_8_bit_as_grey_and_as_rgb(tmp_path):
    a = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    f = _save(tmp_path / "g.png", a)
    assert Image.open(f).mode == "L"
    np.testing.assert_allclose(_load(f, channels=1), a[None] / 255.0, atol=TOL)
    np.testing.assert_allclose(_load(f), np.repeat(a[None] / 255.0, 3, 0), atol=TOL)  # files default to RGB


def test_16_bit_png_is_scaled_by_65535_not_saturated(tmp_path):
    a = RNG.integers(0, 65536, (6, 4), dtype=np.uint16)
    a[0, 0], a[0, 1] = 65535, 40000  # 40000 / 65535 = 0.61, not 1.0 as a clip at 255 would give
    f = _save(tmp_path / "g16.png", a)
    assert Image.open(f).mode == "I;16"
    x = _load(f, channels=1)
    np.testing.assert_allclose(x, a[None] / 65535.0, atol=TOL)
    assert abs(x[0, 0, 1] - 40000 / 65535) < TOL and x[0, 0, 0] == 1.0
    np.testing.assert_allclose(_load(f, channels=3), np.repeat(a[None] / 65535.0, 3, 0), atol=TOL)


def test_32_bit_integer_image_within_16_bit_range_and_beyond(tmp_path):
    a = RNG.integers(0, 65536, (4, 4)).astype(np.int32)
    f = tmp_path / "i.tif"
    Image.fromarray(a, "I").save(f)
    assert Image.open(f).mode == "I"
    np.testing.assert_allclose(_load(f, channels=1), a[None] / 65535.0, atol=TOL)
    a[0, 0] = 70000
    (tmp_path / "big").mkdir()
    Image.fromarray(a, "I").save(tmp_path / "big" / "i.tif")
    with pytest.raises(FragileError, match=r"i\.tif.*mode I.*not 16-bit"):
        load_image_set(str(tmp_path / "big"))


def test_rgb_and_rgba_drop_alpha_and_luma_for_grey_models(tmp_path):
    rgba = RNG.integers(0, 256, (5, 6, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the stored colour is kept (alpha dropped, not composited)
    f = _save(tmp_path / "a.png", rgba, "RGBA")
    rgb = rgba[..., :3].astype(np.float32) / np.float32(255)
    np.testing.assert_allclose(_load(f), rgb.transpose(2, 0, 1), atol=TOL)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    np.testing.assert_allclose(_load(f, channels=1), luma[None], atol=1e-6)
    g = _save(tmp_path / "c.jpg", rgba[..., :3])
    assert Image.open(g).mode == "RGB" and _load(g, channels=1).shape == (1, 5, 6)
    np.testing.assert_allclose(LUMA.sum(), 1.0, atol=1e-7)


def test_grey_with_alpha_and_bilevel(tmp_path):
    la = RNG.integers(0, 256, (4, 5, 2), dtype=np.uint8)
    f = _save(tmp_path / "la.png", la, "LA")
    np.testing.assert_allclose(_load(f, channels=1), la[None, ..., 0] / 255.0, atol=TOL)
    bits = RNG.integers(0, 2, (4, 8)).astype(bool)
    g = tmp_path / "b.png"
    Image.fromarray(bits).save(g)
    assert Image.open(g).mode == "1"
    np.testing.assert_allclose(_load(g, channels=1), bits[None].astype(np.float32), atol=TOL)


def test_palette_png_is_looked_up(tmp_path):
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    idx = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette(palette.flatten().tolist())
    img.info["transparency"] = 3
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    expected = palette[idx].astype(np.float32) / 255.0
    np.testing.assert_allclose(_load(tmp_path / "p.png"), expected.transpose(2, 0, 1), atol=TOL)


def test_unsupported_mode_and_channel_count_refused_naming_the_file(tmp_path):
    f = tmp_path / "float.tif"
    Image.fromarray(RNG.random((4, 4)).astype(np.float32), "F").save(f)
    with pytest.raises(FragileError, match=r"float\.tif.*mode 'F'"):
        load_image_set(str(f))
    _save(tmp_path / "ok.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(FragileError, match="channels must be 1"):
        load_image_set(str(tmp_path / "ok.png"), channels=2)


def test_mixed_sizes_are_refused_naming_two_files_or_resized(tmp_path):
    _save(tmp_path / "a.png", np.zeros((8, 8, 3), np.uint8))
    _save(tmp_path / "b.png", np.zeros((8, 12, 3), np.uint8))
    with pytest.raises(FragileError, match=r"a\.png is 8x8.*b\.png is 8x12"):
        load_image_set(str(tmp_path))
    with pytest.raises(FragileError, match="unknown resize policy"):
        load_image_set(str(tmp_path), size=(8, 8), resize="stretch")
    with pytest.raises(FragileError, match="needs a target size"):
        load_image_set(str(tmp_path), resize="squash")
    for policy in ("squash", "center_crop", "shorter_side_center_crop"):
        assert load_image_set(str(tmp_path), size=(6, 6), resize=policy).x.shape == (2, 3, 6, 6)
    with pytest.raises(FragileError, match=r"b\.png is 8x12 but the model takes 8x8"):
        load_image_set(str(tmp_path), size=(8, 8), resize="none")


def test_a_size_mismatch_is_refused_without_a_policy(tmp_path):
    """No silent squash of 224 x 224 photos to a 32 x 32 model."""
    _save(tmp_path / "photo.png", np.zeros((224, 224, 3), np.uint8))
    with pytest.raises(FragileError, match=r"photo\.png is 224x224 but the model takes 32x32.*center_crop"):
        load_image_set(str(tmp_path), size=(32, 32))
    assert load_image_set(str(tmp_path), size=(224, 224)).x.shape == (1, 3, 224, 224)
    with pytest.raises(FragileError, match=r"cifar10_jpeg/test/.*\.jpg is 32x32 but the model takes 227x227"):
        load_image_set("cifar10:2", size=(227, 227))
    assert load_image_set("cifar10:2", size=(64, 64), resize="squash").x.shape == (2, 3, 64, 64)


def test_center_crop_keeps_the_aspect_ratio_and_squash_does_not(tmp_path):
    """A 40 x 80 image whose left quarter is red: center_crop to 32 x 32 (shorter side to 37, width to 74,
    the central 32 columns = original columns 22.7..57.3) shows no red; squash keeps the red quarter."""
    a = np.full((40, 80, 3), 255, np.uint8)
    a[:, :20] = (255, 0, 0)
    f = _save(tmp_path / "wide.png", a)
    crop = _load(f, size=(32, 32), resize="center_crop")
    squash = _load(f, size=(32, 32), resize="squash")
    assert crop.shape == squash.shape == (3, 32, 32)
    assert crop[1].min() > 0.99  # green channel white everywhere: no red column left
    assert squash[1, :, :7].max() < 0.01 and squash[1, :, 9:].min() > 0.99


def test_center_crop_matches_the_imagenet_loader_convention(tmp_path):
    """The policy is the one the ImageNet loader uses (torchvision Resize(256) + CenterCrop(224) scaled)."""
    from fragile.data.imagenet import center_crop

    a = RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    f = _save(tmp_path / "r.png", a)
    expected = center_crop(Image.open(f).convert("RGB"), 24, round(24 * 256 / 224))
    np.testing.assert_array_equal(_load(f, size=(24, 24), resize="center_crop"), expected.transpose(2, 0, 1))


def _class_folder(root, counts, size=(4, 4)):
    for c, (name, k) in enumerate(counts.items()):
        for i in range(k):
            _save(root / name / f"{i:02d}.png", np.full((*size, 3), 10 * c + i, np.uint8))
    return root


def test_labels_and_class_names_from_sub_folders_and_ids_are_paths(tmp_path):
    root = _class_folder(tmp_path / "set", {"dog": 2, "cat": 3})
    _save(root / "dog" / "deeper" / "x.png", np.zeros((4, 4, 3), np.uint8))  # nested inside a class: that class
    _save(root / "cat" / ".hidden.png", np.zeros((4, 4, 3), np.uint8))  # hidden files are skipped
    images = load_image_set(str(root))
    assert isinstance(images, Images) and images.class_names == ("cat", "dog") and images.source == "folder"
    assert sorted(images.ids) == ["cat/00.png", "cat/01.png", "cat/02.png", "dog/00.png", "dog/01.png",
                                  "dog/deeper/x.png"]
    for i, path in enumerate(images.ids):
        assert images.labels[i] == images.class_names.index(path.split("/")[0])
    x, labels = load_images(str(root))  # the old call shape still works
    assert torch.equal(x, images.x) and torch.equal(labels, images.labels)
    (root / "stray.png").write_bytes((root / "cat" / "00.png").read_bytes())
    with pytest.raises(FragileError, match="both image files"):
        load_image_set(str(root))


def test_flat_folder_and_single_file_have_no_labels_and_file_name_ids(tmp_path):
    for name in ("b.png", "a.png", "c.jpg"):
        _save(tmp_path / name, np.zeros((3, 3, 3), np.uint8))
    images = load_image_set(str(tmp_path))
    assert images.labels is None and images.ids == ("a.png", "b.png", "c.jpg")
    sample = load_image_set(f"{tmp_path}:2:seed=4")
    assert len(sample) == 2 and set(sample.ids) <= set(images.ids)
    assert load_image_set(str(tmp_path / "b.png")).ids == ("b.png",)


def _counts(labels, n_classes):
    return torch.bincount(labels, minlength=n_classes).tolist()


def _prefixes_balanced(labels, n_classes):
    return all(max(_counts(labels[:k], n_classes)) - min(_counts(labels[:k], n_classes)) <= 1
               for k in range(1, len(labels) + 1))


def test_cifar10_spec_is_a_seeded_class_balanced_sample():
    a = load_image_set("cifar10:25")
    assert a.x.shape == (25, 3, 32, 32) and sorted(_counts(a.labels, 10)) == [2] * 5 + [3] * 5
    assert _prefixes_balanced(a.labels, 10) and len(set(a.ids)) == 25
    assert a.class_names[0] == "airplane" and a.covered() == "10 classes, 2-3 images each"
    assert all(i.startswith(f"cifar10_jpeg/test/{a.class_names[c]}/") for i, c in zip(a.ids, a.labels.tolist()))
    assert load_image_set("cifar10:25").ids == a.ids  # deterministic (default seed 0)
    b, c = load_image_set("cifar10:25:seed=1"), load_image_set("cifar10:25", seed=1)
    assert b.ids != a.ids and b.ids == c.ids
    assert load_image_set("cifar10:10").ids == a.ids[:10]  # a smaller sample is a prefix of a larger one
    with pytest.raises(FragileError, match="needs a number"):
        load_image_set("cifar10")
    with pytest.raises(FragileError, match="bad seed"):
        load_image_set("cifar10:5:seed=x")


def test_imagenet_spec_samples_distinct_classes():
    a = load_image_set("imagenet:6", size=(32, 32))
    assert a.x.shape == (6, 3, 32, 32) and len(set(a.labels.tolist())) == 6
    assert a.labels.tolist() != list(range(6))  # not the first classes
    assert all(i.startswith("imagenet_samples/n") for i in a.ids)
    assert load_image_set("imagenet:6", size=(32, 32)).ids == a.ids
    assert load_image_set("imagenet:6:seed=2", size=(32, 32)).ids != a.ids
    assert a.class_names[int(a.labels[0])] in a.ids[0].replace("_", " ")


def test_folder_sample_interleaves_uneven_classes(tmp_path):
    root = _class_folder(tmp_path, {"a": 6, "b": 2, "c": 4})
    full = load_image_set(str(root))
    assert len(full) == 12 and _counts(full.labels, 3) == [6, 2, 4]
    assert _prefixes_balanced(full.labels[:6], 3)  # while every class has images left
    part = load_image_set(f"{root}:5")
    assert _counts(part.labels, 3) in ([2, 2, 1], [2, 1, 2], [1, 2, 2])
    assert load_image_set(f"{root}:5:seed=1").ids != part.ids or load_image_set(f"{root}:5:seed=2").ids != part.ids


def test_balanced_sample_and_interleave():
    groups = [list(range(10)), list(range(3)), list(range(5))]
    s = balanced_sample(groups, None, seed=3)
    assert sorted(s) == sorted((g, i) for g, grp in enumerate(groups) for i in grp)
    assert balanced_sample(groups, None, seed=3) == s and balanced_sample(groups, None, seed=4) != s
    labels = torch.tensor([g for g, _ in s])
    assert torch.equal(interleave(labels), torch.arange(len(labels)))  # already balanced: identity
    dropped = labels[torch.tensor([g != 1 or i > 0 for i, g in enumerate(labels.tolist())])]  # drop some
    reordered = dropped[interleave(dropped)]
    assert _prefixes_balanced(reordered[:6], 3) and sorted(reordered.tolist()) == sorted(dropped.tolist())


def test_classes_covered():
    assert classes_covered(torch.tensor([0, 1, 1]), ("cat", "dog")) == "2 classes, 1-2 images each: cat 1, dog 2"
    assert classes_covered(torch.arange(10).repeat(3)) == "10 classes, 3 images each"
    assert classes_covered(None) == "no labels"


class _ValueModel(nn.Module):
    """Predicts class round(10 * mean pixel) of 3 classes; has one parameter so it has a device."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.class_names = ("c0", "c1", "c2")

    def forward(self, x):
        pred = (x.mean((1, 2, 3)) * 10).round().long().clamp(0, 2)
        return nn.functional.one_hot(pred, 3).float()


def test_load_inputs_keeps_the_balance_after_correct_only_and_limit(tmp_path):
    from fragile.experiments.runner import load_inputs

    for c in range(3):
        for i in range(5):
            wrong = c == 0 and i < 3  # three of class c0 are misclassified (as c2)
            value = 0.2 if wrong else c / 10
            _save(tmp_path / f"c{c}" / f"{i}.png", np.full((4, 4, 3), round(value * 255), np.uint8))
    model = _ValueModel()
    assert model_channels(model) == 3
    x, labels, ids = load_inputs({"images": str(tmp_path), "correct_only": True, "limit": 6}, model)
    assert len(x) == 6 and _counts(labels, 3) == [2, 2, 2]
    assert all(i.startswith(f"c{int(c)}/") for i, c in zip(ids, labels))
    x, labels, ids = load_inputs({"images": str(tmp_path), "correct_only": True, "limit": None}, model)
    assert _counts(labels, 3) == [2, 5, 5] and _prefixes_balanced(labels[:6], 3)
    assert not any(i in ids for i in ("c0/0.png", "c0/1.png", "c0/2.png"))


def test_load_inputs_refuses_a_size_mismatch_and_converts_channels(tmp_path):
    from fragile.experiments.runner import load_inputs

    _save(tmp_path / "big" / "p.png", np.zeros((64, 64, 3), np.uint8))
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    model.input_size = (32, 32)
    with pytest.raises(FragileError, match="p.png is 64x64 but the model takes 32x32"):
        load_inputs({"images": str(tmp_path / "big"), "correct_only": True, "limit": None}, model)
    x, labels, ids = load_inputs({"images": str(tmp_path / "big"), "correct_only": True, "limit": None,
                                  "resize": "center_crop"}, model)
    assert x.shape == (1, 1, 32, 32) and labels is None and ids == ["p.png"]  # grey model: one channel
