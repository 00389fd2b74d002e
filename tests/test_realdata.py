"""Real CIFAR-10 and MNIST from the offline archives (set ATTNLAB_OFFLINE_DATA to the
folder holding cifar10-jpg/ and mnist-png/; CI does)."""
import os
from pathlib import Path

import pytest
import torch

from attnlab import create_model, fit, get_recipe
from attnlab.data import import_dataset, load_data, load_dataset

OFFLINE = os.environ.get("ATTNLAB_OFFLINE_DATA")
pytestmark = [pytest.mark.realdata,
              pytest.mark.skipif(not OFFLINE, reason="ATTNLAB_OFFLINE_DATA is not set")]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    assert import_dataset("cifar10", Path(OFFLINE) / "cifar10-jpg", root) == {"train": 50000, "test": 10000}
    assert import_dataset("mnist", Path(OFFLINE) / "mnist-png", root) == {"train": 60000, "test": 10000}
    return root


@pytest.mark.parametrize("name,n_train,n_test,shape", [("cifar10", 50000, 10000, (3, 32, 32)),
                                                       ("mnist", 60000, 10000, (1, 28, 28))])
def test_counts_shapes_and_balance(root, name, n_train, n_test, shape):
    train = load_dataset(name, "trainval", root=root)
    test = load_dataset(name, "test", root=root)
    assert len(train) == n_train and len(test) == n_test and train.shape == shape
    counts = train.class_counts().float()
    assert counts.min() / counts.max() > (0.99 if name == "cifar10" else 0.8)  # MNIST is mildly unbalanced
    assert test.class_counts().min() > 0
    if name == "cifar10":
        assert train.classes[0] == "airplane" and train.classes[-1] == "truck"
        assert (counts == 5000).all()


def test_default_split_is_45k_5k(root):
    data = load_data("cifar10", root=root)
    assert (len(data.train), len(data.val), len(data.test)) == (45000, 5000, 10000)
    assert all(0.4 < m < 0.55 for m in data.mean) and all(0.2 < s < 0.3 for s in data.std)


def test_short_cifar10_training_lands_far_above_chance(root):
    data = load_data("cifar10", root=root, train_subset=8000, eval_subset=2000)
    recipe = get_recipe("onecycle", "quick", "cifar10", epochs=3, batch_size=128)
    torch.manual_seed(0)
    history = fit(create_model("resnet20"), data, recipe, progress=False)
    print("CIFAR-10 subset accuracy:", history.test["acc"])
    assert history.test["acc"] > 0.35  # chance is 0.10
