"""Running chapters and building the book.

`run_chapter(name, profile)` executes book/<name>.ipynb with papermill (its parameters cell gets
`profile`) into book/<name>.<profile>.ipynb; at the book's profile (`book_profile` in _config.yml) the
executed notebook then replaces the chapter, so a run at another profile or a failed run leaves the
published page as it was. The chapter writes its result files to kn.results.results_dir(name, profile).
`build_book()` builds _build/html with Jupyter Book without executing anything, after checking that
every notebook in the table of contents has executed outputs and ran at the book's profile.
papermill writes under a temporary name, renamed into place once whole; a SIGTERM or SIGINT to kn
first stops what it started (the kernel, jupyter-book and their children), then acts as it would.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from pathlib import Path

from kn.display import markdown_table  # noqa: F401 - chapters import it from here
from kn.errors import DataError
from kn.profiles import check_profile
from kn.results import ROOT, results_dir, runs_dir  # noqa: F401 - chapters import them from here
from kn.signals import signals_handled
from kn.times import render
from kn.toc import chapters

BOOK = ROOT / "book"
log = logging.getLogger(__name__)
# Keep library progress bars and a widget warning out of the book's pages (kn's own bars are off there).
CHAPTER_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONWARNINGS": "ignore:IProgress not found"}


LOCAL_RESULTS = "book/results-local"   # under the root: result files of runs at another profile than the book's


@contextmanager
def _results_root(profile: str, root: Path):
    """At a profile other than the book's (a teacher's class run), result files go to
    root/LOCAL_RESULTS, beside the committed ones as the run's notebook is beside its chapter, so
    that a run never rewrites a tracked file; KN_RESULTS_ROOT, when set, wins."""
    local = (root / "_config.yml").is_file() and profile != book_profile(root) and "KN_RESULTS_ROOT" not in os.environ
    if local:
        os.environ["KN_RESULTS_ROOT"] = str(root / LOCAL_RESULTS)
    try:
        yield
    finally:
        if local:
            os.environ.pop("KN_RESULTS_ROOT", None)


def run_chapter(chapter: str, profile: str = "smoke", output: Path | None = None, book: Path = BOOK) -> Path:
    """Execute one chapter with papermill into `output` (default book/<chapter>.<profile>.ipynb); at the
    book's profile and without `output`, the executed notebook then replaces the chapter. At another
    profile its result files go to LOCAL_RESULTS (untracked), not to book/results."""
    import papermill
    check_profile(profile)
    src = book / f"{chapter}.ipynb"
    if not src.is_file():
        raise DataError(f"chapter: no notebook {chapter!r}; allowed: {', '.join(chapters()) or 'none'}")
    out = Path(output) if output else book / f"{chapter}.{profile}.ipynb"
    tmp = out.with_name(f".{out.stem}.tmp-{os.getpid()}.ipynb")      # papermill wants the .ipynb suffix
    os.environ.update(CHAPTER_ENV)   # inherited by the kernel
    t0 = time.perf_counter()
    try:
        with children_stopped_on_signal(tmp), _results_root(profile, book.parent):
            papermill.execute_notebook(str(src), str(tmp), parameters={"profile": profile}, cwd=str(book),
                                       kernel_name="python3", progress_bar=False, log_output=False)
        hide_injected_parameters(tmp)
        os.replace(tmp, out)
    except papermill.PapermillExecutionError:
        os.replace(tmp, out)                 # whole, with the failing cell's error
        log.error("%s failed at profile %s: the executed notebook is %s; %s is unchanged", chapter, profile, out, src)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    log.info("ran %s at profile %s in %.1f s", chapter, profile, time.perf_counter() - t0)
    if bad := figure_problems(out):
        raise DataError("; ".join(bad))
    if output is None and profile == book_profile(book.parent):
        os.replace(out, src)
        return src
    return out


def hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected parameters cell `remove-cell`: the page shows the parameters cell once."""
    nb = json.loads(Path(path).read_text())
    for cell in nb["cells"]:
        tags = cell["metadata"].get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell["metadata"]["tags"] = tags + ["remove-cell"]
    Path(path).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def book_profile(root: Path = ROOT) -> str:
    """The profile the published book ran at: `book_profile` in _config.yml (parse.myst_substitutions,
    so the intro's text and this check read the same line)."""
    import yaml
    config = yaml.safe_load((root / "_config.yml").read_text()) or {}
    profile = (config.get("parse") or {}).get("myst_substitutions", {}).get("book_profile")
    if profile is None:
        raise DataError("book_profile: missing from _config.yml parse.myst_substitutions; allowed: a profile name")
    return check_profile(profile)


def notebook_profile(path: Path) -> str | None:
    """The profile a notebook ran at: the last `profile = "..."` of its parameters and injected-parameters cells."""
    profile = None
    for cell in json.loads(Path(path).read_text())["cells"]:
        if {"parameters", "injected-parameters"} & set(cell["metadata"].get("tags", [])):
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "profile" for t in node.targets):
                    profile = ast.literal_eval(node.value)
    return profile


def figure_problems(path: Path) -> list[str]:
    """Figure cells (mystnb `figure` metadata) that show other than exactly one output: myst-nb names
    every output after the figure, so a stray `Text(...)` result gives a duplicate target."""
    nb = json.loads(Path(path).read_text())
    bad = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "figure" not in cell["metadata"].get("mystnb", {}):
            continue
        shown = [o for o in cell.get("outputs", []) if o["output_type"] in ("execute_result", "display_data")
                 and not any(k.startswith("application/papermill") for k in o.get("data", {}))]
        if len(shown) != 1:
            bad.append(f"{Path(path).stem} cell {i}: figure cell shows {len(shown)} outputs, allowed: 1")
    return bad


def notebook(name: str, root: Path = ROOT) -> Path:
    """The notebook of chapter `name` under root."""
    return next(root.glob(f"**/{name}.ipynb"))


def unexecuted(root: Path = ROOT) -> list[str]:
    """Chapters in the table of contents whose code cells have no executed output."""
    bad = []
    for name in chapters(root):
        nb = json.loads(notebook(name, root).read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code" and c["source"]]
        if any(c.get("execution_count") is None for c in code):
            bad.append(name)
    return bad


def profile_problems(root: Path = ROOT) -> list[str]:
    """Chapters that ran at another profile than the book's (a smoke page under a cpu intro)."""
    want = book_profile(root)
    return [f"{name} ran at profile {got!r}, the book is at {want!r} (_config.yml book_profile); "
            f"run `kn run {name} --profile {want}`"
            for name in chapters(root) if (got := notebook_profile(notebook(name, root))) != want]


def build_book(root: Path = ROOT, warnings_as_errors: bool = True) -> Path:
    """Build _build/html from the committed notebooks (the measured times rendered first, kn.times);
    fails if any chapter is unexecuted."""
    render(root)
    bad = unexecuted(root)
    if bad:
        raise DataError(f"book: chapters without executed output: {', '.join(bad)}; run `kn run CHAPTER --profile P` first")
    if bad := [p for name in chapters(root) for p in figure_problems(notebook(name, root))]:
        raise DataError("book: " + "; ".join(bad))
    if bad := profile_problems(root):
        raise DataError("book: " + "; ".join(bad))
    _jupyter_book(root, root, *(["-W", "-n", "--keep-going"] if warnings_as_errors else []))
    return root / "_build" / "html" / "index.html"


def _jupyter_book(src: Path, out: Path, *flags: str) -> None:
    """`jupyter-book build src --path-output out` (the one beside this Python, if there), stopped with kn."""
    exe = Path(sys.executable).parent / "jupyter-book"
    with children_stopped_on_signal():
        subprocess.run([str(exe) if exe.exists() else "jupyter-book", "build", str(src), "--path-output", str(out),
                        *flags], check=True)


def stage_preview(profile: str, root: Path = ROOT) -> Path:
    """A copy of the book's sources in root/_build/<profile>-src where each chapter run at `profile`
    (book/<chapter>.<profile>.ipynb) stands in for its page; DataError when none was."""
    runs = {name: nb for name in chapters(root) if (nb := root / "book" / f"{name}.{profile}.ipynb").is_file()}
    if not runs:
        raise DataError(f"profile: no chapter has been run at {profile!r}; run `kn run CHAPTER --profile {profile}` first")
    src = root / "_build" / f"{profile}-src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(root / "book", src / "book", ignore=shutil.ignore_patterns("*.*.ipynb", "results*"))
    for name in ("_config.yml", "_toc.yml", "_static"):
        if (root / name).is_dir():
            shutil.copytree(root / name, src / name)
        elif (root / name).is_file():
            shutil.copy(root / name, src / name)
    for name, nb in runs.items():
        shutil.copy(nb, src / "book" / f"{name}.ipynb")
    return src


def build_preview(profile: str, root: Path = ROOT) -> Path:
    """A website of the chapters run at `profile` (the others as published) in root/_build/<profile>/html,
    for a teacher to look at a class run; the published _build/html is left alone."""
    _jupyter_book(stage_preview(profile, root), root / "_build" / profile)
    return root / "_build" / profile / "_build" / "html" / "index.html"


def stop_children(timeout: float = 5.0) -> None:
    """Terminate every process this one started, and theirs (SIGTERM, then SIGKILL after `timeout` s)."""
    import psutil                          # installed with ipykernel, which runs the chapters
    children = psutil.Process().children(recursive=True)
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.terminate()
    for child in psutil.wait_procs(children, timeout=timeout)[1]:
        with suppress(psutil.NoSuchProcess):
            child.kill()


@contextmanager
def children_stopped_on_signal(*partial: Path):
    """While the block runs, SIGTERM or SIGINT to kn first stops its children (stop_children) and removes
    the `partial` files it was writing, then does what it would have done: a child in its own session
    (papermill's kernel) would not see kn die."""
    old = {}

    def stop(signum, frame):
        stop_children()
        for path in partial:
            path.unlink(missing_ok=True)
        signal.signal(signum, old[signum])
        signal.raise_signal(signum)
    with signals_handled(stop) as saved:
        old.update(saved)
        yield
