"""``fragile.audit(model, images)``: one call on a user's own model (issue 15 point 1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fragile
from fragile.errors import FragileError

FAST = {"methods": ["gradient"], "attacks": ["random_sign", "topk"], "eps": [8], "steps": 2, "log": None}


class UserNet(nn.Module):
    """What a user writes: functional ReLU and pooling, no fragile conventions."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1), nn.Linear(8, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UserNet().eval()


def test_audit_of_a_tensor_with_normalisation(net, tmp_path):
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    result = fragile.audit(net, x, mean=[0.5, 0.4, 0.3], std=0.25, out=tmp_path / "a", **FAST)
    rows = result.rows
    assert len(rows) == 5 * 2 and set(rows.attack) == {"random_sign", "topk"}
    assert rows.image_id.tolist()[:5] == [f"image {i}" for i in range(5)]
    assert rows.loc[rows.success == 0, "spearman"].isna().all()
    assert "95% bootstrap CI" in result.verdict and "iterations" in result.attacks
    assert result.report.exists() and (tmp_path / "a" / "results.sqlite").exists()
    # the model the audit attacked is net((x - mean) / std): the stored clean label of image 0 is that one
    with torch.no_grad():
        expected = net((x[:1] - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.25).argmax(1).item()
    assert int(rows.label.iloc[0]) == expected
    assert not hasattr(net, "bounds")   # the user's module itself is not changed


def test_audit_of_a_dataset_keeps_only_correct_images_and_names_classes(net):
    x = torch.rand(12, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = net(x).argmax(1)
    labels = pred.clone()
    labels[:4] = (pred[:4] + 1) % 3   # four wrong labels: not attacked
    data = torch.utils.data.TensorDataset(x, labels)
    result = fragile.audit(net, data, classes=["cat", "dog", "owl"], limit=None, **FAST)
    assert result.rows.image.nunique() == 8
    assert "8 images" in result.images and result.report is None and result.store is None
    assert set(result.rows.label_name) <= {"cat", "dog", "owl"}   # class names beside the indices


def test_audit_of_a_folder_names_the_files(net, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    result = fragile.audit(net, str(tmp_path), correct_only=False, **FAST)
    assert sorted(set(result.rows.image_id)) == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
    assert math.isfinite(result.rows.loc[result.rows.success == 1, "spearman"].mean())


@pytest.mark.parametrize("images,match", [
    (torch.rand(2, 3, 16, 16) * 3, "outside the model's data range"),
    (torch.rand(3, 16, 16), r"\(N, C, H, W\)"),
    (np.zeros((2, 3, 16, 16)), "must be an"),
])
def test_audit_refuses_bad_images(net, images, match):
    with pytest.raises(FragileError, match=match):
        fragile.audit(net, images, **FAST)


def test_audit_refuses_double_preprocessing():
    from fragile.models import create

    model = create("resnet20_cifar10")
    with pytest.raises(FragileError, match="already carries its preprocessing"):
        fragile.audit(model, torch.rand(2, 3, 32, 32), mean=[0.5] * 3, **FAST)
