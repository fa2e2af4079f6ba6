"""The book: every chapter executes at the smoke profile under papermill, and the committed book
builds with Sphinx warnings as errors.    Run: pytest tests/test_book.py
"""
import shutil

import nbformat
import pytest

from kn.book import ROOT, build_book, chapters, run_chapter, unexecuted
from kn.data.records import DataError


def copy_book(tmp_path):
    """The book's sources in a fresh folder, so building leaves the checkout alone."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "book", root / "book")
    for name in ["_config.yml", "_toc.yml"]:
        shutil.copy(ROOT / name, root / name)
    return root


@pytest.mark.parametrize("chapter", chapters())
def test_chapter_runs_at_smoke(chapter, tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("KN_RUNS_ROOT", str(tmp_path / "runs"))
    out = run_chapter(chapter, "smoke", output=tmp_path / f"{chapter}.ipynb")
    assert out.is_file()
    assert any((tmp_path / "results" / chapter / "smoke").iterdir())


def test_every_chapter_is_committed_executed():
    assert chapters() and unexecuted() == []


def test_book_builds_with_warnings_as_errors(tmp_path):
    root = copy_book(tmp_path)
    assert build_book(root).is_file()


def test_book_refuses_unexecuted_chapter(tmp_path):
    root = copy_book(tmp_path)
    nb = next((root / "book").glob("*.ipynb"))
    book = nbformat.read(nb, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            cell.execution_count, cell.outputs = None, []
    nbformat.write(book, nb)
    with pytest.raises(DataError, match="without executed output"):
        build_book(root)


def test_unknown_chapter_and_profile():
    with pytest.raises(DataError, match="^chapter"):
        run_chapter("no_such_chapter", "smoke")
    with pytest.raises(DataError, match="^profile"):
        run_chapter(chapters()[0], "huge")


def test_book_refuses_figure_cell_with_two_outputs(tmp_path):
    root = copy_book(tmp_path)
    nb = root / "book" / "probing.ipynb"
    book = nbformat.read(nb, as_version=4)
    cell = next(c for c in book.cells if "figure" in c.metadata.get("mystnb", {}))
    cell.outputs.insert(0, nbformat.v4.new_output("execute_result", {"text/plain": "Text(0, 0.5, 'y')"}, execution_count=1))
    nbformat.write(book, nb)
    with pytest.raises(DataError, match="figure cell shows 2 outputs"):
        build_book(root)
