"""The audit verdict (fragile.reporting.verdict): three scores with intervals, a ranking that rests on all three,
sanity failures flagged and ranked last; the same verdict from fragile.audit, report.html and summary.md."""

from __future__ import annotations

import html

import numpy as np
import pytest
import torch

import fragile
from fragile.experiments.checks import resolve_checks
from fragile.errors import FragileError
from fragile.reporting.html import render
from fragile.reporting.verdict import audit_verdict, verdict_markdown, verdict_table


def rows_for(method, topk, spearman=None, attacks=("random_sign", "topk"), eps=8.0):
    """One row per image and attack; the top-k attack gets ``topk``, the random one 0.9 (the worst is top-k)."""
    out = []
    for i, v in enumerate(topk):
        for a in attacks:
            val = v if a == "topk" else 0.9
            out.append({"image": i, "image_id": f"im{i}", "method": method, "defence": "none", "attack": a, "eps": eps,
                        "seed": 0, "success": 1, "top100_intersection": val,
                        "spearman": val if spearman is None else spearman[i], "iterations": 10,
                        "converged": 1 if a == "topk" else None})
    return out


def faith_for(method, deletion):
    return [{"image": i, "method": method, "defence": "none", "deletion_auc": d, "insertion_auc": 1 - d}
            for i, d in enumerate(deletion)]


def check_for(method, sanity_last, ratio=3.0):
    n = len(sanity_last)
    return {"method": method, "defence": "none", "images": n, "eps": 8.0, "samples": 10, "steps": 10,
            "worst_vs_random": {"max_sensitivity": {"random": [0.1] * n, "worst": [0.1 * ratio] * n, "ratio": [ratio] * n}},
            "sanity": {"cascading": {"layers": [["fc"], ["conv"]], "randomised": [1, 2], "total_layers": 2,
                                     "spearman": [[0.9] * n, list(sanity_last)], "ssim": [[0.9] * n, list(sanity_last)]}}}


rng = np.random.default_rng(0)
N = 12


def jitter(v, s=0.01):
    return list(np.clip(v + s * rng.standard_normal(N), 0, 1))


def test_a_method_failing_the_sanity_check_is_flagged_and_ranked_last():
    """'edges' is the most robust and faithful but its maps survive randomisation (Spearman 0.9): it fails,
    is last and the paragraph says not to use it; 'grad' is recommended."""
    rows = rows_for("edges", jitter(0.9)) + rows_for("grad", jitter(0.3)) + rows_for("smooth", jitter(0.6))
    faith = faith_for("edges", jitter(0.1)) + faith_for("grad", jitter(0.3)) + faith_for("smooth", jitter(0.2))
    checks = [check_for("edges", jitter(0.9)), check_for("grad", jitter(0.1)), check_for("smooth", jitter(0.15))]
    v = audit_verdict(rows, faith, checks)
    assert [m.method for m in v.methods] == ["smooth", "grad", "edges"]
    assert v.methods[-1].sanity_pass is False and v.methods[0].sanity_pass is True
    assert "On this model use smooth" in v.text and "Do not use edges" in v.text
    assert "FAILS the sanity check" in v.text and "keeps 60% [" in v.text and "3.0x as far as random noise" in v.text
    header, table = verdict_table(v)
    assert table[-1][-1] == "FAIL" and table[0][1] == "smooth"
    assert any("iterations" in c for c in v.caveats)
    assert "**FAIL**" in verdict_markdown(v)


def test_the_ranking_never_rests_on_one_score():
    """'robust' wins robustness only; 'faithful' wins faithfulness and sanity: 'faithful' ranks first, and
    the paragraph says where the other one is better."""
    rows = rows_for("robust", jitter(0.8)) + rows_for("faithful", jitter(0.5))
    faith = faith_for("robust", jitter(0.4)) + faith_for("faithful", jitter(0.2))
    checks = [check_for("robust", jitter(0.3)), check_for("faithful", jitter(0.1))]
    v = audit_verdict(rows, faith, checks)
    assert [m.method for m in v.methods] == ["faithful", "robust"]
    assert (v.methods[0].wins, v.methods[0].losses) == (2, 1)
    assert "better than every other method on faithfulness and sanity" in v.text
    assert "robust is better on robustness" in v.text


def test_unresolved_differences_are_said_so():
    rows = rows_for("a", list(rng.uniform(0, 1, N))) + rows_for("b", list(rng.uniform(0, 1, N)))
    faith = faith_for("a", list(rng.uniform(0, 1, N))) + faith_for("b", list(rng.uniform(0, 1, N)))
    v = audit_verdict(rows, faith)
    assert "No difference between the methods is resolved" in v.text
    assert any("No sanity checks were stored" in c for c in v.caveats)
    assert v.methods[0].sanity_pass is None


def test_report_shows_verdict_figures_and_escapes_names():
    rows = rows_for("<b>x</b>", jitter(0.5)) + rows_for("grad", jitter(0.3))
    faith = faith_for("<b>x</b>", jitter(0.2)) + faith_for("grad", jitter(0.3))
    checks = [check_for("<b>x</b>", jitter(0.1)), check_for("grad", jitter(0.7))]
    page = render([{"name": "t", "model": "m", "images": "i"}], rows, faith, [], checks=checks)
    assert "Verdict: robustness, faithfulness, sanity" in page and "<b>x</b>" not in page
    assert 'alt="worst_vs_random"' in page and 'alt="sanity_curves"' in page and "class=warn" in page
    assert html.escape(audit_verdict(rows, faith, checks).text) in page


def test_checks_settings_are_checked():
    assert resolve_checks(True)["images"] == 8
    with pytest.raises(FragileError, match="unknown key 'image' in checks"):
        resolve_checks({"image": 3})
    with pytest.raises(FragileError, match="checks.samples"):
        resolve_checks({"samples": 0})
    with pytest.raises(FragileError, match="checks.metrics"):
        resolve_checks({"metrics": ["continuity"]})
    with pytest.raises(FragileError, match="checks.scales"):
        resolve_checks({"scales": [2.0]})


def test_the_audit_returns_the_verdict_of_its_report_and_summary(tmp_path):
    """A two-method audit of a small user network: checks stored per method, the same verdict paragraph in
    AuditResult.verdict, report.html and summary.md."""
    from test_audit_api import UserNet

    torch.manual_seed(0)
    net = UserNet().eval()
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    result = fragile.audit(net, x, methods=["gradient", {"name": "smoothgrad", "samples": 2}],
                           attacks=["random_sign", "topk"], eps=[8], steps=3, checks={"images": 4, "samples": 3},
                           out=tmp_path / "a", log=None)
    assert {c["method"] for c in result.checks} == {"gradient", "smoothgrad(samples=2)"}
    assert len(result.checks[0]["sanity"]["cascading"]["spearman"][0]) == 4
    assert result.scores.text in result.verdict and "Caveats" in result.verdict
    assert html.escape(result.scores.text) in result.report.read_text()
    assert result.scores.text in (tmp_path / "a" / "summary.md").read_text()
    assert "Random noise vs the worst case" in (tmp_path / "a" / "summary.md").read_text()
    # a rerun reuses the stored checks (resume)
    stamp = sorted(p.stat().st_mtime_ns for p in (tmp_path / "a" / "checks").glob("*.json"))
    again = fragile.audit(net, x, methods=["gradient", {"name": "smoothgrad", "samples": 2}],
                          attacks=["random_sign", "topk"], eps=[8], steps=3, checks={"images": 4, "samples": 3},
                          out=tmp_path / "a", log=None)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "a" / "checks").glob("*.json")) == stamp
    assert again.verdict == result.verdict
    skipped = fragile.audit(net, x, methods=["gradient"], attacks=["topk"], eps=[8], steps=2, checks=False, log=None)
    assert skipped.checks == [] and "No sanity checks were stored" in skipped.verdict
