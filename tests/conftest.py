"""Shared fixtures; heavy tests first."""
import os
import signal

import pytest
import torch


def pytest_collection_modifyitems(items):
    """Modules holding a test marked heavy (tens of seconds) first, each kept whole (its module fixtures
    built once), then the rest, in their order: pytest-xdist's workers take tests in this order and
    steal from each other's queues (--dist worksteal), so no heavy test is left to start last on one
    worker while the other sits idle."""
    heavy = {item.module for item in items if item.get_closest_marker("heavy")}
    items.sort(key=lambda item: item.module not in heavy)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test on one thread: tiny models on a busy 2-core CPU run ~10x faster on one thread than
    on two threads fighting other jobs. Kernels and workers started by tests (papermill, sweeps)
    inherit OMP_NUM_THREADS=1."""
    n, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(n)
    if env is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = env


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small bioS dataset folder (60 people, multi2+permute) for training tests."""
    from kn.data.dataset import BiosConfig, make_dataset
    out = tmp_path_factory.mktemp("data")
    make_dataset(BiosConfig(n=60, augment="multi2+permute", vocab_size=500), out)
    return str(out)


@pytest.fixture
def sigterm_at_step(monkeypatch):
    """install(n): kn.train's training steps send this process SIGTERM at step n of each run, so the
    signal arrives mid-run whatever the machine's speed."""
    import kn.train
    real = kn.train.training_step

    def install(n: int = 3):
        def patched(*args, **kw):
            step, calls = real(*args, **kw), []

            def wrapped(*a):
                calls.append(1)
                if len(calls) == n:
                    os.kill(os.getpid(), signal.SIGTERM)
                return step(*a)
            return wrapped
        monkeypatch.setattr(kn.train, "training_step", patched)
    return install


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Results and runs of the test in its own tmp_path (KN_RESULTS_ROOT, KN_RUNS_ROOT)."""
    monkeypatch.setenv("KN_RESULTS_ROOT", str(tmp_path / "results"))
    monkeypatch.setenv("KN_RUNS_ROOT", str(tmp_path / "runs"))
    return tmp_path
