"""Sweeps: config validation, the SQLite store, resume after kill -9, Ray, export, reports, audit."""

from __future__ import annotations

import html
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from fragile.errors import FragileError
from fragile.experiments import config as config_mod
from fragile.experiments.runner import plan, run_sweep
from fragile.experiments.store import Store

SMALL = {"name": "t", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 4,
         "methods": ["gradient"], "attacks": ["random_sign", "topk"], "eps": [4, 8], "batch_size": 2,
         "attack_settings": {"steps": 3, "step_size": 2.0}, "threads": 1}


def cfg(**over):
    return config_mod.resolve({**SMALL, **over})


def test_config_unknown_keys_are_named_with_valid_ones():
    with pytest.raises(FragileError, match=r"unknown key 'epz'.*valid keys: .*eps"):
        config_mod.resolve({"epz": [1]})
    with pytest.raises(FragileError, match=r"'stepz' in attack_settings.*steps"):
        config_mod.resolve({"attack_settings": {"stepz": 3}})
    with pytest.raises(FragileError, match="unknown method 'saliency_magic'"):
        config_mod.resolve({"methods": ["saliency_magic"]})
    with pytest.raises(FragileError, match="eps must be positive"):
        config_mod.resolve({"eps": [0]})


def test_config_check_every_is_optional_and_checked():
    """``attack_settings.check_every``: a positive integer, refused at config time otherwise; without it the config
    keeps its hash."""
    assert "check_every" not in cfg()["attack_settings"]
    assert cfg(attack_settings={"steps": 3, "step_size": 2.0, "check_every": 5})["attack_settings"]["check_every"] == 5
    for bad in (0, 2.5, "5", None, True):
        with pytest.raises(FragileError, match="attack_settings.check_every"):
            cfg(attack_settings={"steps": 3, "check_every": bad})


def test_config_precision_is_optional_and_checked():
    """``attack_settings.precision``: 'float32' or 'bfloat16', refused at config time otherwise (naming both); without
    it the config keeps its hash."""
    assert "precision" not in cfg()["attack_settings"]
    assert cfg(attack_settings={"precision": "bfloat16"})["attack_settings"]["precision"] == "bfloat16"
    for bad in ("bf16", None, 16):
        with pytest.raises(FragileError, match="attack_settings.precision must be one of 'float32', 'bfloat16'"):
            cfg(attack_settings={"steps": 3, "precision": bad})


def test_invalid_yaml_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [gradient\neps: 3")
    with pytest.raises(FragileError, match="not valid YAML"):
        config_mod.load(bad)


def test_plan_covers_the_grid():
    units = plan(cfg(), n_images=4)
    assert len(units) == 1 * 1 * 2 * 2 * 2  # methods x defences x attacks x eps x batches
    assert len({u.key for u in units}) == len(units)


def test_sweep_stores_rows_and_resumes(tmp_path):
    c = cfg()
    out = run_sweep(c, tmp_path / "s", show_progress=False, log=lambda *a: None)
    assert out == {"units": 8, "done_before": 0, "ran": 8}
    with Store.open(tmp_path / "s") as store:
        rows = store.rows()
        assert len(rows) == 4 * 2 * 2
        assert store.meta()["config_hash"] == config_mod.config_hash(c)
        assert all(r["label"] == r["label_adv"] for r in rows if r["success"])
        arr = store.arrays(rows[0])
        assert arr["x"].shape == (3, 32, 32) and arr["maps"].shape == (32, 32)
        df = store.dataframe()
        assert len(df) == 16 and "spearman" in df.columns
    again = run_sweep(c, tmp_path / "s", show_progress=False, log=lambda *a: None)
    assert again == {"units": 8, "done_before": 8, "ran": 0}


def test_store_refuses_other_config_and_other_schema(tmp_path):
    run_sweep(cfg(eps=[8], attacks=["random_sign"]), tmp_path / "s", show_progress=False, log=lambda *a: None)
    with pytest.raises(FragileError, match="another config"):
        run_sweep(cfg(eps=[4], attacks=["random_sign"]), tmp_path / "s", show_progress=False, log=lambda *a: None)
    con = sqlite3.connect(tmp_path / "s" / "results.sqlite")
    with con:
        con.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    con.close()
    with pytest.raises(FragileError, match="incompatible version"):
        Store.open(tmp_path / "s")
    with pytest.raises(FragileError, match="not a fragile result store"):
        Store.open(tmp_path)


def test_store_lock_blocks_a_second_writer(tmp_path):
    c = cfg()
    h = config_mod.config_hash(c)
    with Store.create_or_open(tmp_path / "s", c, h):
        with pytest.raises(FragileError, match="locked by another writer"):
            Store.create_or_open(tmp_path / "s", c, h, lock_timeout=0.5)


def test_export_csv_and_parquet(tmp_path):
    import pandas as pd

    run_sweep(cfg(eps=[8], attacks=["topk"]), tmp_path / "s", show_progress=False, log=lambda *a: None)
    with Store.open(tmp_path / "s") as store:
        csv = pd.read_csv(store.export(tmp_path / "r.csv", "csv"))
        pq = pd.read_parquet(store.export(tmp_path / "r.parquet", "parquet"))
    assert len(csv) == len(pq) == 4 and "top100_intersection" in csv.columns
    with pytest.raises(FragileError, match="format"):
        Store.open(tmp_path / "s").export(tmp_path / "x", "xlsx")


def _sweep_cmd(config_path, store):
    return [sys.executable, "-m", "fragile", "run", str(config_path), "--store", str(store), "--quiet"]


def test_kill_minus_9_loses_nothing_stored_and_resume_matches_a_clean_run(tmp_path):
    c = {**SMALL, "limit": 6, "eps": [2, 4, 8], "attack_settings": {"steps": 8, "step_size": 1.0}, "store_arrays": True}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(c))
    proc = subprocess.Popen(_sweep_cmd(path, tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "killed" / "results.sqlite"
    deadline = time.time() + 120
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=5)
                stored = con.execute("SELECT COUNT(*) FROM units").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                continue
            if stored >= 2:
                break
    assert proc.poll() is None, "the sweep finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    units, rows = con.execute("SELECT COUNT(*) FROM units").fetchone()[0], con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    con.close()
    assert 2 <= units < 18 and rows == units * 2  # whole units only
    subprocess.run(_sweep_cmd(path, tmp_path / "killed"), check=True, capture_output=True)
    subprocess.run(_sweep_cmd(path, tmp_path / "clean"), check=True, capture_output=True)
    key = lambda r: (r["image"], r["attack"], r["eps"])  # noqa: E731
    with Store.open(tmp_path / "killed") as a, Store.open(tmp_path / "clean") as b:
        ra, rb = sorted(a.rows(), key=key), sorted(b.rows(), key=key)
    drop = {"unit", "seconds", "arrays", "array_index"}
    assert len(ra) == len(rb) == 36
    assert [{k: v for k, v in r.items() if k not in drop} for r in ra] == [{k: v for k, v in r.items() if k not in drop} for r in rb]


def test_ray_executor_with_two_workers_matches_in_process(tmp_path):
    c = cfg(eps=[8])
    run_sweep(c, tmp_path / "local", show_progress=False, log=lambda *a: None)
    run_sweep(c, tmp_path / "ray", executor="ray", workers=2, show_progress=False, log=lambda *a: None)
    key = lambda r: (r["image"], r["attack"])  # noqa: E731
    drop = {"unit", "seconds", "arrays", "array_index"}
    with Store.open(tmp_path / "local") as a, Store.open(tmp_path / "ray") as b:
        ra = [{k: v for k, v in r.items() if k not in drop} for r in sorted(a.rows(), key=key)]
        rb = [{k: v for k, v in r.items() if k not in drop} for r in sorted(b.rows(), key=key)]
    assert ra == rb and len(ra) == 8


@pytest.mark.parametrize(("kw", "match"), [
    ({"ray_address": "auto"}, r"ray_address='auto' is for executor='ray' \(got executor='inprocess'\)"),
    ({"executor": "ray", "ray_address": ""}, "ray_address must be None .* got ''"),
    ({"executor": "ray", "ray_address": 6379}, "ray_address must be None .* got 6379"),
])
def test_ray_address_is_validated_before_anything_runs(tmp_path, kw, match):
    """An existing Ray cluster is named by ``ray_address`` (None: a local instance); a wrong value is refused
    before the store, model or Ray are touched. The cluster path itself (2 simulated nodes, units on both,
    rows equal to in-process) is measured by ``benchmarks/sweep.py``: its Ray start-up is too slow for here."""
    with pytest.raises(FragileError, match=match):
        run_sweep(cfg(), tmp_path / "s", show_progress=False, log=lambda *a: None, **kw)
    assert not (tmp_path / "s").exists()


def test_dry_run_lists_units(tmp_path, capsys):
    from fragile.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    assert main(["run", str(path), "--store", str(tmp_path / "s"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 to run" in out and "gradient|none|topk|eps=8|seed=0|images=2-4" in out
    assert not (tmp_path / "s" / "results.sqlite").exists()


def test_report_is_self_contained_and_escapes_user_strings(tmp_path):
    from fragile.reporting.html import build_report

    evil = "<script>alert(1)</script>"
    run_sweep(cfg(name=evil, eps=[2, 8]), tmp_path / "s", show_progress=False, log=lambda *a: None)
    page = build_report(tmp_path / "s", tmp_path / "r.html", png_dir=tmp_path / "png").read_text()
    assert evil not in page and "&lt;script&gt;" in page
    assert page.count('src="data:image/png;base64,') >= 5
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert len(pngs) == page.count('src="data:image/png;base64,') and "spearman_vs_eps.png" in pngs
    assert all((tmp_path / "png" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "http://" not in page and "https://" not in page


def test_report_renders_in_headless_chromium(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from fragile.reporting.html import build_report

    run_sweep(cfg(eps=[2, 8], faithfulness=True), tmp_path / "s", show_progress=False, log=lambda *a: None)
    report = build_report(tmp_path / "s", tmp_path / "r.html")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,2000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(report.as_uri())
        widths = driver.execute_script("return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        headings = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        driver.save_screenshot(str(tmp_path / "shot.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert len(widths) >= 6 and all(w > 100 for w in widths)
    assert "Robustness vs faithfulness" in headings and "Examples" in headings
    assert errors == []
    assert (tmp_path / "shot.png").stat().st_size > 20_000


def test_audit_on_a_folder_of_images_with_an_unreadable_file(tmp_path):
    from PIL import Image

    from fragile.cli import main
    from fragile.data import load_foolbox_samples

    x, _ = load_foolbox_samples("cifar10")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        assert main(["audit", "--images", str(folder), "--methods", "gradient", "--eps", "8", "--steps", "2",
                     "--quiet", "--out", str(tmp_path / "audit")]) == 0
    assert (tmp_path / "audit" / "report.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["audit", "--images", str(empty), "--out", str(tmp_path / "a2")]) == 1


def test_shipped_experiments_are_valid_and_listed(capsys):
    from fragile.cli import main
    from fragile.experiments import registry
    from fragile.experiments.kinds import KINDS

    names = registry.names()
    assert {"ghorbani-fig3-cifar", "dombrowski-fig3-manipulate", "wang-fig3-table2", "wang-fig4-ssr"} <= set(names)
    for name in names:
        for reduced in (False, True):
            kind, body, meta = registry.prepare(name, reduced=reduced)
            assert kind in KINDS and meta["description"]
            if kind == "sweep":
                assert json.dumps(config_mod.resolve(body))
    _, body, _ = registry.prepare("ghorbani-fig3-cifar", reduced=True, overrides={"attack_settings.steps": 7})
    assert body["limit"] == 16 and body["attack_settings"]["steps"] == 7 and body["attack_settings"]["step_size"] == 0.5
    assert main(["run", "--list"]) == 0
    assert "ghorbani-fig6-angles" in capsys.readouterr().out
    assert main(["run", "no-such-experiment"]) == 1


def test_named_experiment_records_and_summarizes(tmp_path):
    from fragile.experiments.kinds import run_named
    from fragile.reporting.summary import summarize

    out = run_named("ghorbani-fig5-targeted", tmp_path / "r", reduced=True,
                    overrides={"limit": 2, "attack_settings.steps": 3, "methods": ["gradient"]}, quiet=True,
                    log=lambda *a: None)
    record = json.loads((out / "experiment.json").read_text())
    assert record["reduced"] and record["settings"]["limit"] == 2 and record["wall_seconds"] > 0
    text = summarize(out)
    assert "| gradient | targeted" in text and "mass_in_region" in text
    assert (out / "summary.md").read_text().split("Wall time")[0] == text.split("Wall time")[0]
    assert "Paper: " + record["paper"] in text and record["paper"]
    assert f"The paper's claim: {html.escape(record['paper'])}</p>" in (out / "report.html").read_text()
    linked = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert linked and all((out / rel).stat().st_size > 1000 for rel in linked)  # the report's PNGs, resolvable


def test_training_comparison_stores_each_model_and_resumes(tmp_path, monkeypatch):
    """Wang Fig. 4 at toy size on Fashion-MNIST / LeNet: one result per regulariser with accuracy, time and
    AUCs; a rerun reuses the stored models and retrains nothing."""
    import fragile.experiments.training_comparison as tc

    body = {"data": "fashion-mnist", "model": "lenet_fashion_mnist", "pretrained": False, "train_images": 40,
            "epochs": 1, "batch_size": 20, "regularizers": [{"name": "ce"}, {"name": "pgd", "eps": 8, "steps": 1,
                                                                                 "step_size": 8}],
            "attack_images": 2, "attack_steps": 1, "eps": [2, 8], "attack_k": 5}
    first = tc.run_training_comparison(body, tmp_path, log=lambda *_: None)
    assert set(first["models"]) == {"ce", "pgd(eps=8,step_size=8,steps=1)"}
    for row in first["models"].values():
        assert 0 <= row["test_accuracy"] <= 1 and row["seconds_per_epoch"] > 0
        assert 0 < row["attacked_images"] <= 2 and -1 <= row["auc_spearman"] <= 1
        assert 0 <= row["auc_top5_intersection"] <= 1 and 0 <= row["auc_cosine_distance"] <= 2  # attack_k = 5
        assert "auc_linf" not in row and "top5_intersection" in row["per_eps"]["8"]
    assert (tmp_path / "training_comparison.png").stat().st_size > 5_000
    monkeypatch.setattr(tc, "train", lambda *a, **k: pytest.fail("retrained a stored model"))
    again = tc.run_training_comparison(body, tmp_path, log=lambda *_: None)
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)  # NaN-safe comparison
    monkeypatch.undo()
    earlier = set((tmp_path / "parts").iterdir())
    trained = []
    real_train = tc.train
    monkeypatch.setattr(tc, "train", lambda *a, **k: trained.append(k["out"]) or real_train(*a, **k))
    tc.run_training_comparison({**body, "lr": 0.01, "regularizers": [{"name": "ce"}]}, tmp_path, log=lambda *_: None)
    assert len(trained) == 1 and trained[0].parent not in earlier  # other settings never resume these weights


def test_transfer_experiment_matches_the_attack_and_resumes(tmp_path, monkeypatch):
    """The attacked explanation's own row equals the attack loop's metrics (an independent code path);
    other explanations get rows and the figures are drawn; a rerun reuses the stored attack."""
    import fragile.experiments.transfer as tr
    from fragile import attacks
    from fragile.data.images import load_images
    from fragile.explanations import create as create_explainer
    from fragile.models import create

    model = create("resnet20_cifar10", pretrained=True)
    x, _ = load_images("foolbox:cifar10")
    x = x[:4]
    settings = {"steps": 3, "step": "adam", "lr": 2e-3, "beta": 10.0}
    res = tr.run_transfer(model, x, out=tmp_path, source={"method": "gradient"},
                          targets=[{"method": "gradient", "defence": "beta", "defence_params": {"beta": 1.0},
                                    "label": "beta 1"}, {"method": "gradient_x_input"}],
                          attack="manipulate", eps=8, attack_settings=settings, log=lambda *_: None)
    assert list(res["targets"]) == ["gradient", "beta 1", "gradient_x_input"]
    direct = attacks.run(model, create_explainer("gradient", model), x,
                         attacks.create("manipulate", target_map=attacks.saliency(
                             create_explainer("gradient", model).attribute(x.roll(1, 0)))), eps=8, **settings)
    ok = direct.success
    assert res["successes"] == int(ok.sum()) > 0
    row = res["targets"]["gradient"]
    assert row["spearman_to_original"] == pytest.approx(float(direct.metrics["spearman"][ok].mean()), abs=1e-5)
    assert row["pcc_to_target"] == pytest.approx(float(direct.metrics["target_pcc"][ok].mean()), abs=1e-5)
    # intervals: the same means, n = the kept images; paired: per image over the same images (against the attack
    # loop's per-image metrics as the independent side)
    mean, low, high, n = res["intervals"]["gradient"]["pcc_to_target"]
    assert mean == pytest.approx(row["pcc_to_target"]) and n == int(ok.sum()) and (n < 2 or low <= mean <= high)
    d, _, _, n = res["paired"]["gradient - beta 1"]["pcc_to_target"]
    assert n == int(ok.sum())
    assert d == pytest.approx(row["pcc_to_target"] - res["targets"]["beta 1"]["pcc_to_target"], abs=1e-9)
    for name in ("transfer.png", "transfer_maps.png"):
        assert (tmp_path / name).stat().st_size > 5_000
    monkeypatch.setattr(tr.attacks, "run", lambda *a, **k: pytest.fail("attacked again"))
    measured = []
    real_maps = tr.transfer_maps
    monkeypatch.setattr(tr, "transfer_maps", lambda ex, *a, **k: measured.append(ex) or real_maps(ex, *a, **k))
    beta1 = {"method": "gradient", "defence": "beta", "defence_params": {"beta": 1.0}, "label": "beta 1"}
    again = tr.run_transfer(model, x, out=tmp_path, source={"method": "gradient"},
                            targets=[beta1, {"method": "gradient_x_input"}],
                            attack="manipulate", eps=8, attack_settings=settings, log=lambda *_: None)
    assert again["targets"] == res["targets"] and measured == []  # every target reused
    changed = tr.run_transfer(model, x, out=tmp_path, source={"method": "gradient"},
                              targets=[{**beta1, "defence_params": {"beta": 3.0}}],  # same label, other beta
                              attack="manipulate", eps=8, attack_settings=settings, log=lambda *_: None)
    assert len(measured) == 1  # only the changed entry was measured
    assert changed["targets"]["beta 1"] != res["targets"]["beta 1"]


def test_report_of_a_manipulate_sweep_shows_target_similarity(tmp_path):
    from fragile.reporting.html import build_report

    run_sweep(cfg(attacks=["manipulate"], eps=[8], limit=2, attack_settings={"steps": 2}), tmp_path / "s",
              show_progress=False, log=lambda *a: None)
    page = build_report(tmp_path / "s", tmp_path / "r.html", png_dir=tmp_path / "png").read_text()
    assert "Manipulated map vs target" in page
    assert (tmp_path / "png" / "manipulate_target_boxes.png").stat().st_size > 5_000


def test_joint_report_of_two_sweeps_and_refusal_of_different_images(tmp_path):
    from fragile.cli import main
    from fragile.reporting.html import build_report

    quiet = {"show_progress": False, "log": lambda *a: None}
    run_sweep(cfg(name="a", limit=2, attacks=["topk"]), tmp_path / "a", **quiet)
    run_sweep(cfg(name="b", limit=2, attacks=["topk"], methods=["gradient_x_input"]), tmp_path / "b", **quiet)
    page = build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "r.html").read_text()
    summary = page[page.index("<h2>Summary"):]
    assert "<td>gradient</td>" in summary and "<td>gradient_x_input</td>" in summary
    run_sweep(cfg(name="c", limit=2, attacks=["topk"], images="cifar10:10"), tmp_path / "c", **quiet)
    with pytest.raises(FragileError, match="one model and image set"):
        build_report([tmp_path / "a", tmp_path / "c"], tmp_path / "r2.html")
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "r3.html")]) == 0


def test_attack_settings_k_sets_the_intersection_metric_of_every_attack(tmp_path):
    """``attack_settings.k`` fixes the k of the top-k intersection for every attack (Wang: k = 20 on
    CIFAR-10); the stored value equals a numpy count over the stored maps; configs without it keep their
    hash."""
    c = cfg(limit=2, eps=[8], attack_settings={"steps": 2, "step_size": 2.0, "k": 7}, store_arrays=True)
    assert "k" not in cfg()["attack_settings"] and config_mod.config_hash(c) != config_mod.config_hash(
        cfg(limit=2, eps=[8], attack_settings={"steps": 2, "step_size": 2.0}, store_arrays=True))
    run_sweep(c, tmp_path / "s", show_progress=False, log=lambda *_: None)
    with Store.open(tmp_path / "s") as store:
        rows = [r for r in store.rows() if r["success"]]
        assert {r["attack"] for r in rows} == {"random_sign", "topk"}
        for r in rows:
            a = store.arrays(r)
            top = [set(np.argsort(-m.ravel(), kind="stable")[:7]) for m in (a["maps"], a["maps_adv"])]
            assert r["top7_intersection"] == pytest.approx(len(top[0] & top[1]) / 7)
    from fragile.reporting.summary import summarize

    header = next(line for line in summarize(tmp_path / "s").splitlines() if line.startswith("| method | attack | eps"))
    assert "| top7_intersection |" in header and "top100" not in header


GEOMETRY_KIND = {"kind": "geometry", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 8,
                 "beta": 10.0, "iters": 12, "batch_size": 1, "betas": [1.0, 10.0], "lipschitz_images": 0,
                 "control_pairs": 50}
TRANSFER_KIND = {"kind": "transfer", "model": "resnet20_cifar10", "images": "foolbox:cifar10", "limit": 6,
                 "attack": "topk", "eps": 8, "attack_settings": {"steps": 6, "step_size": 2.0, "beta": 10.0,
                                                                "noise_control": True},
                 "source": {"method": "gradient"},
                 "targets": [{"method": "integrated_gradients", "steps": 8}, {"method": "smoothgrad", "samples": 6},
                             {"method": "gradient", "label": "gradient again"}, {"method": "uniform_gradient",
                                                                                   "samples": 6}]}


def _stored_parts(out) -> int:
    return sum(1 for p in (out / "parts").glob("*/*") if p.suffix in (".npz", ".json") and p.name != "settings.json")


@pytest.mark.parametrize(("body", "result", "arrays"), [(GEOMETRY_KIND, "geometry.json", "geometry_arrays.npz"),
                                                        (TRANSFER_KIND, "transfer.json", None)],
                         ids=["geometry", "transfer"])
def test_kill_minus_9_of_a_geometry_or_transfer_run_resumes_to_the_clean_result(tmp_path, body, result, arrays):
    """A real ``kill -9`` (not an exception) in the middle of a geometry or transfer experiment: the parts
    stored before the kill are whole, no temporary file is read back, and the rerun ends with the same
    result file (and arrays) as an uninterrupted run."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_sweep_cmd(path, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and not ((killed / "parts").exists() and _stored_parts(killed) >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / result).exists()
    before = _stored_parts(killed)
    part_dir = next(p for p in (killed / "parts").iterdir() if p.is_dir())
    stale = part_dir / "chunk.npz.999999999.tmp"  # what a writer killed before its rename leaves (pid gone)
    stale.write_bytes(b"half-written")
    for part in (killed / "parts").glob("*/*.npz"):
        with np.load(part) as f:  # every stored part is whole
            assert all(np.asarray(f[k]).size >= 0 for k in f.files)
    subprocess.run(_sweep_cmd(path, killed), check=True, capture_output=True)
    assert not list(killed.rglob("*.tmp")), "a killed writer's temporary file was left behind"
    subprocess.run(_sweep_cmd(path, tmp_path / "clean"), check=True, capture_output=True)
    assert before >= 2 and _stored_parts(killed) == _stored_parts(tmp_path / "clean")
    timings = ("attack_seconds", "seconds")
    a, b = (json.loads((folder / result).read_text()) for folder in (killed, tmp_path / "clean"))
    assert {k: v for k, v in a.items() if k not in timings} == {k: v for k, v in b.items() if k not in timings}
    images = json.loads((killed / "images.json").read_text())  # the summary states the classes covered
    n = body["limit"]  # <= 10: the class-balanced order gives each image its own class
    assert images == {"images": n, "classes": f"{n} classes, 1 image each"}
    assert f"Images: {n}, {n} classes, 1 image each." in (killed / "summary.md").read_text()
    if arrays:
        with np.load(killed / arrays) as fa, np.load(tmp_path / "clean" / arrays) as fb:
            assert set(fa.files) == set(fb.files)
            for key in fa.files:
                np.testing.assert_array_equal(fa[key], fb[key])


def test_new_store_moves_the_old_results_aside_instead_of_mixing_or_deleting(tmp_path, capsys):
    from fragile.cli import main

    body = {**SMALL, "limit": 2, "attacks": ["random_sign"], "eps": [8]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    store = tmp_path / "s"
    assert main(["run", str(path), "--store", str(store), "--quiet"]) == 0
    path.write_text(yaml.safe_dump({**body, "eps": [4]}))
    assert main(["run", str(path), "--store", str(store), "--quiet"]) == 1
    assert "--new-store" in capsys.readouterr().err
    assert main(["run", str(path), "--store", str(store), "--quiet", "--new-store"]) == 0
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("s.replaced-")]
    assert len(moved) == 1 and "moved the old results" in capsys.readouterr().out
    with Store.open(moved[0]) as old, Store.open(store) as new:
        assert {r["eps"] for r in old.rows()} == {8.0} and {r["eps"] for r in new.rows()} == {4.0}
    from fragile.experiments.kinds import set_aside
    from fragile.experiments.store import lock

    fd = lock(store, 0)  # a writer holds the lock: nothing is moved
    try:
        with pytest.raises(FragileError, match="locked"):
            set_aside(store)
    finally:
        os.close(fd)
    assert store.is_dir()


def test_every_kind_takes_threads(tmp_path, monkeypatch):
    """``threads`` is a setting of every kind, not only of sweeps: set for the run (the caller's count back after
    it), a bad value refused first."""
    from fragile.experiments import kinds

    seen = []
    for name, run in list(kinds.KINDS.items()):
        def recorded(*a, _run=run, **kw):
            seen.append(torch.get_num_threads())
            return _run(*a, **kw)
        monkeypatch.setitem(kinds.KINDS, name, recorded)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with pytest.raises(FragileError, match="threads must be a positive integer"):
            kinds.run_named("ghorbani-fig4-influence", tmp_path / "bad", overrides={"threads": 0}, log=lambda *a: None)
        out = kinds.run_named("ghorbani-fig4-influence", tmp_path / "r",
                              overrides={"threads": 1, "n_attack": 2, "eps_list": [8]}, log=lambda *a: None)
        assert seen == [1] and (out / "influence.json").exists()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_transfer_attack_in_stored_chunks_resumes_and_matches_one_attack(tmp_path, monkeypatch):
    """``chunk``: the attack runs and is stored a few images at a time (a killed run keeps the finished chunks);
    the chunks give the one-batch attack's result (fixed beta, so nothing depends on the batch), and a rerun
    attacks nothing again."""
    import fragile.experiments.transfer as tr
    from fragile.data.images import load_images
    from fragile.models import create

    model = create("resnet20_cifar10", pretrained=True)
    x, _ = load_images("foolbox:cifar10")
    x = x[:5]
    kw = {"source": {"method": "gradient"}, "targets": [{"method": "gradient_x_input"}], "attack": "manipulate",
          "eps": 8, "attack_settings": {"steps": 3, "step": "adam", "lr": 2e-3, "beta": 10.0}, "log": lambda *_: None}
    whole = tr.run_transfer(model, x, out=tmp_path / "whole", **kw)
    chunked = tr.run_transfer(model, x, out=tmp_path / "chunked", chunk=2, **kw)
    stored = sorted(p.name for p in (tmp_path / "chunked" / "parts").glob("*/attack-*.npz"))
    assert stored == ["attack-0-2.npz", "attack-2-4.npz", "attack-4-5.npz"]
    assert chunked["successes"] == whole["successes"]
    for name, row in whole["targets"].items():
        for metric, value in row.items():
            assert chunked["targets"][name][metric] == pytest.approx(value, abs=1e-5), (name, metric)
    (next((tmp_path / "chunked" / "parts").glob("*/attack-2-4.npz"))).unlink()  # as if killed during that chunk
    calls = []
    real = tr.attacks.run
    monkeypatch.setattr(tr.attacks, "run", lambda m, e, xs, *a, **k: calls.append(len(xs)) or real(m, e, xs, *a, **k))
    tr.run_transfer(model, x, out=tmp_path / "chunked", chunk=2, **kw)
    assert calls == [2]  # only the missing chunk is attacked again
    with pytest.raises(FragileError, match="chunk must be a positive integer"):
        tr.run_transfer(model, x, out=tmp_path / "bad", chunk=0, **kw)
