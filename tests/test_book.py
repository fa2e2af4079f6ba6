"""The book: every chapter executes at the smoke profile under papermill, the committed book builds
with Sphinx warnings as errors, and a chapter run at another profile or a failed run leaves the
published page alone.    Run: pytest tests/test_book.py
"""
import os
import shutil

import nbformat
import pytest
from IPython.core.inputtransformer2 import TransformerManager
from papermill.exceptions import PapermillExecutionError

from kn.book import BOOK, ROOT, book_profile, build_book, chapters, notebook, notebook_profile, run_chapter, unexecuted
from kn.errors import DataError


def copy_book(tmp_path):
    """The book's sources in a fresh folder, so building leaves the checkout alone."""
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "book", root / "book")
    for name in ["_config.yml", "_toc.yml"]:
        shutil.copy(ROOT / name, root / name)
    return root


@pytest.mark.heavy
@pytest.mark.parametrize("chapter", chapters())
def test_chapter_runs_at_smoke(chapter, tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("KN_RUNS_ROOT", str(tmp_path / "runs"))
    out = run_chapter(chapter, "smoke", output=tmp_path / f"{chapter}.ipynb")
    assert out.is_file()
    assert any((tmp_path / "results" / chapter / "smoke").iterdir())


@pytest.mark.parametrize("chapter", chapters())
def test_install_cell_installs_from_the_clone(chapter):
    """Each chapter opens with a cell that imports kn and, only where that fails, pip-installs the
    clone it sits in (the cell runs in book/, so `..` is the repository)."""
    cell = next(c for c in nbformat.read(notebook(chapter), 4).cells if "%pip install" in c.source)
    code = TransformerManager().transform_cell(cell.source)
    compile(code, chapter, "exec")
    assert code.startswith("try:") and "import kn\nexcept ImportError:" in code
    assert "run_line_magic('pip', 'install -q -r ../requirements.txt -e ..')" in code
    assert (BOOK / ".." / "requirements.txt").is_file() and (BOOK / ".." / "pyproject.toml").is_file()


def test_every_chapter_is_committed_executed():
    assert chapters() and unexecuted() == []


@pytest.mark.heavy
def test_book_builds_with_warnings_as_errors(tmp_path):
    root = copy_book(tmp_path)
    assert build_book(root).is_file()


def test_book_refuses_unexecuted_chapter(tmp_path):
    root = copy_book(tmp_path)
    nb = notebook(chapters(root)[0], root)            # a chapter, not a run written beside one (data.smoke.ipynb)
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


def tiny_book(tmp_path, *code):
    """A book of one chapter `tiny` (a parameters cell, then `code`) at profile cpu."""
    (tmp_path / "_config.yml").write_text("parse:\n  myst_substitutions:\n    book_profile: cpu\n")
    cells = [nbformat.v4.new_code_cell('profile = "cpu"', metadata={"tags": ["parameters"]})]
    cells += [nbformat.v4.new_code_cell(c) for c in code]
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                        "display_name": "Python 3"}})
    (tmp_path / "book").mkdir()
    nbformat.write(nb, tmp_path / "book" / "tiny.ipynb")
    return tmp_path / "book"


def test_run_at_another_profile_is_written_beside(tmp_path):
    book = tiny_book(tmp_path, "print(profile)")
    before = (book / "tiny.ipynb").read_bytes()
    out = run_chapter("tiny", "smoke", book=book)
    assert out == book / "tiny.smoke.ipynb" and (book / "tiny.ipynb").read_bytes() == before
    assert notebook_profile(out) == "smoke" and notebook_profile(book / "tiny.ipynb") == "cpu"
    injected = next(c for c in nbformat.read(out, 4).cells if "injected-parameters" in c.metadata.get("tags", []))
    assert "remove-cell" in injected.metadata.tags   # the page shows one `profile =` cell


def test_run_at_book_profile_replaces_the_chapter(tmp_path):
    book = tiny_book(tmp_path, "print(profile)")
    assert run_chapter("tiny", "cpu", book=book) == book / "tiny.ipynb"
    assert not (book / "tiny.cpu.ipynb").exists()
    assert nbformat.read(book / "tiny.ipynb", 4).cells[-1].outputs[0].text == "cpu\n"


def test_failed_run_leaves_the_chapter(tmp_path):
    book = tiny_book(tmp_path, "raise ValueError('boom')")
    before = (book / "tiny.ipynb").read_bytes()
    with pytest.raises(PapermillExecutionError, match="boom"):
        run_chapter("tiny", "cpu", book=book)
    assert (book / "tiny.ipynb").read_bytes() == before


def test_book_refuses_page_at_another_profile(tmp_path):
    root = copy_book(tmp_path)
    assert book_profile(root) == "cpu"
    nb = root / "book" / "probing.ipynb"
    book = nbformat.read(nb, as_version=4)
    cell = next(c for c in book.cells if "injected-parameters" in c.metadata.get("tags", []))
    cell.source = '# Parameters\nprofile = "smoke"\n'
    nbformat.write(book, nb)
    with pytest.raises(DataError, match="probing ran at profile 'smoke', the book is at 'cpu'"):
        build_book(root)


def test_run_at_another_profile_keeps_its_results_beside_the_committed_ones(tmp_path, monkeypatch):
    """A teacher's class run must not rewrite tracked result files: at a profile other than the book's,
    results_dir points under book/results-local (untracked); at the book's profile, where it was."""
    monkeypatch.delenv("KN_RESULTS_ROOT", raising=False)
    book = tiny_book(tmp_path, "from kn.results import results_dir\nprint(results_dir('tiny', profile))")
    out = run_chapter("tiny", "class", book=book)
    assert nbformat.read(out, 4).cells[-1].outputs[0].text.strip() == str(tmp_path / "book" / "results-local" / "tiny" / "class")
    assert "KN_RESULTS_ROOT" not in os.environ                      # restored after the run
    run_chapter("tiny", "cpu", book=book)
    assert nbformat.read(book / "tiny.ipynb", 4).cells[-1].outputs[0].text.strip() == str(ROOT / "book" / "results" / "tiny" / "cpu")
    assert "book/results-local/" in (ROOT / ".gitignore").read_text().splitlines()


def test_preview_stages_the_runs_at_a_profile(tmp_path):
    """`kn book --profile class` builds from a copy where each chapter run at class stands in for its page."""
    from kn.book import stage_preview
    book = tiny_book(tmp_path, "print(profile)")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/tiny\n")
    with pytest.raises(DataError, match="^profile: no chapter has been run at 'class'"):
        stage_preview("class", tmp_path)
    run_chapter("tiny", "class", book=book)
    src = stage_preview("class", tmp_path)
    assert (src / "book" / "tiny.ipynb").read_bytes() == (book / "tiny.class.ipynb").read_bytes()
    assert not list((src / "book").glob("*.*.ipynb")) and (src / "_config.yml").is_file()
