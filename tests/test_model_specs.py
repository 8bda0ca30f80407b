"""Any PyTorch model by one spec (issue 15.2): fragile.models.load, the CLI's model options, sweep YAML."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fragile.errors import FragileError
from fragile.models import Preprocessed, load

FIXTURES = Path(__file__).parent / "fixtures"
MYNET = str(FIXTURES / "mynet.py")


def _net(seed: int = 0, **kwargs) -> nn.Module:
    sys.path.insert(0, str(FIXTURES))
    try:
        import mynet
    finally:
        sys.path.remove(str(FIXTURES))
    torch.manual_seed(seed)
    return mynet.Net(**kwargs).eval()


@pytest.fixture
def weights(tmp_path) -> tuple[Path, nn.Module]:
    net = _net()
    path = tmp_path / "w.pt"
    torch.save(net.state_dict(), path)
    return path, net


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_factory_file_with_weights_and_model_args(weights):
    path, net = weights
    model = load(f"{MYNET}:Net", weights=path, model_args={"width": 8, "num_classes": 3})
    assert isinstance(model, Preprocessed) and not model.training
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))  # no preprocessing given: the identity
    assert model.bounds == (0.0, 1.0) and model.channels == 3 and model.input_size is None
    assert model.source["kind"] == "factory" and len(model.source["weights_sha256"]) == 64
    other = load(f"{MYNET}:make", weights=path)  # a factory function works the same
    with torch.no_grad():
        assert torch.equal(other(x), net(x))


def test_module_factory_and_wrapped_state_dicts(tmp_path, weights, monkeypatch):
    path, net = weights
    monkeypatch.syspath_prepend(str(FIXTURES))
    wrapped = tmp_path / "wrapped.pt"  # DataParallel prefix inside a training script's {'state_dict': ...}
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, wrapped)
    x = torch.rand(2, 3, 16, 16)
    for w in (path, wrapped):
        model = load("mynet:Net", weights=w)
        with torch.no_grad():
            assert torch.equal(model(x), net(x))
    with pytest.raises(FragileError, match="cannot import module"):
        load("no_such_module_xyz:Net", weights=path)
    with pytest.raises(FragileError, match="no callable 'Nett'.*Net"):
        load("mynet:Nett", weights=path)
    with pytest.raises(FragileError, match="cannot be called with"):
        load("mynet:Net", weights=path, model_args={"depth": 3})


def test_mean_std_bounds_classes_size_are_applied_numerically(tmp_path, weights):
    path, net = weights
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    names = tmp_path / "classes.txt"
    names.write_text("cat\ndog\n\nbird\n")
    model = load(f"{MYNET}:Net", weights=path, mean=mean.tolist(), std=std.tolist(), classes=str(names), size=[12, 20])
    x = torch.rand(4, 3, 12, 20, dtype=torch.float64)
    model, net = model.double(), net.double()
    with torch.no_grad():  # float64: equal up to rounding of the two orders of operations
        torch.testing.assert_close(model(x), net((x - mean.double().view(1, 3, 1, 1)) / std.double().view(1, 3, 1, 1)),
                                   rtol=1e-12, atol=1e-12)
    assert model.class_names == ("cat", "dog", "bird") and model.input_size == (12, 20)
    # a network fed 0..255 pixels: fragile still feeds [0, 1] images, mapped to the network's range
    model = load(f"{MYNET}:Net", weights=path, mean=[120.0], std=[60.0], bounds=[0, 255], classes="a,b,c", size=16)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.double()(x), net((255 * x - 120) / 60), rtol=1e-12, atol=1e-12)
    assert model.bounds == (0.0, 1.0) and model.preprocessing["pixel_range"] == [0.0, 255.0]
    assert model.input_size == (16, 16) and model.class_names == ("a", "b", "c")
    with pytest.raises(FragileError, match="2 class names for a model with 3 outputs"):
        load(f"{MYNET}:Net", weights=path, classes="a,b", size=16)
    with pytest.raises(FragileError, match="mean has 2 values for a 3-channel input"):
        load(f"{MYNET}:Net", weights=path, mean=[0.5, 0.5])
    with pytest.raises(FragileError, match="fails on a blank"):  # the network takes 3 channels
        load(f"{MYNET}:Net", weights=path, channels=1, size=16)


def test_grey_model_channels(tmp_path, images):
    from fragile.models.loading import images_for

    path = tmp_path / "grey.pt"
    torch.save(_net(in_channels=1).state_dict(), path)
    model = load(f"{MYNET}:Net", weights=path, model_args={"in_channels": 1}, mean=[0.5], std=[0.5], size=16)
    assert model.channels == 1  # from the first conv
    x, _ = images_for(model, str(images))
    assert x.shape == (3, 1, 16, 16) and model(x).shape == (3, 3)


def test_class_folders_are_labelled_in_the_models_class_order(tmp_path, weights, images):
    from fragile.models.loading import images_for

    path, _ = weights
    for name, src in (("dog", "img0.png"), ("ant", "img1.png")):  # sorted folders: ant=0, dog=1
        (tmp_path / "classes" / name).mkdir(parents=True)
        (tmp_path / "classes" / name / src).write_bytes((images / src).read_bytes())
    model = load(f"{MYNET}:Net", weights=path, classes="cat,ant,dog")
    _, labels = images_for(model, str(tmp_path / "classes"))
    assert labels.tolist() == [1, 2]  # the model's indices of ant and dog


def test_mismatched_weights_name_the_keys(tmp_path, weights):
    path, net = weights
    state = net.state_dict()
    state["extra.weight"] = state.pop("head.weight")
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(FragileError, match=r"missing keys \(1\): head\.weight; unexpected keys \(1\): extra\.weight"):
        load(f"{MYNET}:Net", weights=bad)
    with pytest.raises(FragileError, match=r"shape mismatches.*features\.0\.weight \(8, 3, 3, 3\) vs \(4, 3, 3, 3\)"):
        load(f"{MYNET}:Net", weights=path, model_args={"width": 4})
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FragileError, match="not a loadable checkpoint"):
        load(f"{MYNET}:Net", weights=garbage)


def test_pickled_model_only_with_trust_pickle(tmp_path, weights, monkeypatch):
    path, net = weights
    monkeypatch.syspath_prepend(str(FIXTURES))  # the pickle names mynet.Net
    whole = tmp_path / "whole.pt"
    torch.save(net, whole)
    with pytest.raises(FragileError, match="Unpickling runs whatever code.*--trust-pickle.*Factory --weights"):
        load(str(whole))
    with pytest.raises(FragileError, match="pickled whole model, not a state_dict"):
        load(f"{MYNET}:Net", weights=whole)
    model = load(str(whole), trust_pickle=True, mean=[0.5], std=[0.5], size=16)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - 0.5) / 0.5))
    assert model.source["kind"] == "pickle"
    with pytest.raises(FragileError, match="holds a state_dict.*Factory --weights"):
        load(str(path))  # weights alone name no architecture


def test_registry_and_checkpoints_keep_their_preprocessing(tmp_path):
    from fragile.models import create
    from fragile.models.checkpoint import save_checkpoint

    model = create("lenet_fashion_mnist")
    assert model.channels == 1 and model.input_size == (28, 28)
    ckpt = save_checkpoint(model, tmp_path / "c.pt", arch="lenet_fashion_mnist")
    loaded = load(str(ckpt), classes=[str(i) for i in range(10)])
    assert loaded.source["kind"] == "checkpoint" and loaded.class_names[3] == "3" and loaded.channels == 1
    with pytest.raises(FragileError, match="carries its own preprocessing; --mean"):
        load(str(ckpt), mean=[0.5])
    with pytest.raises(FragileError, match="--model-arg"):
        load("lenet_fashion_mnist", model_args={"width": 3})
    with pytest.raises(FragileError, match="no model fragile knows"):
        load("no_such_model")


def test_cli_attack_on_a_factory_model(tmp_path, weights, images):
    from fragile.cli import main

    path, _ = weights
    out = tmp_path / "out"
    rc = main(["attack", "--model", f"{MYNET}:Net", "--weights", str(path), "--model-arg", "width=8",
               "--mean", "0.5", "0.4", "0.3", "--std", "0.25", "--classes", "a,b,c", "--images", str(images),
               "--steps", "2", "--beta", "10", "--out", str(out)])
    assert rc == 0 and (out / "results.json").exists()


def test_cli_audit_on_a_factory_model(tmp_path, weights, images):
    from fragile.cli import main
    from fragile.experiments.store import Store

    path, _ = weights
    out = tmp_path / "audit"
    assert main(["audit", "--model", f"{MYNET}:Net", "--weights", str(path), "--mean", "0.5", "--std", "0.25",
                 "--size", "16", "--images", str(images), "--methods", "gradient", "--eps", "8", "--steps", "2",
                 "--quiet", "--out", str(out)]) == 0
    assert (out / "report.html").exists()
    with Store.open(out) as store:
        assert store.config()["model"]["weights"] == str(path) and store.meta()["model_fingerprint"]
        ids = {r["image_id"] for r in store.rows()}
    files = {p.relative_to(images).as_posix() for p in images.rglob("*.png")}
    assert ids and ids <= files   # every result row names the image file it came from


def test_cli_refuses_a_pickle_and_parses_model_args(tmp_path, weights, capsys, monkeypatch):
    from fragile.cli import build_parser, main
    from fragile.models.loading import parse_model_args

    path, net = weights
    monkeypatch.syspath_prepend(str(FIXTURES))
    whole = tmp_path / "whole.pt"
    torch.save(net, whole)
    assert main(["attack", "--model", str(whole), "--images", str(tmp_path)]) == 1
    assert "--trust-pickle" in capsys.readouterr().err
    assert parse_model_args(["width=16", "act=relu", "scale=0.5", "flag=true"]) == {
        "width": 16, "act": "relu", "scale": 0.5, "flag": True}
    with pytest.raises(FragileError, match="KEY=VALUE"):
        parse_model_args(["width"])
    from fragile.cli import _model_config

    args = build_parser().parse_args(["audit", "--model", "m.py:Net", "--weights", "w.pt", "--size", "16",
                                      "--model-arg", "width=4"])
    assert _model_config(args) == {"spec": "m.py:Net", "weights": "w.pt", "size": [16], "model_args": {"width": 4}}
    assert _model_config(build_parser().parse_args(["audit"])) == "resnet20_cifar10"


def test_yaml_model_mapping_and_resume_with_other_weights_refused(tmp_path, weights, images):
    import yaml

    from fragile.experiments.config import load as load_config
    from fragile.experiments.config import resolve
    from fragile.experiments.runner import run_sweep

    path, _ = weights
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"spec": f"{MYNET}:Net", "weights": str(path), "model_args": {"width": 8}, "mean": [0.5, 0.4, 0.3],
                  "std": 0.25, "classes": ["a", "b", "c"], "size": 16},
        "images": str(images), "methods": ["gradient"], "attacks": ["random_sign"], "eps": [8],
        "attack_settings": {"steps": 1, "beta": 10}, "store_arrays": False}))
    cfg = load_config(config)
    assert cfg["model"]["spec"].endswith("mynet.py:Net") and cfg["model"]["size"] == 16
    assert resolve({"model": {"spec": "resnet20_cifar10"}})["model"] == "resnet20_cifar10"  # one hash for both forms
    with pytest.raises(FragileError, match="unknown key 'weight' in model; valid keys: bounds, channels"):
        resolve({"model": {"spec": "x.py:Net", "weight": "w.pt"}})
    with pytest.raises(FragileError, match="size must be"):
        resolve({"model": {"spec": "x.py:Net", "size": [1, 2, 3]}})
    store = tmp_path / "store"
    quiet = {"show_progress": False, "log": lambda *a: None}
    assert run_sweep(cfg, store, **quiet)["ran"] == 1  # 3 images in one batch, one method, attack, eps: one unit
    assert run_sweep(cfg, store, **quiet)["ran"] == 0  # same weights: resumed, nothing left
    torch.save(_net(seed=1).state_dict(), path)  # the weights file changed under the same config
    with pytest.raises(FragileError, match="other model"):
        run_sweep(cfg, store, **quiet)


def _fake_timm(monkeypatch, created: list):
    """A stand-in for timm (not installable next to this torch build): create_model + the data config."""
    timm = types.ModuleType("timm")
    data = types.ModuleType("timm.data")

    def create_model(name, pretrained=False, **kwargs):
        if name != "tiny_net":
            raise RuntimeError(f"Unknown model ({name})")
        created.append((name, pretrained, kwargs))
        net = _net(**kwargs)
        net.pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5), "input_size": (3, 20, 20),
                              "crop_pct": 0.9, "interpolation": "bicubic"}
        return net

    def resolve_data_config(args=None, model=None):
        cfg = model.pretrained_cfg
        return {k: cfg[k] for k in ("input_size", "interpolation", "mean", "std", "crop_pct")}

    data.resolve_data_config = resolve_data_config
    timm.create_model, timm.data = create_model, data
    monkeypatch.setitem(sys.modules, "timm", timm)
    monkeypatch.setitem(sys.modules, "timm.data", data)


def test_timm_preprocessing_config_is_used(monkeypatch, tmp_path, weights):
    created = []
    _fake_timm(monkeypatch, created)
    path, net = weights
    model = load("timm:tiny_net", model_args={"pretrained": False, "num_classes": 3})
    assert created == [("tiny_net", False, {"num_classes": 3})]
    assert model.input_size == (20, 20) and model.channels == 3 and model.source["kind"] == "timm"
    assert model.preprocessing["mean"] == pytest.approx([0.1, 0.2, 0.3])
    model = load("timm:tiny_net", weights=path, std=[1.0])  # given weights: not pretrained; options win
    assert created[-1][1] is False
    x = torch.rand(2, 3, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x - torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)))
    with pytest.raises(FragileError, match="timm has no model 'vit_huge'"):
        load("timm:vit_huge", model_args={"pretrained": False})


def test_real_timm_model():
    timm = pytest.importorskip("timm")
    model = load("timm:resnet10t", model_args={"pretrained": False, "num_classes": 3})
    cfg = timm.data.resolve_data_config({}, model=model[1])
    assert model.input_size == tuple(cfg["input_size"][1:])
    assert model.preprocessing["mean"] == pytest.approx(list(cfg["mean"]))
    assert model(torch.rand(1, 3, *model.input_size)).shape == (1, 3)


def test_torchvision_and_timm_missing_name_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(FragileError, match=r"-c torch-constraints\.txt 'fragile\[vision\]'"):
        load("torchvision:resnet18")
    with pytest.raises(FragileError, match=r"torch==2.*-c torch-constraints\.txt 'timm'"):
        load("timm:resnet18")


def test_torchvision_weights_transforms_are_used(monkeypatch, weights):
    path, net = weights
    models = types.SimpleNamespace()
    transforms = types.SimpleNamespace(mean=[0.4, 0.4, 0.4], std=[0.2, 0.2, 0.2], crop_size=[24], resize_size=[28])
    default = types.SimpleNamespace(transforms=lambda: transforms, meta={"categories": ["x", "y", "z"]})
    models.get_model_weights = lambda name: types.SimpleNamespace(DEFAULT=default)
    models.get_model = lambda name, weights=None, **kw: _net(**kw)
    monkeypatch.setitem(sys.modules, "torchvision", types.SimpleNamespace(models=models))
    model = load("torchvision:tiny", weights=path)
    assert model.input_size == (24, 24) and model.class_names == ("x", "y", "z")
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - 0.4) / 0.2))
