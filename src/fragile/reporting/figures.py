"""Sweep figures in the papers' forms, from store rows (lists of dicts) only, and the row helpers the
HTML report and summary.md share: every number is a mean over the successful rows (success = 1) of
the non-NaN values, with a 95% percentile-bootstrap interval over images (fragile.metrics.statistics).

- metric vs eps: mean and its 95% bootstrap interval, per attack and method (Ghorbani Fig. 3)
- box plots of map similarities per method (Dombrowski Fig. 3)
- AUC over log eps per method and attack (Wang Fig. 3/4)
- robustness vs faithfulness scatter
"""

from __future__ import annotations

import io
from collections import defaultdict

import numpy as np

from fragile.metrics.statistics import Interval, bootstrap_ci
from fragile.reporting.panels import _plt


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (100 dpi); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return buf.getvalue()


def series_name(row: dict) -> str:
    """The series a row belongs to: its method, or ``'method + defence'`` when a defence was applied."""
    return row["method"] if row["defence"] == "none" else f"{row['method']} + {row['defence']}"


def group_rows(rows) -> dict[tuple, list[dict]]:
    """``{(series, attack, eps): rows}``: a sweep's rows grouped by what a table row or a curve point shows."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((series_name(r), r["attack"], r["eps"]), []).append(r)
    return groups


def image_id(row: dict):
    """The image a row is about: its stored ``image_id`` (stable across stores of the same image spec), else its
    index in the sweep (old stores)."""
    return row.get("image_id", row["image"])


def value(row: dict, metric: str) -> float:
    """The metric of one row as a float; NaN when absent or None (new stores store NaN / None for the
    metrics of failed images)."""
    v = row.get(metric)
    return float("nan") if v is None else float(v)


def success_values(rows, metric: str) -> np.ndarray:
    """(n_rows,) the metric of each row, NaN for failed rows (success = 0): never count a failure."""
    return np.array([value(r, metric) if r["success"] else np.nan for r in rows], dtype=float)


def mean_ci(rows, metric: str) -> Interval:
    """Mean of the metric over the successful rows (NaN ignored) with its 95% bootstrap interval."""
    return bootstrap_ci(success_values(rows, metric))


def ok_text(rows) -> str:
    """``successes/images`` of a group of rows."""
    return f"{sum(bool(r['success']) for r in rows)}/{len(rows)}"


def iterations_text(rows) -> str:
    """The iteration counts the rows ran, '/' between different ones ('-' when none is recorded)."""
    its = sorted({r["iterations"] for r in rows if r.get("iterations") is not None})
    return "/".join(map(str, its)) or "-"


def not_converged(rows) -> tuple[int, int] | None:
    """(rows with converged = 0, rows where convergence applies), or None when no row records it (old
    stores, random attacks)."""
    known = [r for r in rows if r.get("converged") is not None]
    return (sum(not int(r["converged"]) for r in known), len(known)) if known else None


def convergence_warning(rows) -> str | None:
    """A sentence saying how many attacked images had not converged (still improving in the last 10% of
    iterations), or ``None`` when all converged or no row records convergence.
    """
    nc = not_converged(rows)
    if not nc or not nc[0]:
        return None
    return (f"{nc[0]} of {nc[1]} attacked images had not converged (still improving in the last 10% of "
            "iterations): raise steps")


def betas(rows) -> list[float]:
    """The surrogate betas the attacks used (rows with a ``beta``; a schedule counts each of its values), sorted."""
    out = set()
    for r in rows:
        b = r.get("beta")
        for v in (b if isinstance(b, (list, tuple)) else [b]):
            if v is not None and v == v:
                out.add(float(v))
    return sorted(out)


def failure_reasons(rows) -> dict[str, int]:
    """{reason: count} over the failed rows that record why they failed."""
    out: dict[str, int] = defaultdict(int)
    for r in rows:
        if not r["success"] and r.get("reason"):
            out[str(r["reason"])] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def grouped(rows, keys, metric):
    """{key tuple: np.array of the metric over successful rows, NaN dropped}."""
    out = defaultdict(list)
    for r in rows:
        v = value(r, metric)
        if r["success"] and v == v:
            out[tuple(series_name(r) if k == "series" else r[k] for k in keys)].append(v)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


def metric_vs_eps(rows, metric: str) -> bytes:
    """One panel per attack, one line per series: the mean over successful images at each eps with its
    95% bootstrap interval as the band; the legend gives n = successes (range over eps) of images."""
    plt = _plt()
    attacks = sorted({r["attack"] for r in rows})
    fig, axes = plt.subplots(1, len(attacks), figsize=(3.6 * len(attacks), 3), squeeze=False)
    g = grouped(rows, ("attack", "series", "eps"), metric)
    images = defaultdict(int)
    for r in rows:
        images[(r["attack"], series_name(r), r["eps"])] += 1
    for ax, attack in zip(axes[0], attacks):
        for series in sorted({k[1] for k in g if k[0] == attack}):
            eps = sorted(k[2] for k in g if k[0] == attack and k[1] == series)
            cis = [bootstrap_ci(g[(attack, series, e)]) for e in eps]
            ns = [c.n for c in cis]
            total = max(images[(attack, series, e)] for e in eps)
            n = f"{min(ns)}" if min(ns) == max(ns) else f"{min(ns)}-{max(ns)}"
            ax.plot(eps, [c.mean for c in cis], "o-", label=f"{series} (n = {n} of {total})")
            ax.fill_between(eps, [c.low for c in cis], [c.high for c in cis], alpha=0.2)
        ax.set_title(f"{attack}: mean, 95% CI", fontsize=9)
        ax.set_xlabel("eps (of 255)")
        ax.set_ylabel(metric)
    axes[0, -1].legend(fontsize=6)
    fig.tight_layout()
    return png_bytes(fig)


def similarity_boxes(rows, metrics=("ssim", "pcc", "mse")) -> bytes:
    """PNG of one box plot per metric (default SSIM, PCC, MSE of the maps before and after the attack; Dombrowski
    Fig. 3), one box per series over its successful rows, the number of values in each label.
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        g = grouped(rows, ("series",), metric)
        names = sorted(g)
        if not names:
            ax.set_title(f"{metric}: no values stored", fontsize=9)
            continue
        ax.boxplot([g[n] for n in names], tick_labels=[f"{n[0]} (n = {g[n].size})" for n in names])
        ax.tick_params(axis="x", labelsize=6, rotation=30)
        ax.set_title(metric, fontsize=9)
    fig.tight_layout()
    return png_bytes(fig)


def auc_bars(rows, metrics=("spearman",)) -> tuple[bytes, dict]:
    """Wang et al. 2020, Table 2: the mean over images of each image's normalised area under the metric vs
    log2(eps) with its 95% interval as an error bar (``fragile.reporting.areas``: images that kept their label at
    every eps), one panel per metric, grouped bars: one group per series, one bar per attack. Returns
    (png, {metric: {(series, attack): Interval}})."""
    from fragile.reporting.areas import area_intervals

    plt = _plt()
    tables = {metric: area_intervals(rows, metric) for metric in metrics}
    series = sorted({s for t in tables.values() for s, _ in t})
    attacks = sorted({a for t in tables.values() for _, a in t})
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.0, 0.5 * len(series) * len(attacks) + 1.5) * len(metrics)
                                                       ** 0.8, 3.4), squeeze=False)
    width = 0.8 / max(len(attacks), 1)
    for ax, metric in zip(axes[0], metrics):
        for j, attack in enumerate(attacks):
            cells = [tables[metric].get((s, attack)) for s in series]
            means = np.array([c.mean if c else np.nan for c in cells])
            err = np.array([[c.mean - c.low, c.high - c.mean] if c else [np.nan, np.nan] for c in cells]).T
            ax.bar(np.arange(len(series)) + j * width, means, width, yerr=np.nan_to_num(err), capsize=2, label=attack)
        ax.set_xticks(np.arange(len(series)) + width * (len(attacks) - 1) / 2)
        ax.set_xticklabels([s.replace("(", "\n(") for s in series], fontsize=5)
        ax.set_title(f"area of {metric} over log2 eps (per image, 95% CI)", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return png_bytes(fig), tables


def robustness_faithfulness(points: dict[str, tuple[float, float]]) -> bytes:
    """PNG of the scatter of ``points``, ``{series: (deletion AUC of the class probability, Spearman under
    attack)}``: lower x = more faithful, higher y = more robust.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, (faith, rob) in points.items():
        ax.scatter(faith, rob)
        ax.annotate(name, (faith, rob), fontsize=6)
    ax.set_xlabel("deletion AUC of class probability (lower = more faithful)")
    ax.set_ylabel("robustness (Spearman under attack)")
    fig.tight_layout()
    return png_bytes(fig)


def example_panel(examples: list[tuple[str, dict, dict]]) -> bytes:
    """Rows of (title, row, arrays): image, perturbed image, map before, map after."""
    plt = _plt()
    fig, axes = plt.subplots(len(examples), 4, figsize=(7, 1.9 * len(examples)), squeeze=False)
    for i, (title, row, arr) in enumerate(examples):
        for j, (key, name) in enumerate((("x", "image"), ("x_adv", f"eps {row['eps']:g}"), ("maps", "map"),
                                          ("maps_adv", "map after"))):
            a = arr[key]
            axes[i, j].imshow(np.clip(a.transpose(1, 2, 0), 0, 1) if a.ndim == 3 and a.shape[0] == 3 else
                              (a[0] if a.ndim == 3 else a), cmap=None if a.ndim == 3 and a.shape[0] == 3 else "inferno")
            axes[i, j].set_title(f"{title}: {name}" if j == 0 else name, fontsize=6)
            axes[i, j].axis("off")
    fig.tight_layout()
    return png_bytes(fig)


def worst_vs_random(checks: list[dict]) -> bytes:
    """One panel per random-perturbation metric (``STORE/checks``): per method, the mean over images of the
    metric under random noise beside the attack's worst case in the same ball (95% bootstrap CIs, log scale),
    the mean ratio worst / random written above each pair."""
    plt = _plt()
    metrics = [m for m in ("max_sensitivity", "avg_sensitivity", "local_lipschitz", "relative_input_stability",
                           "relative_output_stability") if any(m in c.get("worst_vs_random", {}) for c in checks)]
    names = [series_name(c) for c in checks]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(2.9 * max(len(metrics), 1) + 0.6, 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for j, (kind, color) in enumerate((("random", "tab:gray"), ("worst", "tab:red"))):
            cis = [bootstrap_ci(c["worst_vs_random"][metric][kind]) if metric in c.get("worst_vs_random", {})
                   else bootstrap_ci([]) for c in checks]
            means = np.array([ci.mean for ci in cis])
            err = np.array([[max(ci.mean - ci.low, 0), max(ci.high - ci.mean, 0)] if np.isfinite(ci.low) else [0, 0]
                            for ci in cis]).T
            ax.bar(np.arange(len(names)) + (j - 0.5) * 0.4, means, 0.4, yerr=err, color=color, capsize=2,
                   label="random noise" if kind == "random" else "worst case (attack)")
        for i, c in enumerate(checks):
            ratio = bootstrap_ci(c.get("worst_vs_random", {}).get(metric, {}).get("ratio", []))
            if ratio.n:
                ax.annotate(f"x{ratio.mean:.1f}", (i, 1), xycoords=("data", "axes fraction"), ha="center", va="top",
                            fontsize=7)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(names)))
        ax.set_xticklabels([n.replace("(", "\n(") for n in names], fontsize=5)
        ax.set_title(metric.replace("_", " "), fontsize=8)
    axes[0, 0].legend(fontsize=6, loc="lower left")
    eps = checks[0]["eps"] if checks else float("nan")
    fig.suptitle(f"random noise vs the worst case in the same ball (eps {eps:g}/255; x = worst / random)", fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


def sanity_curves(checks: list[dict]) -> bytes:
    """Model-parameter randomisation (Adebayo et al. 2018 Fig. 2/4): mean Spearman (solid) and SSIM (dashed)
    of |maps| with the original maps vs the layers randomised, one panel per mode, one colour per method,
    95% bootstrap bands for the Spearman."""
    plt = _plt()
    modes = [m for m in ("cascading", "independent") if any(m in c.get("sanity", {}) for c in checks)]
    fig, axes = plt.subplots(1, max(len(modes), 1), figsize=(4.2 * max(len(modes), 1), 3.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for i, c in enumerate(checks):
            s = c.get("sanity", {}).get(mode)
            if not s:
                continue
            color = f"C{i}"
            steps = list(range(1, len(s["layers"]) + 1))
            x = ([0, *s["randomised"]] if mode == "cascading" else steps)
            sp = [bootstrap_ci(v) for v in s["spearman"]]
            ss = [bootstrap_ci(v) for v in s["ssim"]]
            first = [1.0] if mode == "cascading" else []
            ax.plot(x, first + [v.mean for v in sp], "o-", color=color, label=f"{series_name(c)} (n = {sp[0].n})")
            ax.fill_between(x, first + [v.low for v in sp], first + [v.high for v in sp], color=color, alpha=0.15)
            ax.plot(x, first + [v.mean for v in ss], "s--", color=color, alpha=0.7)
        ax.axhline(0.5, color="tab:red", lw=0.8, ls=":")
        if mode == "cascading":
            ax.set_xlabel("layers re-initialised, from the top (cumulative)")
        else:
            s = next(c["sanity"][mode] for c in checks if mode in c.get("sanity", {}))
            ax.set_xticks(range(1, len(s["layers"]) + 1))
            ax.set_xticklabels([f"{g[0]}\n({len(g)})" for g in s["layers"]], fontsize=5)
            ax.set_xlabel("group re-initialised alone (its top layer, layers in it)")
        ax.set_ylabel("similarity to the original map")
        ax.set_ylim(-0.3, 1.05)
        ax.set_title(f"{mode}: Spearman (solid), SSIM (dashed) of |maps|", fontsize=8)
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return png_bytes(fig)
