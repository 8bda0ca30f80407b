"""The wheel and sdist build offline, pass ``twine check --strict`` and carry the project metadata."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    missing = _missing("build", "twine", "setuptools")
    if missing:
        pytest.skip(f"packaging check needs {', '.join(missing)} (pip install -e '.[test]')")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"packaging check needs setuptools >= 77 for the SPDX license string, have {setuptools.__version__}")
    # Build from a copy so the check never writes build/ or *.egg-info into the checkout.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: use the installed setuptools instead of downloading one (CI is offline but for registries).
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Deprecat" not in log and "License classifiers" not in log, log[-3000:]
    wheel, sdist = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheel) == 1 and len(sdist) == 1, sorted(p.name for p in out.iterdir())
    return {"wheel": wheel[0], "sdist": sdist[0]}


def test_twine_check_passes(dists):
    proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(dists["wheel"]), str(dists["sdist"])],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2


def test_wheel_carries_metadata_typing_marker_and_configs(dists):
    import fragile

    with zipfile.ZipFile(dists["wheel"]) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = z.read(info).decode()
    assert "fragile/py.typed" in names
    assert "fragile/experiments/configs/audit-default.yaml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in meta and "Classifier: License ::" not in meta
    assert "Classifier: Typing :: Typed" in meta
    assert f"Version: {fragile.__version__}" in meta
    with tarfile.open(dists["sdist"]) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"LICENSE", "README.md", "pyproject.toml", "src/fragile/py.typed"} <= members


def test_version_from_package_metadata_and_cli(capsys):
    from importlib.metadata import version

    import fragile
    from fragile.cli import main

    assert fragile.__version__ == version("fragile")
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fragile {fragile.__version__}"
