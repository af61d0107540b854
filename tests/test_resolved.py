"""The resolved plan and the criteria table: one rule for which layers stay dense and what a target
means, and one entry per criterion that every caller asks about its needs."""
import pytest
import torch

from core.errors import PrunelabError
from core.inspect import final_classifier, prunable_layers
from core.prune import criteria
from core.prune.plan import Plan
from core.prune.resolved import resolve, resolve_names


def test_the_default_ignore_is_the_final_classifier_and_targets_follow_the_plan(mlp):
    names = [layer.name for layer in prunable_layers(mlp.module)]
    classifier = final_classifier(mlp.module, mlp.example_input())
    resolved = resolve(Plan(sparsity=0.4, layers={names[0]: 0.7}), mlp)
    assert resolved.ignored == (classifier,)
    assert classifier not in resolved.included and len(resolved.included) == len(names) - 1
    assert resolved.target(names[0]) == 0.7 and resolved.target(names[1]) == 0.4
    assert resolved.target(classifier) == 0.0 and "final classifier" in resolved.dense[classifier]
    assert resolved.to_dict()["ignore"] == [classifier]


def test_an_explicit_ignore_and_n_m_targets():
    resolved = resolve_names(Plan(granularity="2:4", ignore=["b"]), ["a", "b", "c"], "c")
    assert resolved.ignored == ("b",) and resolved.included == ("a", "c")
    assert resolved.target("a") == 0.5 and resolved.target("b") == 0.0 and resolved.unit == "N:M"
    assert "ignore list" in resolved.dense["b"]


def test_a_group_takes_its_leaders_target_else_its_first_named_member():
    resolved = resolve_names(Plan(granularity="channel", layers={"m2": 0.3, "m1": 0.6}), ["l", "m1", "m2"], None)
    assert resolved.group_target("l", ["m2", "m1"]) == (0.3, ["m2", "m1"])
    assert resolved.group_target("m1", ["m2"])[0] == 0.6
    assert resolved.group_target("l", [])[0] is None


def test_an_unknown_layer_is_named():
    with pytest.raises(PrunelabError, match="'nope'"):
        resolve_names(Plan(ignore=["nope"]), ["a"], "a")


def test_with_plan_refuses_another_granularity():
    resolved = resolve_names(Plan(), ["a"], "a")
    assert resolved.with_plan(Plan(sparsity=0.3)).target("a") == 0.0
    with pytest.raises(ValueError):
        resolved.with_plan(Plan(granularity="channel"))


def test_every_criterion_declares_known_needs_and_a_plan_validates_against_the_table():
    for name, entry in criteria.CRITERIA.items():
        assert set(entry.needs) <= set(criteria.NEEDS) and entry.help.startswith(name)
        assert entry.fallback is None or criteria.CRITERIA[entry.fallback].ranks("channel")
        for kind in ("unstructured", "channel", "2:4"):
            if entry.ranks("N:M" if kind == "2:4" else kind):
                Plan(granularity=kind, criterion=name)
            else:
                with pytest.raises(PrunelabError, match=name):
                    Plan(granularity=kind, criterion=name)


def test_channel_scores_default_to_summed_weight_scores():
    weight = torch.randn(4, 3, 2, 2)
    l1 = criteria.criterion("l1")
    summed = criteria.Criterion("summed", ("channel",), lambda w, e: w.abs())
    assert torch.allclose(summed(weight, criteria.Evidence(), per="channel"), l1(weight, None, per="channel"))
    with pytest.raises(PrunelabError, match="channels only"):
        criteria.criterion("fpgm")(weight, criteria.Evidence())


def test_a_plans_label_and_the_histogram_threshold():
    from core.inspect import threshold_of

    plan = Plan(granularity="channel", round_to=8, scope="global", sparsity=0.5, layers={"a": 0.3, "b": 0.5})
    assert plan.label == "channel, l1, round to 8, global ranking, per-layer targets (1 layer own, others 50%)"
    assert Plan(sparsity=0.2).label == "unstructured, l1, all layers 20%"
    histogram = {"counts": [2, 2], "edges": [0.0, 1.0, 2.0]}
    assert threshold_of(histogram, 0.25) == 0.5 and threshold_of(histogram, 0.75) == 1.5


def test_the_engine_finds_the_layers_left_dense_once_per_model(cnn, monkeypatch):
    from core.prune import engine

    runs = []
    found = engine.dense_by_default
    monkeypatch.setattr(engine, "dense_by_default", lambda *args: runs.append(1) or found(*args))
    engine._DENSE_DEFAULT.pop(cnn.module, None)  # as if this model had never been pruned
    classifier = final_classifier(cnn.module, cnn.example_input())
    first = engine.apply_plan(cnn, Plan(sparsity=0.3))
    second = engine.apply_plan(cnn, Plan(sparsity=0.6))
    assert len(runs) == 1  # the model is run for it once, not once per plan
    assert first.layer_sparsity[classifier] == 0.0 == second.layer_sparsity[classifier]
    assert second.layer_sparsity[next(iter(second.layer_sparsity))] > 0.5
    engine.apply_plan(cnn, Plan(sparsity=0.3, ignore=[]))  # a plan with its own ignore list asks nothing
    assert len(runs) == 1
