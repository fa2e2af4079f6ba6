"""Shared fixtures."""
import os

import pytest
import torch


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
