import json

import pytest
import torch

from attnlab import RunConfig, list_runs, train_or_load
from attnlab import runs as runs_mod


def smoke(**kw):
    return RunConfig(model="resnet20", dataset="shapes", recipe="he2016", profile="smoke", **kw)


def test_run_is_stored_and_then_loaded_from_cache(tmp_path, monkeypatch):
    run = train_or_load(smoke(), tmp_path, progress=False)
    assert run.finished and 0 <= run.metrics["test_acc"] <= 1
    assert 0 <= run.metrics["test_acc_flip"] <= 1  # shapes trains with flips
    for f in ("config.json", "env.json", "history.csv", "metrics.json", "model.pt"):
        assert (run.dir / f).exists(), f
    assert not (run.dir / "checkpoint.pt").exists()

    def no_training(*a, **k):
        raise AssertionError("a cached run must not train again")

    monkeypatch.setattr(runs_mod, "fit", no_training)
    again = train_or_load(smoke(), tmp_path)
    assert again.metrics == run.metrics and again.dir == run.dir
    model = again.model()
    assert sum(p.numel() for p in model.parameters()) == run.metrics["params"]


def test_config_changes_change_the_key():
    keys = {smoke().key, smoke(seed=1).key, smoke(model_kw={"shortcut": "B"}).key,
            smoke().replace(recipe="adam").key, smoke(data_kw={"train_subset": 128}).key}
    assert len(keys) == 5
    assert smoke().dirname.startswith("resnet20-shapes-smoke-s0-")


def test_a_stored_config_read_back_keeps_its_key():
    """config.json turns tuples into lists; the run read back must find its own folder."""
    cfg = smoke(model_kw={"attn": "se", "attn_stages": (2, 3)}, recipe_kw={"milestones": (0.5,)})
    again = RunConfig(**{k: v for k, v in json.loads(json.dumps(cfg.to_dict())).items() if k != "version"})
    assert again.model_kw["attn_stages"] == [2, 3] and again.key == cfg.key
    assert smoke(model_kw={"attn": "se", "attn_stages": (2,)}).key != cfg.key


def test_unfinished_run_is_never_read_as_finished(tmp_path):
    cfg = smoke()
    d = tmp_path / cfg.dirname
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    (d / "history.csv").write_text("epoch,train_loss\n1,2.0\n")
    assert runs_mod.Run.load(d) is None
    assert list_runs(tmp_path).empty


def test_interrupted_run_resumes(tmp_path, monkeypatch):
    real_fit = runs_mod.fit

    def interrupted_fit(*a, callbacks=(), **k):
        def stop(history):
            raise KeyboardInterrupt
        return real_fit(*a, callbacks=list(callbacks) + [stop], **k)

    cfg = smoke(recipe_kw={"epochs": 2})
    monkeypatch.setattr(runs_mod, "fit", interrupted_fit)
    partial = train_or_load(cfg, tmp_path, progress=False)
    assert not partial.finished and (partial.dir / "checkpoint.pt").exists()
    monkeypatch.setattr(runs_mod, "fit", real_fit)
    ckpt = torch.load(partial.dir / "checkpoint.pt", weights_only=False)
    assert ckpt["history"].elapsed_s > 0
    ckpt["history"].elapsed_s = 1000.0  # as if the first session had taken 1000 s
    torch.save(ckpt, partial.dir / "checkpoint.pt")
    done = train_or_load(cfg, tmp_path, progress=False)
    assert done.finished and done.metrics["epochs"] == 2 and len(done.history) == 2
    # the wall time adds both sessions up; so does the per-epoch clock
    assert done.metrics["wall_s"] > done.history["elapsed_s"].iloc[1] > 1000.0


def test_corrupt_metrics_means_retrain(tmp_path):
    run = train_or_load(smoke(), tmp_path, progress=False)
    (run.dir / "metrics.json").write_text("{not json")
    with pytest.warns(UserWarning, match="metrics.json is damaged.*again"):
        again = train_or_load(smoke(), tmp_path, progress=False)
    assert again.finished


def test_list_runs_is_one_frame(tmp_path):
    train_or_load(smoke(), tmp_path, progress=False)
    train_or_load(smoke(seed=1), tmp_path, progress=False)
    df = list_runs(tmp_path)
    assert len(df) == 2 and set(df["seed"]) == {0, 1}
    assert {"model", "dataset", "test_acc", "val_acc", "params", "dir"} <= set(df.columns)


def test_same_config_gives_the_same_run_whatever_ran_before(tmp_path):
    a = train_or_load(smoke(), tmp_path / "a", progress=False)
    torch.rand(1000)  # disturb the global RNG, as earlier notebook cells would
    b = train_or_load(smoke(), tmp_path / "b", progress=False)
    assert a.history["train_loss"].tolist() == b.history["train_loss"].tolist()


def test_default_model_keywords_share_the_run():
    plain = RunConfig(model="resnet20_selfatt")
    spelled = RunConfig(model="resnet20_selfatt", model_kw={"merge": "weighted", "scale": 1.0})
    assert plain.key == spelled.key
    assert plain.key != RunConfig(model="resnet20_selfatt", model_kw={"merge": "plain"}).key


def test_retrain_without_cache_drops_the_old_result_first(tmp_path, monkeypatch):
    done = train_or_load(smoke(), tmp_path, progress=False)

    def interrupted_fit(*a, callbacks=(), **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs_mod, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train_or_load(smoke(), tmp_path, use_cache=False, progress=False)
    assert runs_mod.Run.load(done.dir) is None


def test_data_kw_overrides_the_profile_subset(tmp_path):
    run = train_or_load(smoke(data_kw={"train_subset": 128}), tmp_path, progress=False)
    assert run.metrics["n_train"] == 128


def test_key_follows_the_resolved_recipe(monkeypatch):
    from dataclasses import replace

    from attnlab import recipes

    base_key = smoke().key
    assert smoke(recipe_kw={"lr": recipes.RECIPES["he2016"].lr}).key == base_key
    monkeypatch.setitem(recipes.RECIPES, "he2016", replace(recipes.RECIPES["he2016"], lr=0.05))
    assert smoke().key != base_key  # a changed definition is a different run
