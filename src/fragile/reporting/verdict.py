"""The audit verdict: per method three scores with 95% bootstrap intervals, a ranking that rests on all three,
a plain-language paragraph with the numbers, and the caveats. Made from store contents only (result rows,
faithfulness rows, ``STORE/checks/*.json``), shared by ``fragile.audit``, the HTML report and summary.md.

- robustness: per image, the worst (lowest) top-k intersection over the attacks at the largest eps, among
  the attacks that kept the label (the fraction of the original top-k pixels that stay in the top k;
  higher = more stable). The worst Spearman is shown beside it.
- faithfulness: the deletion AUC of the class probability (lower = the pixels the map ranks first matter
  more to the model). The insertion AUC is shown beside it.
- sanity: the Spearman rank correlation of |maps| with those of the model whose layers were all
  re-initialised (cascading model-parameter randomisation, Adebayo et al. 2018; lower = the map depends on
  what the model learned). A mean of ``sanity_threshold`` (0.5) or more fails the method: its maps hardly
  change when the learned weights are replaced by random ones.

Ranking: for every pair of methods and every score, the paired bootstrap interval of the difference over
the same images (``fragile.metrics.compare``) decides a win, a loss or "not distinguishable"; methods are
ordered by wins minus losses over the three scores, methods failing the sanity check last.
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from fragile.metrics import compare, topk_names
from fragile.metrics.statistics import Interval, bootstrap_ci
from fragile.reporting.figures import convergence_warning, not_converged, series_name, value

SANITY_THRESHOLD = 0.5
#: score -> (higher is better, what it is called in the text)
SCORES = {"robustness": (True, "robustness"), "faithfulness": (False, "faithfulness"), "sanity": (False, "sanity")}


@dataclass
class MethodScores:
    """One method's scores: Intervals over images, and the per-image values they came from (image -> value)."""

    method: str
    robustness: Interval
    robustness_spearman: Interval
    faithfulness: Interval
    insertion: Interval
    sanity: Interval
    sanity_ssim: Interval
    worst_over_random: Interval
    per_image: dict = field(default_factory=dict)
    wins: int = 0
    losses: int = 0
    worst_attack: str = ""

    @property
    def sanity_pass(self) -> bool | None:
        """True / False from the sanity score, None when it was not run."""
        return None if self.sanity.n == 0 else bool(self.sanity.mean < SANITY_THRESHOLD)


@dataclass
class AuditVerdict:
    """The audit verdict: the methods' scores ranked best first, at the largest ``eps`` (pixel units of the attack)
    with top-``k`` robustness, the paragraph ``text`` with the numbers, the ``caveats``, and the paired
    comparisons ``{(score, method a, method b): Verdict}``. ``str(verdict)`` is the paragraph and the caveats.
    """
    methods: list[MethodScores]          # ranked, best first
    eps: float
    k: int | None
    text: str                            # the paragraph (plain text)
    caveats: list[str]
    comparisons: dict = field(default_factory=dict)  # (score, a, b) -> Verdict

    def __str__(self) -> str:
        return self.text + ("\nCaveats: " + " ".join(self.caveats) if self.caveats else "")


def _nan_ci() -> Interval:
    return bootstrap_ci([])


def _per_image_worst(rows, metric):
    """{series: ({image: worst value over attacks}, {attack: count of images where it was the worst})}."""
    by = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        v = value(r, metric)
        if r["success"] and v == v:
            by[series_name(r)][r["image"]][r["attack"]] = v
    out = {}
    for s, images in by.items():
        worst, counts = {}, defaultdict(int)
        for image, per_attack in images.items():
            attack = min(per_attack, key=per_attack.get)
            worst[image] = per_attack[attack]
            counts[attack] += 1
        out[s] = (worst, dict(counts))
    return out


def _ci(d: dict) -> Interval:
    return bootstrap_ci([d[i] for i in sorted(d)]) if d else _nan_ci()


def scores(rows, faith=(), checks=()) -> tuple[list[MethodScores], float, int | None]:
    """(unranked MethodScores, the largest eps, k) from store contents."""
    eps = max(r["eps"] for r in rows)
    at = [r for r in rows if r["eps"] == eps]
    k_name = next(iter(topk_names({key for r in at for key in r})), None)
    k = int(k_name[3:].split("_")[0]) if k_name else None
    rob = _per_image_worst(at, k_name) if k_name else {}
    rob_sp = _per_image_worst(at, "spearman")
    dele, ins = defaultdict(dict), defaultdict(dict)
    for f in faith:
        dele[series_name(f)][f["image"]] = value(f, "deletion_auc")
        ins[series_name(f)][f["image"]] = value(f, "insertion_auc")
    san, san_ssim, ratio = defaultdict(dict), defaultdict(dict), defaultdict(dict)
    for c in checks:
        s = series_name(c)
        cascade = c.get("sanity", {}).get("cascading")
        if cascade:
            san[s] = {i: v for i, v in enumerate(cascade["spearman"][-1]) if v == v}
            san_ssim[s] = {i: v for i, v in enumerate(cascade["ssim"][-1]) if v == v}
        ms = c.get("worst_vs_random", {}).get("max_sensitivity")
        if ms:
            ratio[s] = {i: v for i, v in enumerate(ms["ratio"]) if v == v and np.isfinite(v)}
    names = sorted({series_name(r) for r in at} | set(dele) | set(san))
    out = []
    for s in names:
        worst, counts = rob.get(s, ({}, {}))
        out.append(MethodScores(
            method=s, robustness=_ci(worst), robustness_spearman=_ci(rob_sp.get(s, ({}, {}))[0]),
            faithfulness=_ci(dele.get(s, {})), insertion=_ci(ins.get(s, {})), sanity=_ci(san.get(s, {})),
            sanity_ssim=_ci(san_ssim.get(s, {})), worst_over_random=_ci(ratio.get(s, {})),
            per_image={"robustness": worst, "faithfulness": dele.get(s, {}), "sanity": san.get(s, {})},
            worst_attack=max(counts, key=counts.get) if counts else ""))
    return out, eps, k


def _rank(methods: list[MethodScores]) -> dict:
    comparisons = {}
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            for score, (higher, _) in SCORES.items():
                pa, pb = a.per_image.get(score, {}), b.per_image.get(score, {})
                keys = sorted(set(pa) & set(pb))
                if len(keys) < 2:
                    continue
                v = compare([pa[key] for key in keys], [pb[key] for key in keys], higher_is_better=higher,
                            names=(a.method, b.method), better=f"better on {score}")
                comparisons[(score, a.method, b.method)] = v
                if v.winner is not None:
                    win, lose = (a, b) if v.winner == a.method else (b, a)
                    win.wins += 1
                    lose.losses += 1
    methods.sort(key=lambda m: (m.sanity_pass is False, -(m.wins - m.losses), -_mean(m.robustness)))
    return comparisons


def _mean(ci: Interval) -> float:
    return ci.mean if ci.n else -np.inf


def _pct(ci: Interval) -> str:
    if ci.n == 0:
        return "n/a"
    if not np.isfinite(ci.low):
        return f"{100 * ci.mean:.0f}% (n = {ci.n})"
    return f"{100 * ci.mean:.0f}% [{100 * ci.low:.0f}, {100 * ci.high:.0f}]"


def _sentence(m: MethodScores, eps: float, k: int | None, total_layers: int | None) -> str:
    parts = []
    if m.robustness.n:
        parts.append(f"the worst attack within {eps:g}/255 ({m.worst_attack} on most images) keeps "
                     f"{_pct(m.robustness)} of its top-{k} pixels (Spearman {m.robustness_spearman.text()})")
    if m.faithfulness.n:
        parts.append(f"deletion AUC {m.faithfulness.text()}")
    if m.sanity.n:
        layers = f"all {total_layers} layers" if total_layers else "all layers"
        verdict = ("passes the sanity check" if m.sanity_pass else
                   "FAILS the sanity check: its maps hardly depend on the learned weights")
        parts.append(f"Spearman {m.sanity.text()} with the maps of the model with {layers} re-initialised, so it "
                     f"{verdict}")
    if m.worst_over_random.n:
        r = m.worst_over_random.mean
        parts.append(f"the attack's worst case moves its map {r:.1f}x as far as random noise of the same size "
                     f"(MaxSensitivity){' (less than random noise: raise steps)' if r < 1 else ''}")
    return f"{m.method}: " + "; ".join(parts) + "."


def _beats(comparisons, score, a, b) -> bool:
    v = comparisons.get((score, a, b)) or comparisons.get((score, b, a))
    return v is not None and v.winner == a


def _conclusion(methods, comparisons) -> str:
    """The sentence a practitioner acts on: which method to use, and on which scores that rests."""
    top, rest = methods[0], methods[1:]
    if top.sanity_pass is False:
        return "No method passes the sanity check; none is recommended."
    lead = [s for s in SCORES if all(_beats(comparisons, s, top.method, o.method) for o in rest)]
    behind = {s: [o.method for o in rest if _beats(comparisons, s, o.method, top.method)] for s in SCORES}
    behind = {s: v for s, v in behind.items() if v}
    if top.wins == 0 and not any(m.wins for m in methods):
        return ("No difference between the methods is resolved at these n (every paired 95% interval includes 0); "
                f"{top.method} has the highest mean robustness.")
    text = f"On this model use {top.method}"
    if lead:
        text += f": it is better than every other method on {' and '.join(lead)}"
    else:
        text += f": it wins {top.wins} and loses {top.losses} of the paired comparisons"
    if behind:
        text += "; but " + "; ".join(f"{', '.join(v)} {'is' if len(v) == 1 else 'are'} better on {s}"
                                     for s, v in behind.items())
    elif not lead:
        text += ", and no method beats it on any score"
    return text + "."


def audit_verdict(rows, faith=(), checks=()) -> AuditVerdict | None:
    """The verdict of a store's contents (None without result rows)."""
    if not rows:
        return None
    methods, eps, k = scores(rows, faith, checks)
    comparisons = _rank(methods)
    total_layers = next((c["sanity"]["cascading"]["total_layers"] for c in checks
                         if c.get("sanity", {}).get("cascading")), None)
    n = len({r["image"] for r in rows})
    text = [f"Verdict on {n} images at eps {eps:g}/255 (robustness: the worst attack per image, higher = more "
            "stable; faithfulness: deletion AUC, lower = more faithful; sanity: similarity to the maps of a randomised "
            "model, lower = the map depends on the model; means with 95% bootstrap CIs)."]
    failing = [m.method for m in methods if m.sanity_pass is False]
    if len(methods) > 1:
        text.append(_conclusion(methods, comparisons))
    image_ssim = [value(r, "image_ssim") for r in rows if r["eps"] == eps and r["success"]]
    image_ssim = [v for v in image_ssim if v == v]
    if image_ssim:
        text.append(f"The perturbed images keep a mean SSIM of {np.mean(image_ssim):.3f} with the originals and their "
                    "predicted class: changes no one would notice.")
    text += [_sentence(m, eps, k, total_layers) for m in methods]
    if len(methods) > 1:
        text.append("Ranking by paired wins minus losses over the three scores (a difference counts only where the "
                    "paired 95% interval excludes 0): " + ", ".join(
                        f"{i + 1}. {m.method} (won {m.wins}, lost {m.losses}"
                        f"{', fails the sanity check' if m.sanity_pass is False else ''})" for i, m in enumerate(methods))
                    + ".")
    if failing:
        text.append(f"Do not use {', '.join(failing)} on this model: "
                    f"{'they fail' if len(failing) > 1 else 'it fails'} the randomisation sanity check.")
    return AuditVerdict(methods, eps, k, " ".join(text), _caveats(rows, faith, checks, eps), comparisons)


def _caveats(rows, faith, checks, eps) -> list[str]:
    out = []
    iterative = [r for r in rows if r.get("converged") is not None and r.get("iterations") is not None]
    iterations = sorted({r["iterations"] for r in iterative})
    attacks = sorted({r["attack"] for r in iterative})
    single = sorted({r["attack"] for r in rows if r.get("iterations") == 1 and r["attack"] not in attacks})
    if iterations:
        out.append(f"The iterative attacks ({', '.join(attacks)}) ran {'/'.join(map(str, iterations))} iterations"
                   f"{' (' + ', '.join(single) + ': one draw)' if single else ''}: a worst case found in few iterations "
                   "is a lower bound (the true worst case can only be worse).")
    warning = convergence_warning(rows)
    nc = not_converged(rows)
    if warning:
        out.append(warning[0].upper() + warning[1:] + ".")
    elif nc:
        out.append(f"All {nc[1]} iterative attack results had converged.")
    failed = sum(not r["success"] for r in rows if r["eps"] == eps)
    if failed:
        out.append(f"{failed} results at eps {eps:g} found no label-preserving perturbation and are left out.")
    if faith:
        out.append(f"Faithfulness on {len({f['image'] for f in faith})} images (deletion to a zero baseline).")
    else:
        out.append("No faithfulness curves were stored (set faithfulness: true).")
    if checks:
        c = checks[0]
        cascade = c.get("sanity", {}).get("cascading", {})
        out.append(f"Sanity checks and worst-vs-random ratios on the first {c['images']} images only "
                   f"({len(cascade.get('layers', []))} layer groups of {cascade.get('total_layers', '?')} layers; "
                   f"{c['samples']} random samples, {c['steps']} attack iterations per radius).")
    else:
        out.append("No sanity checks were stored (set checks: true): the sanity score is missing.")
    return out


def verdict_table(v: AuditVerdict) -> tuple[list[str], list[list]]:
    """(header, rows) of the robustness-faithfulness-sanity table, ranked."""
    header = ["rank", "method", f"top-{v.k} kept (worst attack)", "Spearman (worst attack)", "deletion AUC",
              "insertion AUC", "sanity Spearman (all layers random)", "sanity SSIM", "worst / random (MaxSens.)",
              "paired wins / losses", "sanity check"]
    rows = []
    for i, m in enumerate(v.methods):
        rows.append([i + 1, m.method, m.robustness.text(), m.robustness_spearman.text(), m.faithfulness.text(),
                     m.insertion.text(), m.sanity.text(), m.sanity_ssim.text(), m.worst_over_random.text(),
                     f"{m.wins} / {m.losses}",
                     "not run" if m.sanity_pass is None else ("pass" if m.sanity_pass else "FAIL")])
    return header, rows


def verdict_html(v: AuditVerdict) -> str:
    """The verdict as HTML: the table (failing methods in red), the paragraph and the caveats, all escaped."""
    header, rows = verdict_table(v)
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = ""
    for r in rows:
        style = ' class=warn' if r[-1] == "FAIL" else ""
        body += f"<tr{style}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in v.caveats)
    return (f"<table class=verdict><tr>{head}</tr>{body}</table><p>{html.escape(v.text)}</p>"
            f"<p class=note>Caveats:</p><ul class=note>{caveats}</ul>")


def verdict_markdown(v: AuditVerdict) -> str:
    """The verdict as Markdown: a ``## Verdict`` heading, the table (failing methods in bold), the paragraph and the caveats."""
    header, rows = verdict_table(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(f"**{c}**" if c == "FAIL" else str(c) for c in r) + " |" for r in rows]
    return "\n".join(["## Verdict", "", *lines, "", v.text, "", "Caveats:", "", *(f"- {c}" for c in v.caveats)])


def stored_verdict(store_path) -> AuditVerdict | None:
    """The verdict of a result store (its rows, faithfulness rows and ``checks/*.json``)."""
    from fragile.experiments.checks import load_checks
    from fragile.experiments.store import Store

    with Store.open(store_path) as store:
        rows, faith = store.rows(), store.rows("faithfulness")
    return audit_verdict(rows, faith, load_checks(store_path))
