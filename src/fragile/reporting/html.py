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
from fragile.metrics import topk_names
from fragile.reporting import figures

CSS = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#555}"""


def _embed(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def summary(rows: list[dict], metrics: list[str]) -> list[list]:
    groups = defaultdict(list)
    for r in rows:
        groups[(figures.series_name(r), r["attack"], r["eps"])].append(r)
    out = []
    for (series, attack, eps), rs in sorted(groups.items()):
        ok = [r for r in rs if r["success"]]
        means = [float(np.mean([r[m] for r in ok])) if ok else float("nan") for m in metrics]
        out.append([series, attack, eps, len(rs), len(ok), *means])
    return out


def verdict(rows: list[dict], metric: str) -> str:
    """Which method keeps its map best under the strongest setting (largest eps, worst attack)."""
    if not rows:
        return "No results stored yet."
    eps = max(r["eps"] for r in rows)
    at = [r for r in rows if r["eps"] == eps and r["success"]]
    per = defaultdict(lambda: defaultdict(list))
    for r in at:
        per[figures.series_name(r)][r["attack"]].append(r[metric])
    worst = {s: min(float(np.mean(v)) for v in a.values()) for s, a in per.items()}
    if not worst:
        return "No attack found a label-preserving perturbation."
    best = max(worst, key=worst.get)
    lines = ", ".join(f"{html.escape(s)}: {v:.2f}" for s, v in sorted(worst.items(), key=lambda kv: -kv[1]))
    image_ssim = [r["image_ssim"] for r in at if r.get("image_ssim") == r.get("image_ssim")]
    seen = (f" The perturbed images keep a mean SSIM of {np.mean(image_ssim):.3f} with the originals and every "
            "returned image keeps its predicted class.") if image_ssim else ""
    return (f"At eps {eps:g}/255 the most robust explanation is <b>{html.escape(best)}</b>: its worst-case mean "
            f"{html.escape(metric)} between the maps before and after, over the attacks, is {worst[best]:.2f} "
            f"(1 = map unchanged). All methods: {lines}.{seen}")


def build_report(store_path: str | Path | Sequence[str | Path], out: str | Path,
                 png_dir: str | Path | None = None, paper: str = "") -> Path:
    """Write the HTML report of one store, or of several sweeps of the same model and images (e.g. one
    per method) drawn together; with ``png_dir`` every figure is also saved there as ``<name>.png``;
    ``paper``: the claim a named experiment reproduces, shown under the title."""
    if png_dir is not None:
        Path(png_dir).mkdir(parents=True, exist_ok=True)

    def _img(png: bytes, name: str) -> str:
        if png_dir is not None:
            (Path(png_dir) / f"{name}.png").write_bytes(png)
        return _embed(png, name)

    paths = [store_path] if isinstance(store_path, (str, Path)) else list(store_path)
    configs, rows, faith, examples = [], [], [], []
    for path in paths:
        with Store.open(path) as store:
            configs.append(store.config())
            rows += store.rows()
            faith += store.rows("faithfulness")
            examples += _examples(store, store.rows())
    cfg = configs[0]
    for other, path in zip(configs[1:], paths[1:]):
        if (other["model"], other["images"]) != (cfg["model"], cfg["images"]):
            raise FragileError(f"cannot draw {path} ({other['model']} on {other['images']}) with {paths[0]} "
                               f"({cfg['model']} on {cfg['images']}): a joint report needs one model and image set")
    examples = examples[:4]
    k_metric = next(iter(topk_names({k for r in rows for k in r})), None)
    metrics = [m for m in ("spearman", k_metric, "center_shift", "ssim", "pcc", "cosine_distance", "image_ssim", "linf")
               if m and any(m in r for r in rows)]
    parts = [f"<h1>fragile report: {html.escape(str(cfg.get('name', 'sweep')))}</h1>",
             f"<p class=note>model {html.escape(str(cfg['model']))}, images {html.escape(str(cfg['images']))}, "
             f"{len({r['image'] for r in rows})} images, {len(rows)} results.</p>",
             *([f"<p class=note>The paper's claim: {html.escape(paper)}</p>"] if paper else []),
             f"<p>{verdict(rows, 'spearman')}</p>"]
    if rows:
        for m in [m for m in ("spearman", k_metric, "center_shift") if m in metrics]:
            parts += [f"<h2>{html.escape(m)} vs eps</h2>", _img(figures.metric_vs_eps(rows, m), f"{m}_vs_eps")]
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
            parts += ["<h2>Examples</h2>", _img(figures.example_panel(examples), "examples")]
        parts += ["<h2>Summary (means over successful images)</h2>",
                  _table(["method", "attack", "eps", "images", "successes", *metrics], summary(rows, metrics))]
    parts += ["<h2>Configuration</h2>", *(f"<pre>{html.escape(json.dumps(c, indent=1))}</pre>" for c in configs)]
    page = f"<!DOCTYPE html><html><head><meta charset=utf-8><title>fragile report</title><style>{CSS}</style></head>" \
           f"<body>{''.join(parts)}</body></html>"
    out = Path(out)
    out.write_text(page)
    return out


def _points(rows, faith):
    rob = defaultdict(list)
    for r in rows:
        if r["success"] and r["eps"] == max(x["eps"] for x in rows):
            rob[figures.series_name(r)].append(r["spearman"])
    fa = defaultdict(list)
    for f in faith:
        fa[figures.series_name(f)].append(f["deletion_auc"])
    return {s: (float(np.mean(fa[s])), float(np.mean(rob[s]))) for s in fa if s in rob}


def _examples(store, rows, n: int = 4):
    """One stored example per series: the first success at the largest eps of a non-random attack."""
    if not rows or not rows[0].get("arrays"):
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
