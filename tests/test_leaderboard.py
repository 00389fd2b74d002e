"""The leaderboard and the ablation explorer: planning against the run store, the tables,
the Pareto front and the figures, on smoke-size runs in a temporary store."""
from __future__ import annotations

import math

import matplotlib
import pandas as pd
import pytest

from attnlab import explorer, leaderboard as lb
from attnlab.papers import get_paper, list_papers
from attnlab.plots import pareto_front
from attnlab.runs import RunConfig, train_or_load
from attnlab.study import estimate_train_seconds

matplotlib.use("Agg")


def test_pareto_front_keeps_only_unbeaten_points():
    cost = [1.0, 2.0, 3.0, 4.0, 2.5, math.nan]
    value = [0.5, 0.7, 0.6, 0.9, 0.7, 0.99]
    # 3 is beaten by 1 (cheaper, better); 4 ties 1 on value but costs more; the NaN never counts
    assert pareto_front(cost, value) == [0, 1, 3]
    assert pareto_front([], []) == []


def test_every_entry_builds_and_is_ResNet20_with_one_block():
    base = lb.get_entry("ResNet-20").build()
    n_base = sum(p.numel() for p in base.parameters())
    for e in lb.ENTRIES:
        m = e.build()
        n = sum(p.numel() for p in m.parameters())
        assert (n == n_base) == (e.block == "-"), e.label
        assert n < 1.1 * n_base, f"{e.label}: {n} parameters, more than a block's worth over ResNet-20"
    with pytest.raises(ValueError, match="no leaderboard entry 'VGG'; entries: ResNet-20, SE"):
        lb.get_entry("VGG")


def test_plan_respects_store_budget_and_slow_models(tmp_path):
    cfg = RunConfig("resnet20", "relations", lb.RECIPE, "smoke", 0)
    train_or_load(cfg, tmp_path, progress=False, live=False)
    plan = lb.plan_leaderboard("relations", "smoke", [0, 1], budget_s=0, runs_dir=tmp_path, device="cpu")
    by = {(r.entry.label, r.config.seed): r for r in plan.runs}
    assert len(plan.runs) == 2 * len(lb.ENTRIES)
    assert by[("ResNet-20", 0)].stored and by[("ResNet-20", 0)].config == cfg
    assert not any(r.train for r in plan.runs)           # a zero budget trains nothing
    assert by[("MHA", 0)].reason == "too slow to train on a CPU here"
    # the stored sibling's wall time is the estimate for the other seed
    assert by[("ResNet-20", 1)].estimate_s == pytest.approx(estimate_train_seconds(cfg.replace(seed=1), tmp_path))
    assert len(plan.missing) == 2 * len(lb.ENTRIES) - 1
    assert any("--model resnet20_mha" in c for c in plan.commands)
    assert any('"attn": "aaconv"' in c for c in plan.commands)
    assert "1 stored, 0 to train here" in plan.describe()
    unlimited = lb.plan_leaderboard("relations", "smoke", [0], budget_s=None, runs_dir=tmp_path, device="cpu")
    assert {r.entry.label for r in unlimited.runs if r.train} == {e.label for e in lb.ENTRIES} - {"ResNet-20", "MHA"}
    with pytest.raises(ValueError, match="budget_s must be >= 0"):
        lb.plan_leaderboard("relations", "smoke", [0], budget_s=-1)
    with pytest.raises(ValueError, match="seeds is empty"):
        lb.plan_leaderboard("relations", "smoke", [])


def test_table_summarises_seeds_and_keeps_missing_entries():
    runs = pd.DataFrame({"label": ["ResNet-20", "ResNet-20", "SelfAtt", "SelfAtt", "SelfAtt"],
                         "seed": [0, 1, 0, 1, 2], "status": ["trained"] * 5,
                         "test_acc": [0.70, 0.74, 0.80, 0.82, 0.84]})
    costs = pd.DataFrame({"model": ["ResNet-20", "SelfAtt"], "params": [269722, 286189], "train step ms": [10.0, 25.0]})
    table = lb.leaderboard_table(runs, costs, {"SelfAtt": {"mass_inside": 0.4, "chance": 0.2}}).set_index("label")
    assert list(table.index) == [e.label for e in lb.ENTRIES]
    assert table.loc["SelfAtt", "test_acc_mean"] == pytest.approx(0.82)
    assert table.loc["SelfAtt", "test_acc_std"] == pytest.approx(0.02)
    assert table.loc["SelfAtt", "vs ResNet-20"] == pytest.approx(0.10)
    assert table.loc["SelfAtt", "n"] == 3 and table.loc["CBAM", "n"] == 0 and math.isnan(table.loc["CBAM", "test_acc_mean"])
    assert table.loc["SelfAtt", "on objects"] == 0.4 and table.loc["SelfAtt", "train step ms"] == 25.0
    empty = lb.leaderboard_table(runs.iloc[:0])
    assert (empty["n"] == 0).all() and "test_acc_mean" in empty


def test_published_numbers_only_for_unmodified_paper_models():
    pub = lb.published_for_entries()
    assert set(pub["label"]) <= {e.label for e in lb.ENTRIES if not e.model_kw}
    he = pub[(pub["label"] == "ResNet-20") & (pub["source"].str.contains("He et al"))]
    assert list(he["value"]) == [8.75] and list(he["metric"]) == ["test_error"]


def test_axes_cover_every_paper():
    axes = explorer.list_axes()
    assert len(axes) == sum(len(get_paper(p).ablations) for p in list_papers())
    assert ("cnntention", "resnet20_cbam.merge", "CBAM merge (paper vs CNNtention)") in axes
    with pytest.raises(ValueError, match="has no ablation axis 'resnet20.depth'; its axes: resnet20_selfatt.merge"):
        explorer.find_axis_by_key("cnntention", "resnet20.depth")


def test_explore_trains_nothing_then_train_missing_fills_the_axis(tmp_path):
    view = explorer.explore_axis("cnntention", "resnet20_cbam.merge", "shapes", "smoke", [0], runs_dir=tmp_path,
                                 device="cpu", estimate=False)
    assert len(view.runs) == 0 and len(view.missing) == 2
    assert not list(tmp_path.glob("*/metrics.json")), "exploring must not train"
    assert view.commands == [f"ATTNLAB_RUNS={tmp_path} python -m attnlab ablate --model resnet20_cbam --dataset shapes "
                             "--recipe cnntention_cbam --profile smoke --grid merge=plain,residual --seeds 0"]
    assert "0 stored, 2 missing" in view.describe()
    filled = explorer.train_missing(view, progress=False)
    assert len(filled.runs) == 2 and not filled.missing
    again = explorer.explore_axis("cnntention", "resnet20_cbam.merge", "shapes", "smoke", [0], runs_dir=tmp_path,
                                  device="cpu")
    assert len(again.runs) == 2 and not again.missing
    summary = again.summary().set_index("value")
    assert set(summary.index) == {"'plain'", "'residual'"} and (summary["n"] == 1).all()
    fig = explorer.show_axis(again)
    titles = [ax.get_title() for ax in fig.axes]
    assert "GradCAM, merge=plain" in titles and "GradCAM, merge=residual" in titles and len(fig.axes) == 5


def test_widget_redraws_when_the_paper_changes(tmp_path):
    from attnlab.widgets import ablation_explorer

    w = ablation_explorer("shapes", "smoke", [0], runs_dir=tmp_path, paper="cnntention", axis="resnet20_cbam.merge")
    (paper, axis), (_, _, seeds, train), status, _ = (w.children[0].children, w.children[1].children,
                                                       w.children[2], w.children[3])
    assert "resnet20_cbam.merge" in status.value and not train.disabled
    paper.value = "embedding_attention"
    assert axis.value == "embedding_cnn.mode" and "embedding_cnn.mode" in status.value
    seeds.value = "0,x"
    assert "seeds must be comma-separated integers" in status.value
