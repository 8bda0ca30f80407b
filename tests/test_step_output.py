"""attacks.run(step_output=...): where manipulate's gradient step takes its output term.

Oracle: the objective's gradient written out by hand with autograd on an independent softplus copy of the network
(every ReLU replaced by ``torch.nn.Softplus(beta)``, nothing of fragile's surgery), float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import plain_cnn
from torch import nn

from fragile import attacks
from fragile.attacks.loop import _objective_grad, saliency
from fragile.errors import FragileError
from fragile.experiments import config as config_mod
from fragile.explanations import create

BETA = 3.0


def softplus_copy(net: nn.Module, beta: float) -> nn.Module:
    """``net`` with every ReLU module replaced by Softplus(beta), a deep copy."""
    out = copy.deepcopy(net)
    for child in list(out.modules()):
        for key, sub in list(child.named_children()):
            if isinstance(sub, nn.ReLU):
                setattr(child, key, nn.Softplus(beta=beta))
    return out


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = plain_cnn(pool="avg")
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        p0 = torch.softmax(net(x), 1)
    target_map = torch.rand(4, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    return net, x, p0, target_map


MAP_WEIGHT, OUTPUT_WEIGHT = 1e3, 1e6  # the output term visible beside the map's (the defaults 1e11 hide it)


def hand_gradient(map_net: nn.Module, out_net: nn.Module, x, t, target, p0, times_input: bool = False):
    """d/dx of MAP_WEIGHT MSE(s, target) + OUTPUT_WEIGHT MSE(softmax(out_net(x)), p0), s = sum_c |h|, h = d map_net_t / dx
    (times x for gradient x input), target normalised to sum 1: written out with plain autograd."""
    xa = x.detach().requires_grad_(True)
    y = map_net(xa)
    (g,) = torch.autograd.grad(y.gather(1, t[:, None]).sum(), xa, create_graph=True)
    h = xa * g if times_input else g
    s = h.abs().sum(1)
    s = s / s.sum((1, 2), keepdim=True)
    tn = target / target.sum((1, 2), keepdim=True)
    p = torch.softmax(out_net(xa), 1)
    loss = MAP_WEIGHT * (s - tn).pow(2).mean((1, 2)) + OUTPUT_WEIGHT * (p - p0).pow(2).mean(1)
    (grad,) = torch.autograd.grad(loss.sum(), xa)
    return grad


@pytest.mark.parametrize("method", ["gradient", "gradient_x_input"])
def test_surrogate_output_is_the_softplus_networks_own(setup, method):
    net, x, p0, target_map = setup
    t = p0.argmax(1)
    explainer = create(method, net)
    objective = attacks.create("manipulate", target_map=target_map, map_weight=MAP_WEIGHT, output_weight=OUTPUT_WEIGHT)
    sal0 = saliency(explainer.attribute(x, target=t))
    state = objective.prepare(sal0, p0)
    smooth = softplus_copy(net, BETA)
    times_input = method == "gradient_x_input"
    ours = _objective_grad(net, explainer.surrogate(BETA), objective, state, x, t, "abs_sum", step_output="surrogate")
    exact_surrogate = hand_gradient(smooth, smooth, x, t, target_map, p0, times_input)
    exact_model = hand_gradient(smooth, net, x, t, target_map, p0, times_input)
    scale = exact_surrogate.abs().max()
    assert float((ours - exact_surrogate).abs().max() / scale) < 1e-9
    # the default keeps the original model's output term, and the two differ (the test can fail)
    default = _objective_grad(net, explainer.surrogate(BETA), objective, state, x, t, "abs_sum")
    assert float((default - exact_model).abs().max() / exact_model.abs().max()) < 1e-9
    assert float((exact_surrogate - exact_model).abs().max() / scale) > 1e-3


def test_method_without_a_shared_pass_runs_the_surrogates_forward(setup):
    """LRP computes its map by rules: the output is the softplus network's forward, run once more."""
    net, x, p0, _ = setup
    explainer = create("lrp", net).surrogate(BETA)
    xa = x.detach().requires_grad_(True)
    h, out = explainer.attribute_with_step_output(xa, target=p0.argmax(1))
    expected = softplus_copy(net, BETA)(x)
    assert h.requires_grad and out.requires_grad
    assert float((out.detach() - expected).abs().max()) < 1e-12
    torch.testing.assert_close(h.detach(), explainer.attribute(x, target=p0.argmax(1)), rtol=1e-12, atol=1e-14)


@pytest.mark.filterwarnings("ignore:the softplus")
def test_run_records_the_choice_and_keeps_the_label(setup):
    net, x, p0, target_map = setup
    explainer = create("gradient", net)
    objective = attacks.create("manipulate", target_map=target_map)
    results = {so: attacks.run(net, explainer, x, objective, eps=255, steps=6, lr=0.5, beta=BETA, step_output=so)
               for so in ("model", "surrogate")}
    for so, r in results.items():
        assert r.settings["step_output"] == so
        kept = r.success
        assert bool((r.label_adv[kept] == r.label[kept]).all())
        assert bool(torch.isfinite(r.metrics["target_pcc"][kept]).all())
    # different output terms: different iterates
    assert not torch.equal(results["model"].x_adv, results["surrogate"].x_adv)
    topk = attacks.run(net, explainer, x, "topk", eps=8, steps=2, beta=BETA, step_output="surrogate")
    assert topk.settings["step_output"] is None  # no output term: nothing chosen


def test_bad_step_output_is_refused(setup):
    net, x, _, target_map = setup
    explainer = create("gradient", net)
    objective = attacks.create("manipulate", target_map=target_map)
    with pytest.raises(FragileError, match="unknown step_output"):
        attacks.run(net, explainer, x, objective, eps=255, steps=1, beta=BETA, step_output="softplus")
    with pytest.raises(FragileError, match="second_order"):
        attacks.run(net, explainer, x, objective, eps=255, steps=1, beta=BETA, step_output="surrogate",
                    second_order="difference")


def test_config_checks_step_output():
    base = {"name": "t", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 4, "methods": ["gradient"],
            "attacks": ["manipulate"], "eps": [255]}
    assert "step_output" not in config_mod.resolve(base)["attack_settings"]  # optional: old configs keep their hash
    ok = config_mod.resolve({**base, "attack_settings": {"step_output": "surrogate"}})
    assert ok["attack_settings"]["step_output"] == "surrogate"
    with pytest.raises(FragileError, match="attack_settings.step_output"):
        config_mod.resolve({**base, "attack_settings": {"step_output": 1}})
    with pytest.raises(FragileError, match="second_order"):
        config_mod.resolve({**base, "attack_settings": {"step_output": "surrogate", "second_order": "difference"}})


class FunctionalNet(nn.Module):
    """conv - F.relu (or softplus) - pool - linear: its activation is a function call, not a module."""

    def __init__(self, act=None):
        super().__init__()
        torch.manual_seed(2)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 5)
        self.act = act or torch.nn.functional.relu

    def forward(self, x):
        return self.fc(torch.flatten(torch.nn.functional.avg_pool2d(self.act(self.conv(x)), 2), 1))


def test_separate_surrogate_forward_smooths_functional_activations(setup):
    """A method without a shared pass (IG) runs the surrogate's forward itself: a functional F.relu is smoothed
    there too (oracle: the same weights with F.softplus(beta) written in)."""
    _, x, _, _ = setup
    net = FunctionalNet().double().eval()
    smooth = FunctionalNet(lambda z: torch.nn.functional.softplus(z, beta=BETA)).double().eval()
    smooth.load_state_dict(net.state_dict())
    xa = x.detach().requires_grad_(True)
    _, out = create("integrated_gradients", net, steps=4).surrogate(BETA).attribute_with_step_output(xa, target=0)
    expected = smooth(x)
    assert float((out.detach() - expected).abs().max()) < 1e-12
    assert float((net(x) - expected).abs().max()) > 1e-3  # the ReLU network's output differs: the test can fail
