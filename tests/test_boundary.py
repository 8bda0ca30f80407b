"""The public boundary (issue 16.2, 16.3): what models return, dtypes and devices of inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fragile import attacks
from fragile.errors import FragileError
from fragile.explanations import available, create
from fragile.models.outputs import class_scores, match_input

X = torch.rand(2, 3, 8, 8, dtype=torch.float64)


class Net(nn.Module):
    """conv - relu - linear, returning its logits wrapped as ``kind`` says."""

    def __init__(self, kind: str = "tensor", classes: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc, self.kind = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, classes), kind

    def logits(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))

    def forward(self, x):
        y = self.logits(x)
        if self.kind == "tuple":
            return y, x.mean()
        if self.kind == "list":
            return [y]
        if self.kind == "dict":
            return {"features": x, "logits": y}
        if self.kind == "scores":
            return {"scores": y}
        if self.kind == "object":
            return type("Out", (), {"logits": y})()
        if self.kind == "single":
            return y[:, 0]
        if self.kind == "column":
            return y[:, :1]
        if self.kind == "string":
            return "logits"
        if self.kind == "long":
            return y.long()
        if self.kind == "3d":
            return y[:, :, None]
        return y


def _params(name):
    if name == "pattern_attribution":
        return {"data": torch.rand(4, 3, 8, 8, dtype=torch.float64)}
    if name in ("smoothgrad", "uniform_gradient"):
        return {"samples": 2}
    if name == "integrated_gradients":
        return {"steps": 3}
    return {}


@pytest.mark.parametrize("kind", ["tuple", "list", "dict", "object"])
@pytest.mark.parametrize("name", available())
def test_wrapped_outputs_give_the_maps_of_the_logits(kind, name):
    plain = create(name, Net().double().eval(), **_params(name)).attribute(X)
    wrapped = create(name, Net(kind).double().eval(), **_params(name)).attribute(X)  # target=None included
    torch.testing.assert_close(wrapped, plain)


def test_output_key_names_the_entry():
    net = Net("scores").double().eval()
    with pytest.raises(FragileError, match="output_key"):
        create("gradient", net).attribute(X)
    h = create("gradient", net, output_key="scores").attribute(X)
    torch.testing.assert_close(h, create("gradient", Net().double().eval()).attribute(X))
    h = create("smoothgrad", net, output_key="scores", samples=2).attribute(X)
    assert h.shape == X.shape
    with pytest.raises(FragileError, match="output_key"):
        create("gradient", net, output_key=3)


def test_single_logit_binary_models_have_two_classes():
    net = Net("single").double().eval()
    z = Net().double().eval().logits(X)[:, 0]
    scores = class_scores(net(X), 2)
    torch.testing.assert_close(torch.softmax(scores, 1)[:, 1], torch.sigmoid(z))
    assert create("gradient", net).predict(X).tolist() == (z > 0).long().tolist()
    g1 = create("gradient", net).attribute(X, target=1)
    g0 = create("gradient", net).attribute(X, target=0)
    torch.testing.assert_close(g0, -g1)
    for name in ("gradient", "lrp", "integrated_gradients"):
        assert create(name, net, **_params(name)).attribute(X).shape == X.shape
    with pytest.raises(FragileError, match="out of range"):
        create("gradient", net).attribute(X, target=2)


def test_one_column_outputs_are_one_score():
    net = Net("column").double().eval()
    h = create("gradient", net).attribute(X)
    torch.testing.assert_close(h, create("gradient", Net().double().eval()).attribute(X, target=0))
    with pytest.raises(FragileError, match=r"\(N, 1\)"):
        attacks.run(net, create("gradient", net), X, "topk", eps=8, steps=2, beta=1.0)


@pytest.mark.parametrize("kind,match", [("string", "not a tensor"), ("long", "floating point"), ("3d", r"\(N, classes\)")])
def test_unusable_outputs_are_refused_in_one_sentence(kind, match):
    net = Net(kind).double().eval()
    for name in ("gradient", "lrp", "grad_cam"):
        with pytest.raises(FragileError, match=match):
            create(name, net).attribute(X)
    with pytest.raises(FragileError, match=match):
        attacks.run(net, create("gradient", net), X, "topk", eps=8, steps=2, beta=1.0)


@pytest.mark.parametrize("kind", ["tuple", "dict", "single"])
def test_attacks_take_wrapped_outputs(kind):
    net = Net(kind).double().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = attacks.run(net, create("gradient", net), X, "topk", eps=8, steps=2, beta="auto")
    assert result.x_adv.shape == X.shape and result.label.shape == (2,)


@pytest.mark.parametrize("model_dtype,x_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32),
                                                 (torch.float32, torch.float16), (torch.float32, torch.bfloat16)])
@pytest.mark.filterwarnings("ignore:the softplus")
def test_inputs_are_cast_to_the_model_dtype(model_dtype, x_dtype):
    net = Net().to(model_dtype).eval()
    x = X.to(x_dtype)
    for name in ("gradient", "lrp", "deeplift", "integrated_gradients", "smoothgrad"):
        h = create(name, net, **_params(name)).attribute(x)
        assert h.dtype == model_dtype and h.shape == x.shape and bool(torch.isfinite(h).all())
    result = attacks.run(net, create("gradient", net), x, "topk", eps=8, steps=2, beta=1.0)
    assert result.x_adv.dtype == model_dtype


def test_differentiable_through_the_cast():
    net = Net().float().eval()
    x = X.clone().requires_grad_(True)  # float64 input, float32 model
    h = create("gradient", net, smooth_beta=5.0).attribute(x, target=0, create_graph=True)
    (g,) = torch.autograd.grad(h.pow(2).sum(), x)
    assert g.dtype == torch.float64 and bool(g.abs().sum() > 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_are_refused(dtype):
    net = Net().to(dtype).eval()
    with pytest.raises(FragileError, match=r"model.float\(\)"):
        create("gradient", net).attribute(X)
    with pytest.raises(FragileError, match=r"model.float\(\)"):
        attacks.run(net, create("gradient", net), X, "topk", eps=8, steps=2)


def test_other_devices_are_named():
    net = Net().to("meta")
    with pytest.raises(FragileError, match="meta.*cpu"):
        match_input(net, X)
    with pytest.raises(FragileError, match="meta.*cpu"):
        create("gradient", net.eval()).attribute(X)


def test_baselines_must_be_finite():
    net = Net().double().eval()
    for bad in (float("nan"), torch.full((3, 8, 8), float("inf"))):
        with pytest.raises(FragileError, match="NaN or inf"):
            create("integrated_gradients", net, baseline=bad, steps=2).attribute(X)
    with pytest.raises(FragileError, match="NaN or inf"):
        create("deeplift", net, baseline="pixel_mean",
               reference_data=torch.full((2, 3, 8, 8), float("nan"))).attribute(X)


def test_a_float64_model_runs_a_sweep_on_float32_images(tmp_path):
    import fragile

    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double().eval()
    x = torch.rand(4, 3, 8, 8)
    result = fragile.audit(net, x, methods=["gradient"], attacks=["random_sign"], eps=[8], steps=1, log=None,
                           attack_settings={"beta": 10.0})
    assert len(result.rows) == 4
