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


@pytest.fixture(scope="session")
def notebook_store(tmp_path_factory):
    """``notebook_store(stem)``: one run store per notebook for the whole session, so the
    student copy of a notebook (tests/test_notebooks_student.py, which runs after
    tests/test_notebooks.py) loads the runs its original trained, as a second run of the
    same notebook would, instead of training them again."""
    stores: dict[str, str] = {}

    def store(stem: str) -> str:
        if stem not in stores:
            stores[stem] = str(tmp_path_factory.mktemp(f"runs-{stem}"))
        return stores[stem]

    return store
