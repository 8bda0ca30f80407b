"""Bad input gets a clear FragileError naming the problem, never a deep torch traceback."""

from __future__ import annotations

import pytest
import torch
from conftest import plain_cnn
from torch import nn

from fragile.errors import FragileError, UnsupportedModelError
from fragile.explanations import available, create


@pytest.fixture
def model():
    torch.manual_seed(0)
    return plain_cnn()


X = torch.rand(2, 3, 8, 8, dtype=torch.float64)


@pytest.mark.parametrize("bad,match", [
    (torch.rand(3, 8, 8, dtype=torch.float64), "4-D"),
    (torch.randint(0, 255, (2, 3, 8, 8)), "floating-point"),
    (torch.full((2, 3, 8, 8), float("nan"), dtype=torch.float64), "NaN"),
    (torch.full((2, 3, 8, 8), float("inf"), dtype=torch.float64), "inf"),
    ("not a tensor", "torch.Tensor"),
])
@pytest.mark.parametrize("method", ["gradient", "lrp", "deeplift"])
def test_bad_x(model, bad, match, method):
    with pytest.raises(FragileError, match=match):
        create(method, model).attribute(bad)


@pytest.mark.parametrize("target,match", [(7, "out of range"), (-1, "out of range"),
                                          (torch.tensor([0, 1, 2]), r"shape \(2,\)"),
                                          (torch.tensor([0.5, 1.0]), "integer")])
@pytest.mark.parametrize("method", ["gradient", "lrp", "guided_backprop"])
def test_bad_target(model, target, match, method):
    with pytest.raises(FragileError, match=match):
        create(method, model).attribute(X, target=target)


def test_unknown_method_lists_known_ones(model):
    with pytest.raises(FragileError) as err:
        create("saliency_magic", model)
    for name in available():
        assert name in str(err.value)


def test_unknown_parameter_is_named(model):
    with pytest.raises(FragileError, match="stepz"):
        create("integrated_gradients", model, stepz=3)


def test_unsupported_layer_for_lrp_is_named():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    with pytest.raises(UnsupportedModelError, match=r"'1' \(GroupNorm\)"):
        create("lrp", model)


def test_baseline_shape_mismatch(model):
    with pytest.raises(FragileError, match="does not broadcast"):
        create("integrated_gradients", model, baseline=torch.zeros(3, 4, 4)).attribute(X)
    with pytest.raises(FragileError, match="reference_data"):
        create("deeplift", model, baseline="pixel_mean").attribute(X)


def test_training_mode_batchnorm_is_refused(model):
    model.train()
    with pytest.raises(UnsupportedModelError, match="training mode"):
        create("gradient", model).attribute(X)


@pytest.mark.parametrize("params,match", [({"smooth_beta": -1.0}, "beta"), ({"output": "probit"}, "output"),
                                          ({"smooth_beta": float("inf")}, "beta")])
def test_bad_common_parameters(model, params, match):
    with pytest.raises(FragileError, match=match):
        create("gradient", model, **params)


def test_bad_method_parameters(model):
    with pytest.raises(FragileError, match="steps"):
        create("integrated_gradients", model, steps=0)
    with pytest.raises(FragileError, match="rule"):
        create("integrated_gradients", model, rule="simpson")
    with pytest.raises(FragileError, match="LRP rule"):
        create("lrp", model, rule="zplusplus")
    with pytest.raises(FragileError, match="samples"):
        create("smoothgrad", model, samples=0)
    with pytest.raises(FragileError, match="patterns"):
        create("pattern_attribution", model)
    with pytest.raises(FragileError, match="no layer named"):
        create("grad_cam", model, layer="nope")


def test_cli_reports_errors_without_traceback(capsys):
    from fragile.cli import main

    assert main(["methods"]) == 0
    assert "integrated_gradients" in capsys.readouterr().out


def test_devices_are_checked_before_anything_runs(monkeypatch, capsys):
    import torch

    from fragile.cli import main
    from fragile.devices import model_device, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FragileError, match="CUDA is not available"):
        resolve_device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(FragileError, match="only 1 CUDA device"):
        resolve_device("cuda:1")
    for bad in ("tpu", "gpu0", "meta"):
        with pytest.raises(FragileError, match="device"):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["run", "ghorbani-fig5-targeted", "--device", "cuda"], ["attack", "--device", "cuda"],
                 ["influence", "--device", "tpu"]):
        assert main(argv) == 1  # an error (2 is a usage error)
        assert "device" in capsys.readouterr().err
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.ReLU()) == torch.device("cpu")


def test_sweep_refuses_ray_on_an_accelerator(monkeypatch, tmp_path):
    import torch

    from fragile.experiments import config as config_mod
    from fragile.experiments.runner import run_sweep

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    cfg = config_mod.resolve({"name": "t", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 2,
                              "methods": ["gradient"], "attacks": ["topk"], "eps": [8]})
    with pytest.raises(FragileError, match="ray executor runs on CPU"):
        run_sweep(cfg, tmp_path / "s", executor="ray", device="cuda")
