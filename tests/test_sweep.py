"""kn.sweep: each finished point is appended, done points are skipped, parallel and submitit
executors write the same rows.   Run: pytest tests/test_sweep.py
"""
import pytest

from kn.errors import DataError
from kn.sweep import done_keys, point_key, read_rows, run_sweep


def square(point):
    return {"y": point["x"] ** 2}


POINTS = [{"x": x, "arch": "gpt2"} for x in range(4)]


def test_appends_and_skips(tmp_path):
    out = tmp_path / "r.csv"
    assert len(run_sweep(POINTS[:2], square, out)) == 2
    rows = run_sweep(POINTS, square, out)                # continues: only the two new points run
    assert [r["x"] for r in rows] == [2, 3]
    assert run_sweep(POINTS, square, out) == []
    table = read_rows(out)
    assert sorted((r["x"], r["y"]) for r in table) == [(0, 0), (1, 1), (2, 4), (3, 9)]
    assert done_keys(out) == {point_key(p) for p in POINTS}


def test_parallel_workers(tmp_path):
    rows = run_sweep(POINTS, square, tmp_path / "r.csv", workers=2)
    assert sorted(r["y"] for r in rows) == [0, 1, 4, 9]


def test_submitit_local_executor(tmp_path):
    def cube(point):  # nested, so submitit's cloudpickle sends it by value to the job process
        return {"y": point["x"] ** 3}
    out = tmp_path / "r.csv"
    run_sweep(POINTS[:1], cube, out)
    rows = run_sweep(POINTS, cube, out, executor="submitit", cluster="local", folder=tmp_path / "jobs",
                     slurm={"timeout_min": 5})
    assert sorted(r["y"] for r in rows) == [1, 8, 27]
    assert len(read_rows(out)) == 4


def test_bad_executor(tmp_path):
    with pytest.raises(DataError, match="^executor"):
        run_sweep(POINTS, square, tmp_path / "r.csv", executor="ray")


def not_quantized(point):
    return {"y": 1.0, "bits_int8": float("nan")}              # NaN: int8 not measured for this point


def test_runs_dir_is_not_identity_and_nan_reads_back(tmp_path):
    out = tmp_path / "r.csv"
    run_sweep([{"x": 1, "runs_dir": "/checkout/a"}], not_quantized, out)
    assert run_sweep([{"x": 1, "runs_dir": "/elsewhere/b"}], not_quantized, out) == []   # same point, other scratch
    bits = read_rows(out)[0]["bits_int8"]
    assert isinstance(bits, float) and bits != bits                                    # NaN, not the string "nan"
