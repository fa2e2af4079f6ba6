"""kn.results' results layer: `done` (skip a finished stage only when it recorded the same config, fields added since at
their defaults),
`publish` (a run's result file into its chapter's results folder, with its patch), the chapters'
folders, and the layering it allows (experiments do not import the papermill runner kn.book;
kn.tokenize does not import kn.data; no import cycle between kn's modules, so that
no lower layer imports a higher one).   Run: pytest tests/test_results.py
"""
import ast
import json
import subprocess
import sys
from pathlib import Path
from dataclasses import asdict, dataclass

import pytest

from kn.errors import DataError
from kn.results import checksum, done, publish, read_json, results_dir, runs_dir, write_json


@dataclass(frozen=True)
class Point:
    n: int = 3
    lr: float = 1e-3
    where: tuple = ("a", 1)


def test_done_needs_a_finished_file_with_the_same_config(tmp_path):
    path = tmp_path / "result.json"
    assert done(path, Point()) is None                                    # nothing there
    write_json(path, config=Point(), value=7)
    assert done(path, Point())["value"] == 7                              # a dataclass, recorded as JSON
    assert done(path, {"n": 3, "lr": 1e-3, "where": ["a", 1]})["value"] == 7
    assert done(path, Point(lr=3e-3)) is None                             # another config: not reused
    write_json(path, config=Point(), steps=4, interrupted=True)
    assert done(path, Point()) is None                                    # stopped by a signal: not finished
    path.write_text('{"value": 7')                                         # not a result file
    assert done(path, Point()) is None
    path.write_text('{"value": 7}')                                        # no provenance, so no config
    assert done(path, Point()) is None


def test_a_record_from_before_an_added_setting_matches_its_old_value(tmp_path):
    """kn.train_config.TrainConfig's precision, attention and trim_vocab came after runs were recorded: a
    train.json without them is the run of a config at fp32, SDPA, untrimmed (capacity's pinned
    settings), not of one that lets the machine choose."""
    from kn.train_config import TrainConfig
    old = TrainConfig(data="d", out="o", precision="fp32", attention="sdpa")
    path = tmp_path / "train.json"
    write_json(path, config={k: v for k, v in asdict(old).items() if k not in TrainConfig.ADDED_SETTINGS}, value=1)
    assert done(path, old)["value"] == 1
    assert done(path, TrainConfig(data="d", out="o")) is None                          # precision auto
    assert done(path, TrainConfig(data="d", out="o", precision="fp32", attention="sdpa", trim_vocab=True)) is None


def test_a_record_from_before_a_renamed_setting_reads_it_under_its_new_name(tmp_path):
    """TrainConfig's `passes` was recorded as `exposures` (TrainConfig.RENAMED): a train.json written
    then is the run of the config with that many passes, and of no other."""
    from kn.train_config import TrainConfig
    now = TrainConfig(data="d", out="o", passes=7, precision="fp32", attention="sdpa")
    before = {("exposures" if k == "passes" else k): v for k, v in asdict(now).items()
              if k not in TrainConfig.ADDED_SETTINGS}
    path = write_json(tmp_path / "train.json", config=before, value=1)
    assert "passes" not in read_json(path)["provenance"]["config"]
    assert done(path, now)["value"] == 1
    assert done(path, TrainConfig(data="d", out="o", passes=8, precision="fp32", attention="sdpa")) is None
    both = write_json(tmp_path / "both.json", config=before | {"passes": 7}, value=1)
    with pytest.raises(DataError, match="^exposures: renamed passes"):
        done(both, now)



@dataclass(frozen=True)
class Later:                                                   # Point, grown two fields since
    n: int = 3
    lr: float = 1e-3
    where: tuple = ("a", 1)
    inner: Point = Point()
    curve_points: int = 0


def test_a_field_added_since_at_its_default_keeps_the_result(tmp_path):
    path = tmp_path / "result.json"
    write_json(path, config={"n": 3, "lr": 1e-3, "where": ["a", 1], "inner": {"n": 3, "lr": 1e-3, "where": ["a", 1]}},
               value=7)
    assert done(path, Later())["value"] == 7                              # curve_points: absent, at its default
    assert done(path, Later(curve_points=5)) is None                      # away from its default: not that run
    assert done(path, Later(inner=Point(n=4))) is None                    # a recorded nested value differs
    write_json(path, config={"n": 3, "lr": 1e-3, "where": ["a", 1]}, value=7)
    assert done(path, Later()) is None                                    # a whole nested config added: unknown
    write_json(path, config={"n": 3, "lr": 1e-3, "where": ["a", 1], "gone": 1}, value=7)
    assert done(path, Point()) is None                                    # a field since removed

def test_chapter_folders_follow_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "r"))
    monkeypatch.setenv("KN_RUNS_ROOT", str(tmp_path / "s"))
    assert results_dir("capacity", "cpu") == tmp_path / "r" / "capacity" / "cpu"
    assert runs_dir("capacity", "cpu") == tmp_path / "s" / "capacity" / "cpu"
    with pytest.raises(DataError, match="^profile: got 'laptop'"):
        results_dir("capacity", "laptop")


def test_publish_copies_the_result_and_its_patch(tmp_path, monkeypatch):
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "results"))
    src = write_json(tmp_path / "run" / "result.json", config={"n": 1}, accuracy=0.5)
    record = read_json(src)
    record["provenance"] |= {"git_dirty": True, "git_diff": "result.diff"}  # as written from a dirty tree
    src.write_text(json.dumps(record | {"checksum": checksum(record)}))
    (tmp_path / "run" / "result.diff").write_text("--- a/kn/x.py\n")
    got = publish(src, "mixed_training", "smoke", "single")
    dst = tmp_path / "results" / "mixed_training" / "smoke" / "single.json"
    assert got == read_json(dst) and got["accuracy"] == 0.5
    assert got["provenance"]["git_diff"] == "single.diff"
    assert (dst.parent / "single.diff").read_text() == "--- a/kn/x.py\n"
    write_json(src, config={"n": 1}, accuracy=0.75)                         # clean again: the old patch goes
    record = read_json(src)
    record["provenance"] |= {"git_dirty": False, "git_diff": None}
    src.write_text(json.dumps(record | {"checksum": checksum(record)}))
    assert publish(src, "mixed_training", "smoke", "single")["accuracy"] == 0.75
    assert sorted(p.name for p in dst.parent.iterdir()) == ["single.json"]
    publish(src, "mixed_training", "smoke", "multi5+permute LoRA")          # the chapters' run names have spaces
    assert (dst.parent / "multi5+permute LoRA.json").is_file()


@pytest.mark.parametrize("name", ["../claims/x", "a/b", "", ".hidden"])
def test_publish_refuses_names_outside_the_chapter(tmp_path, name):
    src = write_json(tmp_path / "result.json", config={}, value=1)
    with pytest.raises(DataError, match="^name: "):
        publish(src, "probing", "smoke", name)
    with pytest.raises(DataError, match="^src: "):
        publish(tmp_path / "missing.json", "probing", "smoke", "x")


def test_layers():
    """Experiments import paths from kn.results, not the papermill runner; tokenize stands alone."""
    script = ("import sys; import kn.extraction, kn.onelayer, kn.capacity, kn.probing, kn.claims, kn.tokenize; "
              "print(sorted(m for m in sys.modules if m == 'kn.book' or m.startswith('kn.data')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "kn.book" not in out
    script = "import sys; import kn.tokenize; print([m for m in sys.modules if m.startswith('kn.data')])"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip() == "[]"



def _kn_imports() -> dict[str, set[str]]:
    """{module: kn modules it imports anywhere in its file} over kn/."""
    root = Path(__file__).resolve().parents[1]
    graph = {}
    for p in (root / "kn").rglob("*.py"):
        name = ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kn"):
                deps |= {f"kn.{a.name}" for a in node.names} if node.module == "kn" else {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("kn")}
        graph[name] = deps - {name}
    return graph


def test_no_import_cycles():
    """kn's modules form layers: a module never reaches itself through its imports (at the top or
    inside a function); the training stack stays below the claims table."""
    graph = _kn_imports()

    def reach(m, seen):
        for d in graph.get(m, ()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen
    below = {m: reach(m, set()) for m in graph}
    cycles = {frozenset({m} | {n for n in below[m] if m in below[n]}) for m in graph if m in below[m]}
    assert not cycles, sorted(map(sorted, cycles))
    for m in ("kn.train", "kn.batches", "kn.checkpoints", "kn.train_config", "kn.bound", "kn.extraction"):
        assert not below[m] & {"kn.claims", "kn.book", "kn.cli"}, m

def test_provenance_records_cpu_flags_and_precision(monkeypatch):
    """Speeds differ between machines by CPU flags (bf16 instructions) and precision: every result says
    both, precision as what the process's runs chose (kn.precision)."""
    import kn.results
    from kn.results import CPU_FLAGS, hardware, record_precision
    monkeypatch.setattr(kn.results, "_PRECISIONS", [])                   # this test's record only
    assert hardware()["precision"] == []
    record_precision({"dtype": "bf16", "attention": "eager", "reason": "test", "seconds_per_step": {}})
    hw = hardware()
    assert set(hw["cpu_flags"]) <= set(CPU_FLAGS) and hw["cpu_model"]
    assert {"dtype": "bf16", "attention": "eager", "reason": "test", "seconds_per_step": {}} in hw["precision"]
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "avx2" in text.split():
        assert "avx2" in hw["cpu_flags"]


def test_checksum_survives_what_json_changes(tmp_path):
    """write_json checksums what a reader gets back: int keys become strings, tuples lists, NaN stays."""
    path = write_json(tmp_path / "r.json", config={"n": 1}, evals={10: 0.5, 2: float("nan")}, pair=(1, 2), at=Path("x"))
    record = read_json(path)
    assert list(record)[-1] == "checksum" and record["checksum"] == checksum(record)
    assert record["evals"]["10"] == 0.5 and record["pair"] == [1, 2] and record["at"] == "x"
    assert done(path, {"n": 1})["pair"] == [1, 2]
