"""Real weights and data from FRAGILE_DATA (default ../shared/data): the pretrained CIFAR ResNet-20."""

from __future__ import annotations

import pytest
import torch

from fragile.data import load_foolbox_samples
from fragile.errors import FragileError
from fragile.explanations import create
from fragile.models import create as create_model
from fragile.settings import data_dir


def test_resnet20_pretrained_classifies_lossless_samples():
    model = create_model("resnet20_cifar10", pretrained=True)
    x, y = load_foolbox_samples("cifar10")
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == 1.0  # 20/20, as stated in the data README


def test_resnet20_deeplift_summation_and_lrp_run_on_real_images():
    model = create_model("resnet20_cifar10", pretrained=True).double()
    x, y = load_foolbox_samples("cifar10")
    x = x[:4].double()
    h = create("deeplift", model).attribute(x, target=y[:4])
    with torch.no_grad():
        delta = (model(x) - model(torch.zeros_like(x))).gather(1, y[:4, None]).squeeze(1)
    assert torch.allclose(h.sum((1, 2, 3)), delta, rtol=1e-8)
    r = create("lrp", model).attribute(x, target=y[:4])
    assert torch.isfinite(r).all() and r.abs().sum() > 0


def test_missing_data_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FRAGILE_DATA", str(tmp_path))
    assert data_dir() == tmp_path
    with pytest.raises(FragileError, match="FRAGILE_DATA"):
        load_foolbox_samples("cifar10")
    with pytest.raises(FragileError, match="no pretrained weights"):
        create_model("resnet20_cifar10", pretrained=True)


def test_checkpoint_mismatch_and_garbage_are_reported(tmp_path):
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(FragileError, match="not a loadable checkpoint"):
        create_model("resnet20_cifar10", weights=bad)
    wrong = tmp_path / "wrong.th"
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(2, 2)}}, wrong)
    with pytest.raises(FragileError, match="does not match"):
        create_model("resnet20_cifar10", weights=wrong)


def test_demo_end_to_end(tmp_path):
    from fragile.demo import run_demo

    result = run_demo(out=tmp_path)
    names = {row["method"] for row in result["methods"]}
    assert {"gradient", "lrp", "deeplift", "integrated_gradients"} <= names
    for row in result["methods"]:
        assert -1 <= row["spearman_random_sign"] <= 1
    assert (tmp_path / "results.json").exists() and (tmp_path / "maps.png").stat().st_size > 10_000
