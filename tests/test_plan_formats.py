"""Plan export: each format has its documented keys and structure, and Torch-Pruning runs the snippet."""
from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch_pruning as tp

from core.errors import PrunelabError
from core.history.plan_formats import (
    DEFAULT_OP_TYPES,
    FORMATS,
    export_plan,
    load_recipe,
    plan_layers,
    to_nni,
    to_sparseml,
    to_torch_pruning,
)
from core.prune.plan import Plan

# NNI 2.x pruners accept these config_list keys.
NNI_KEYS = {"sparsity", "sparsity_per_layer", "total_sparsity", "max_sparsity_per_layer", "op_types", "op_names",
            "op_partial_names", "exclude"}
SPARSEML_MAGNITUDE_KEYS = {"params", "init_sparsity", "final_sparsity", "start_epoch", "end_epoch",
                           "update_frequency", "mask_type", "global_sparsity", "leave_enabled", "inter_func"}


@pytest.fixture
def channel_plan():
    return Plan(granularity="channel", sparsity=0.5, layers={"fc1": 0.25})


def test_layers_resolve_overrides_default_and_final_classifier(mlp, channel_plan):
    layers = plan_layers(channel_plan, mlp)
    assert [(layer.name, layer.kind, layer.parameter, layer.sparsity, layer.ignored) for layer in layers] == [
        ("fc1", "Linear", "fc1.weight", 0.25, False),
        ("fc2", "Linear", "fc2.weight", 0.5, False),
        ("fc3", "Linear", "fc3.weight", 0.0, True),
    ]


def test_unknown_layer_is_named(mlp):
    with pytest.raises(PrunelabError, match="conv9"):
        plan_layers(Plan(layers={"conv9": 0.3}), mlp)


def test_torch_pruning_arguments_are_metapruner_keywords(mlp, channel_plan):
    arguments = to_torch_pruning(channel_plan, plan_layers(channel_plan, mlp))
    accepted = set(inspect.signature(tp.pruner.MetaPruner.__init__).parameters)
    assert set(arguments) - {"importance"} <= accepted
    assert arguments["pruning_ratio_dict"] == {"fc1": 0.25, "fc2": 0.5}
    assert arguments["ignored_layers"] == ["fc3"]
    assert arguments["global_pruning"] is False


def test_torch_pruning_snippet_prunes_the_model_as_planned(mlp, channel_plan, tmp_path, monkeypatch):
    from core.kernels import channel_multiple

    multiple = channel_multiple()[0]  # round_to: auto is exported as what it means on this CPU
    assert to_torch_pruning(channel_plan)["round_to"] == (multiple if multiple > 1 else None)
    channel_plan = channel_plan.replace(round_to=1)
    files = export_plan(channel_plan, "torch-pruning", plan_layers(channel_plan, mlp), stem="ratios")
    (tmp_path / "ratios.json").write_text(files[".json"])
    monkeypatch.chdir(tmp_path)
    model = copy.deepcopy(mlp.module)
    namespace = {"model": model, "example_inputs": mlp.example_input()}
    exec(compile(files[".py"], "snippet.py", "exec"), namespace)  # noqa: S102 - our own generated code
    # fc1 keeps 75% of 300 outputs, fc2 50% of 100; the ignored classifier keeps its 10.
    assert (model.fc1.out_features, model.fc2.out_features, model.fc3.out_features) == (225, 50, 10)
    assert model(mlp.example_input()).shape == (1, 10)


def test_nni_config_list_layer_scope(mlp, channel_plan):
    config = to_nni(channel_plan, plan_layers(channel_plan, mlp))
    assert all(set(entry) <= NNI_KEYS for entry in config)
    assert config == [{"sparsity_per_layer": 0.25, "op_names": ["fc1"]},
                      {"sparsity_per_layer": 0.5, "op_names": ["fc2"]},
                      {"exclude": True, "op_names": ["fc3"]}]
    assert json.loads(export_plan(channel_plan, "nni", plan_layers(channel_plan, mlp))[".json"]) == config


def test_nni_config_list_global_scope_and_without_model():
    plan = Plan(scope="global", sparsity=0.6, layers={"fc2": 0.3}, ignore=["fc3"])
    config = to_nni(plan)
    assert all(set(entry) <= NNI_KEYS for entry in config)
    # default first, then overrides, exclusions last: in NNI the last matching entry wins
    assert config == [{"total_sparsity": 0.6, "op_types": DEFAULT_OP_TYPES},
                      {"sparsity_per_layer": 0.3, "op_names": ["fc2"]},
                      {"exclude": True, "op_names": ["fc3"]}]


def test_sparseml_recipe_parses_back_with_one_modifier_per_layer(cnn):
    plan = Plan(sparsity=0.5, layers={"fc1": 0.8})
    recipe = load_recipe(to_sparseml(plan, plan_layers(plan, cnn)))
    assert recipe["version"] == "1.1.0"
    modifiers = recipe["pruning_modifiers"]
    magnitude = [entry["!MagnitudePruningModifier"] for entry in modifiers if "!MagnitudePruningModifier" in entry]
    [constant] = [entry["!ConstantPruningModifier"] for entry in modifiers if "!ConstantPruningModifier" in entry]
    assert all(set(entry) <= SPARSEML_MAGNITUDE_KEYS for entry in magnitude)
    targets = {entry["params"][0]: entry["final_sparsity"] for entry in magnitude}
    assert targets == {"features.0.0.weight": 0.5, "features.1.0.weight": 0.5, "features.3.0.weight": 0.5,
                       "fc1.weight": 0.8}  # fc2, the classifier, stays dense
    assert all(entry["init_sparsity"] == entry["final_sparsity"] and entry["mask_type"] == "unstructured"
               for entry in magnitude)
    assert constant["params"] == list(targets)


def test_sparseml_without_model_uses_all_prunable_token_or_refuses():
    recipe = load_recipe(to_sparseml(Plan(granularity="2:4", sparsity=0.5)))
    [modifier, constant] = recipe["pruning_modifiers"]
    assert modifier["!MagnitudePruningModifier"]["params"] == "__ALL_PRUNABLE__"
    assert modifier["!MagnitudePruningModifier"]["mask_type"] == "2:4"
    assert constant["!ConstantPruningModifier"]["params"] == "__ALL_PRUNABLE__"
    with pytest.raises(PrunelabError, match="--model"):
        to_sparseml(Plan(layers={"fc1": 0.3}))


def test_every_format_is_produced_and_unknown_is_refused(mlp):
    plan = Plan()
    for name in FORMATS:
        files = export_plan(plan, name, plan_layers(plan, mlp))
        assert files and all(text.strip() for text in files.values())
    with pytest.raises(PrunelabError, match="unknown plan format"):
        export_plan(plan, "onnx", None)


def test_torch_pruning_json_without_model_keeps_default_and_overrides():
    arguments = json.loads(export_plan(Plan(sparsity=0.3, layers={"a": 0.1}, ignore=["b"]), "torch-pruning")[".json"])
    assert (arguments["pruning_ratio"], arguments["pruning_ratio_dict"], arguments["ignored_layers"]) == (
        0.3, {"a": 0.1}, ["b"])


def test_cli_exports_each_format(tmp_path, capsys):
    from core.cli import main

    plan = Plan(sparsity=0.4, layers={"fc1": 0.7})
    plan.save(tmp_path / "plan.yaml")
    assert main(["export-plan", str(tmp_path / "plan.yaml"), "--format", "torch-pruning",
                 "--out", str(tmp_path / "tp.json"), "--model", "digits-mlp"]) == 0
    assert json.loads((tmp_path / "tp.json").read_text())["pruning_ratio_dict"] == {"fc1": 0.7, "fc2": 0.4}
    assert "open('tp.json')" in (tmp_path / "tp.py").read_text()
    assert main(["export-plan", str(tmp_path / "plan.yaml"), "--format", "nni",
                 "--out", str(tmp_path / "nni.json")]) == 0
    assert json.loads((tmp_path / "nni.json").read_text())[1] == {"sparsity_per_layer": 0.7, "op_names": ["fc1"]}
    assert main(["export-plan", str(tmp_path / "plan.yaml"), "--format", "sparseml",
                 "--out", str(tmp_path / "recipe.yaml"), "--model", "digits-mlp"]) == 0
    modifiers = load_recipe((tmp_path / "recipe.yaml").read_text())["pruning_modifiers"]
    assert [list(entry)[0] for entry in modifiers] == ["!MagnitudePruningModifier"] * 2 + ["!ConstantPruningModifier"]
    capsys.readouterr()
    assert main(["export-plan", str(tmp_path / "plan.yaml"), "--format", "sparseml",
                 "--out", str(tmp_path / "recipe.yaml")]) == 2
    assert "--model" in capsys.readouterr().err
