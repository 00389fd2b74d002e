"""attnlab.study: planning (what trains, loads or is restricted, with commands that fill the
store), running, seed summaries, verdicts, ours-vs-published tables and the gate share.

Planning tests build no model and train nothing; two tests train at the smoke profile on a
256-image subset (the store is the per-test ``ATTNLAB_RUNS`` of conftest).
"""
from __future__ import annotations

import math
import shlex
import statistics

import pandas as pd
import pytest
import torch

from attnlab import study
from attnlab.ablate import grid_configs
from attnlab.cli import build_parser
from attnlab.papers import AblationAxis, create_model, get_paper
from attnlab.runs import RunConfig, is_finished, run_path

CNN = ["resnet20", "resnet20_selfatt", "resnet20_mha", "resnet20_cbam"]
SMOKE_DATA = {"train_subset": 256, "eval_subset": 128}


def configs_from_command(cmd: str) -> set[str]:
    """The run folders a printed command would fill, parsed by the real CLI parser and
    turned into configs the way ``cmd_train`` / ``cmd_ablate`` do."""
    argv = shlex.split(cmd)
    assert argv[:3] == ["python", "-m", "attnlab"], cmd
    a = build_parser().parse_args(argv[3:])
    if a.command == "train":
        cfg = RunConfig(a.model, a.dataset, a.recipe, a.profile, a.seed, model_kw=a.model_kw,
                        recipe_kw=a.recipe_kw, data_kw=a.data_kw, precision=a.precision)
        return {cfg.dirname}
    assert a.command == "ablate"
    base = RunConfig(a.model, a.dataset, a.recipe, a.profile, model_kw=a.model_kw)
    seeds = a.seeds if isinstance(a.seeds, list) else [int(s) for s in a.seeds.split(",")]
    return {c.replace(seed=s).dirname for _, c in grid_configs(base, dict(a.grid)) for s in seeds}


# -- planning ---------------------------------------------------------------------------

def test_paper_recipes_and_slow_model_restricted_on_cpu_with_a_command_that_fills_the_gap():
    plan = study.plan_study("cnntention", CNN, "shapes", "quick", [0, 1], device="cpu")
    spec = {m.name: m for m in get_paper("cnntention").models}
    assert plan.recipes == {"resnet20": "he2016", "resnet20_selfatt": spec["resnet20_selfatt"].recipe,
                            "resnet20_mha": "cnntention_att", "resnet20_cbam": "cnntention_cbam"}
    assert plan.labels["resnet20_cbam"] == "CBAM" and plan.labels["resnet20"] == "ResNet-20"
    assert len(plan.runs) == 8 and {r.config.recipe for r in plan.runs if r.model == "resnet20"} == {"he2016"}
    assert plan.restricted_models == ["resnet20_mha"]            # the one slow_on_cpu model
    assert all(r.train for r in plan.runs if r.model != "resnet20_mha")
    (res,) = plan.restrictions
    assert "too slow" in res.reason and "MHA" in res.what
    filled = set().union(*(configs_from_command(c) for c in plan.commands))
    assert filled == {r.config.dirname for r in plan.missing}
    assert "restricted" in plan.describe() and plan.commands[0] in plan.describe()


def test_one_recipe_for_all_and_train_slow_and_smoke_lift_the_restriction():
    shared = study.plan_study("cnntention", CNN, "shapes", "quick", [0], recipe="cnntention_shared", device="cpu")
    assert set(shared.recipes.values()) == {"cnntention_shared"}
    assert not study.plan_study("cnntention", CNN, "shapes", "quick", [0], device="cpu", train_slow=True).restrictions
    assert study.plan_study("cnntention", CNN, "shapes", "smoke", [0], device="cpu").restricted_models == ["resnet20_mha"]
    assert not study.plan_study("cnntention", CNN, "shapes", "smoke", [0], device="cpu", train_slow=True).restrictions


def test_on_a_gpu_nothing_is_restricted(monkeypatch):
    monkeypatch.setattr(study, "_device", lambda device: "cuda")
    plan = study.plan_study("cnntention", CNN, "shapes", "quick", [0], device="cuda", cpu_quick_data={"train_subset": 10})
    assert not plan.restrictions and all(r.train and r.config.data_kw == {} for r in plan.runs)
    assert not study.plan_ablation("cnntention", "reduction", "shapes", "quick", [0], device="cuda").restrictions


def test_train_false_restricts_everything_and_epochs_go_into_train_commands():
    plan = study.plan_study("cnntention", ["resnet20", "resnet20_cbam"], "mnist", "quick", [0, 2], epochs=3,
                            device="cpu", train=False, reason="MNIST at quick costs as much again")
    (res,) = plan.restrictions                                      # one per reason, naming its models
    assert not plan.available and res.what == "ResNet-20, CBAM on mnist" and "MNIST at quick" in res.reason
    assert all(" train " in c and "--recipe-kw" in c for c in plan.commands)   # ablate takes no recipe_kw
    filled = set().union(*(configs_from_command(c) for c in plan.commands))
    assert filled == {r.config.dirname for r in plan.runs}
    assert all(r.config.recipe_kw == {"epochs": 3} for r in plan.runs)


def test_cpu_quick_data_lightens_every_run_and_the_ablation_default_point_follows():
    light = {"train_subset": 3000}
    plan = study.plan_study("cnntention", ["resnet20", "resnet20_cbam"], "shapes", "quick", [0], device="cpu",
                            cpu_quick_data=light)
    assert all(r.config.data_kw == light and r.train for r in plan.runs)
    (res,) = plan.restrictions
    assert "train_subset=3000 instead of the profile's train_subset=4000" in res.reason
    standard = study.plan_study("cnntention", ["resnet20", "resnet20_cbam"], "shapes", "quick", [0], device="cpu")
    assert set().union(*(configs_from_command(c) for c in res.commands)) == {r.config.dirname for r in standard.runs}
    abl = study.plan_ablation("cnntention", "merge", "shapes", "quick", [0], device="cpu", model="resnet20_cbam",
                              cpu_quick_data=light)
    (default,) = [r for r in abl.runs if r.value == "residual"]
    assert default.train and default.config.dirname == plan.runs[1].config.dirname
    assert study.plan_study("cnntention", ["resnet20"], "shapes", "smoke", [0], device="cpu",
                            cpu_quick_data=light).runs[0].config.data_kw == {}   # only at quick


def test_runs_dir_is_part_of_the_commands(tmp_path):
    plan = study.plan_study("cnntention", ["resnet20_mha"], "shapes", "quick", [0], device="cpu", runs_dir=tmp_path)
    assert plan.commands and all(c.startswith(f"ATTNLAB_RUNS={tmp_path} ") for c in plan.commands)


def test_bad_arguments_say_what_is_allowed():
    with pytest.raises(ValueError, match="train must be"):
        study.plan_study("cnntention", ["resnet20"], train="sometimes")
    with pytest.raises(ValueError, match="seeds is empty"):
        study.plan_study("cnntention", ["resnet20"], seeds=[])
    with pytest.raises(ValueError, match="unknown paper"):
        study.plan_study("no_such_paper")
    with pytest.raises(ValueError, match="2 ablation axes over 'merge'.*resnet20_cbam.merge"):
        study.find_axis("cnntention", "merge")   # SelfAtt's and CBAM's: say which model
    with pytest.raises(ValueError, match="neither a RunConfig field nor an option"):
        study.plan_ablation("cnntention", AblationAxis("resnet20_cbam", "no_such_option", (1, 2)))


def test_ablation_default_point_is_the_main_run_and_only_it_trains_at_quick_on_cpu():
    main = study.plan_study("cnntention", ["resnet20_cbam"], "shapes", "quick", [0, 1], device="cpu")
    abl = study.plan_ablation("cnntention", "merge", "shapes", "quick", [0, 1], device="cpu", model="resnet20_cbam")
    assert abl.axis.values == ("plain", "residual")
    by_value = {v: [r for r in abl.runs if r.value == v] for v in abl.axis.values}
    # CNNtention's CBAM ends with a residual: that point is the main comparison's run
    assert [r.config.dirname for r in by_value["residual"]] == [r.config.dirname for r in main.runs]
    assert all(r.train for r in by_value["residual"]) and not any(r.available for r in by_value["plain"])
    (res,) = abl.restrictions
    assert "'plain'" in res.what and len(res.commands) == 1 and " ablate " in res.commands[0]
    assert configs_from_command(res.commands[0]) == {r.config.dirname for r in by_value["plain"]}
    everything = study.plan_ablation("cnntention", "merge", "shapes", "quick", [0], device="cpu",
                                     model="resnet20_cbam", train=True)
    assert not everything.restrictions


def test_ablation_over_dict_values_names_the_missing_points():
    # data_kw values are dicts (unhashable): the restriction must still list them
    plan = study.plan_ablation("aaconv", "data_kw", "shapes", "quick", [0], device="cpu",
                               model="aa_wrn10_2", train=False)
    (res,) = plan.restrictions
    assert "augment" in res.what and res.commands


def test_ablation_over_a_runconfig_field():
    axis = AblationAxis("resnet20_cbam", "recipe", ("cnntention_cbam", "cnntention_shared"), "recipe")
    plan = study.plan_ablation("cnntention", axis, "shapes", "smoke", [0], device="cpu")
    assert [r.config.recipe for r in plan.runs] == ["cnntention_cbam", "cnntention_shared"]
    assert all(r.config.model_kw == {} for r in plan.runs)


# -- one answer to "is this run finished?" and the run frame ----------------------------

def test_is_finished_and_run_study_loads_what_is_stored(tmp_path):
    plan = study.plan_study("baselines", ["resnet20"], "shapes", "smoke", [0], device="cpu", data_kw=SMOKE_DATA)
    cfg = plan.runs[0].config
    assert not is_finished(cfg) and not plan.runs[0].stored
    first = study.run_study(plan, verbose=False)
    assert list(first["status"]) == ["trained"] and is_finished(cfg) and is_finished(run_path(cfg))
    assert {"model", "label", "seed", "test_acc", "val_acc", "test_top5", "params", "wall_s", "dir"} <= set(first)
    assert first["params"].iloc[0] == 269_722 and 0 <= first["test_acc"].iloc[0] <= 1
    again = study.plan_study("baselines", ["resnet20"], "shapes", "smoke", [0], device="cpu", data_kw=SMOKE_DATA)
    assert again.runs[0].stored
    second = study.run_study(again, verbose=False)
    assert list(second["status"]) == ["loaded"] and second["test_acc"].iloc[0] == first["test_acc"].iloc[0]
    (run_path(cfg) / "metrics.json").unlink()     # an interrupted run is not a result
    assert not is_finished(cfg)


def test_gate_report_reads_the_gates_of_weighted_runs(tmp_path):
    plan = study.plan_study("cnntention", ["resnet20_selfatt"], "shapes", "smoke", [0], device="cpu",
                            data_kw=SMOKE_DATA)
    runs = study.run_study(plan, verbose=False)
    x = torch.randn(4, 3, 32, 32)
    report = study.gate_report(runs, x)
    assert list(report["block"]) == ["attn1", "attn2", "attn3"]
    assert report["gate"].tolist() == pytest.approx([runs[f"gate:{b}"].iloc[0] for b in report["block"]])
    assert set(report["reading"]) <= {"off", "in use"} and (report["share"] >= 0).all()


# -- summaries, verdicts, published tables ----------------------------------------------

def run_frame(groups: dict[str, list[float]], by: str = "label") -> pd.DataFrame:
    return pd.DataFrame([{by: g, "model": g, "seed": i, "test_acc": a, "val_acc": a - 0.01, "epochs": 4}
                         for g, accs in groups.items() for i, a in enumerate(accs)])


def test_seed_summary_matches_statistics_by_hand():
    frame = run_frame({"A": [0.50, 0.60, 0.70], "B": [0.80]})
    s = study.seed_summary(frame, "label").set_index("label")
    assert s.loc["A", "test_acc_mean"] == pytest.approx(0.6)
    assert s.loc["A", "test_acc_std"] == pytest.approx(statistics.stdev([0.5, 0.6, 0.7]))
    assert s.loc["A", "n"] == 3 and s.loc["B", "n"] == 1 and math.isnan(s.loc["B", "test_acc_std"])
    assert study.seed_summary(frame.iloc[:0], "label").empty


def test_verdict_one_seed_separable_and_within_noise():
    assert "too few seeds" in study.verdict(run_frame({"base": [0.8], "att": [0.9]}))
    clear = run_frame({"base": [0.80, 0.81, 0.79], "att": [0.90, 0.91, 0.89]})
    c = study.compare(clear, "label", "test_acc", "base").set_index("label")
    assert c.loc["att", "gap"] == pytest.approx(0.10)
    assert c.loc["att", "se"] == pytest.approx(math.sqrt(0.01 ** 2 / 3 + 0.01 ** 2 / 3))
    assert c.loc["att", "separable"] and "larger than seed noise" in study.verdict(clear, reference="base")
    noisy = run_frame({"base": [0.70, 0.90, 0.80], "att": [0.75, 0.95, 0.85]})
    assert not study.compare(noisy, reference="base")["separable"].any()
    assert "within seed noise" in study.verdict(noisy, reference="base")
    with pytest.raises(ValueError, match="reference 'nope'"):
        study.compare(noisy, reference="nope")


def test_published_table_converts_units_and_quotes_the_claims():
    ours = run_frame({"resnet20": [0.90, 0.92], "resnet20_cbam": [0.91, 0.93]}, by="model")
    t = study.published_table("cnntention", ours, "shapes", "quick").set_index("model")
    claims = {(c.model, c.dataset): c.value for c in get_paper("cnntention").claims
              if c.metric == "test_error" and not c.setting}
    assert t.loc["resnet20", "ours"] == pytest.approx(100 * (1 - 0.91))        # test error in %
    assert t.loc["resnet20", "ours_std"] == pytest.approx(100 * statistics.stdev([0.90, 0.92]))
    assert t.loc["resnet20_cbam", "published cifar10"] == claims[("resnet20_cbam", "cifar10")]
    assert t.loc["resnet20_cbam", "published mnist"] == claims[("resnet20_cbam", "mnist")]
    assert t.loc["resnet20_cbam", "label"] == "CBAM" and t.loc["resnet20", "n"] == 2
    diffs = " | ".join(t.attrs["differences"])
    assert "ours shapes" in diffs and "profile 'quick'" in diffs and "selected on the test set" in diffs
    assert t.attrs["comparable"] is False
    same = study.published_table("cnntention", ours.assign(), "cifar10", "full")
    assert not same.attrs["comparable"]  # mnist claims too: not like for like
    only_c10 = study.published_table("baselines", ours[ours["model"] == "resnet20"], "cifar10", "full")
    assert only_c10.attrs["comparable"] is True
    # two sources for CIFAR-10 ResNet-20: one column each
    assert sum(c.startswith("published cifar10: ") for c in only_c10.columns) == 2
    wide = study.published_table("baselines", ours[ours["model"] == "resnet20"], "cifar10", "full", all_claims=True)
    assert set(wide["model"]) == {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
    assert wide.set_index("model").loc["resnet110", "n"] == 0


def test_published_table_over_an_ablation_axis():
    axis = study.find_axis("cnntention", "reduction")
    runs = pd.DataFrame([{"model": "resnet20_cbam", "label": f"CBAM reduction={r}", "seed": 0, "reduction": r,
                          "test_acc": 0.5, "val_acc": v} for r, v in ((8, 0.81), (16, 0.82), (32, 0.83))])
    t = study.published_table("cnntention", runs, "shapes", "quick", metric="val_acc", axis=axis).set_index("reduction")
    assert t.loc[32, "ours"] == pytest.approx(83.0)
    pub = {c.setting: c.value for c in get_paper("cnntention").claims if c.metric == "val_acc"}
    assert t.loc[8, "published cifar10"] == pub["reduction=8"]
    assert any("validation" in d for d in t.attrs["differences"])
    with pytest.raises(ValueError, match="cannot compare"):
        study.published_table("cnntention", runs, "shapes", "quick", metric="f1")


def test_published_points_are_accuracies_for_the_same_dataset_only():
    pts = study.published_points("cnntention", "cifar10")
    assert pts["CBAM"] == pytest.approx(1 - 8.68 / 100) and set(pts) == {"ResNet-20", "SelfAtt", "MHA", "CBAM"}
    assert study.published_points("cnntention", "shapes") == {}


# -- the gate share and images ----------------------------------------------------------

def test_gate_share_equals_the_branch_over_the_input_and_scales_with_w():
    torch.manual_seed(0)
    model = create_model("resnet20_selfatt").eval()
    x = torch.randn(2, 3, 32, 32)
    assert study.gate_share(model, x) == {"attn1": 0.0, "attn2": 0.0, "attn3": 0.0}   # w starts at 0
    with torch.no_grad():
        for i, w in enumerate((0.5, -1.0, 2.0), start=1):
            getattr(model, f"attn{i}").merge.gate.fill_(w)
    seen = {}
    hooks = [getattr(model, f"attn{i}").register_forward_hook(
        lambda m, inp, out, i=i: seen.__setitem__(f"attn{i}", float((out - inp[0]).norm() / inp[0].norm())))
        for i in (1, 2, 3)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    share = study.gate_share(model, x)
    assert share == pytest.approx(seen, rel=1e-4) and all(v > 0 for v in share.values())
    with torch.no_grad():
        model.attn1.merge.gate.mul_(2)
    assert study.gate_share(model, x)["attn1"] == pytest.approx(2 * share["attn1"], rel=1e-4)
    assert study.gate_share(create_model("resnet20_cbam"), x) == {}            # residual merge: no gate


def test_lr_schedule_is_the_one_fit_applies(tiny_data):
    from attnlab import fit, get_recipe

    he = get_recipe("he2016", "full", "cifar10")                    # 182 epochs, lr / 10 at 91 and 136 (0-based)
    sched = study.lr_schedule(he, 45_000)
    assert sched["steps"].iloc[0] == 352                              # ceil(45000 / 128)
    assert list(sched.loc[sched["drop"], "epoch"]) == [92, 137]       # epochs counted from 1
    assert sched["lr_first"].iloc[91] == pytest.approx(0.01) and sched["lr_last"].iloc[-1] == pytest.approx(0.001)
    smoke = get_recipe("he2016", "smoke", "shapes")                   # one epoch: no drop ever happens
    assert not study.lr_schedule(smoke, 256)["drop"].any()
    r = get_recipe("he2016", "smoke", "shapes", epochs=4, max_steps_per_epoch=1)
    sched = study.lr_schedule(r, len(tiny_data.train))
    assert list(sched.loc[sched["drop"], "epoch"]) == [3, 4]          # 0.5 and 0.75 of 4 epochs
    torch.manual_seed(0)
    history = fit(create_model("resnet20"), tiny_data, r, progress=False).to_frame()
    assert history["lr"].tolist() == pytest.approx(sched["lr_first"].tolist())   # what fit really used


def test_trace_shapes_follows_a_batch_in_call_order():
    model = create_model("resnet20_selfatt")
    t = study.trace_shapes(model, torch.zeros(1, 3, 32, 32), ["linear", "layer1", "attn1"])
    assert list(t["module"]) == ["layer1", "attn1", "linear"]              # call order, not the order asked
    assert t.set_index("module").loc["attn1", "output"] == (1, 16, 32, 32)
    assert t.set_index("module").loc["linear", "params"] == 64 * 10 + 10
    children = study.trace_shapes(model, torch.zeros(1, 3, 32, 32))
    assert set(children["module"]) == {n for n, _ in model.named_children()}
    assert len(study.trace_shapes(model, torch.zeros(1, 3, 32, 32), depth=2)) > len(children)
    with pytest.raises(ValueError, match="no module"):
        study.trace_shapes(model, torch.zeros(1, 3, 32, 32), ["nope"])


def test_images_one_per_class_and_normalised_like_the_loader(tiny_data):
    idx = study.one_per_class(tiny_data.test, n=4)
    labels = tiny_data.test.labels[idx].tolist()
    assert labels == sorted(set(labels)) and len(idx) == 4
    first = [int((tiny_data.test.labels == c).nonzero()[0]) for c in labels]
    assert idx.tolist() == first
    x = study.normalise(tiny_data, tiny_data.test.images[idx])
    batch, _ = next(iter(tiny_data.loader("test", batch_size=len(tiny_data.test))))
    assert torch.allclose(x, batch[idx], atol=1e-6)
    on = study.images_covering(tiny_data.test, (16, 16), n=3)
    assert len(on) == 3 and tiny_data.test.masks[on, 16, 16].all()
