"""The documentation site builds with ``mkdocs build --strict``, and its pages work in a browser.

The build runs the CLI-reference hook (docs/hooks/cli_reference.py) and mkdocstrings over the package; the
browser test opens the index and one API page in headless Chromium, served from loopback, and checks that
every internal link and anchor resolves, every image loads and the console stays clean.
"""

from __future__ import annotations

import functools
import html.parser
import importlib.util
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from conftest import serve

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        pytest.skip(f"the docs build needs {', '.join(missing)} (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


class _Links(html.parser.HTMLParser):
    """Collects href / src attributes and element ids of one HTML page."""

    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key) and not (tag == "a" and key == "src"):
                self.links.append(attrs[key])


@functools.cache
def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _broken_links(site: Path, page: Path, links) -> list[str]:
    """Internal links of ``page`` (relative URLs) whose file or #anchor does not exist in the built site."""
    broken = []
    for link in links:
        parts = urllib.parse.urlsplit(link)
        if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
            continue
        target = (page.parent / urllib.parse.unquote(parts.path)).resolve() if parts.path else page
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file() or site.resolve() not in target.parents:
            broken.append(f"{page.relative_to(site)}: {link}")
        elif parts.fragment and target.suffix == ".html" and parts.fragment not in _parse(target).ids:
            broken.append(f"{page.relative_to(site)}: {link} (no such anchor)")
    return broken


def test_site_has_every_page_and_generated_references(site):
    for page in ("index.html", "concepts.html", "cli.html", "reproductions.html", "comparison.html", "changelog.html",
                 *(f"api/{s}.html" for s in ("models", "explanations", "attacks", "metrics", "defenses", "influence",
                                              "geometry", "experiments", "reporting", "data")),
                 *(f"tutorials/{t}.html" for t in ("index", "audit-your-model", "attack-an-explanation",
                                                   "reproduce-a-figure", "train-with-ssr"))):
        assert (site / page).is_file(), page
    from fragile.cli import build_parser

    cli = (site / "cli.html").read_text()
    commands = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices).choices
    assert all(f'id="fragile-{name}"' in cli for name in commands), "every sub-command has a section"
    api = _parse(site / "api" / "attacks.html").ids
    assert {"fragile.attacks.run", "fragile.attacks.AttackResult", "fragile.attacks.transfer.transfer"} <= api
    assert "fragile.experiments.audit.audit" in _parse(site / "api" / "experiments.html").ids


def test_no_broken_internal_links_anywhere(site):
    broken = []
    for page in sorted(site.rglob("*.html")):
        if page.name != "404.html":
            broken += _broken_links(site, page, _parse(page).links)
    assert broken == []




@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs chromium + chromedriver (make system-deps)")
def test_index_and_an_api_page_in_headless_chromium(site, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,2000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    seen = {}
    try:
        with serve(site) as base:
            for page in ("index.html", "api/attacks.html", "tutorials/attack-an-explanation.html"):
                driver.get(f"{base}/{page}")
                links = driver.execute_script(
                    "return Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))")
                images = driver.execute_script(
                    "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : 0])")
                title = driver.title
                errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
                seen[page] = (links, images, title, errors)
            driver.save_screenshot(str(tmp_path / "shot.png"))
    finally:
        driver.quit()
    for page, (links, images, title, errors) in seen.items():
        assert errors == [], (page, errors)
        assert "fragile" in title, (page, title)
        assert len(links) > 20, page                        # navigation, table of contents, content
        assert _broken_links(site, site / page, links) == [], page
        assert all(width > 0 for _, width in images), (page, images)
    assert any(src.endswith("attack_topk.png") for src, _ in seen["tutorials/attack-an-explanation.html"][1])
    assert (tmp_path / "shot.png").stat().st_size > 20_000


def test_make_docs_target_builds_into_site():
    makefile = (ROOT / "Makefile").read_text()
    assert "docs:" in makefile and "mkdocs build --strict" in makefile
    assert "site/" in (ROOT / ".gitignore").read_text().split()
