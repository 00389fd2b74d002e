"""Each explorer builds without a front end, and its plain function draws a figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as w  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from attnlab import create_model, widgets  # noqa: E402
from attnlab.runs import RunConfig, _write_csv, _write_json  # noqa: E402

CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def batch():
    return torch.randn(3, 3, 32, 32), torch.tensor([1, 4, 7])


def test_gradcam(batch):
    images, labels = batch
    models = {"resnet20": create_model("resnet20"), "cbam": create_model("resnet20", attn="cbam")}
    fig = widgets.show_gradcam(models, images, labels, CLASSES, index=1, mean=[0.5] * 3, std=[0.2] * 3)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(widgets.show_gradcam(models, images, labels, CLASSES, model="cbam").axes) == 1
    ui = widgets.gradcam_explorer(models, images, labels, CLASSES)
    assert isinstance(ui, w.VBox)
    model_dd, index_dd = ui.children[0].children
    assert model_dd.options[0][0] == "all" and len(index_dd.options) == 3
    index_dd.value = 2  # a callback fires without a front end too


def test_attention(batch):
    images, _ = batch
    model = create_model("resnet20", attn="selfatt")
    fig = widgets.show_attention(model, images, row=3, col=30, index=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    ui = widgets.attention_explorer(model, images)
    assert isinstance(ui, w.VBox)
    row, col, index, per_head = ui.children[0].children
    assert (row.max, col.max, index.max) == (31, 31, 2)


def fake_run(root, seed: int):
    config = RunConfig("resnet20", seed=seed)
    run_dir = root / config.dirname
    run_dir.mkdir(parents=True)
    _write_json(run_dir / "config.json", config.to_dict())
    _write_csv(run_dir / "history.csv", pd.DataFrame({
        "epoch": [1, 2], "train_loss": [2.0, 1.5], "train_acc": [0.2, 0.4],
        "val_loss": [1.9, 1.6], "val_acc": [0.25, 0.35]}))
    _write_json(run_dir / "metrics.json", {"test_acc": 0.33, "val_acc": 0.35, "epochs": 2,
                                           "params": 269722, "wall_s": 1.0, "device": "cpu"})
    return run_dir


def test_run_browser(tmp_path):
    assert isinstance(widgets.run_browser(tmp_path), w.HTML)  # no runs yet
    dirs = [fake_run(tmp_path, seed) for seed in (0, 1)]
    fig = widgets.show_run(dirs[1])
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ui = widgets.run_browser(tmp_path)
    assert isinstance(ui, w.VBox)
    (dropdown,) = ui.children[0].children
    assert len(dropdown.options) == 2 and "test acc 0.330" in dropdown.options[0][0]
    with pytest.raises(FileNotFoundError):
        widgets.show_run(tmp_path / "missing")
