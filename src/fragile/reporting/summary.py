"""``fragile summarize RUN``: a markdown summary of a finished named experiment (for docs and notes),
made from its output folder only. ``fragile run`` writes it to ``RUN/summary.md`` when it finishes: the
paper's claim beside our numbers and the redrawn figures, linked relative to the folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fragile.metrics import bootstrap_ci, topk_names
from fragile.reporting.figures import (
    betas,
    convergence_warning,
    failure_reasons,
    group_rows,
    image_id,
    iterations_text,
    mean_ci,
    not_converged,
    ok_text,
    series_name,
    success_values,
)


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _joined_rows(folders: list[Path]) -> list[dict]:
    """The sweep rows of several stores as one list, for tables (and paired comparisons) across them; refused
    (FragileError) when two stores hold the same (series, attack, eps), whose rows would mix, or share no image."""
    from fragile.errors import FragileError
    from fragile.experiments.store import Store

    rows, seen, images = [], {}, []
    for folder in folders:
        with Store.open(folder) as store:
            part = store.rows()
        for key in group_rows(part):
            if key in seen:
                raise FragileError(f"{seen[key]} and {folder} both hold {key[0]} | {key[1]} | eps {key[2]}: their rows "
                                   "would mix; join stores of different series or attacks")
            seen[key] = folder
        images.append({image_id(r) for r in part})
        rows += part
    if images and not set.intersection(*images):
        raise FragileError(f"the stores {', '.join(map(str, folders))} share no image: nothing to compare per image")
    return rows


def _sweep(folder: Path, joined: list[Path] = ()) -> str:
    from fragile.experiments.store import Store

    from fragile.experiments.checks import load_checks
    from fragile.reporting.verdict import audit_verdict, verdict_markdown

    if joined:
        return sweep_summary(_joined_rows([folder, *joined]))
    with Store.open(folder) as store:
        rows, faith = store.rows(), store.rows("faithfulness")
    checks = load_checks(folder)
    if not rows or not (faith or checks):
        return sweep_summary(rows)
    return verdict_markdown(audit_verdict(rows, faith, checks)) + "\n\n" + sweep_summary(rows) + checks_summary(checks)


def checks_summary(checks: list[dict]) -> str:
    """Markdown tables of the stored checks: each random-perturbation metric beside its worst case in the
    same ball (means over images, 95% bootstrap CI, mean ratio), and the randomisation curves."""
    if not checks:
        return ""
    wvr = []
    for c in checks:
        for metric, d in c.get("worst_vs_random", {}).items():
            wvr.append([series_name(c), metric, bootstrap_ci(d["random"]).text(), bootstrap_ci(d["worst"]).text(),
                        bootstrap_ci(d["ratio"]).text()])
    san = []
    for c in checks:
        for mode, d in c.get("sanity", {}).items():
            for group, count, sp, ss in zip(d["layers"], d["randomised"], d["spearman"], d["ssim"]):
                san.append([series_name(c), mode, f"{group[0]} ({len(group)})", count, bootstrap_ci(sp).text(),
                            bootstrap_ci(ss).text()])
    c0 = checks[0]
    text = (f"\n\nRandom noise vs the worst case in the same L-inf ball (eps {c0['eps']:g}/255, first {c0['images']} "
            f"images, {c0['samples']} random samples, {c0['steps']} attack iterations per radius):\n\n"
            + _table(["method", "metric", "random noise", "worst case", "worst / random"], wvr)) if wvr else ""
    if san:
        text += ("\n\nModel-parameter randomisation (Adebayo et al. 2018), similarity of |maps| to the original "
                 "(cascading: the top groups up to this one re-initialised; independent: this group alone):\n\n"
                 + _table(["method", "mode", "group (its top layer, layers)", "layers random", "Spearman", "SSIM"], san))
    return text


#: Metrics also shown as a median (Dombrowski et al. state the median largest change of the output).
MEDIAN_METRICS = ("output_change",)


def sweep_summary(rows: list[dict]) -> str:
    """The markdown tables of a sweep's rows (``Store.rows()``): per method / attack / eps the mean of
    each metric over the successful images with its 95% bootstrap interval, ``ok`` = successes/images, the
    iterations the attacks ran (evaluated; '/' between different counts), then the AUC table; a warning first when
    attacks had not converged."""
    topk = topk_names({k for r in rows for k in r})  # the k each attack / attack_settings.k used
    metrics = [m for m in ("spearman", *topk, "center_shift", "cosine_distance", "target_pcc", "target_ssim",
                           "target_pcc_before", "mass_in_region", "mass_in_region_before", "image_ssim",
                           "output_change") if any(m in r for r in rows)]
    medians = [m for m in MEDIAN_METRICS if m in metrics]
    groups = group_rows(rows)
    convergence = not_converged(rows) is not None
    table = []
    for (name, attack, eps), rs in sorted(groups.items()):
        nc = not_converged(rs)
        cells = [mean_ci(rs, m).text() if any(m in r for r in rs) else "n/a" for m in metrics]
        cells += [bootstrap_ci(success_values(rs, m), statistic="median").text() if any(m in r for r in rs) else "n/a"
                  for m in medians]
        secs = float(np.mean([r["seconds"] for r in rs]))
        table.append([name, attack, eps, ok_text(rs), iterations_text(rs),
                      *([nc[0] if nc else "-"] if convergence else []), *cells, secs])
    notes = []
    warning = convergence_warning(rows)
    if warning:
        notes.append(f"**Warning: {warning}.**")
    if betas(rows):
        notes.append("Surrogate beta used by the attacks: " + ", ".join(f"{b:g}" for b in betas(rows)) + ".")
    note = second_order_note(rows)
    if note:
        notes.append(note)
    reasons = failure_reasons(rows)
    if reasons:
        notes.append("Why attacks failed: " + ", ".join(f"{k} ({v})" for k, v in reasons.items()) + ".")
    if rows and all(r.get("label") is not None for r in rows):
        notes.insert(1 if warning else 0, f"Images: {_classes(rows)}.")  # after the warning, which comes first
    text = "".join(n + "\n\n" for n in notes)
    text += ("Means over images with a label-preserving result, 95% bootstrap CI in brackets "
             "(ok = successes/images; failed images never enter a mean"
             + ("; columns '(median)': the median with its bootstrap CI" if medians else "") + "):\n\n"
             + _table(["method", "attack", "eps", "ok", "iterations", *(["not converged"] if convergence else []), *metrics,
                       *(f"{m} (median)" for m in medians), "s/image"],
                      table))
    return (text + _paired_tables(rows, [m for m in ("spearman", *topk, "center_shift", "cosine_distance", "target_pcc",
                                                     "mass_in_region") if m in metrics])
            + _area_tables(rows, [m for m in ("spearman", *topk, "center_shift", "cosine_distance") if m in metrics]))


def second_order_note(rows: list[dict]) -> str | None:
    """How the gradient steps differentiated the maps (``attacks.run(second_order=...)``, recorded per row in its
    trajectory): None when every attack ran exactly as asked; else how many rows used the forward difference, its
    worst cosines with the exact gradient (on the clean images, at the rechecks), switches to exact, and rows that
    asked for it but ran exactly."""
    recs = [r["trajectory"].get("second_order") for r in rows if isinstance(r.get("trajectory"), dict)]
    recs = [x for x in recs if isinstance(x, dict)]
    diff = [x for x in recs if x.get("rule") == "difference"]
    refused = [x for x in recs if x.get("requested") == "difference"]
    if not diff and not refused:
        return None
    text = f"Second-order rule: the forward difference (second_order='difference') for {len(diff)} of {len(recs)} rows"
    if diff:
        chosen = min(x["cosine"] for x in diff)
        rechecked = [x["recheck_cosine"] for x in diff if x.get("recheck_cosine") is not None]
        text += f", worst cosine with the exact gradient on the clean images {chosen:.4f}"
        if rechecked:
            text += f", at the rechecks {min(rechecked):.4f}"
        switched = sum(x.get("exact_from") is not None for x in diff)
        if switched:
            text += f"; {switched} rows switched to the exact gradient during the attack"
    if refused:
        text += (f"; {len(refused)} rows ran exactly because the difference disagreed on their clean images "
                 f"(worst cosine {max(x['cosine'] for x in refused):.3f} at best)")
    return text + "."


def _paired_tables(rows, metrics) -> str:
    """The paired differences a verdict rests on (``fragile.reporting.paired``): each attack minus its control,
    each pair of series under the same attack; mean per-image difference [95% bootstrap CI] (n = images)."""
    from fragile.reporting.paired import attack_vs_control, pairs_of

    text = ""
    control = attack_vs_control(rows, metrics)
    if control:
        text += ("\n\nPaired per image, each attack minus its control (its equal-norm noise control, else the "
                 "random-sign draw) on the same images where both kept the label; an interval that excludes 0 "
                 "is a difference:\n\n" + _table(["series", "comparison", "eps", *metrics], control))
    for vary, fixed in (("series", "attack"), ("attack", "series")):
        pairs = pairs_of(rows, metrics, vary=vary)
        if pairs:
            text += (f"\n\nPaired per image, {vary} minus {vary} on the same {fixed} and eps:\n\n"
                     + _table(["comparison", fixed, "eps", *metrics], pairs))
    return text


def _versus(folder: Path, other: Path) -> str:
    """``folder``'s rows minus ``other``'s (two result stores of the same experiment under other settings), paired
    per image for every (series, attack, eps) both hold; refused (FragileError) against itself, or when they share
    no group or no image."""
    from fragile.errors import FragileError
    from fragile.experiments.store import Store
    from fragile.reporting.paired import settings_pairs

    if other.resolve() == folder.resolve():
        raise FragileError(f"{folder} against itself: give --versus another store")
    with Store.open(folder) as a, Store.open(other) as b:
        rows, other_rows, seconds = a.rows(), b.rows(), (a.unit_seconds(), b.unit_seconds())
    topk = topk_names({k for r in rows + other_rows for k in r})
    metrics = [m for m in ("spearman", *topk, "center_shift", "cosine_distance", "target_pcc", "mass_in_region",
                           "image_ssim", "output_change") if any(m in r for r in rows) and any(m in r for r in other_rows)]
    table = settings_pairs(rows, other_rows, metrics)
    if not table:
        raise FragileError(f"{folder} and {other} share no (series, attack, eps): nothing to compare")
    if {image_id(r) for r in rows}.isdisjoint(image_id(r) for r in other_rows):
        raise FragileError(f"{folder} and {other} share no image: nothing to compare per image")
    ratio = f" ({seconds[0] / seconds[1]:.2f}x)" if seconds[1] > 0 else ""
    return (f"\n\nPaired per image, `{folder}` minus `{other}` (the same series, attack and eps under the settings "
            f"listed above; iterations and seconds per image as ours / other) on the images both kept the label with; "
            f"an interval that excludes 0 is a difference. Compute time of the finished units: {seconds[0]:.0f} s / "
            f"{seconds[1]:.0f} s{ratio}.\n\n"
            + _table(["series", "attack", "eps", "iterations", "s/image", *metrics], table))


def _classes(rows) -> str:
    """``N images, 10 classes, 20-21 images each`` of a sweep's rows (each image counted once, by its label)."""
    import torch

    from fragile.data.sampling import classes_covered

    labels = {image_id(r): r["label"] for r in rows}
    return f"{len(labels)}, by predicted label {classes_covered(torch.tensor(list(labels.values())))}"


def _area_tables(rows, metrics) -> str:
    """Wang et al. Fig. 3 / Table 2 (``fragile.reporting.areas``): per-image areas under each metric over log2 eps,
    their means with 95% intervals, and every pair of series under one attack, paired per image."""
    from fragile.reporting.areas import area_tables

    means, diffs = area_tables(rows, metrics)
    if not means:
        return ""
    text = ("\n\nArea under each image's metric over log2 eps, divided by the log2 eps range (the curve's mean height), "
            "mean over the images that kept their label at every eps, 95% bootstrap CI:\n\n"
            + _table(["method", "attack", *metrics], means))
    if diffs:
        text += ("\n\nPaired per image, the area of one series minus another's under the same attack:\n\n"
                 + _table(["comparison", "attack", *metrics], diffs))
    return text


RESULT_FILES = ("influence.json", "geometry.json", "faithfulness.json", "transfer.json", "training_comparison.json")
#: Characters of a result file shown as JSON in ``summary.md`` (longer files are cut, saying so).
JSON_CHARACTERS = 6000


def _transfer_tables(data: dict) -> str:
    """Every number of a ``transfer.json`` as tables: one row per explanation of the perturbed images, each
    metric beside its equal-norm noise control (``*_control``) where the run drew one, with their 95% bootstrap
    intervals where the file has them (``intervals``), then the paired differences a verdict rests on (attack
    minus control, explanation minus explanation)."""
    from fragile.metrics.statistics import Interval

    sources = data["sources"] if "sources" in data else {data["source"].get("method", "source"): data}
    out = []
    for name, res in sources.items():
        targets, intervals = res["targets"], res.get("intervals", {})

        def cell(target, metric, targets=targets, intervals=intervals):
            ci = intervals.get(target, {}).get(metric)
            return Interval(*ci).text() if ci else targets[target].get(metric)

        metrics = [k for k in next(iter(targets.values())) if not k.endswith("_control")]
        controlled = {m for m in metrics if any(f"{m}_control" in t for t in targets.values())}
        header = ["explanation"] + [c for m in metrics for c in ([m, f"{m} (noise)"] if m in controlled else [m])]
        rows = [[target] + [v for m in metrics
                            for v in ([cell(target, m), cell(target, f"{m}_control")] if m in controlled
                                      else [cell(target, m)])]
                for target in targets]
        text = (f"Transfer of the {res['attack']} attack on {name} at eps {res['eps']:g}: {res['successes']} of "
                f"{res['images']} images kept their label (means over those images"
                + (", 95% bootstrap CI" if intervals else "") + ").")
        noise = res.get("noise_control")
        if noise:
            text += (f" Equal-norm random noise control, the \"(noise)\" columns: mean L2 {noise['l2_control_mean']:.4g}"
                     f" vs the attack's {noise['l2_attack_mean']:.4g}; {noise['label_kept']} of {noise['images']} "
                     "kept the label.")
        text += "\n\n" + _table(header, rows)
        for key, what in (("attack_minus_control", "attack minus its noise control"),
                          ("paired", "explanation minus explanation")):
            table = [[row, metric, f"{Interval(*ci).text()} (n = {ci[3]})"]
                     for row, metrics_ in res.get(key, {}).items() for metric, ci in metrics_.items()]
            if table:
                text += f"\n\nPaired per image, {what}:\n\n" + _table(["comparison", "metric", "mean [95% CI]"], table)
        out.append(text)
    return "\n\n".join(out)


def _json_block(data: dict, name: str) -> str:
    text = json.dumps(data, indent=1)
    if len(text) > JSON_CHARACTERS:
        text = text[:JSON_CHARACTERS] + f"\n... (cut at {JSON_CHARACTERS} characters: the full numbers are in {name})"
    return "```json\n" + text + "\n```"


#: How each result file is shown in ``summary.md`` (JSON by default).
RENDERERS = {"transfer.json": lambda data, name: _transfer_tables(data)}


def _store_settings(folder: Path, partial: bool) -> list[str]:
    """Lines naming what the store's rows were computed with (from its resolved config): model, images, methods,
    attacks, eps and every attack setting; for a store without ``experiment.json`` (a run that has not finished,
    or one restored from a snapshot) that it is partial and how many units are done."""
    from fragile.experiments.config import label
    from fragile.experiments.store import Store

    with Store.open(folder) as store:
        cfg, done = store.config(), len(store.done_units())

    def names(items):
        return ", ".join(map(label, items))

    settings = ", ".join(f"{k} {v}" for k, v in sorted(cfg.get("attack_settings", {}).items()) if v is not None)
    lines = [f"Config `{cfg.get('name', folder.name)}`: model {cfg.get('model')}, images {cfg.get('images')} "
             f"(limit {cfg.get('limit')}, correct only: {cfg.get('correct_only')}), methods {names(cfg.get('methods', []))}, "
             f"attacks {names(cfg.get('attacks', []))}, eps {', '.join(f'{e:g}' for e in cfg.get('eps', []))}; "
             f"attack settings: {settings}.", ""]
    if partial:
        lines[:0] = [f"**A partial store** ({done} finished units; no experiment.json: the run has not finished, or "
                     "the store was restored from a snapshot). Rerunning the same config with `--store` resumes it.", ""]
    return lines


def summarize(folder: str | Path, joined: list[str | Path] = (), versus: str | Path | None = None) -> str:
    """The Markdown summary (``summary.md``) of an output folder of ``fragile run`` / ``fragile audit``.

    ``joined``: other result stores whose sweep rows are summarised together with ``folder``'s (e.g. two runs on the
    same images with different settings), so the tables and paired comparisons span them; each store's settings are
    listed, and stores holding the same (series, attack, eps) or no common image are refused.

    ``versus``: another result store of the same experiment under other settings (e.g. a cheaper step schedule
    against the paper's): a table of ``folder`` minus ``versus`` per (series, attack, eps) both hold, paired per
    image, with the iterations, seconds per image and compute time of each; refused when they share none.

    It holds the experiment's name, description, command, wall time and paper claim (from ``experiment.json``),
    the sweep's tables when the folder is a result store, each result JSON file of the other kinds
    (:data:`RESULT_FILES`, curves dropped; transfer results as tables, the others as JSON of at most
    :data:`JSON_CHARACTERS` characters, saying where they were cut) and links to the figures. Raises
    :class:`FragileError` when ``folder`` is not a folder or holds none of these files.
    """
    from fragile.errors import FragileError

    folder = Path(folder)
    if not folder.is_dir():
        raise FragileError(f"{folder} is not a folder (give the output folder of fragile run / fragile audit)")
    known = ("experiment.json", "results.sqlite", *RESULT_FILES)
    if not any((folder / name).exists() for name in known):
        raise FragileError(f"nothing to summarize in {folder}: none of {', '.join(known)} is there")
    try:
        meta = json.loads((folder / "experiment.json").read_text()) if (folder / "experiment.json").exists() else {}
    except (OSError, ValueError) as err:
        raise FragileError(f"cannot read {folder / 'experiment.json'}: {err}") from None
    wall = meta.get("wall_seconds")
    parts = [f"### {meta.get('experiment', folder.name)}", "", meta.get("description", ""), "",
             f"Command: `{meta.get('command', '')}`  ",
             f"Wall time here: {f'{wall:.0f} s' if isinstance(wall, (int, float)) else 'not recorded'}  ",
             f"Paper: {meta.get('paper', '')}", ""]
    if (folder / "results.sqlite").exists():
        parts = (parts if meta else parts[:2]) + _store_settings(folder, partial=not meta)
    if (folder / "images.json").exists():
        images = json.loads((folder / "images.json").read_text())
        parts += [f"Images: {images['images']}, {images['classes']}.", ""]
    joined = [Path(j) for j in joined]
    others = [(other, "Joined with") for other in joined] + ([(Path(versus), "Compared with")] if versus is not None else [])
    for store in ([folder] if others else []) + [other for other, _ in others]:
        if not (store / "results.sqlite").exists():
            raise FragileError(f"{store} is not a result store (no results.sqlite): only stores can be joined or compared")
    for other, label in others:
        parts += [f"{label} `{other}`:", ""] + _store_settings(other, partial=not (other / "experiment.json").exists())
    if (folder / "results.sqlite").exists():
        parts.append(_sweep(folder, joined) + (_versus(folder, Path(versus)) if versus is not None else ""))
    for name in RESULT_FILES:
        if (folder / name).exists():
            data = json.loads((folder / name).read_text())
            for drop in ("accuracy_curves", "fractions"):
                data.pop(drop, None)
            parts.append(RENDERERS.get(name, _json_block)(data, name))
    figures = sorted(folder.glob("*.png")) + sorted(folder.glob("figures/*.png"))
    if figures:
        parts += ["", "Figures redrawn from these numbers:", ""]
        parts += [f"![{f.stem}]({f.relative_to(folder).as_posix()})" for f in figures]
    return "\n".join(parts) + "\n"
