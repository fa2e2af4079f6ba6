"""The book's table of contents: its notebook chapters, in _toc.yml's order (kn.book runs and builds
them, kn.times sums their compute)."""
from __future__ import annotations

from pathlib import Path

from kn.results import ROOT


def chapters(root: Path = ROOT) -> list[str]:
    """Notebook chapters named in _toc.yml, in order."""
    names = []
    for line in (root / "_toc.yml").read_text().splitlines():
        line = line.strip()
        if line.startswith(("- file:", "root:")):
            name = line.split(":", 1)[1].strip()
            if (root / f"{name}.ipynb").is_file():
                names.append(Path(name).name)
    return names
