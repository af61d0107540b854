"""Dashboard figures: plain data in, a figure out (dashboard/charts.py)."""
from __future__ import annotations

import math

from core.search.headline import headline
from dashboard import charts

LEVELS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]


def _sweep() -> dict:
    layers = [{"name": name, "curve": [{"sparsity": level, "accuracy": 0.99 - level * weight} for level in LEVELS]}
              for name, weight in (("conv", 0.1), ("fc", 0.5))]
    return {"baseline_accuracy": 0.99, "label": "accuracy", "levels": LEVELS, "layers": layers}


def test_the_heatmap_has_one_equal_category_per_level_labelled_in_percent():
    figure = charts.sensitivity_heatmap(_sweep(), headline(_sweep()))
    heatmap = figure.data[0]
    assert list(heatmap.x) == ["0%", "10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "95%"]
    assert figure.layout.xaxis.type == "category"  # not read as numbers: every column the same width
    assert "pts" in heatmap.colorbar.title.text
    assert heatmap.z[1][-1] == round(100 * 0.5 * 0.95, 1)  # fc at 95%, in percentage points


def test_a_language_model_on_text_is_shaded_by_its_perplexity_rise():
    dense = 50.0
    layers = [{"name": "mlp", "curve": [{"sparsity": level, "accuracy": 1.0 - level / 4,
                                         "loss": math.log(dense * (1 + level))} for level in LEVELS]}]
    result = {"baseline_accuracy": 1.0, "label": "agreement", "levels": LEVELS, "layers": layers,
              "baseline_perplexity": dense, "baseline_loss": math.log(dense)}
    heatmap = charts.sensitivity_heatmap(result, headline(result)).data[0]
    assert list(heatmap.z[0][:3]) == [0.0, 5.0, 10.0]  # perplexity 50 -> 55 -> 60: rises, positive, darker
    assert heatmap.colorbar.title.text == "perplexity rise" and heatmap.zmin == 0


def test_training_curves_are_two_charts_with_whole_epochs():
    history = [{"epoch": epoch, "loss": 1 / epoch, "val_accuracy": 0.9 + epoch / 100} for epoch in (1, 2, 3)]
    loss, accuracy = charts.training_curves(history)
    assert len(loss.data) == len(accuracy.data) == 1  # one y-axis each, no crossing twin axes
    assert loss.layout.xaxis.dtick == 1 and loss.layout.xaxis.tickformat == "d"
    assert list(accuracy.data[0].y) == [91.0, 92.0, 93.0]


def test_the_model_graph_puts_every_layer_below_its_inputs_and_colours_by_cut_or_group():
    graph = {"nodes": [{"id": "a", "layers": ["a"], "kind": "conv2d", "params": 10, "macs": 100, "group": 0,
                        "depth": 0},
                       {"id": "b", "layers": ["b"], "kind": "conv2d", "params": 10, "macs": 100, "group": 1,
                        "depth": 1},
                       {"id": "c", "layers": ["c"], "kind": "linear", "params": 5, "macs": 5, "group": -1,
                        "depth": 2}],
             "edges": [["a", "b"], ["b", "c"], ["a", "c"]], "traced": "data flow", "collapsed": False}
    by_cut = charts.model_graph(graph, {"a": 0.5, "b": 0.0}, "cut", selected="b")
    nodes = by_cut.data[-1]
    assert list(nodes.customdata) == ["a", "b", "c"] and list(nodes.y) == [0, -1, -2]  # data flows downwards
    assert list(nodes.marker.color) == [50.0, 0.0, 0.0] and nodes.marker.size[1] > nodes.marker.size[0]
    assert len(by_cut.data[1].x) == 3  # an arrow head per edge
    by_group = charts.model_graph(graph, {}, "group").data[-1]
    assert by_group.marker.color[0] != by_group.marker.color[1] and by_group.marker.color[2] == charts.UNGROUPED


def test_block_points_place_each_block_by_its_saving_and_quality_beside_the_dense_line():
    blocks = [{"name": "model.vit.layers.0", "accuracy": 0.97, "macs": 1000, "latency_saving_ms": 0.0304},
              {"name": "model.vit.layers.1", "accuracy": 0.99, "macs": 1000, "latency_saving_ms": 0.0305},
              {"name": "untimed", "accuracy": 0.5, "macs": 1000, "latency_saving_ms": None}]
    result = {"label": "accuracy", "baseline_accuracy": 0.995, "blocks": blocks}
    figure = charts.block_points(result, headline(result))
    (points,) = figure.data
    assert list(points.x) == [0.0304, 0.0305] and list(points.y) == [97.0, 99.0]  # the untimed block is left out
    assert figure.layout.shapes[0].y0 == 99.5 and figure.layout.annotations[0].text == "dense 99.5"
    assert figure.layout.xaxis.rangemode == "tozero"  # savings read from zero, not a range fitted around them
    assert figure.layout.yaxis.title.text == "accuracy (%)"


def test_block_points_that_coincide_share_one_label():
    blocks = [{"name": f"layers.{index}", "accuracy": accuracy, "macs": 1000, "latency_saving_ms": saving}
              for index, (accuracy, saving) in enumerate([(0.90, 0.50), (0.90, 0.50), (0.70, 0.10), (0.90, 0.501)])]
    result = {"label": "accuracy", "baseline_accuracy": 0.995, "blocks": blocks}
    (points,) = charts.block_points(result, headline(result)).data
    assert list(points.text) == ["layers.0, layers.1, layers.3", "", "layers.2", ""]
    assert charts.point_labels([0.0, 0.0, 0.0, 0.0, 0.0], [1, 1, 1, 1, 1], list("abcde"))[0] == "a, b, c +2"
    assert charts.point_labels([0.0, 1.0], [1.0, 1.0], ["a", "b"]) == ["a", "b"]  # apart: each its own label
