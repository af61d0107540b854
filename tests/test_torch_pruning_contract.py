"""What prunelab uses of Torch-Pruning, checked on its own, so an upgrade that changes it fails here.

core/prune/channel.py builds a DependencyGraph and reads some of its internals (``_param_to_name``,
``module2node``, ``unwrapped_parameters``, a group's items with ``dep.target.module``,
``dep.handler``, ``idxs`` and ``root_idxs``); core/history/plan_formats.py writes MetaPruner
arguments and importance classes into a snippet people run. pyproject.toml pins the range these
tests pass on.
"""
from __future__ import annotations

import inspect
import re
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from packaging.requirements import Requirement
from torch import nn

from core.history.plan_formats import torch_pruning_importance
from core.prune.criteria import CRITERIA

ROOT = Path(__file__).resolve().parent.parent
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


class Net(nn.Module):
    """conv -> bn -> relu -> conv, a residual add, a free scale parameter and a classifier."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(1, 8, 1, 1))  # a parameter outside any layer
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = y + self.conv2(y) * self.scale
        return self.fc(y.mean((2, 3)))


def graph_of(model: nn.Module):
    torch.manual_seed(0)
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 8, 8), verbose=False)


def test_the_installed_version_is_inside_the_pinned_range():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirement = next(Requirement(item) for item in dependencies if re.match(r"torch[-_]pruning\b", item))
    assert requirement.specifier, "torch-pruning must be pinned to a tested range"
    assert any(spec.operator in ("<", "<=", "~=", "==") for spec in requirement.specifier), "no upper bound"
    assert requirement.specifier.contains(metadata.version("torch-pruning"))


def test_the_dependency_graph_names_parameters_and_lists_modules():
    model = Net().eval()
    graph = graph_of(model)
    names = graph._param_to_name  # channel.py names the parameters outside any layer through this map
    assert isinstance(names, dict) and names[model.scale] == "scale"
    assert model.conv1 in graph.module2node and model.fc in graph.module2node
    assert graph.model is model  # core/prune/shrink.py finds the traced model's attention layers through it
    unwrapped = {id(parameter): dim for parameter, dim in graph.unwrapped_parameters}  # (parameter, dim) pairs
    assert id(model.scale) in unwrapped and isinstance(unwrapped[id(model.scale)], int)


def test_groups_expose_their_items_handlers_and_indices():
    model = Net().eval()
    graph = graph_of(model)
    groups = list(graph.get_all_groups(ignored_layers=[model.fc], root_module_types=(nn.Conv2d, nn.Linear)))
    assert groups
    coupled = next(group for group in groups if group[0].dep.target.module in (model.conv1, model.conv2))
    assert len(coupled[0].idxs) == 8
    targets = {item.dep.target.module for item in coupled.items if isinstance(item.dep.target.module, nn.Module)}
    assert {model.conv1, model.bn1, model.conv2} <= targets  # the residual add couples both convs
    for item in coupled.items:
        assert len(item.idxs) == len(item.root_idxs)
        assert isinstance(graph.is_out_channel_pruning_fn(item.dep.handler), bool)
    assert graph.is_out_channel_pruning_fn(coupled[0].dep.handler)


def test_a_pruner_reports_channel_groups_and_a_group_prunes_physically():
    model = Net().eval()
    graph = graph_of(model)
    pruner = graph.get_pruner_of_module(model.conv1)
    assert pruner.get_out_channel_groups(model.conv1) == 1 and pruner.get_in_channel_groups(model.conv2) == 1
    group = graph.get_pruning_group(model.conv1, pruner.prune_out_channels, [0, 3, 5])
    group.prune()
    assert model.conv1.out_channels == 5 and model.bn1.num_features == 5
    assert model.conv2.in_channels == 5 and model.conv2.out_channels == 5 and model.fc.in_features == 5
    assert tuple(model.scale.shape) == (1, 5, 1, 1)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_build_dependency_and_meta_pruner_take_the_arguments_prunelab_passes():
    build = inspect.signature(tp.DependencyGraph.build_dependency).parameters
    assert {"example_inputs", "unwrapped_parameters", "ignored_layers", "verbose"} <= set(build)
    meta = inspect.signature(tp.pruner.MetaPruner.__init__).parameters
    snippet = {"importance", "pruning_ratio", "pruning_ratio_dict", "ignored_layers", "global_pruning", "round_to"}
    heads = {"num_heads", "prune_num_heads", "prune_head_dims", "unwrapped_parameters"}
    assert snippet | heads <= set(meta)


def test_every_importance_the_plan_export_names_exists():
    for criterion in CRITERIA:
        expression = torch_pruning_importance(criterion)
        importance = eval(expression, {"tp": tp})  # the very text written into the exported snippet
        assert callable(importance), criterion
