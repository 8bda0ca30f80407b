"""Reports state means with 95% bootstrap intervals over successful images, n successes / n images, and
a verdict only where the paired interval excludes 0; rows of old stores (no reason / converged / beta)
and new ones (NaN metrics on failures, those keys present) both work. Synthetic rows, no attacks run."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fragile.metrics import bootstrap_ci, paired_difference_ci
from fragile.reporting import figures
from fragile.reporting.html import render, summary, verdict
from fragile.reporting.summary import summarize, sweep_summary

CFG = {"name": "synthetic", "model": "resnet20_cifar10", "images": "foolbox:cifar10"}


def rows_of(values: dict, new: bool = True, fail: tuple = (), converged=None, beta=None) -> list[dict]:
    """One row per image for each {(method, attack, eps): spearman values (n,)}; images in ``fail``
    failed. ``new``: failed rows carry NaN metrics and the reason / converged / beta keys; old rows keep
    (meaningless) metrics on failures, here -5 so any leak into a mean is visible."""
    out = []
    for (method, attack, eps), vals in values.items():
        for i, v in enumerate(vals):
            ok = i not in fail
            row = {"image": i, "image_id": f"img{i}", "method": method, "attack": attack, "eps": eps,
                   "defence": "none", "seed": 0, "success": int(ok), "label": 1, "label_adv": 1 if ok else 2,
                   "best_iteration": 3, "steps": 10, "seconds": 0.5,
                   "spearman": float(v) if ok else (np.nan if new else -5.0), "image_ssim": 0.99}
            if new:
                row.update(reason=None if ok else "label changed", beta=beta,
                           converged=None if attack == "random_sign" else (converged(i) if converged else 1))
            out.append(row)
    return out


def two_methods(diff: float, noise: float, n: int = 16, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, n)
    return {("gradient", "topk", 8): base + diff + rng.normal(0, noise, n), ("gradient", "random_sign", 8): base + 0.3,
            ("ig", "topk", 8): base, ("ig", "random_sign", 8): base + 0.3}


@pytest.mark.parametrize("new", [True, False])
def test_summary_table_shows_mean_and_interval_over_successes_only(new):
    vals = {("gradient", "topk", 8): np.linspace(0.1, 0.9, 16) ** 2}
    rows = rows_of(vals, new=new, fail=(2, 5))
    header, table = summary(rows, ["spearman"])
    ok = np.delete(vals[("gradient", "topk", 8)], [2, 5])
    assert header == ["method", "attack", "eps", "ok", *(["not converged"] if new else []), "spearman"]
    assert table[0][3] == "14/16" and table[0][-1] == bootstrap_ci(ok).text()
    assert float(table[0][-1].split()[0]) == pytest.approx(ok.mean(), rel=1e-3)  # the mean, not the median
    assert abs(np.median(ok) - ok.mean()) > 0.01


def test_verdict_claims_a_winner_only_when_the_paired_interval_excludes_zero():
    clear = verdict(rows_of(two_methods(diff=0.02, noise=0.002)))
    assert "gradient is more robust than ig (mean difference 0.02" in clear and "n = 16)" in clear
    assert "<b>gradient</b> is the most robust explanation here" in clear
    assert "worst attack topk, n = 16/16" in clear  # random_sign is each method's easier attack
    noisy = verdict(rows_of(two_methods(diff=0.02, noise=0.2)))
    assert "gradient and ig are not distinguishable at n = 16" in noisy and "more robust than" not in noisy
    failed = verdict(rows_of(two_methods(diff=0.02, noise=0.002), fail=(0, 1, 2)))
    assert "n = 13)" in failed and "n = 13/16" in failed  # failed images leave the pairs
    assert "mean difference 0.02" in verdict(rows_of(two_methods(diff=0.02, noise=0.002), new=False, fail=(0,)))


def test_verdict_pairs_images_whose_values_vary_more_than_the_difference():
    """A difference of 0.02 between 16 images that vary from 0.2 to 0.8: the unpaired intervals overlap,
    the paired one (same image, same seed) resolves it."""
    rows = rows_of(two_methods(diff=0.02, noise=0.0))
    worst = {m: figures.mean_ci([r for r in rows if r["method"] == m and r["attack"] == "topk"], "spearman")
             for m in ("gradient", "ig")}
    assert worst["gradient"].low < worst["ig"].high
    assert "gradient is more robust than ig" in verdict(rows)


def test_verdict_escapes_names_and_handles_empty_and_single_method():
    evil = "<img src=x onerror=alert(1)>"
    rows = rows_of({(evil, "topk", 8): [0.5, 0.6, 0.7], ("ig", "topk", 8): [0.4, 0.5, 0.6]})
    text = verdict(rows)
    assert evil not in text and "&lt;img" in text
    assert verdict([]) == "No results stored yet."
    assert verdict(rows_of({("ig", "topk", 8): [0.5, 0.6]}, fail=(0, 1))) == "No attack found a label-preserving perturbation."
    single = verdict(rows_of({("ig", "topk", 8): [0.5, 0.6, 0.7]}))
    assert "ig: 0.600 [" in single and "robust than" not in single


def test_report_page_shows_intervals_warnings_and_beta():
    not_conv = lambda i: int(i % 4 != 0)  # noqa: E731  images 0, 4, 8, 12 still improving
    rows = rows_of({**two_methods(0.02, 0.002), **{(m, a, 2): v for (m, a, _), v in two_methods(0.01, 0.01).items()}},
                   fail=(3,), converged=not_conv, beta=10.0)
    page = render([CFG], rows)
    cell = re.compile(r"<td>-?\d\.\d+ \[-?\d\.\d+, -?\d\.\d+\]</td>")
    table = page[page.index("<h2>Summary"):]
    assert "95% bootstrap CI" in table and len(cell.findall(table)) == 8 * 2  # 8 groups x (spearman, image_ssim)
    assert "<td>15/16</td>" in table and "<th>not converged</th>" in table and "<td>4</td>" in table
    k = 4 * 4  # images 0, 4, 8, 12 in each of the 4 topk groups (2 methods x 2 eps); random_sign rows: None
    assert (f"{k} of 64 attacked images had not converged (still improving in the last 10% of iterations): "
            "raise steps") in page
    assert "Surrogate beta used by the attacks (softplus instead of ReLU): 10." in page
    assert "Why attacks failed: label changed (8)." in page
    assert "spearman vs eps (mean, 95% CI)" in page
    old = render([CFG], rows_of(two_methods(0.02, 0.002), new=False, fail=(3,)))
    assert "not converged" not in old and "Surrogate beta" not in old and "Why attacks failed" not in old


def test_metric_vs_eps_draws_intervals_and_skips_nan(monkeypatch):
    rows = rows_of({("ig", "topk", 2): [0.9, 0.8, 0.85, 0.7], ("ig", "topk", 8): [0.5, 0.6, 0.4, 0.55]}, fail=(1,))
    bands, labels = [], []
    plt = figures._plt()
    real_fill, real_plot = plt.Axes.fill_between, plt.Axes.plot
    monkeypatch.setattr(plt.Axes, "fill_between", lambda self, x, lo, hi, **kw: bands.append((lo, hi)) or real_fill(
        self, x, lo, hi, **kw))
    monkeypatch.setattr(plt.Axes, "plot", lambda self, *a, **kw: labels.append(kw.get("label")) or real_plot(self, *a, **kw))
    png = figures.metric_vs_eps(rows, "spearman")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    lo, hi = bands[0]
    expected = [bootstrap_ci([0.9, 0.85, 0.7]), bootstrap_ci([0.5, 0.4, 0.55])]
    assert list(lo) == [c.low for c in expected] and list(hi) == [c.high for c in expected]
    assert labels == ["ig (n = 3 of 4)"]


def test_summary_md_states_means_with_intervals_and_warns(tmp_path):
    rows = rows_of({("ig", "topk", 2): np.linspace(0, 1, 8) ** 3, ("ig", "topk", 8): np.linspace(0, 1, 8) ** 4},
                   fail=(0,), converged=lambda i: int(i != 5), beta=3.0)
    text = sweep_summary(rows)
    assert "Medians" not in text and "Means over images with a label-preserving result, 95% bootstrap CI" in text
    assert text.startswith("**Warning: 2 of 16 attacked images had not converged")
    assert "Surrogate beta used by the attacks: 3." in text and "Why attacks failed: label changed (2)." in text
    assert figures.betas([{"beta": (10.0, 100.0)}, {"beta": 3}, {"beta": None}, {}]) == [3.0, 10.0, 100.0]
    header = next(line for line in text.splitlines() if line.startswith("| method | attack | eps"))
    assert header.startswith("| method | attack | eps | ok | iterations | not converged | spearman |")
    line = next(line for line in text.splitlines() if line.startswith("| ig | topk | 2 |"))
    assert f"| 7/8 | - | 1 | {bootstrap_ci((np.linspace(0, 1, 8) ** 3)[1:]).text()} |" in line
    assert "Area under each image's metric over log2 eps" in text


def test_summary_shows_the_median_output_change_with_its_interval():
    """Dombrowski states the median largest softmax change: the summary has it beside the mean, over successes."""
    changes = np.array([0.001, 0.0002, 0.03, 0.0005, 0.0004, 0.2, 0.0001, 0.0003])
    rows = rows_of({("gradient", "manipulate", 255): np.linspace(0.1, 0.9, 8)}, fail=(5,))
    for r, c in zip(rows, changes):
        r["output_change"] = float(c) if r["success"] else np.nan
    text = sweep_summary(rows)
    header = next(line for line in text.splitlines() if line.startswith("| method | attack | eps"))
    line = next(line for line in text.splitlines() if line.startswith("| gradient | manipulate |"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in line.split("|")]))
    kept = np.delete(changes, 5)
    assert cells["output_change (median)"].startswith(f"{np.median(kept):.5f}")  # the failed 0.2 never enters
    assert cells["output_change (median)"] == bootstrap_ci(kept, statistic="median").text()
    assert cells["output_change"] == bootstrap_ci(kept).text()
    assert "columns '(median)': the median with its bootstrap CI" in text


def test_areas_over_log_eps_per_image_against_numpy():
    """Wang Table 2 per image: numpy's trapezoid over log2 eps / the range; an image failed at any eps has no area;
    the pairs differ per image on the images both series have."""
    from fragile.reporting.areas import area_intervals, area_pairs, area_tables, image_areas

    rng = np.random.default_rng(3)
    eps = [2, 4, 8, 16]
    ig = rng.uniform(0, 1, (4, 10))
    sg = ig + 0.2 + rng.normal(0, 0.01, (4, 10))
    values = {("ig", "topk", e): ig[j] for j, e in enumerate(eps)} | {("sg", "topk", e): sg[j] for j, e in enumerate(eps)}
    rows = [r for r in rows_of(values, fail=()) if not (r["method"] == "ig" and r["eps"] == 8 and r["image"] == 4)]
    for r in rows:  # image 7 fails at one eps of sg
        if r["method"] == "sg" and r["eps"] == 4 and r["image"] == 7:
            r.update(success=0, spearman=np.nan)
    x = np.log2(eps)
    expect = {m: np.trapezoid(v, x, axis=0) / (x[-1] - x[0]) for m, v in (("ig", ig), ("sg", sg))}
    areas = image_areas(rows, "spearman")
    assert sorted(areas[("ig", "topk")]) == [f"img{i}" for i in range(10) if i != 4]  # no row at eps 8: no curve
    assert sorted(areas[("sg", "topk")]) == [f"img{i}" for i in range(10) if i != 7]  # failed at eps 4
    for m in ("ig", "sg"):
        for img, a in areas[(m, "topk")].items():
            assert abs(a - expect[m][int(img[3:])]) < 1e-12
    mean = area_intervals(rows, "spearman")[("sg", "topk")]
    assert mean.n == 9 and abs(mean.mean - np.mean([expect["sg"][i] for i in range(10) if i != 7])) < 1e-12
    diff = area_pairs(rows, "spearman")[("ig", "sg", "topk")]
    both = [i for i in range(10) if i not in (4, 7)]
    assert diff.n == 8 and abs(diff.mean - np.mean(expect["ig"][both] - expect["sg"][both])) < 1e-12
    assert diff.high < 0  # sg is 0.2 higher on every image
    means, diffs = area_tables(rows, ["spearman"])
    assert [r[:2] for r in means] == [["ig", "topk"], ["sg", "topk"]] and diffs[0][:2] == ["ig - sg", "topk"]
    assert diffs[0][2].endswith("(n = 8)")
    png, bars = figures.auc_bars(rows, ["spearman"])  # the report's figure shows the same intervals
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and bars["spearman"][("sg", "topk")] == mean


def test_reports_read_an_old_store(tmp_path):
    """A store through Store.write_unit with rows that give no reason / converged / beta (as old stores):
    report and summary read it, failed rows' metrics never show."""
    from fragile.experiments.store import Store
    from fragile.reporting.html import build_report

    rows = rows_of(two_methods(0.05, 0.01, n=6), new=False, fail=(2,))
    with Store.create_or_open(tmp_path / "s", CFG, "h0") as store:
        for unit, r in enumerate(rows):
            meta = {k: r[k] for k in ("image", "image_id", "method", "attack", "eps", "defence", "seed", "success",
                                      "label", "label_adv", "best_iteration", "steps", "seconds")}
            store.write_unit(f"u{unit}", [{**meta, "metrics": {"spearman": r["spearman"], "image_ssim": 0.99}}], None, 0.1)
    page = build_report(tmp_path / "s", tmp_path / "r.html").read_text()
    assert "gradient is more robust than ig" in page and "<td>5/6</td>" in page
    text = summarize(tmp_path / "s")
    assert "| gradient | topk | 8 | 5/6 |" in text and "-5" not in text


def _store_of(folder, rows):
    from fragile.experiments.store import Store

    with Store.create_or_open(folder, CFG, "h0") as store:
        for unit, r in enumerate(rows):
            meta = {k: r[k] for k in ("image", "image_id", "method", "attack", "eps", "defence", "seed", "success",
                                      "label", "label_adv", "best_iteration", "steps", "seconds")}
            store.write_unit(f"u{unit}", [{**meta, "metrics": {"spearman": r["spearman"]}}], None, 0.1)
    return folder


def test_summarize_joins_stores_on_the_same_images(tmp_path):
    """Two stores of other series on the same images: one summary whose paired comparison spans them (the
    difference per image, numpy as the oracle); same series twice, or no common image: refused."""
    from fragile.errors import FragileError

    values = two_methods(0.05, 0.01, n=8)
    a = _store_of(tmp_path / "a", rows_of({k: v for k, v in values.items() if k[0] == "gradient"}))
    b = _store_of(tmp_path / "b", rows_of({k: v for k, v in values.items() if k[0] == "ig"}))
    text = summarize(a, joined=[b])
    assert f"Joined with `{b}`" in text
    line = next(line for line in text.splitlines() if line.startswith("| gradient - ig | topk | 8 |"))
    diff = paired_difference_ci(values[("gradient", "topk", 8)], values[("ig", "topk", 8)])
    assert diff.text() in line and "(n = 8)" in line
    with pytest.raises(FragileError, match="both hold gradient"):
        summarize(a, joined=[a])
    other = rows_of({("ig", "topk", 8): values[("ig", "topk", 8)]})
    for r in other:
        r["image_id"] = "x" + r["image_id"]
    with pytest.raises(FragileError, match="share no image"):
        summarize(a, joined=[_store_of(tmp_path / "c", other)])
    with pytest.raises(FragileError, match="not a result store"):
        summarize(a, joined=[tmp_path])


def test_summarize_versus_pairs_one_experiment_under_two_settings(tmp_path):
    """``--versus``: the same (series, attack, eps) in two stores (e.g. a cheap schedule against the paper's),
    this store minus the other per image over the images both kept (numpy as the oracle for the mean); the
    groups only one store holds are left out; itself, no common group or no store: refused."""
    from fragile.errors import FragileError

    rng = np.random.default_rng(3)
    cheap, paper = rng.uniform(0.0, 0.3, 8), rng.uniform(0.0, 0.3, 8)
    a = _store_of(tmp_path / "a", rows_of({("gradient", "topk", 8): cheap}, fail=(2,)))
    b = _store_of(tmp_path / "b", rows_of({("gradient", "topk", 8): paper, ("ig", "topk", 8): paper}, fail=(5,)))
    text = summarize(a, versus=b)
    assert f"Compared with `{b}`" in text and "Compute time of the finished units: 1 s / 2 s (0.50x)" in text
    line = next(line for line in text.splitlines() if line.startswith("| gradient | topk | 8 | - / - | 0.5 / 0.5 |"))
    keep = [i for i in range(8) if i not in (2, 5)]
    diff = paired_difference_ci(np.where(np.isin(range(8), (2, 5)), np.nan, cheap), paper)
    assert diff.n == 6 and diff.mean == pytest.approx(float(np.mean(cheap[keep] - paper[keep])))
    assert f"{diff.text()} (n = 6)" in line
    assert not any(line.startswith("| ig | topk") for line in text.split("Compute time")[1].splitlines())
    with pytest.raises(FragileError, match="against itself"):
        summarize(a, versus=a)
    with pytest.raises(FragileError, match=r"share no \(series"):
        summarize(a, versus=_store_of(tmp_path / "c", rows_of({("ig", "topk", 8): paper})))
    with pytest.raises(FragileError, match="not a result store"):
        summarize(a, versus=tmp_path)
