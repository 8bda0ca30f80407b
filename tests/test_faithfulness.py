"""Deletion / insertion curves on models whose relevant pixels are known by construction."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fragile.errors import FragileError
from fragile.metrics import perturbation_curve, random_relevance


class Linear2(nn.Module):
    """logit_0 = sum_i w_i x_i with w > 0, logit_1 = a constant threshold."""

    def __init__(self, w, threshold):
        super().__init__()
        self.w, self.threshold = w, threshold

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, torch.full_like(s, self.threshold)], 1)


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(1, 3, 8, 8, generator=g, dtype=torch.float64) ** 3
    x = torch.rand(5, 3, 8, 8, generator=g, dtype=torch.float64) * 0.5 + 0.5
    model = Linear2(w, threshold=0.6 * float((x * w).flatten(1).sum(1).min()))
    true = (x * w).sum(1)  # exact per-pixel contributions to logit_0
    return model, x, true


def test_true_order_drops_fastest_and_random_in_between(setup):
    model, x, true = setup
    kw = {"target": 0, "steps": 16}
    best = perturbation_curve(model, x, true, **kw)
    rnd = perturbation_curve(model, x, random_relevance(x, seed=1), **kw)
    worst = perturbation_curve(model, x, -true, **kw)
    assert bool((best["auc_score"] < rnd["auc_score"]).all()) and bool((rnd["auc_score"] < worst["auc_score"]).all())
    # deletion with a zero baseline and non-negative contributions: the score never increases
    assert bool((best["score"][1:] <= best["score"][:-1] + 1e-12).all())
    assert bool((best["auc_accuracy"] <= rnd["auc_accuracy"]).all())
    # the first and last points are the clean image and the all-baseline image
    assert torch.allclose(best["score"][0], model(x)[:, 0]) and torch.allclose(best["score"][-1], torch.zeros(5, dtype=torch.float64))


def test_insertion_true_order_rises_fastest(setup):
    model, x, true = setup
    best = perturbation_curve(model, x, true, target=0, mode="insertion", steps=16)
    rnd = perturbation_curve(model, x, random_relevance(x, seed=2), target=0, mode="insertion", steps=16)
    assert bool((best["auc_score"] > rnd["auc_score"]).all())
    assert bool((best["score"][1:] >= best["score"][:-1] - 1e-12).all())


def test_patch_reader_with_mean_and_blur_baselines():
    """A network reading only a 3x3 patch: deleting that patch first changes the score at once."""
    class Patch(nn.Module):
        def forward(self, x):
            s = x[:, :, 2:5, 2:5].sum((1, 2, 3))
            return torch.stack([s, -s], 1)

    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rel = torch.zeros(4, 8, 8, dtype=torch.float64)
    rel[:, 2:5, 2:5] = 1
    for baseline in ("zero", "mean", "blur"):
        c = perturbation_curve(Patch(), x, rel, target=0, steps=64, baseline=baseline)
        # after 9 of 64 pixels (step 9) the patch is gone: the score no longer changes
        assert torch.allclose(c["score"][9:], c["score"][9:10].expand_as(c["score"][9:]))


def test_bad_input(setup):
    model, x, true = setup
    with pytest.raises(FragileError, match="mode"):
        perturbation_curve(model, x, true, mode="sideways")
    with pytest.raises(FragileError, match="baseline"):
        perturbation_curve(model, x, true, baseline="noise")
    with pytest.raises(FragileError, match="relevance must be"):
        perturbation_curve(model, x, true[:, :4])


def test_cli_faithfulness_on_pretrained_resnet(tmp_path):
    import json

    from fragile.cli import main

    assert main(["faithfulness", "--images", "foolbox:cifar10", "--limit", "6", "--betas", "3", "--smoothgrad-samples", "3",
                 "--steps", "5", "--attack-steps", "2", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "faithfulness.json").read_text())
    assert set(data["methods"]) == {"gradient", "gradient beta=3", "smoothgrad", "random"}
    assert all(0 <= row["deletion_auc_accuracy"] <= 1 for row in data["methods"].values())
    for row in data["methods"].values():  # every mean with its interval over the kept images
        mean, low, high, n = row["deletion_auc_accuracy_ci"]
        assert mean == pytest.approx(row["deletion_auc_accuracy"]) and low <= mean <= high and n == data["images"]
    # paired differences over the same images: the mean of a - b is the difference of the two means
    paired = data["paired"]
    assert set(paired) == {"gradient - random", "gradient beta=3 - random", "smoothgrad - random",
                           "gradient beta=3 - gradient", "gradient beta=3 - smoothgrad"}
    a, b = data["methods"]["gradient beta=3"], data["methods"]["gradient"]
    mean, low, high, n = paired["gradient beta=3 - gradient"]
    assert mean == pytest.approx(a["deletion_auc_accuracy"] - b["deletion_auc_accuracy"]) and low <= mean <= high
    assert (tmp_path / "fig7_pixel_flipping.png").exists() and (tmp_path / "robustness_vs_faithfulness.png").exists()


def test_faithfulness_killed_after_two_methods_resumes_to_the_clean_result(tmp_path, monkeypatch):
    import json

    import fragile.experiments.faithfulness as faith
    from fragile.data.images import load_images
    from fragile.models import create

    model = create("resnet20_cifar10", pretrained=True)
    x, labels = load_images("foolbox:cifar10")
    x, labels = x[:4], labels[:4]
    settings = {"methods": faith.default_methods(betas=(3.0,), smoothgrad_samples=2), "steps": 4,
                "attack_steps": 1, "log": lambda *_: None}
    clean = faith.run_faithfulness(model, x, labels, out=tmp_path / "clean", **settings)

    real, calls = faith.attacks.run, []

    def dies_on_third_method(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(faith.attacks, "run", dies_on_third_method)
    with pytest.raises(RuntimeError, match="killed"):
        faith.run_faithfulness(model, x, labels, out=tmp_path / "resumed", **settings)
    calls[:] = [None] * 5
    resumed = faith.run_faithfulness(model, x, labels, out=tmp_path / "resumed", **settings)
    assert len(calls) == 6  # only SmoothGrad, the method in flight at the kill, was recomputed
    assert json.dumps(resumed, sort_keys=True) == json.dumps(clean, sort_keys=True)


def test_faithfulness_parts_follow_the_method_parameters(tmp_path):
    """Changing a method's parameters (SmoothGrad samples) recomputes that method only."""
    import fragile.experiments.faithfulness as faith
    from fragile.data.images import load_images
    from fragile.models import create

    model = create("resnet20_cifar10", pretrained=True)
    x, labels = load_images("foolbox:cifar10")
    x, labels = x[:3], labels[:3]
    quiet = {"steps": 3, "attack_steps": 1, "log": lambda *_: None}
    faith.run_faithfulness(model, x, labels, out=tmp_path, methods={"smoothgrad": ("smoothgrad", {"samples": 2})},
                           **quiet)
    faith.run_faithfulness(model, x, labels, out=tmp_path, methods={"smoothgrad": ("smoothgrad", {"samples": 3})},
                           **quiet)
    (parts,) = (tmp_path / "parts").iterdir()
    assert len([p for p in parts.iterdir() if p.name.startswith("method-")]) == 2
