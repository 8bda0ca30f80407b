"""Equal-norm random-noise controls of attacks (issue 19): the control's norm and constraints, its rows in a
sweep store and its metrics in a transfer experiment; on the pretrained ResNet-20 the manipulate attack
must beat its control."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fragile.experiments import config as config_mod
from fragile.experiments.controls import LABEL_CHANGED, SUFFIX, equal_norm_noise
from fragile.experiments.runner import run_sweep
from fragile.experiments.store import Store


def _x_and_delta(seed=0, shape=(6, 3, 8, 8), eps=8 / 255):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    x[0, 0] = 0.0  # pixels at the data bounds: half of their directions are closed
    x[1, 1] = 1.0
    delta = (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * eps
    delta = ((x + delta).clamp(0, 1) - x)
    delta[2] *= 0.01  # a small perturbation (Adam-like) beside full-box ones
    return x, delta


def test_equal_norm_noise_has_the_attacks_l2_norm_inside_its_box_and_the_data_bounds():
    eps = 8 / 255
    x, delta = _x_and_delta(eps=eps)
    d = equal_norm_noise(x, delta, eps=eps, low=0.0, high=1.0, generator=torch.Generator().manual_seed(1))
    # exact up to the bisection's float64 resolution: the lengths are ~0.1-0.4, the tolerance 1e-12 of that
    np.testing.assert_allclose(d.flatten(1).norm(dim=1), delta.flatten(1).norm(dim=1), rtol=1e-12)
    assert float(d.abs().max()) <= eps + 1e-15
    assert float((x + d).min()) >= 0.0 and float((x + d).max()) <= 1.0
    cos = torch.nn.functional.cosine_similarity(d.flatten(1), delta.flatten(1))
    assert float(cos.abs().max()) < 0.2  # a random direction (3 x 8 x 8 = 192 dims: |cos| ~ 0.07)
    again = equal_norm_noise(x, delta, eps=eps, low=0.0, high=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(d, again)  # seeded
    other = equal_norm_noise(x, delta, eps=eps, low=0.0, high=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(d, other)


def test_equal_norm_noise_edge_cases():
    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    zero = torch.zeros_like(x)
    assert torch.equal(equal_norm_noise(x, zero, eps=0.1, low=0, high=1), zero)
    # a full-box sign perturbation: a random direction can reach that length only at the box corners
    corner = torch.full_like(x, 0.1)
    d = equal_norm_noise(x, corner, eps=0.1, low=0, high=1, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(d.abs(), 0.1, rtol=1e-12)
    # unreachable (the L-inf box is smaller than the attack's): the corner, shorter than asked
    d = equal_norm_noise(x, corner, eps=0.05, low=0, high=1, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(d.abs(), 0.05, rtol=1e-12)
    # L2 threat model: only the data bounds constrain the coordinates
    d = equal_norm_noise(x, corner, eps=0.4, low=0, high=1, norm="l2", generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(d.flatten(1).norm(dim=1), 0.4, rtol=1e-12)
    assert float(d.abs().max()) > 0.1
    f32 = equal_norm_noise(x.float(), corner.float(), eps=0.1, low=0, high=1)
    assert f32.dtype == torch.float32


SWEEP = {"name": "c", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 4,
         "methods": ["gradient"], "attacks": ["random_sign", "manipulate"], "eps": [8], "batch_size": 4,
         "attack_settings": {"steps": 30, "lr": 0.2, "beta": 10.0, "noise_control": True},
         "threads": 1}


def test_manipulate_beats_its_equal_norm_control_on_the_pretrained_resnet20(tmp_path):
    """Rows ``manipulate_noise_control`` beside ``manipulate`` (none for random sign), with the attack's L2
    norm per image and its metrics; the control's stored arrays are its image and map. On the pretrained
    ResNet-20 the manipulated maps are closer to the target (PCC) than the control's, image by image."""
    run_sweep(config_mod.resolve(SWEEP), tmp_path / "s", show_progress=False, log=lambda *a: None)
    with Store.open(tmp_path / "s") as store:
        rows = store.rows()
        by = {(r["attack"], r["image"]): r for r in rows}
        assert {r["attack"] for r in rows} == {"random_sign", "manipulate", "manipulate" + SUFFIX}
        attacked = [by[("manipulate", i)] for i in range(4) if by[("manipulate", i)]["success"]]
        assert len(attacked) >= 3
        gains = []
        for r in attacked:
            c = by[("manipulate" + SUFFIX, r["image"])]
            arrays = store.arrays(c)  # the control's image, also where it changed the label
            assert np.linalg.norm(arrays["x_adv"] - arrays["x"]) == pytest.approx(r["l2"], rel=1e-4)
            assert np.abs(arrays["x_adv"] - arrays["x"]).max() <= 8 / 255 + 1e-6
            if c["success"]:
                assert c["l2"] == pytest.approx(r["l2"], rel=1e-5)  # float32 images
                assert set(c) >= {"target_pcc", "target_pcc_before", "spearman", "output_change"}
                gains.append(r["target_pcc"] - c["target_pcc"])
            else:
                assert c["reason"] == LABEL_CHANGED and np.isnan(c["target_pcc"])
        assert gains and min(gains) > 0.05, gains


def test_transfer_reports_control_metrics_beside_the_attacks(tmp_path):
    import fragile.experiments.transfer as tr
    from fragile.data.images import load_images
    from fragile.models import create

    model = create("resnet20_cifar10", pretrained=True)
    x, _ = load_images("foolbox:cifar10")
    settings = {"steps": 3, "step": "adam", "lr": 0.5, "beta": 10.0, "noise_control": True}
    res = tr.run_transfers(model, x[:3], out=tmp_path, sources=[{"method": "gradient"}, {"method": "gradient_x_input"}],
                           targets=[{"defence": "beta", "defence_params": {"beta": 1.0}, "label": "beta 1"}],
                           attack="manipulate", eps=8, attack_settings=settings, log=lambda *_: None)
    assert list(res["sources"]) == ["gradient", "gradient_x_input"]
    for name, one in res["sources"].items():
        assert list(one["targets"]) == [name, "beta 1"]
        row = one["targets"][name]
        assert row["l2_perturbation_control"] == pytest.approx(row["l2_perturbation"], rel=1e-5)
        assert {"pcc_to_target_control", "spearman_to_original_control"} <= set(row)
        assert one["noise_control"]["label_kept"] <= one["successes"]
        assert (tmp_path / f"transfer-{name}.png").stat().st_size > 5_000
    assert (tmp_path / "transfer.json").exists()


def _transfer_result(n_targets: int) -> dict:
    targets = {}
    for i in range(n_targets):
        base = {"spearman_to_original": 0.1 + i / 1000, "pcc_to_original": 0.2 + i / 1000, "pcc_to_target": 0.5}
        targets[f"method_{i}(steps={i})"] = {**base, **{f"{k}_control": v + 0.3 for k, v in base.items()}}
    return {"source": {"method": "gradient"}, "attack": "manipulate", "eps": 4, "images": 10, "successes": 9,
            "attack_seconds": 1.0, "targets": targets,
            "noise_control": {"images": 9, "label_kept": 8, "l2_attack_mean": 1.23, "l2_control_mean": 1.23}}


def test_summary_shows_every_transfer_number_beside_its_control(tmp_path):
    """No truncation: 200 targets (far more than 6,000 characters of JSON) all appear, each metric with its
    equal-norm noise control; several sources get one table each."""
    import json

    from fragile.reporting.summary import summarize

    (tmp_path / "transfer.json").write_text(json.dumps(_transfer_result(200)))
    text = summarize(tmp_path)
    assert "method_199(steps=199)" in text and "pcc_to_target (noise)" in text and "```json" not in text
    row = next(line for line in text.splitlines() if line.startswith("| method_7(steps=7) |"))
    assert row.count("|") == 8 and "0.107" in row and "0.407" in row  # spearman 0.107 and its control 0.407
    (tmp_path / "transfer.json").write_text(json.dumps({"sources": {"gradient": _transfer_result(2),
                                                                    "lrp": _transfer_result(3)}}))
    assert summarize(tmp_path).count("Transfer of the manipulate attack") == 2


def test_transfer_bars_draw_the_noise_control_beside_each_metric(tmp_path, monkeypatch):
    import fragile.reporting.transfer as transfer_report

    drawn = []
    real = transfer_report.save

    def keep(fig, path):
        drawn.append(len(fig.axes[0].patches))
        return real(fig, path)

    monkeypatch.setattr(transfer_report, "save", keep)
    transfer_report.transfer_bars(_transfer_result(3), tmp_path / "t.png")
    assert drawn == [3 * 3 * 2]  # 3 explanations x 3 metrics x (attack, control)
    plain = _transfer_result(3)
    plain["targets"] = {n: {k: v for k, v in t.items() if not k.endswith("_control")} for n, t in plain["targets"].items()}
    transfer_report.transfer_bars(plain, tmp_path / "u.png")
    assert drawn[-1] == 3 * 3 and (tmp_path / "u.png").stat().st_size > 1000


def test_the_control_of_a_smoothgrad_attack_uses_the_noise_of_the_attacks_maps():
    """A noise-averaged method's control map is drawn with the noise of the result's own maps (common random
    numbers), as the attacked map is: for an attack that barely moved the image, the control's map equals the
    original map up to that move (Spearman ~ 1), where a fresh noise draw (as before) differs by the Monte-Carlo
    noise of 8 samples alone (scipy's Spearman as the oracle for both)."""
    import dataclasses

    from scipy.stats import spearmanr

    from conftest import plain_cnn
    from fragile import attacks
    from fragile.attacks.loop import saliency
    from fragile.experiments.controls import noise_control
    from fragile.explanations import create

    torch.manual_seed(0)
    model = plain_cnn()
    ex = create("smoothgrad", model, samples=8, seed=3)
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    objective = attacks.create("topk", k=10)
    result = attacks.run(model, ex, x, objective, eps=8, steps=2, beta=10.0)
    assert result.settings["maps_noise_seed"] is not None
    tiny = dataclasses.replace(result, x_adv=(x + 1e-7).clamp(0, 1), success=torch.ones(4, dtype=torch.bool))
    ctrl = noise_control(model, ex, objective, tiny, eps_raw=8 / 255, seed=1)
    fresh = saliency(ex.attribute(ctrl["x_control"], target=result.label), "abs_sum")
    for i in range(4):
        same = spearmanr(tiny.maps[i].flatten(), ctrl["maps_control"][i].flatten()).statistic
        other = spearmanr(tiny.maps[i].flatten(), fresh[i].flatten()).statistic
        assert same > 0.999 and other < 0.99, (same, other)
    rho = ctrl["metrics"]["spearman"]
    assert bool((rho > 0.999).all()), rho
