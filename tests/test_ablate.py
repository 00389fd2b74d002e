import math

from attnlab import RunConfig
from attnlab.ablate import ablate, grid_configs


def test_grid_splits_config_fields_from_model_keywords():
    base = RunConfig(model="resnet20_cbam", profile="smoke", model_kw={"mlp_bias": True})
    points = grid_configs(base, {"reduction": [8, 16], "recipe": ["he2016", "cnntention_cbam"]})
    assert len(points) == 4
    point, cfg = points[-1]
    assert point == {"reduction": 16, "recipe": "cnntention_cbam"}
    assert cfg.recipe == "cnntention_cbam" and cfg.model_kw == {"mlp_bias": True, "reduction": 16}


def test_ablate_aggregates_over_seeds_and_reuses_the_store(tmp_path):
    base = RunConfig(model="resnet20_selfatt", profile="smoke")
    grid = {"merge": ["plain", "weighted"]}
    df = ablate(base, grid, seeds=[0, 1], runs_dir=tmp_path, progress=False)
    assert list(df["merge"]) == ["plain", "weighted"] and list(df["seeds"]) == [2, 2]
    assert {"test_acc_mean", "test_acc_std", "val_acc_mean"} <= set(df.columns)
    per_run = ablate(base, grid, seeds=[0, 1], runs_dir=tmp_path, aggregate=False)
    assert len(per_run) == 4 and "gate:attn1" in per_run.columns
    assert per_run.loc[per_run["merge"] == "plain", "gate:attn1"].isna().all()
    mean = per_run[per_run["merge"] == "plain"]["test_acc"].mean()
    assert math.isclose(df.loc[0, "test_acc_mean"], mean)
    assert len(list(tmp_path.glob("*/metrics.json"))) == 4


def test_none_and_list_grid_values_keep_their_rows(tmp_path):
    base = RunConfig(model="resnet20", profile="smoke")
    df = ablate(base, {"attn": [None, "se"]}, seeds=[0], runs_dir=tmp_path, progress=False)
    assert len(df) == 2 and df["attn"].isna().tolist() == [True, False]
