"""Embedding Attention: the parameter-free block (row vs global), the report's Keras CNN,
its recipe, the resumable Hyperband search and the classification metrics."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import attnlab.runs
from attnlab.layers import collect_maps, create_attn, get_attn
from attnlab.layers.embedding_attention import EmbeddingAttention
from attnlab.metrics import keras_binary_scores, labels_from_confusion, scores, sklearn_report
from attnlab.papers import create_model, get_paper, model_spec
from attnlab.recipes import get_recipe
from attnlab.train import make_optimizer
from attnlab.tune import search


# -- the model ------------------------------------------------------------------------------

def conv(c_in, c_out, k):
    return c_in * c_out * k * k + c_out


def expected_params(c_in=3, f1=64, k1=3, p1=2, f2=256, k2=5, p2=3, dense=512, classes=10, size=32):
    side = size // p1 // p2
    return (conv(c_in, f1, k1) + conv(f1, f1, k1) + 2 * f1          # block 1 + BN (gamma, beta)
            + conv(f1, f2, k2) + conv(f2, f2, k2) + 2 * f2          # block 2 + BN
            + (f2 * side * side * dense + dense) + (dense * classes + classes))


def test_parameter_count_is_the_reports():
    # summed by hand from the report's graph: 1,792 + 36,928 + 128 + 409,856 + 1,638,656 + 512
    # + 3,277,312 + 5,130
    assert expected_params() == 5_370_314
    for name in ("embedding_cnn", "embedding_cnn_global", "embedding_cnn_none"):
        m = create_model(name)
        trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
        assert trainable == 5_370_314 == model_spec(name).params
        # Keras's 5,370,954 adds the BatchNorm moving mean and variance (buffers here)
        moving = sum(b.numel() for n, b in m.named_buffers() if n.endswith(("running_mean", "running_var")))
        assert trainable + moving == 5_370_954


@pytest.mark.parametrize("kw", [dict(kernel1=5, pool1=3, filters2=48, kernel2=3, pool2=2, dense=96),
                                dict(pool1=3, pool2=3, filters2=16, dense=32, filters1=8)])
def test_search_space_options_change_the_count_as_the_formula(kw):
    m = create_model("embedding_cnn", **kw)
    ref = expected_params(f1=kw.get("filters1", 64), k1=kw.get("kernel1", 3), p1=kw["pool1"], f2=kw["filters2"],
                          k2=kw.get("kernel2", 5), p2=kw["pool2"], dense=kw["dense"])
    assert sum(p.numel() for p in m.parameters()) == ref
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_keras_defaults_and_bad_input():
    m = create_model("embedding_cnn")
    bns = [x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert [(b.momentum, b.eps) for b in bns] == [(0.01, 1e-3)] * 2
    biases = [x.bias for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(float(b.detach().abs().max()) == 0 for b in biases)
    w = m.fc.weight  # Glorot-uniform bound sqrt(6 / (fan_in + fan_out))
    assert float(w.detach().abs().max()) <= (6 / (6400 + 512)) ** 0.5 + 1e-7
    torch_init = create_model("embedding_cnn", init="torch")
    assert float(torch_init.head.bias.detach().abs().max()) > 0
    with pytest.raises(ValueError, match="image_size"):
        m(torch.randn(1, 3, 28, 28))
    with pytest.raises(TypeError, match="kernel1"):
        create_model("embedding_cnn", kernel1=4)


# -- the block ------------------------------------------------------------------------------

def test_block_has_no_parameters_and_checks_its_mode():
    for mode in ("row", "global", "none"):
        block = create_attn("embedding_attention", 64, mode=mode)
        assert list(block.parameters()) == [] and list(block.buffers()) == []
    assert get_attn("embedding_attention").role == "addon"
    assert get_attn("embedding_attention").options() == {"mode": "row"}
    with pytest.raises(TypeError, match="mode"):
        create_attn("embedding_attention", 8, mode="column")
    with pytest.raises(ValueError, match="row"):
        EmbeddingAttention(8, mode="column")


def test_row_is_a_loop_over_rows_and_differs_from_global():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6) * 0.5  # B, C, H, W
    B, C, H, W = x.shape
    row = EmbeddingAttention(C, "row")(x)
    glob = EmbeddingAttention(C, "global")(x)
    expected_row = torch.empty_like(x)
    expected_glob = torch.empty_like(x)
    for b in range(B):
        for r in range(H):
            t = x[b, :, r, :].T  # W, C: the tokens of one image row
            expected_row[b, :, r, :] = (torch.softmax(t @ t.T, dim=-1) @ t).T
        t = x[b].flatten(1).T  # HW, C: every position
        expected_glob[b] = (torch.softmax(t @ t.T, dim=-1) @ t).T.reshape(C, H, W)
    torch.testing.assert_close(row, expected_row, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(glob, expected_glob, atol=1e-5, rtol=1e-5)
    assert (row - glob).abs().max() > 1e-2
    # Keras's reading: batched matmul over the last two axes of (B, H, W, C)
    t = x.permute(0, 2, 3, 1)
    keras = torch.softmax(t @ t.transpose(-1, -2), -1) @ t
    torch.testing.assert_close(row, keras.permute(0, 3, 1, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(EmbeddingAttention(C, "none")(x), x)


def test_maps_row_is_zero_outside_the_query_row():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 5, 6)
    for mode in ("row", "global"):
        block = EmbeddingAttention(4, mode)
        with collect_maps(block, query=(3, 2)) as maps:
            out = block(x)
        torch.testing.assert_close(out, EmbeddingAttention(4, mode)(x))  # collecting changes nothing
        a = maps[""]["attention"]
        assert a.shape == (2, 1, 1, 5, 6)
        torch.testing.assert_close(a.sum((-1, -2)), torch.ones(2, 1, 1))
        q = x[:, :, 3, 2]  # B, C
        if mode == "row":
            assert float(a[:, :, :, [0, 1, 2, 4]].abs().max()) == 0
            expected = torch.softmax(torch.einsum("bc,bcw->bw", q, x[:, :, 3]), -1)
            torch.testing.assert_close(a[:, 0, 0, 3], expected)
        else:
            expected = torch.softmax(torch.einsum("bc,bchw->bhw", q, x).flatten(1), -1).view(2, 5, 6)
            torch.testing.assert_close(a[:, 0, 0], expected)
    block = EmbeddingAttention(4, "row")
    with collect_maps(block) as maps:  # every query row
        block(x)
    full = maps[""]["attention"]
    assert full.shape == (2, 1, 30, 5, 6)
    assert float(full[:, 0, 3 * 6 + 2, 1].abs().max()) == 0 and float(full[:, 0, 3 * 6 + 2, 3].sum(-1).min()) > 0.99


# -- the recipe and the paper -------------------------------------------------------------------

def test_recipe_is_keras_adamw_and_keeps_old_keys():
    r = get_recipe("embedding_attention")
    assert (r.optimizer, r.lr, r.weight_decay, r.eps, r.epochs) == ("adamw", 1e-3, 0.004, 1e-7, 45)
    opt = make_optimizer(torch.nn.Linear(2, 2), r)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["eps"] == 1e-7 and opt.defaults["weight_decay"] == 0.004
    # fields added for this paper are left out of older recipes' keys while unset
    assert "eps" not in get_recipe("he2016").to_dict() and "monitor" not in get_recipe("he2016").to_dict()
    assert get_recipe("he2016", monitor="val_acc") == get_recipe("he2016")
    assert get_recipe("he2016", monitor="val_loss").to_dict()["monitor"] == "val_loss"
    with pytest.raises(ValueError, match="monitor"):
        get_recipe("he2016", monitor="val_top5")
    with pytest.raises(ValueError, match="eps"):
        get_recipe("he2016", eps=-1.0)


def test_paper_registers_claims_axis_and_speed_targets():
    p = get_paper("embedding_attention")
    claims = {c.metric: c.value for c in p.claims}
    assert claims == {"test_loss": 0.467, "test_acc": 85.4, "precision": 90.0, "recall": 82.3, "f1": 85.5}
    assert [(a.parameter, a.values) for a in p.ablations] == [("mode", ("row", "global", "none"))]
    assert {t.reference for t in p.targets} == {"embedding_cnn_none"} and all(t.limit is None for t in p.targets)
    net = create_model("embedding_cnn", mode="none")
    assert net.attn.mode == "none"


# -- metrics ----------------------------------------------------------------------------------

def test_metrics_equal_scikit_learns():
    from sklearn.metrics import (accuracy_score, classification_report, confusion_matrix,
                                 precision_recall_fscore_support, precision_score, recall_score)

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 3, 200))  # class 3 never predicted
    conf = confusion_matrix(y_true, y_pred, labels=range(4))
    s = scores(conf, ["a", "b", "c", "d"])
    assert s["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for avg in ("macro", "weighted", "micro"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, average=avg, zero_division=0)
        assert (s[avg]["precision"], s[avg]["recall"], s[avg]["f1"]) == pytest.approx((p, r, f))
    p, r, f, n = precision_recall_fscore_support(y_true, y_pred, labels=range(4), zero_division=0)
    pc = s["per_class"]
    np.testing.assert_allclose(pc[["precision", "recall", "f1"]].to_numpy().T, [p, r, f])
    assert pc["support"].tolist() == n.tolist()
    yt, yp = labels_from_confusion(conf)
    np.testing.assert_array_equal(confusion_matrix(yt, yp, labels=range(4)), conf)
    assert sklearn_report(conf, ["a", "b", "c", "d"]) == classification_report(
        y_true, y_pred, labels=range(4), target_names=["a", "b", "c", "d"], digits=3, zero_division=0)

    logits = rng.normal(size=(200, 4)) * 2 + 2.5 * np.eye(4)[y_true]  # informative, not certain
    probs = torch.softmax(torch.tensor(logits), 1)
    onehot = np.eye(4)[y_true].ravel()
    hard = (probs.numpy() > 0.5).ravel()
    k = keras_binary_scores(probs, torch.tensor(y_true))
    assert k["precision"] == pytest.approx(precision_score(onehot, hard))
    assert k["recall"] == pytest.approx(recall_score(onehot, hard))
    # recall counts true classes above 0.5, which are then the arg-max: never above accuracy;
    # precision counts only confident predictions, right more often for an informative model
    acc = float((probs.argmax(1).numpy() == y_true).mean())
    assert k["precision"] > acc > k["recall"]
    with pytest.raises(ValueError, match="square"):
        scores(np.ones((2, 3)))


# -- the Hyperband search ------------------------------------------------------------------------

def test_search_resumes_without_retraining_finished_trials(tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    fits = []
    real_fit = attnlab.runs.fit

    def counting_fit(model, data, recipe, **kw):
        fits.append(recipe.epochs)
        return real_fit(model, data, recipe, **kw)

    monkeypatch.setattr(attnlab.runs, "fit", counting_fit)
    common = dict(dataset="shapes", profile="smoke", runs_dir=runs, progress=False)

    first = search("embedding_attention", 2, **common)
    assert len(fits) == 2 and set(first.trials["status"]) == {"trained"}
    finished = {d: (runs / d.split("/")[-1] / "metrics.json").stat().st_mtime_ns
                for d in first.trials["run_dir"] if (runs / d.split("/")[-1] / "metrics.json").exists()}

    def interrupt(history):
        raise KeyboardInterrupt  # Ctrl-C after the first epoch of the next trial

    with pytest.raises(KeyboardInterrupt):
        search("embedding_attention", 3, **common, callbacks=[interrupt])
    assert len(fits) == 3

    resumed = search("embedding_attention", 3, **common)
    out = capsys.readouterr().out
    assert "1 interrupted one(s) queued to resume" in out and " resumed " in out
    assert len(fits) == 4, "only the interrupted trial may train again"
    done = resumed.trials[resumed.trials["state"].isin(["complete", "pruned"])]
    assert len(done) == 3 and done.iloc[-1]["status"] == "resumed"
    for d, mtime in finished.items():  # finished runs were not touched
        assert (runs / d.split("/")[-1] / "metrics.json").stat().st_mtime_ns == mtime
    assert json.loads(resumed.best_path.read_text())["trials_finished"] == 3

    again = search("embedding_attention", 3, **common)
    assert len(fits) == 4 and again.trained_here == 0

    # a new study over the same store draws the same first configuration (same seed): its
    # finished run is loaded, not retrained (the first trial of a study is never pruned)
    resumed.study.storage_path.unlink()
    fresh = search("embedding_attention", 1, **common)
    assert fresh.trials["status"].tolist() == ["loaded"] and len(fits) == 4
    assert fresh.trials["run_dir"].iloc[0] == first.trials["run_dir"].iloc[0]
