import math

import pytest
import torch
from torch import nn

from attnlab import create_model, fit, get_recipe, load_data
from attnlab.hardware import channels_last_hazards
from attnlab.recipes import Recipe
from attnlab.train import CheckpointError, NonFiniteLossError, lr_factor


def small_recipe(**kw):
    base = dict(name="t", optimizer="sgd", lr=0.05, weight_decay=5e-4, epochs=2, batch_size=64,
                schedule="cosine", max_steps_per_epoch=3)
    base.update(kw)
    return Recipe(**base)


def test_fit_overfits_64_images():
    data = load_data("shapes", train_subset=64, eval_subset=64, augment="none")
    recipe = Recipe("overfit", "adam", 3e-3, 0.0, 40, "constant", batch_size=64)
    h = fit(create_model("resnet20"), data, recipe, progress=False, precision="fp32", evaluate_test=False)
    assert h.rows[-1]["train_acc"] == 1.0
    assert h.rows[-1]["train_loss"] < 0.1 < h.rows[0]["train_loss"]


def test_history_rows_and_final_test(tiny_data):
    h = fit(create_model("resnet20"), tiny_data, small_recipe(), progress=False)
    assert h.epochs == 2 and not h.interrupted
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"):
        assert key in h.rows[0]
    assert set(h.test) >= {"acc", "top5", "loss", "per_class", "confusion"}
    assert len(h.test["per_class"]) == 10 and h.test["n"] == len(tiny_data.test)
    assert h.test["top5"] >= h.test["acc"]


def test_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    recipe = small_recipe(epochs=3)

    def run(ckpt, stop_after=None):
        def interrupt(history):
            if stop_after is not None and history.epochs == stop_after:
                raise KeyboardInterrupt

        torch.manual_seed(0)
        model = create_model("resnet20")
        h = fit(model, tiny_data, recipe, checkpoint=ckpt, progress=False, deterministic=True,
                precision="fp32", callbacks=[interrupt], seed=7)
        return h, model

    straight, m1 = run(tmp_path / "a.pt")
    partial, _ = run(tmp_path / "b.pt", stop_after=1)
    assert partial.interrupted and partial.epochs == 1 and not partial.test
    resumed, m2 = run(tmp_path / "b.pt")
    assert resumed.epochs == 3 and not resumed.interrupted
    for a, b in zip(straight.rows, resumed.rows):
        assert a["train_loss"] == b["train_loss"] and a["val_acc"] == b["val_acc"]
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k


def test_two_deterministic_runs_are_identical(tiny_data):
    def run():
        torch.manual_seed(0)
        return fit(create_model("resnet20"), tiny_data, small_recipe(epochs=1), progress=False,
                   deterministic=True, seed=3).rows[0]

    a, b = run(), run()
    assert a["train_loss"] == b["train_loss"] and a["val_loss"] == b["val_loss"]


def test_memory_format_changes_the_layout_not_the_training(tiny_data):
    def run(memory_format):
        torch.manual_seed(0)
        model = create_model("resnet20")
        h = fit(model, tiny_data, small_recipe(epochs=1), progress=False, precision="fp32", seed=3,
                memory_format=memory_format, evaluate_test=False)
        return h, model.conv1.weight

    nchw, w_nchw = run("contiguous")
    nhwc, w_nhwc = run("auto")
    assert (nchw.memory_format, nhwc.memory_format) == ("contiguous", "channels_last")
    assert w_nchw.is_contiguous() and w_nhwc.is_contiguous(memory_format=torch.channels_last)
    assert not w_nhwc.is_contiguous()
    # three SGD steps from the same weights on the same batches: equal up to rounding, which
    # batch-norm's backward amplifies (about 5e-4 here, on weights of about 0.3; a layout
    # bug moves them by the size of the weights)
    assert nhwc.rows[0]["train_loss"] == pytest.approx(nchw.rows[0]["train_loss"], rel=1e-3)
    torch.testing.assert_close(w_nhwc.contiguous(), w_nchw, atol=3e-3, rtol=0)
    with pytest.raises(ValueError, match="unknown memory format 'NHWC'; allowed: auto, channels_last, contiguous"):
        fit(create_model("resnet20"), tiny_data, small_recipe(), progress=False, memory_format="NHWC")


def test_a_layer_that_breaks_channels_last_keeps_the_model_contiguous(tiny_data):
    """torch's CPU weight gradient of a strided 1x1 conv with 2-7 input channels is broken in
    channels-last (heap corruption at one thread): such a shortcut trains contiguous."""
    narrow = dict(depth=8, widths=[4, 8, 16], shortcut="B")
    assert channels_last_hazards(create_model("resnet20", **narrow)) == [
        "layer2.0.shortcut.0 (4 input channels, 1x1, stride 2x2)"]
    assert channels_last_hazards(create_model("resnet20", shortcut="B")) == []  # 16 channels: fine
    assert channels_last_hazards(create_model("resnet20", **narrow), "cuda") == []
    h = fit(create_model("resnet20", **narrow), tiny_data, small_recipe(epochs=1), progress=False,
            evaluate_test=False)
    assert h.memory_format == "contiguous" and h.rows[0]["train_loss"] > 0
    with pytest.raises(ValueError, match=r"layer2\.0\.shortcut\.0 .*use memory_format='auto' or 'contiguous'"):
        fit(create_model("resnet20", **narrow), tiny_data, small_recipe(), progress=False,
            memory_format="channels_last")


class NaNAfter(nn.Module):
    """Produces NaN logits from the third call on (a stand-in for a diverging model)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1 if self.training else 0
        out = self.lin(x.mean((2, 3)))
        return out * float("nan") if self.calls >= 3 else out


def test_nan_loss_stops_with_epoch_and_batch(tiny_data):
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 1, batch 3.*learning rate"):
        fit(NaNAfter(), tiny_data, small_recipe(), progress=False)


def test_corrupt_checkpoint_is_explained(tiny_data, tmp_path):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.*resume=False"):
        fit(create_model("resnet20"), tiny_data, small_recipe(), checkpoint=ckpt, progress=False)


def test_checkpoint_of_another_recipe_is_refused(tiny_data, tmp_path):
    ckpt = tmp_path / "c.pt"
    fit(create_model("resnet20"), tiny_data, small_recipe(epochs=1), checkpoint=ckpt, progress=False)
    with pytest.raises(CheckpointError, match="another recipe"):
        fit(create_model("resnet20"), tiny_data, small_recipe(epochs=1, lr=0.2), checkpoint=ckpt,
            progress=False)


def test_early_stopping_uses_patience(tiny_data):
    recipe = small_recipe(epochs=30, lr=1e-9, patience=2, schedule="constant", max_steps_per_epoch=1)
    h = fit(create_model("resnet20"), tiny_data, recipe, progress=False)
    assert h.stopped_early and h.epochs < 30 and h.best_epoch <= h.epochs - 2


def test_unknown_recipe_profile_and_field():
    with pytest.raises(ValueError, match="unknown recipe 'sgd2'.*he2016"):
        get_recipe("sgd2")
    with pytest.raises(ValueError, match="unknown profile 'fast'.*smoke, quick, full"):
        get_recipe("he2016", "fast")
    with pytest.raises(TypeError, match="unknown recipe field.*'learning_rate'"):
        get_recipe("he2016", learning_rate=0.1)


def test_profiles_scale_recipes():
    assert get_recipe("he2016", "full").epochs == 182
    assert get_recipe("he2016", "quick", "cifar10").epochs == 16
    smoke = get_recipe("cnntention_att", "smoke", "shapes")
    assert smoke.epochs == 1 and smoke.max_steps_per_epoch == 4 and smoke.patience >= 2


def test_he2016_schedule_drops_at_half_and_three_quarters():
    r = get_recipe("he2016")
    f = [lr_factor(r, e * 10, 10) for e in (0, 90, 91, 135, 136, 181)]
    assert f[:2] == [1.0, 1.0]
    assert math.isclose(f[2], 0.1) and math.isclose(f[3], 0.1)
    assert math.isclose(f[4], 0.01) and math.isclose(f[5], 0.01)


def test_gates_are_logged_per_epoch(tiny_data):
    h = fit(create_model("resnet20_selfatt"), tiny_data, small_recipe(epochs=1), progress=False)
    gates = h.gates()
    assert list(gates.columns) == ["epoch", "gate:attn1", "gate:attn2", "gate:attn3"]


def test_one_epoch_run_starts_at_the_full_rate():
    r = get_recipe("he2016", "smoke")
    assert lr_factor(r, 0, 4) == 1.0


def test_cnntention_milestones_are_the_papers_epochs():
    from attnlab.train import milestone_epoch

    r = get_recipe("cnntention_att")
    assert [milestone_epoch(m, r.epochs) for m in r.milestones] == [91, 115]
    r = get_recipe("cnntention_cbam")
    assert [milestone_epoch(m, r.epochs) for m in r.milestones] == [45, 91, 136]


def test_logged_lr_is_the_rate_the_epoch_trained_with(tiny_data):
    recipe = small_recipe(epochs=4, schedule="step", milestones=(0.5,), max_steps_per_epoch=2)
    h = fit(create_model("resnet20"), tiny_data, recipe, progress=False, evaluate_test=False)
    assert [round(r["lr"], 6) for r in h.rows] == [0.05, 0.05, 0.005, 0.005]


def test_resuming_an_early_stopped_run_does_not_train_on(tiny_data, tmp_path):
    recipe = small_recipe(epochs=30, lr=1e-9, patience=2, schedule="constant", max_steps_per_epoch=1)
    ckpt = tmp_path / "c.pt"
    first = fit(create_model("resnet20"), tiny_data, recipe, checkpoint=ckpt, progress=False)
    again = fit(create_model("resnet20"), tiny_data, recipe, checkpoint=ckpt, progress=False)
    assert first.stopped_early and again.epochs == first.epochs and again.test


def test_flip_evaluation_averages_image_and_mirror_probabilities(tiny_data):
    from attnlab.train import evaluate

    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    loader = tiny_data.loader("test", 50)
    both = evaluate(model, loader, "fp32", 10, flip=True)
    got = both["flip"]
    with torch.no_grad():
        x, y = next(iter(tiny_data.loader("test", len(tiny_data.test))))
        p = (model(x).softmax(1) + model(torch.flip(x, dims=[3])).softmax(1)) / 2
    assert got["acc"] == pytest.approx(float((p.argmax(1) == y).float().mean()))
    assert got["loss"] == pytest.approx(float(nn.functional.nll_loss(p.log(), y)), rel=1e-4)
    single = evaluate(model, loader, "fp32", 10)
    assert got["loss"] != pytest.approx(single["loss"])
    assert {k: v for k, v in both.items() if k != "flip"} == single  # one pass gives both


def test_flip_test_result_only_for_models_trained_with_flips(tiny_data):
    h = fit(create_model("resnet20"), tiny_data, small_recipe(epochs=1), progress=False)
    assert tiny_data.augment == "crop_flip" and h.test_flip["n"] == h.test["n"]
    plain = load_data("shapes", train_subset=256, eval_subset=128, augment="crop")
    h = fit(create_model("resnet20"), plain, small_recipe(epochs=1), progress=False)
    assert h.test and h.test_flip == {}


def test_live_display_is_a_callback_registered_from_outside(tiny_data, monkeypatch):
    from attnlab import train

    monkeypatch.setattr(train, "_live_display", None)
    with pytest.raises(ValueError, match="live display"):
        fit(create_model("resnet20"), tiny_data, small_recipe(epochs=1), progress=False, live=True)
    seen = []
    train.set_live_display(lambda: (lambda history: seen.append(history.epochs)))
    fit(create_model("resnet20"), tiny_data, small_recipe(epochs=1, max_steps_per_epoch=1), progress=False,
        evaluate_test=False)
    assert seen == []  # the default follows ``progress``
    fit(create_model("resnet20"), tiny_data, small_recipe(epochs=2, max_steps_per_epoch=1), progress=False,
        live=True, evaluate_test=False)
    assert seen == [1, 2]  # after every epoch


def test_notebook_setup_registers_live_curves_and_training_never_imports_figures(monkeypatch, capsys):
    import ast
    import inspect

    from attnlab import notebook, plots, train

    monkeypatch.setattr(train, "_live_display", None)
    monkeypatch.setattr(notebook, "in_notebook", lambda: False)
    notebook.setup()
    assert train._live_display is None  # a terminal gets no figures
    monkeypatch.setattr(notebook, "in_notebook", lambda: True)
    notebook.setup()
    assert train._live_display is plots.LiveCurves
    tree = ast.parse(inspect.getsource(train))
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if "plots" in m or "matplotlib" in m or "IPython" in m}
