"""The layer graph (core.model_graph) and the units of the report and dashboard (core.units)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from core import api, units
from core.model_graph import layer_graph
from dashboard.url_state import decode, encode


class Deep(nn.Module):
    """Twelve identical residual blocks of two linear layers: the graph folds them into one node each."""

    def __init__(self, width: int = 8, blocks: int = 12):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
                                    for _ in range(blocks))
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def test_digits_resnet_graph_follows_the_data_through_residuals_and_concats():
    handle = api.load_model("digits-resnet")
    graph = api.layer_graph(handle)
    edges = {tuple(edge) for edge in graph["edges"]}
    names = [node["id"] for node in graph["nodes"]]
    assert graph["traced"] == "data flow" and not graph["collapsed"]
    assert names == [layer["name"] for layer in api.layer_table(handle)["layers"]]
    assert ("stem.0", "layer2.shortcut.0") in edges  # the residual's skip path
    assert ("layer3.branch3x3.0", "layer3.fuse.0") in edges and ("layer3.branch_deep.0", "layer3.fuse.0") in edges
    by_id = {node["id"]: node for node in graph["nodes"]}
    assert by_id["stem.0"]["group"] == by_id["layer1.conv2"]["group"] >= 0  # coupled through the addition
    assert by_id["fc"]["group"] == -1  # the classifier is left dense
    for source, target in edges:
        assert by_id[source]["depth"] < by_id[target]["depth"]
    assert sum(node["macs"] for node in graph["nodes"]) == api.layer_table(handle)["totals"]["macs"]


def test_repeated_blocks_fold_into_one_node_each_when_the_graph_is_large():
    model, example = Deep().eval(), torch.randn(1, 8)
    full = layer_graph(model, example, max_nodes=100)
    folded = layer_graph(model, example, max_nodes=10)
    assert len(full["nodes"]) == 25 and not full["collapsed"]
    assert folded["collapsed"] and [node["id"] for node in folded["nodes"]][:2] == ["blocks.0", "blocks.1"]
    assert len(folded["nodes"]) == 13 and folded["nodes"][0]["layers"] == ["blocks.0.0", "blocks.0.2"]
    assert folded["edges"][:2] == [["blocks.0", "blocks.1"], ["blocks.1", "blocks.2"]]  # one chain
    assert sum(node["params"] for node in folded["nodes"]) == sum(node["params"] for node in full["nodes"])


def test_a_transformer_graph_is_drawn_and_folded():
    pytest.importorskip("transformers")
    from tests.fixtures.transformer_models import tiny_vit

    graph = layer_graph(tiny_vit(layers=4), torch.randn(1, 1, 8, 8), max_nodes=6)
    ids = [node["id"] for node in graph["nodes"]]
    assert graph["collapsed"] and "model.vit.layers.0" in ids and len(ids) == 6 and ids[-1] == "model.classifier"
    assert graph["edges"] and all(source != target for source, target in graph["edges"])


def test_units_say_sizes_times_and_shares_as_people_do():
    assert units.size(193_515) == "189 KB" and units.size(6_650_000) == "6.34 MB"
    assert units.milliseconds(0.0612) == "61.2 µs" and units.milliseconds(2.5) == "2.50 ms"
    assert units.percent(0.9806) == "98.1%" and units.metric("latency_ms.p99", 0.043) == "43.0 µs"
    assert units.readable("gain: 645,123 -> 193,515 bytes (0.062 -> 0.043 ms)") == \
        "gain: 630 KB -> 189 KB (62.0 µs -> 43.0 µs)"


def test_a_plan_survives_the_address_unchanged():
    source = {"spec": "digits-resnet", "data": None, "input_shape": None}
    values = api.Plan(granularity="channel", criterion="fpgm", scope="layer", sparsity=0.3,
                      layers={"layer5.conv2": 0.375, "stem.0": 0.1}, round_to=8, recalibrate=False)
    params = encode(source, values, "int8")
    assert params["layers"] == "layer5.conv2:37.5,stem.0:10" and params["int8"] == "1"
    assert decode(params) == values
    narrowed = values.replace(prune_width=True)
    assert encode(source, narrowed, None)["width"] == "1" and decode(encode(source, narrowed, None)) == narrowed
