"""The browser check of the built website (kn.site): headless Chromium passes the committed book and
catches a raw pipe table, a missing image, a broken link, formulas left unrendered when MathJax is
not served, a table wider than the page at 1280 and 1920 px, literal Markdown emphasis and a formula
written as plain text. Skips without the Debian package `chromium` (.ci/run installs it).
    Run: pytest tests/test_site.py
"""
import shutil

import pytest

from kn.book import ROOT, build_book
from kn.locks import file_lock
from kn.site import check_site, find_chromium, toc_pages

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install chromium)")
HTML = ROOT / "_build" / "html"
ARTICLE = '<article class="bd-article">'   # where a page's content starts


@pytest.fixture(scope="module")
def site():
    """The built book: what `kn book` (or .ci/run) left in _build/html, built here if missing (by one
    pytest worker while the others wait)."""
    with file_lock(ROOT / "_build" / "site-test.lock"):
        if not (HTML / "index.html").is_file():
            build_book(ROOT)
    return HTML


@pytest.mark.heavy
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
    wide = "".join(f"<td>{'x' * 40}_{i}</td>" for i in range(20))                # 20 unbreakable columns
    intro = html / "book" / "intro.html"
    intro.write_text(intro.read_text().replace(ARTICLE, ARTICLE + f'<table style="table-layout:fixed;width:3000px">'
                                               f'<tr>{wide}</tr></table>'
                                               "<p>the verdict is **inconclusive**; bits &gt;= N log2(N0 / e^loss)"
                                               "; N0 = 400<em>400</em>1000</p>", 1))
    problems = check_site(html, pages=["book/claims.html", "book/data.html", "book/dynamics.html", "book/intro.html"],
                          screenshots=tmp_path / "shots")
    found = problems["book/intro.html"]
    for start in ("table wider than the page at 1280 px", "table wider than the page at 1920 px",
                  "literal Markdown emphasis", "formula as plain text", "a product written with * shown as italics"):
        assert any(p.startswith(start) for p in found), (start, found)
    assert "Markdown table syntax (|---|) shown as text" in problems["book/claims.html"]
    assert {"image not loaded: no_such.png", "broken link: book/no_such_page.html",
            "broken anchor: book/intro.html#no-such"} <= set(problems["book/data.html"])
    assert any(p.startswith("formula not rendered") for p in problems["book/dynamics.html"])
