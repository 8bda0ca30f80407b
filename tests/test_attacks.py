"""The attack engine: threat models, the best-iterate rule, objectives, steps, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import plain_cnn

from fragile import attacks
from fragile.attacks.steps import AdamAbsolute
from fragile.attacks.threat import project_l2, project_linf
from fragile.errors import FragileError
from fragile.explanations import create


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    net = plain_cnn()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return net, create("gradient", net), x


def test_linf_projection_clips_each_coordinate():
    d = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    assert np.array_equal(project_linf(d, 0.3).numpy(), np.clip(d.numpy(), -0.3, 0.3))


def test_l2_projection_rescales_only_outside_the_ball():
    d = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    d[0] *= 1e-3
    out = project_l2(d, 1.0).numpy().reshape(3, -1)
    ref = d.numpy().reshape(3, -1)
    norms = np.linalg.norm(ref, axis=1)
    expected = ref * np.minimum(1.0, 1.0 / norms)[:, None]
    assert np.allclose(out, expected)


def test_absolute_adam_step_matches_torch_optim():
    """``adam_absolute`` is torch.optim.Adam (the Dombrowski reference code's optimiser)."""
    torch.manual_seed(0)
    target = torch.randn(1, 5, dtype=torch.float64)
    p_ref = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p_ref], lr=0.1)
    ours, stepper = torch.zeros(1, 5, dtype=torch.float64), AdamAbsolute(0.1)
    state = stepper.init(ours)
    for t in range(20):
        opt.zero_grad()
        loss = ((p_ref - target) ** 2).sum()
        loss.backward()
        opt.step()
        ours, state = stepper.update(ours, 2 * (ours - target), state, t, None, None)
    assert torch.allclose(ours, p_ref.detach(), atol=1e-12)


CASES = [  # (attack, step, norm) -- a declarative table, foolbox style
    ("topk", "sign", "linf"), ("mass_center", "sign", "linf"), ("random_sign", "random", "linf"),
    ("topk", "adam", "linf"), ("topk", "gradient", "l2"), ("mass_center", "sign", "l2"),
]


@pytest.mark.parametrize("attack,step,norm", CASES)
def test_result_respects_ball_bounds_and_labels(setup, attack, step, norm):
    net, ex, x = setup
    eps = 16
    r = attacks.run(net, ex, x, attack, eps=eps, steps=8, step=step, norm=norm, lr=2, step_size=2, beta=5.0)
    d = (r.x_adv - r.x).flatten(1)
    bound = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert bool((bound <= eps / 255 + 1e-9).all())
    assert bool((r.x_adv >= 0).all() and (r.x_adv <= 1).all())
    with torch.no_grad():
        labels_adv = net(r.x_adv).argmax(1)
    assert torch.equal(labels_adv[r.success], r.label[r.success])   # every returned success keeps its label
    assert torch.equal(r.x_adv[~r.success], r.x[~r.success])        # failures are returned unperturbed
    assert r.success.any()


def test_iterative_attacks_beat_random_sign_on_pretrained_resnet():
    from fragile.data import load_foolbox_samples
    from fragile.models import create as create_model

    model = create_model("resnet20_cifar10", pretrained=True)
    x, _ = load_foolbox_samples("cifar10")
    ex = create("gradient", model)
    rnd = attacks.run(model, ex, x[:6], "random_sign", eps=8, steps=10).summary()
    top = attacks.run(model, ex, x[:6], "topk", eps=8, steps=10).summary()
    mc = attacks.run(model, ex, x[:6], "mass_center", eps=8, steps=10).summary()
    assert top["top100_intersection"] < rnd["top100_intersection"] - 0.05
    assert mc["center_shift"] > rnd["center_shift"]


def test_targeted_moves_mass_into_region():
    """Pretrained ResNet-20: 20 sign steps at eps 8 move the gradient map's mass into a 10x10 corner
    (about 10% of the mass before; measured 17-44% after)."""
    from fragile.data import load_foolbox_samples
    from fragile.models import create as create_model

    model = create_model("resnet20_cifar10", pretrained=True)
    x, _ = load_foolbox_samples("cifar10")
    mask = torch.zeros(32, 32)
    mask[:10, :10] = 1
    r = attacks.run(model, create("gradient", model), x[:4], attacks.create("targeted", mask=mask), eps=8, steps=20)
    inside = lambda s: (s * mask).sum((1, 2))  # noqa: E731
    assert bool(r.success.all())
    assert bool((inside(r.maps_adv) > inside(r.maps) + 0.05).all())


def test_manipulate_approaches_target_map(setup):
    net, ex, x = setup
    target_map = attacks.saliency(ex.attribute(x.roll(1, 0)))  # another image's explanation
    obj = attacks.create("manipulate", target_map=target_map, output_tol=0.5)
    r = attacks.run(net, ex, x, obj, eps=32, steps=15, lr=2.5, beta=5.0)  # 2.5/255 per step
    before = ((r.maps - target_map) ** 2).mean((1, 2))
    after = ((r.maps_adv - target_map) ** 2).mean((1, 2))
    assert r.success.any() and bool((after[r.success] < before[r.success]).all())


def test_eps_list_is_a_sweep_and_seed_makes_it_deterministic(setup):
    net, ex, x = setup
    rs = attacks.run(net, ex, x, "random_sign", eps=[2, 8], steps=3, seed=5)
    assert [r.eps for r in rs] == [2.0, 8.0]
    again = attacks.run(net, ex, x, "random_sign", eps=8, steps=3, seed=5)
    assert torch.equal(again.x_adv, rs[1].x_adv)


def test_batched_equals_per_image(setup):
    net, ex, x = setup
    full = attacks.run(net, ex, x, "topk", eps=8, steps=4, k=10, beta=5.0)
    for i in range(2):
        one = attacks.run(net, ex, x[i:i + 1], "topk", eps=8, steps=4, k=10, beta=5.0)
        assert torch.allclose(one.x_adv[0], full.x_adv[i], atol=1e-12)


def test_transfer_evaluates_other_methods(setup):
    net, ex, x = setup
    r = attacks.run(net, ex, x, "topk", eps=8, steps=3, beta=5.0, k=10)
    out = attacks.transfer(r, {"gradient_x_input": create("gradient_x_input", net), "lrp": create("lrp", net)})
    assert set(out) == {"gradient_x_input", "lrp"}
    assert out["lrp"]["spearman"].shape == (6,)


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": 0}, "positive"), ({"eps": -1}, "positive"), ({"eps": 300}, "larger than the data range"),
    ({"eps": 8, "steps": 0}, "steps"), ({"eps": 8, "norm": "l1"}, "norm"), ({"eps": 8, "step": "newton"}, "step"),
])
def test_bad_attack_settings(setup, kwargs, match):
    net, ex, x = setup
    with pytest.raises(FragileError, match=match):
        attacks.run(net, ex, x, "topk", **kwargs)


def test_bad_objective_parameters(setup):
    net, ex, x = setup
    with pytest.raises(FragileError, match="k must be a positive integer"):
        attacks.create("topk", k=0)
    with pytest.raises(FragileError, match="exceeds"):
        attacks.run(net, ex, x, attacks.create("topk", k=65), eps=8, steps=1)
    with pytest.raises(FragileError, match="empty"):
        attacks.create("targeted", mask=torch.zeros(8, 8))
    with pytest.raises(FragileError, match="every pixel"):
        attacks.create("targeted", mask=torch.ones(8, 8))
    with pytest.raises(FragileError, match="does not match"):
        attacks.run(net, ex, x, attacks.create("manipulate", target_map=torch.rand(5, 5)), eps=8, steps=1)
    with pytest.raises(FragileError, match="unknown attack"):
        attacks.create("teleport")
    with pytest.raises(FragileError, match="outside"):
        attacks.run(net, ex, x * 3, "topk", eps=8, steps=1)


def test_surrogate_disagreement_warns_with_count():
    """logit_0 = relu(mean(x) - 0.5), logit_1 = 1e-3: for images darker than 0.5 the ReLU model says
    class 1, its softplus(1) surrogate (softplus >= log(1 + e^-0.5) = 0.47) says class 0."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 1), torch.nn.ReLU(), torch.nn.Linear(1, 2)).double().eval()
    with torch.no_grad():
        net[1].weight.fill_(1 / 192)
        net[1].bias.fill_(-0.5)
        net[3].weight.copy_(torch.tensor([[1.0], [0.0]]))
        net[3].bias.copy_(torch.tensor([0.0, 1e-3]))
    x = 0.8 * torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # the normalised map of this one-unit net does not depend on x, so the attack is then refused as well
    with pytest.warns(UserWarning, match=r"on 6 of 6 clean images"), pytest.raises(FragileError, match="exactly zero"):
        attacks.run(net, create("gradient", net), x, "topk", eps=8, steps=1, beta=1.0)


def test_cli_attack_writes_results_and_panel(tmp_path):
    import json

    from fragile.cli import main

    assert main(["attack", "--limit", "2", "--steps", "2", "--eps", "4", "8", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [s["eps"] for s in data["summary"]] == [4.0, 8.0]
    assert len(data["images"]) == 4 and (tmp_path / "panel_eps8.png").stat().st_size > 10_000
    assert main(["attack", "--attack", "targeted", "--limit", "2", "--steps", "1", "--out", str(tmp_path)]) == 1


def test_a_smoothed_explanation_is_attacked_directly():
    """Dombrowski sec. 4.2: attacking the beta-smoothed map must differentiate that map, not a
    softplus version with the attack's own beta."""
    torch.manual_seed(0)
    net = plain_cnn()
    defended = create("gradient", net, smooth_beta=1.0)
    assert defended.surrogate(10.0) is defended
    plain = create("gradient", net)
    assert plain.surrogate(10.0).smooth_beta == 10.0
    sg = create("smoothgrad", net, smooth_beta=2.0, samples=2)
    assert sg.surrogate(10.0) is sg and create("smoothgrad", net, samples=2).surrogate(10.0).inner.smooth_beta == 10.0


def _counting_evaluate(monkeypatch):
    from fragile.attacks import loop

    calls = []
    evaluate = loop._evaluate

    def counted(*args, **kwargs):
        calls.append(1)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "_evaluate", counted)
    return calls


def test_check_every_one_is_the_default_loop(setup):
    net, ex, x = setup
    a = attacks.run(net, ex, x, "topk", eps=8, steps=7, beta=5.0)
    b = attacks.run(net, ex, x, "topk", eps=8, steps=7, beta=5.0, check_every=1)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.best_iteration, b.best_iteration)
    assert torch.equal(a.trajectory, b.trajectory) and a.trajectory_iterations == b.trajectory_iterations
    assert a.trajectory_iterations == list(range(8)) and a.settings["iterations"] == 7


@pytest.mark.parametrize("steps,every", [(7, 3), (9, 3), (5, 1), (6, 10)])
def test_check_every_evaluates_every_kth_iterate_and_the_last(setup, monkeypatch, steps, every):
    """ceil(steps / k) evaluations in the loop (iterations k, 2k, ..., and the last) plus the returned example's; the
    returned example is an evaluated iterate and keeps its label on the original model."""
    net, ex, x = setup
    calls = _counting_evaluate(monkeypatch)
    r = attacks.run(net, ex, x, "topk", eps=8, steps=steps, beta=5.0, check_every=every, step_size=2)
    assert len(calls) == -(-steps // every) + 1
    evaluated = sorted({*range(every, steps + 1, every), steps})
    assert r.trajectory_iterations == [0, *evaluated] and r.settings["iterations"] == steps
    assert r.settings["check_every"] == every
    assert set((r.best_iteration[r.success] + 1).tolist()) <= set(evaluated)
    with torch.no_grad():
        assert torch.equal(net(r.x_adv).argmax(1)[r.success], r.label[r.success])
    assert r.success.any() and r.converged.dtype == torch.bool


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "5", None])
def test_check_every_must_be_a_positive_integer(setup, bad):
    net, ex, x = setup
    with pytest.raises(FragileError, match="check_every"):
        attacks.run(net, ex, x, "topk", eps=8, steps=2, beta=5.0, check_every=bad)


def test_schedules_that_react_to_the_objective_react_at_evaluations_only():
    """APGD's progress test with check_every: unevaluated iterations (loss None) count nothing and test nothing; a
    checkpoint passed between evaluations is tested at the next one, over the evaluations since the last test.
    20 iterations: checkpoints 4, 7, 9, 10, ..., 20 (APGD.checkpoints); evaluated after 3, 6, 9, ..., 18 and 20."""
    from fragile.attacks.steps import APGD, AdamPlateau

    assert sorted(APGD.checkpoints(20)) == [4, 7, *range(9, 21)]
    rule = AdamPlateau(1.0)
    delta = torch.zeros(2, 1, 2, 2)
    state = rule.init(delta)
    lrs = []
    evaluated = [t for t in range(20) if (t + 1) % 3 == 0 or t == 19]
    for t in range(20):
        delta, state = rule.update(delta, torch.ones_like(delta), state, t, 1.0, None)
        # image 0 improves at every evaluation, image 1 never does
        loss = torch.tensor([-float(t), 0.0]) if t in evaluated else None
        delta, state = rule.observe(delta, state, loss=loss, best_delta=torch.zeros_like(delta),
                                    best_loss=torch.tensor([-float(t), 0.0]), t=t, iterations=20)
        lrs.append(state["lr"].flatten().tolist())
    # image 1: halved at each evaluation that passed a checkpoint (after 6, 9, 12, 15, 18, 20), never in between
    assert [lr[1] for lr in lrs] == [1.0] * 5 + [0.5] * 3 + [0.25] * 3 + [0.125] * 3 + [0.0625] * 3 + [0.03125] * 2 \
        + [0.015625]
    # image 0: at the first test 1 improvement in 2 evaluations (< 75%: the first has nothing to compare with),
    # afterwards every evaluation improved, and its best objective changed: never halved again
    assert [lr[0] for lr in lrs] == [1.0] * 5 + [0.5] * 15


def test_every_iteration_evaluated_is_apgds_progress_test():
    """With every iteration evaluated the progress test equals APGD's as written by Croce & Hein (sec. 3.2),
    transcribed here: at a checkpoint w_j, stalled where the objective improved in fewer than rho (w_j - w_j-1)
    of the iterations since w_j-1, or where the step size and the best objective are unchanged since w_j-1."""
    from fragile.attacks.steps import APGD, AdamPlateau

    iterations, rho = 40, 0.75
    losses = torch.rand(iterations, 6, generator=torch.Generator().manual_seed(5)).cumsum(0) * torch.tensor(
        [-1.0, -1.0, 1.0, 1.0, 0.0, -0.5])[None] + torch.rand(iterations, 6, generator=torch.Generator().manual_seed(6))
    rule = AdamPlateau(1.0)
    delta = torch.zeros(6, 1, 1, 1)
    state = rule.init(delta)
    ref_lr, count, last, mark, mark_lr, mark_best, best = torch.ones(6), torch.zeros(6), None, 0, None, None, None
    marks = APGD.checkpoints(iterations)
    for t in range(iterations):
        delta, state = rule.update(delta, torch.ones_like(delta), state, t, 1.0, None)
        loss = losses[t]
        best = loss.clone() if best is None else torch.minimum(best, loss)
        delta, state = rule.observe(delta, state, loss=loss, best_delta=torch.zeros_like(delta), best_loss=best, t=t,
                                    iterations=iterations)
        if last is not None:
            count += (loss < last).float()
        last = loss
        if t + 1 in marks:
            stalled = count < rho * (t + 1 - mark)
            if mark_lr is not None:
                stalled |= (ref_lr == mark_lr) & (best == mark_best)
            ref_lr = torch.where(stalled, ref_lr / 2, ref_lr)
            count, mark, mark_lr, mark_best = torch.zeros(6), t + 1, ref_lr.clone(), best.clone()
        assert torch.equal(state["lr"].flatten(), ref_lr), t
    assert len(set(ref_lr.tolist())) > 1  # some images halved more often than others: the test can tell


def test_converged_on_sparse_trajectory_rows():
    """Rows at iterations [0, 5, 10, ..., 30]: the tail (3 iterations) is measured from row 25."""
    from fragile.attacks.loop import converged

    its = [0, 5, 10, 15, 20, 25, 30]
    flat = torch.tensor([[10.0], [5], [3], [2], [1], [1], [1]], dtype=torch.float64)
    moving = torch.tensor([[10.0], [5], [3], [2], [1], [1], [0.5]], dtype=torch.float64)
    assert bool(converged(flat, iterations=its)) and not bool(converged(moving, iterations=its))
    dense = torch.linspace(10, 1, 31, dtype=torch.float64)[:, None]
    assert torch.equal(converged(dense), converged(dense, iterations=range(31)))


@pytest.fixture(scope="module")
def setup32():
    """A float32 net (autocast lowers float32 only) and its gradient explainer."""
    torch.manual_seed(0)
    net = plain_cnn().float()
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return net, create("gradient", net), x


def _recording_grad(monkeypatch):
    """Record every call of the loop's objective gradient: (args, kwargs, gradient)."""
    from fragile.attacks import loop

    calls = []
    objective_grad = loop._objective_grad

    def recorded(*args, **kwargs):
        g = objective_grad(*args, **kwargs)
        calls.append((args, kwargs, g))
        return g

    monkeypatch.setattr(loop, "_objective_grad", recorded)
    return calls


def test_precision_float32_is_the_default_and_unchanged(setup32, monkeypatch):
    """The default gradient step is the plain one, bit for bit: recomputed from the recorded arguments without any
    autocast (the loop before ``precision``), and ``precision='float32'`` is the default."""
    from fragile.attacks.loop import saliency

    net, ex, x = setup32
    calls = _recording_grad(monkeypatch)
    a = attacks.run(net, ex, x, "topk", eps=8, steps=4, beta=5.0, fast=False)
    b = attacks.run(net, ex, x, "topk", eps=8, steps=4, beta=5.0, fast=False, precision="float32")
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.trajectory, b.trajectory)
    assert a.settings["precision"] == "float32" and len(calls) == 8
    for (_, surrogate, objective, state, xi, t, reduce, *_), _, g in calls[:4]:
        xa = xi.detach().requires_grad_(True)
        sal = saliency(surrogate.attribute(xa, target=t, create_graph=True), reduce)
        (ref,) = torch.autograd.grad(objective.loss(sal, None, state).sum(), xa)
        assert torch.equal(g, ref)


def test_precision_bfloat16_changes_the_gradient_step_only(setup32, monkeypatch):
    """bfloat16: the objective's gradient differs from float32's at the same point (fails if autocast is not applied)
    but keeps most signs; the iterates are still evaluated on the float32 model: the returned example keeps its label."""
    net, ex, x = setup32
    calls = _recording_grad(monkeypatch)
    r = attacks.run(net, ex, x, "topk", eps=8, steps=6, beta=5.0, precision="bfloat16", step_size=2)
    ref = attacks.run(net, ex, x, "topk", eps=8, steps=6, beta=5.0, step_size=2)
    g16, g32 = calls[0][2], calls[6][2]  # iteration 0 of each: the same point x
    assert torch.equal(calls[0][0][4], calls[6][0][4])
    assert g16.dtype == g32.dtype == torch.float32 and not torch.equal(g16, g32)
    assert float((g16 - g32).norm() / g32.norm()) > 1e-4  # bfloat16 rounding (float32's would be ~1e-7)
    assert float((g16.sign() == g32.sign()).double().mean()) > 0.8
    assert r.settings["precision"] == "bfloat16" and ref.settings["precision"] == "float32"
    assert r.success.any() and r.x_adv.dtype == torch.float32
    with torch.no_grad():
        assert torch.equal(net(r.x_adv).argmax(1)[r.success], r.label[r.success])


@pytest.mark.parametrize("bad", ["bf16", "float16", "", None, 16, torch.bfloat16])
def test_precision_must_be_a_known_name(setup32, bad):
    net, ex, x = setup32
    with pytest.raises(FragileError, match="precision must be one of 'float32', 'bfloat16'"):
        attacks.run(net, ex, x, "topk", eps=8, steps=2, beta=5.0, precision=bad)


def test_precision_bfloat16_not_applicable_warns_and_runs_the_model_dtype(setup, setup32):
    """A float64 model (autocast lowers float32 only) and a modified backward (LRP) keep their own precision, with a
    warning saying why; the result records what the gradient step ran in."""
    net, ex, x = setup
    with pytest.warns(UserWarning, match="not applied: the model computes in float64"):
        r = attacks.run(net, ex, x, "topk", eps=8, steps=2, beta=5.0, precision="bfloat16")
    assert r.settings["precision"] == "float64"
    net32, _, x32 = setup32
    with pytest.warns(UserWarning, match="lrp is not computed by plain autograd"):
        r = attacks.run(net32, create("lrp", net32), x32, "topk", eps=8, steps=2, beta=5.0, precision="bfloat16")
    assert r.settings["precision"] == "float32"
    import contextlib

    from fragile.attacks.loop import _gradient_model, plain_autograd

    assert plain_autograd(create("smoothgrad", net32, samples=2)) and plain_autograd(create("integrated_gradients", net32))
    sg_lrp = create("smoothgrad", net32, method="lrp", samples=2)
    assert not plain_autograd(sg_lrp)  # judged by the averaged method: no autocast, and no BatchNorm folding
    assert _gradient_model(net32, sg_lrp, x32, True) is contextlib.nullcontext
    assert _gradient_model(net32, create("smoothgrad", net32, samples=2), x32, True) is not contextlib.nullcontext


def test_random_controls_keep_their_own_step(setup):
    """A sign step on the random-sign objective would be a top-k attack under the control's name: refused; the
    control's own step (or none) runs one draw."""
    net, ex, x = setup
    for name in ("random_sign", "random_sign_search"):
        with pytest.raises(FragileError, match="random control"):
            attacks.run(net, ex, x, name, eps=8, steps=3, beta=5.0, step="sign")
    r = attacks.run(net, ex, x, "random_sign", eps=8, steps=50, step="random")
    assert r.settings["step"] == "random" and r.settings["iterations"] == 1


def test_a_sweep_step_setting_does_not_turn_the_control_into_an_attack(tmp_path, monkeypatch):
    """attack_settings.step applies to the attacks; the random-sign control keeps its one draw."""
    from fragile.attacks import loop
    from fragile.experiments import config as config_mod
    from fragile.experiments.runner import run_sweep

    seen = []
    real = loop.run

    def recorded(*a, **kw):
        seen.append((a[3].name, kw.get("step")))
        return real(*a, **kw)

    monkeypatch.setattr(attacks, "run", recorded)
    cfg = config_mod.resolve({"name": "t", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 2,
                              "methods": ["gradient"], "attacks": ["random_sign", "topk"], "eps": [8], "batch_size": 2,
                              "threads": 1, "attack_settings": {"steps": 2, "step": "sign"}})
    run_sweep(cfg, tmp_path / "s", show_progress=False, log=lambda *a: None)
    assert sorted(seen) == [("random_sign", None), ("topk", "sign")]
