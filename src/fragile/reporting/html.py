"""``fragile report STORE -o report.html``: one self-contained HTML file (figures embedded as PNG data
URIs), made from the store alone. Every string that came from a user (names, paths) is escaped."""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fragile.errors import FragileError
from fragile.experiments.store import Store
from fragile.metrics import compare, topk_names
from fragile.reporting import figures

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#555}
.warn{color:#a40000;font-weight:bold}"""


def _embed(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary(rows: list[dict], metrics: list[str]) -> tuple[list[str], list[list]]:
    """(header, rows) of the summary table: per series / attack / eps, ``ok`` = successes/images, the
    count of not-converged rows (when the store records convergence) and each metric as
    ``mean [low, high]`` (95% bootstrap interval over the successful images)."""
    groups = figures.group_rows(rows)
    convergence = figures.not_converged(rows) is not None
    header = ["method", "attack", "eps", "ok", *(["not converged"] if convergence else []), *metrics]
    out = []
    for (series, attack, eps), rs in sorted(groups.items()):
        nc = figures.not_converged(rs)
        out.append([series, attack, eps, figures.ok_text(rs), *([nc[0] if nc else "-"] if convergence else []),
                    *(figures.mean_ci(rs, m).text() for m in metrics)])
    return header, out


def verdict(rows: list[dict], metric: str = "spearman", higher_is_better: bool = True) -> str:
    """Which method keeps its map best under the strongest setting: at the largest eps, each series'
    worst attack (lowest mean ``metric`` over successful images); "X is more robust than Y" only where the
    paired bootstrap interval of the difference (same image and seed, each series' worst attack)
    excludes 0. Returns HTML with every name escaped."""
    if not rows:
        return "No results stored yet."
    eps = max(r["eps"] for r in rows)
    at = [r for r in rows if r["eps"] == eps]
    per = defaultdict(lambda: defaultdict(list))
    for r in at:
        per[figures.series_name(r)][r["attack"]].append(r)
    sign = 1 if higher_is_better else -1
    worst = {}  # series -> (worst attack, Interval, its rows)
    for series, attacks in per.items():
        cis = {a: figures.mean_ci(rs, metric) for a, rs in attacks.items()}
        cis = {a: c for a, c in cis.items() if c.n}
        if cis:
            attack = min(cis, key=lambda a: sign * cis[a].mean)
            worst[series] = (attack, cis[attack], attacks[attack])
    if not worst:
        return "No attack found a label-preserving perturbation."
    order = sorted(worst, key=lambda s: -sign * worst[s][1].mean)
    best = order[0]
    listed = "; ".join(f"{html.escape(s)}: {worst[s][1].text()} (worst attack {html.escape(worst[s][0])}, "
                       f"n = {figures.ok_text(worst[s][2])})" for s in order)
    text = (f"At eps {eps:g}/255, the worst case over the attacks of the mean {html.escape(metric)} between the maps "
            f"before and after ({'1 = map unchanged; ' if metric == 'spearman' else ''}mean over successful images, "
            f"95% bootstrap CI, n = successes/images): {listed}.")
    if len(order) > 1:
        verdicts = [_paired(worst[best][2], worst[other][2], metric, higher_is_better, (best, other))
                    for other in order[1:]]
        wins = all(v.winner == best for v in verdicts)
        text += (f" <b>{html.escape(best)}</b> is the most robust explanation here: " if wins else
                 f" Highest worst case: <b>{html.escape(best)}</b>, but not every difference is resolved: ")
        text += "; ".join(html.escape(v.text) for v in verdicts) + "."
    ok = [r for r in at if r["success"]]
    image_ssim = [v for v in (figures.value(r, "image_ssim") for r in ok) if v == v]
    seen = (f" The perturbed images keep a mean SSIM of {np.mean(image_ssim):.3f} with the originals and every "
            "returned image keeps its predicted class.") if image_ssim else ""
    return text + seen


def _paired(rows_a, rows_b, metric, higher_is_better, names):
    """compare() of two series on the same (image, seed): failed rows and unmatched ones count as NaN."""
    def by_key(rows):
        return {(r["image"], r.get("image_id"), r["seed"]): figures.value(r, metric) if r["success"] else np.nan
                for r in rows}
    a, b = by_key(rows_a), by_key(rows_b)
    keys = sorted(set(a) | set(b), key=str)
    return compare([a.get(k, np.nan) for k in keys], [b.get(k, np.nan) for k in keys],
                   higher_is_better=higher_is_better, names=names)


def _notes(rows: list[dict]) -> list[str]:
    """The warnings and settings the store records: not-converged attacks, surrogate betas, failure reasons."""
    parts = []
    warning = figures.convergence_warning(rows)
    if warning:
        parts.append(f"<p class=warn>Warning: {html.escape(warning)}.</p>")
    betas = figures.betas(rows)
    if betas:
        parts.append(f"<p class=note>Surrogate beta used by the attacks (softplus instead of ReLU): "
                     f"{html.escape(', '.join(f'{b:g}' for b in betas))}.</p>")
    reasons = figures.failure_reasons(rows)
    if reasons:
        parts.append("<p class=note>Why attacks failed: "
                     + html.escape(", ".join(f"{reason} ({count})" for reason, count in reasons.items())) + ".</p>")
    return parts


def build_report(store_path: str | Path | Sequence[str | Path], out: str | Path,
                 png_dir: str | Path | None = None, paper: str = "") -> Path:
    """Write the HTML report of one store, or of several sweeps of the same model and images (e.g. one
    per method) drawn together; with ``png_dir`` every figure is also saved there as ``<name>.png``;
    ``paper``: the claim a named experiment reproduces, shown under the title."""
    from fragile.experiments.store import storage

    out = Path(out)
    if not out.parent.is_dir():
        raise FragileError(f"cannot write the report {out}: the folder {out.parent} does not exist (create it or "
                           "choose another -o)")
    paths = [store_path] if isinstance(store_path, (str, Path)) else list(store_path)
    from fragile.experiments.checks import load_checks

    configs, rows, faith, examples, checks = [], [], [], [], []
    for path in paths:
        with Store.open(path) as store:
            configs.append(store.config())
            rows += store.rows()
            faith += store.rows("faithfulness")
            examples += _examples(store, store.rows())
        checks += load_checks(path)
    cfg = configs[0]
    for other, path in zip(configs[1:], paths[1:]):
        if (other["model"], other["images"]) != (cfg["model"], cfg["images"]):
            raise FragileError(f"cannot draw {path} ({other['model']} on {other['images']}) with {paths[0]} "
                               f"({cfg['model']} on {cfg['images']}): a joint report needs one model and image set")
    with storage("write the report figures into", png_dir or out):
        text = render(configs, rows, faith, examples[:4], png_dir=png_dir, paper=paper, checks=checks)
    with storage("write the report", out):
        out.write_text(text)
    return out


def render(configs: list[dict], rows: list[dict], faith: list[dict] = (), examples: list = (),
           png_dir: str | Path | None = None, paper: str = "", checks: list[dict] = ()) -> str:
    """The report page from store contents: configs, result rows (``Store.rows()``), faithfulness rows,
    examples ``(title, row, arrays)`` and the stored checks (``fragile.experiments.checks.load_checks``). Nothing
    is recomputed; every number is a mean over successful images with its 95% bootstrap interval. With
    faithfulness rows or checks the page opens with the audit verdict (``reporting.verdict``)."""
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)

    def _img(png: bytes, name: str) -> str:
        if png_dir is not None:
            (Path(png_dir) / f"{name}.png").write_bytes(png)
        return _embed(png, name)

    cfg = configs[0]
    k_metric = next(iter(topk_names({k for r in rows for k in r})), None)
    metrics = [m for m in ("spearman", k_metric, "center_shift", "ssim", "pcc", "cosine_distance", "image_ssim", "linf")
               if m and any(m in r for r in rows)]
    parts = [f"<h1>fragile report: {html.escape(str(cfg.get('name', 'sweep')))}</h1>",
             f"<p class=note>model {html.escape(str(cfg['model']))}, images {html.escape(str(cfg['images']))}, "
             f"{len({r['image'] for r in rows})} images, {len(rows)} results, {sum(bool(r['success']) for r in rows)} "
             "successes (label-preserving results; only these enter the statistics).</p>",
             *_notes(rows),
             *([f"<p class=note>The paper's claim: {html.escape(paper)}</p>"] if paper else []),
             *_verdict_section(rows, faith, checks),
             f"<p>{'Robustness alone: ' if (faith or checks) and rows else ''}{verdict(rows, 'spearman')}</p>"]
    if rows and checks:
        parts += ["<h2>Random noise vs the worst case in the same ball</h2>",
                  "<p class=note>Each robustness metric under random noise (grey) and the attack that maximises the "
                  "same quantity in the same L-inf ball (red), mean over images with 95% CIs; x = mean worst / random "
                  "ratio.</p>", _img(figures.worst_vs_random(list(checks)), "worst_vs_random"),
                  "<h2>Sanity check: model-parameter randomisation (Adebayo et al. 2018)</h2>",
                  "<p class=note>Similarity of |maps| to the original as layers are re-initialised from the top; a "
                  "method whose curve stays high (above the dotted 0.5) does not depend on the learned weights.</p>",
                  _img(figures.sanity_curves(list(checks)), "sanity_curves")]
    if rows:
        for m in [m for m in ("spearman", k_metric, "center_shift") if m in metrics]:
            parts += [f"<h2>{html.escape(m)} vs eps (mean, 95% CI)</h2>",
                      _img(figures.metric_vs_eps(rows, m), f"{m}_vs_eps")]
        parts += ["<h2>Similarity of maps before and after (successful attacks)</h2>",
                  _img(figures.similarity_boxes([r for r in rows if r["eps"] == max(x["eps"] for x in rows)]),
                       "similarity_boxes")]
        manipulated = [r for r in rows if r["attack"].startswith("manipulate")]
        manipulated = [r for r in manipulated if r["eps"] == max(x["eps"] for x in manipulated)]
        if manipulated and any("target_pcc" in r for r in manipulated):
            parts += ["<h2>Manipulated map vs target, perturbed vs original image (Dombrowski Fig. 3)</h2>",
                      _img(figures.similarity_boxes(manipulated, metrics=("target_ssim", "target_pcc", "target_mse",
                                                                          "image_ssim", "output_change")),
                           "manipulate_target_boxes")]
        if len({r["eps"] for r in rows}) >= 2:
            png, _ = figures.auc_bars(rows, [m for m in ("spearman", k_metric, "center_shift", "cosine_distance")
                                             if m in metrics])
            parts += ["<h2>Area under the metrics over log eps (Wang et al. Table 2)</h2>", _img(png, "auc_log_eps")]
        if faith:
            parts += ["<h2>Robustness vs faithfulness</h2>", _img(figures.robustness_faithfulness(_points(rows, faith)),
                                                                    "robustness_vs_faithfulness")]
        if examples:
            parts += ["<h2>Examples</h2>", _img(figures.example_panel(list(examples)), "examples")]
        parts += ["<h2>Summary (means over successful images, 95% bootstrap CI)</h2>",
                  "<p class=note>Each metric: mean [low, high] over the images with a label-preserving result; "
                  "ok = successes/images.</p>", _table(*summary(rows, metrics))]
    parts += ["<h2>Configuration</h2>", *(f"<pre>{html.escape(json.dumps(c, indent=1))}</pre>" for c in configs)]
    return f"<!DOCTYPE html><html><head><meta charset=utf-8><title>fragile report</title><style>{CSS}</style></head>" \
           f"<body>{''.join(parts)}</body></html>"


def _verdict_section(rows, faith, checks) -> list[str]:
    """The three-score audit verdict (table, paragraph, caveats) when faithfulness rows or checks exist."""
    from fragile.reporting.verdict import audit_verdict, verdict_html

    if not rows or not (faith or checks):
        return []
    return ["<h2>Verdict: robustness, faithfulness, sanity</h2>", verdict_html(audit_verdict(rows, faith, checks))]


def _points(rows, faith):
    """{series: (mean deletion AUC, mean Spearman over successful images at the largest eps)}."""
    eps = max(x["eps"] for x in rows)
    rob = defaultdict(list)
    for r in rows:
        if r["eps"] == eps:
            rob[figures.series_name(r)].append(r)
    fa = defaultdict(list)
    for f in faith:
        fa[figures.series_name(f)].append(figures.value(f, "deletion_auc"))
    points = {s: (float(np.nanmean(fa[s])), figures.mean_ci(rob[s], "spearman").mean) for s in fa if s in rob}
    return {s: p for s, p in points.items() if np.isfinite(p).all()}


def _examples(store, rows, n: int = 4):
    """One stored example per series: the first success at the largest eps of a non-random attack."""
    if not any(r.get("arrays") for r in rows):  # store_arrays: false, or rows restored from a snapshot
        return []
    eps = max(r["eps"] for r in rows)
    out, seen = [], set()
    for r in rows:
        s = figures.series_name(r)
        if r["eps"] == eps and r["success"] and r["attack"] != "random_sign" and s not in seen and r.get("arrays"):
            seen.add(s)
            out.append((f"{s} / {r['attack']}", r, store.arrays(r)))
        if len(out) >= n:
            break
    return out
