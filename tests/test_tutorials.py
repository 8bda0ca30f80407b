"""The tutorials in docs/tutorials/ (and the snippets the docs embed) run, at their --small sizes.

Each script is run as a user would run it, in a subprocess, writing into a temporary folder instead of
docs/tutorials/figures/ (whose committed figures come from the scripts' default sizes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = {
    "audit_your_model.py": ["audit_spearman.png", "audit_output.txt"],
    "attack_an_explanation.py": ["attack_topk.png", "attack_manipulate.png", "attack_output.txt"],
    "reproduce_a_figure.py": ["fig3_spearman.png", "fig3_topk.png", "fig3_summary.txt"],
    "train_with_ssr.py": ["ssr_comparison.png", "ssr_output.txt"],
}


def _run(script: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # One intra-op thread: these batches are tiny, and on a shared 2-core machine torch's default thread
    # count is many times slower (threads spin against other processes).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_every_tutorial_is_tested_and_has_a_page():
    assert sorted(p.name for p in (ROOT / "docs" / "tutorials").glob("*.py")) == sorted(TUTORIALS)
    pages = " ".join(p.read_text() for p in (ROOT / "docs" / "tutorials").glob("*.md"))
    for script, outputs in TUTORIALS.items():
        assert f"docs/tutorials/{script}" in pages, script
        for name in outputs:
            assert f"figures/{name}" in pages, name
            assert (ROOT / "docs" / "tutorials" / "figures" / name).stat().st_size > 100, name


@pytest.mark.parametrize("script", sorted(TUTORIALS))
def test_tutorial_runs_at_small_size(script, tmp_path):
    proc = _run(ROOT / "docs" / "tutorials" / script, "--small", "--out", str(tmp_path))
    for name in TUTORIALS[script]:
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 100, (name, proc.stdout[-2000:])
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Traceback" not in proc.stderr


def test_captum_snippet_of_the_comparison_page_runs():
    pytest.importorskip("captum")
    proc = _run(ROOT / "docs" / "snippets" / "captum_metrics.py")
    assert "Spearman [1.0, 1.0, 1.0, 1.0]" in proc.stdout
