"""kn.times: the measured times every page and the README show come from the committed result files,
and what is committed is what kn.times writes (one source, no typed times).
    Run: pytest tests/test_times.py
"""
import json

from kn.results import ROOT
from kn.times import MARKERS, _seconds, rendered, times_table


def test_committed_times_are_what_kn_times_writes():
    files = rendered(ROOT)
    assert ROOT / "README.md" in files and ROOT / "book" / "times.md" in files
    for path, text in files.items():
        assert path.read_text() == text, f"{path} is stale: run `kn book` (it renders the times first)"
    intro = (ROOT / "book" / "intro.md").read_text()
    assert "```{include} times.md" in intro and all(f"`{p}`" in intro for p in ("smoke", "class", "cpu", "gpu", "paper"))


def test_a_folder_counts_its_sweep_rows_or_else_its_json_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"provenance": {"wall_time_s": 1000.0}}))
    (tmp_path / "b.json").write_text(json.dumps({"provenance": {"wall_time_s": 20.0}}))
    assert _seconds(tmp_path) == 1020.0
    (tmp_path / "sweep.csv").write_text("key,wall_s\np1,10\np2,20\np3,nan\n")
    assert _seconds(tmp_path) == 30.0                  # the JSON files only summarise the sweep's rows
    table = times_table({"x": {"smoke": None, "class": 61.0, "cpu": 3000.0, "gpu": 9000.0, "paper": None}})
    assert table.splitlines()[-1] == "| x | - | 61 s | 50 min | 2.5 h | - |"
    assert MARKERS[0].startswith("<!--") and MARKERS[1].startswith("<!--")
