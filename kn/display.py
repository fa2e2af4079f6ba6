"""Tables a chapter displays: results as GitHub-flavoured markdown (myst-nb renders it as a <table>).
Entry point: `markdown_table`."""
from __future__ import annotations


def markdown_table(header: list[str], rows: list[list]) -> "IPython.display.Markdown":
    """A GFM table that a notebook displays as text/markdown; `|` inside a cell is escaped."""
    from IPython.display import Markdown
    line = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return Markdown("\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows]))
