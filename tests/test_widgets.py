"""Each explorer builds without a front end, and its plain function draws a figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import ipywidgets as w  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from attnlab import create_model, widgets  # noqa: E402
from attnlab.runs import RunConfig, train_or_load  # noqa: E402

CLASSES = [f"c{i}" for i in range(10)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def batch():
    return torch.randn(3, 3, 32, 32), torch.tensor([1, 4, 7])


def recording(monkeypatch, name: str) -> list:
    """Wraps ``widgets.<name>`` so each figure an explorer draws is kept, in order."""
    drawn, show = [], getattr(widgets, name)

    def record(*args, **kw):
        drawn.append(fig := show(*args, **kw))
        return fig

    monkeypatch.setattr(widgets, name, record)
    return drawn


def test_gradcam(batch, monkeypatch):
    images, labels = batch
    models = {"resnet20": create_model("resnet20"), "cbam": create_model("resnet20", attn="cbam")}
    fig = widgets.show_gradcam(models, images, labels, CLASSES, index=1, mean=[0.5] * 3, std=[0.2] * 3)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(widgets.show_gradcam(models, images, labels, CLASSES, model="cbam").axes) == 1
    drawn = recording(monkeypatch, "show_gradcam")
    ui = widgets.gradcam_explorer(models, images, labels, CLASSES)
    assert isinstance(ui, w.VBox)
    model_dd, index_dd = ui.children[0].children
    assert model_dd.options[0][0] == "all" and len(index_dd.options) == 3
    assert len(drawn) == 1 and drawn[0]._suptitle.get_text().startswith("#0 true c1")
    assert len(drawn[0].axes) == 2  # both models
    index_dd.value = 2  # the callback redraws without a front end too
    assert len(drawn) == 2 and drawn[1]._suptitle.get_text().startswith("#2 true c7")
    model_dd.value = "cbam"
    assert len(drawn) == 3 and len(drawn[2].axes) == 1 and "cbam:" in drawn[2]._suptitle.get_text()


def query_marker(fig) -> tuple[float, float]:
    """(row, col) of the "+" drawn on the input image."""
    (line,) = fig.axes[0].get_lines()
    return float(line.get_ydata()[0]), float(line.get_xdata()[0])


def test_attention(batch, monkeypatch):
    images, _ = batch
    model = create_model("resnet20", attn="mha")
    fig = widgets.show_attention(model, images, row=3, col=30, index=2)
    assert isinstance(fig, Figure) and len(fig.axes) == 4 and query_marker(fig) == (3, 30)
    drawn = recording(monkeypatch, "show_attention")
    ui = widgets.attention_explorer(model, images)
    assert isinstance(ui, w.VBox)
    row, col, index, per_head = ui.children[0].children
    assert (row.max, col.max, index.max) == (31, 31, 2)
    assert len(drawn) == 1 and query_marker(drawn[0]) == (16, 16)
    row.value = 5
    assert len(drawn) == 2 and query_marker(drawn[1]) == (5, 16)
    per_head.value = True  # one column per head and stage: 1 + 3 * 8 axes
    assert len(drawn) == 3 and len(drawn[2].axes) == 1 + 3 * 8


def stored_run(root, seed: int):
    """A finished run in the store at ``root`` (the smoke profile: one short epoch)."""
    return train_or_load(RunConfig("resnet20", profile="smoke", seed=seed), root, progress=False)


def test_run_browser(tmp_path, monkeypatch):
    assert isinstance(widgets.run_browser(tmp_path), w.HTML)  # no runs yet
    runs = [stored_run(tmp_path, seed) for seed in (0, 1)]
    fig = widgets.show_run(runs[1].dir)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert fig._suptitle.get_text() == runs[1].dir.name
    drawn = recording(monkeypatch, "show_run")
    ui = widgets.run_browser(tmp_path)
    assert isinstance(ui, w.VBox)
    (dropdown,) = ui.children[0].children
    assert len(dropdown.options) == 2
    assert [f"test acc {r.metrics['test_acc']:.3f}" in label for (label, _), r in zip(dropdown.options, runs)] == [True] * 2
    assert [d._suptitle.get_text() for d in drawn] == [runs[0].dir.name]
    dropdown.value = dropdown.options[1][1]  # choosing a run draws its curves
    assert [d._suptitle.get_text() for d in drawn] == [runs[0].dir.name, runs[1].dir.name]
    with pytest.raises(FileNotFoundError):
        widgets.show_run(tmp_path / "missing")
