"""The browser check of the built website (kn.site): headless Chromium passes the committed book and
catches a raw pipe table, a missing image, a broken link and formulas left unrendered when MathJax is
not served. Skips without the Debian package `chromium` (.ci/run installs it).
    Run: pytest tests/test_site.py
"""
import shutil

import pytest

from kn.book import ROOT, build_book
from kn.site import check_site, find_chromium, toc_pages

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install chromium)")
HTML = ROOT / "_build" / "html"
ARTICLE = '<article class="bd-article">'   # where a page's content starts


@pytest.fixture(scope="module")
def site():
    """The built book: what `kn book` (or .ci/run) left in _build/html, built here if missing."""
    if not (HTML / "index.html").is_file():
        build_book(ROOT)
    return HTML


def test_built_book_passes_in_a_browser(site):
    problems = check_site(site)
    assert set(problems) == set(toc_pages(ROOT))
    assert {page: p for page, p in problems.items() if p} == {}
    assert all((site.parent / "screenshots" / p.replace("/", "_").replace(".html", ".png")).stat().st_size > 0
               for p in problems)


def test_broken_pages_fail(site, tmp_path):
    html = tmp_path / "html"
    shutil.copytree(site, html, ignore=shutil.ignore_patterns("mathjax"))   # no MathJax: formulas stay raw
    claims = html / "book" / "claims.html"
    claims.write_text(claims.read_text().replace(
        ARTICLE, ARTICLE + "<p>| claim | ours |\n|---|---|\n| R1 | 6% |</p>", 1))
    data = html / "book" / "data.html"
    data.write_text(data.read_text().replace(
        ARTICLE, ARTICLE + '<img src="no_such.png"><a href="no_such_page.html">x</a><a href="intro.html#no-such">y</a>', 1))
    problems = check_site(html, pages=["book/claims.html", "book/data.html", "book/dynamics.html"],
                          screenshots=tmp_path / "shots")
    assert "Markdown table syntax (|---|) shown as text" in problems["book/claims.html"]
    assert {"image not loaded: no_such.png", "broken link: book/no_such_page.html",
            "broken anchor: book/intro.html#no-such"} <= set(problems["book/data.html"])
    assert any(p.startswith("formula not rendered") for p in problems["book/dynamics.html"])
