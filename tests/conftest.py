import os

import pytest
import torch

import matplotlib

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def isolated_stores(tmp_path, monkeypatch):
    """Each test gets its own runs store; data stays shared (shapes needs none)."""
    monkeypatch.setenv("ATTNLAB_RUNS", str(tmp_path / "runs"))


@pytest.fixture(scope="session")
def tiny_data():
    from attnlab import load_data

    return load_data("shapes", train_subset=256, eval_subset=128)


def pytest_configure(config):
    # Tests run one after another on small CPUs; keep torch from oversubscribing.
    torch.set_num_threads(min(2, os.cpu_count() or 1))
