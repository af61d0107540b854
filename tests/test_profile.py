"""prunelab profile: ONNX Runtime's per-node times mapped back to layers, adding up to the measured run."""
from __future__ import annotations

import json

import onnx
import pytest
import torch

from core.cli import main
from core.deploy.export import export_onnx
from core.deploy.measure import MIN_RUNS
from core.deploy.profile import LayerMap, calibration_model, profile_plan, scope_path
from core.inspect import prunable_layers
from core.prune.plan import Plan

CHANNELS = Plan(granularity="channel", sparsity=0.5, round_to=8)


@pytest.fixture(scope="module")
def resnet_profile(resnet):
    return profile_plan(resnet, CHANNELS, runs=4)


def test_scope_paths_follow_module_paths():
    assert scope_path("/layer3/branch3x3/branch3x3.2/Relu") == "layer3.branch3x3.2"
    assert (scope_path("/model/encoder/layer.0/attention/self/query/MatMul")
            == "model.encoder.layer.0.attention.self.query")
    assert scope_path("/stem/stem.0/Conv") == "stem.0"
    assert scope_path("Identity_0") == ""


def test_fused_nodes_named_after_a_tensor_map_to_their_convolution(resnet):
    """ONNX Runtime names Conv+BatchNorm+ReLU after the ReLU's output; walking back finds the conv."""
    one = torch.from_numpy(resnet.data.x_test[:1])
    names = [layer.name for layer in prunable_layers(resnet.module)]
    model_bytes = export_onnx(resnet.module, one)
    layer_map = LayerMap(model_bytes, names)
    assert layer_map.layer_of("/layer1/bn2/BatchNormalization_output_0_nchwc_kernel_time", "Conv") == "layer1.conv2"
    assert layer_map.layer_of("/layer1/Relu_output_0_nchwc_kernel_time", "Conv") == "layer1.conv1"
    assert layer_map.layer_of("/layer3/Concat_kernel_time", "Concat") is None
    assert layer_map.layer_of("ReorderOutput_kernel_time", "ReorderOutput") is None
    every_conv = {node.name for node in onnx.load_from_string(model_bytes).graph.node if node.op_type == "Conv"}
    assert {layer_map.layer_of(name, "Conv") for name in every_conv} == {
        name for name in names if not name.startswith("fc")}


def test_layers_outside_and_the_rest_add_up_to_the_plain_median_run(resnet_profile):
    for profile in (resnet_profile["dense"], resnet_profile["pruned"]):
        layers = sum(layer["ms"] for layer in profile["layers"])
        assert all(layer["ms"] > 0 for layer in profile["layers"])  # every layer ran and was found
        assert layers + profile["other_ms"] + profile["overhead_ms"] == pytest.approx(profile["p50_ms"], rel=1e-6)
        assert profile["runs"] == 4 and profile["timed_runs"] >= MIN_RUNS  # profiled, then timed plain
        assert profile["profiler_ms"] == pytest.approx(profile["profiled_p50_ms"] - profile["p50_ms"])
        # a measured difference of two timings, floored at 0: under load the plain chain can time as slowly as
        # the profiled one (0.0 in one fresh-clone run), so only its sign is certain
        assert profile["node_cost_us"] >= 0 and profile["nodes_per_run"] >= len(profile["layers"])


def test_the_profilers_time_inside_a_node_comes_from_trivial_nodes():
    import numpy as np
    import onnxruntime as ort

    chain = onnx.load_from_string(calibration_model(50))
    assert [node.op_type for node in chain.graph.node] == ["Neg"] * 50
    session = ort.InferenceSession(calibration_model(50), providers=["CPUExecutionProvider"])
    ones = np.ones((1, 8), dtype=np.float32)
    assert (session.run(None, {"v0": ones})[0] == ones).all()  # an even number of negations


def test_rows_align_dense_and_pruned_layers_with_their_macs(resnet_profile, resnet):
    rows = {row["name"]: row for row in resnet_profile["rows"]}
    assert list(rows) == [layer.name for layer in prunable_layers(resnet.module)]
    cut = rows["layer1.conv1"]
    assert cut["macs_pruned"] < cut["macs_dense"]
    assert cut["ms_saved"] == pytest.approx(cut["ms_dense"] - cut["ms_pruned"])
    assert resnet_profile["plan"]["granularity"] == "channel"


def test_cli_json_carries_layers_other_and_p50(capsys):
    assert main(["profile", "digits-cnn", "--runs", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"layers", "other_ms", "p50_ms", "overhead_ms", "profiled_p50_ms", "node_cost_us",
            "profiler_ms"} <= set(report)
    assert report["layers"] and all({"name", "ms"} <= set(row) for row in report["layers"])
    assert report["pruned"] is None


def test_cli_table_and_bad_counts(capsys, tmp_path):
    plan = CHANNELS.save(tmp_path / "plan.yaml")
    assert main(["profile", "digits-resnet", "--plan", str(plan), "--runs", "3", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "ms pruned" in out and "= p50" in out and len(out.splitlines()) == 1 + 3 + 2 + 1
    assert main(["profile", "digits-cnn", "--runs", "0"]) == 2
    assert "--runs must be between 1 and 10000" in capsys.readouterr().err


def test_the_profile_page_times_dense_and_pruned_layers(open_app):
    app = open_app(page="layer_times")
    assert app.title[0].value == "Profile" and not app.exception
    app.button[0].click().run()
    assert not app.exception and not app.error
    lines = [block.value for block in app.markdown]
    assert any(line.startswith("**Dense**: layers") for line in lines)
    assert any(line.startswith("**Pruned**: layers") for line in lines)
    assert len(app.dataframe) == 1 and len(app.dataframe[0].value) == 5  # digits-cnn's five layers
    app.radio(key="w.profile.colour").set_value("saved").run()
    assert not app.exception and not app.error


def test_a_profiled_prune_run_carries_its_layer_times_into_the_html_report(tmp_path, capsys):
    plan = CHANNELS.save(tmp_path / "plan.yaml")
    assert main(["prune", "digits-resnet", "--plan", str(plan), "--out", str(tmp_path / "out"), "--profile",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {row["name"]: row for row in report["profile"]["rows"]}
    assert set(rows) >= set(report["layer_sparsity"]) and rows["layer1.conv1"]["ms_dense"] > 0
    assert main(["report", "1", "--out", str(tmp_path / "report.html")]) == 0
    html = (tmp_path / "report.html").read_text()
    assert "Where the time goes" in html and "Measured time per layer" in html


def test_the_tune_table_gains_measured_times_only_when_asked(open_app):
    app = open_app(page="tune", run=False)
    app.session_state["w.tune.view"] = "Per-layer table"
    app.run().switch_page("pages/tune.py").run()
    assert not app.exception
    assert "ms dense" not in app.dataframe[0].value.columns  # nothing is profiled on opening or on a slider move
    app.button(key="tune-profile").click().run()
    assert not app.exception and not app.error
    frame = app.dataframe[0].value
    assert {"ms dense", "ms pruned", "ms saved", "ms per MAC"} <= set(frame.columns)
    assert len(frame) == 5 and (frame["ms dense"] > 0).all()  # digits-cnn's five layers, each timed
    assert "tune-profile" not in [button.key for button in app.button]  # profiled: the button goes
