"""Models returning several tensors (a dict, a tuple, nested) are measured output by output, their
ONNX keeps every output, and token models export with dynamic batch and sequence axes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from core.deploy.evaluate import evaluate
from core.deploy.export import export_onnx
from core.errors import PrunelabError
from core.outputs import flat, layout, leaves, split, swept_label
from core.prune.plan import Plan
from core.sources import load_model

TWO_HEADS = Path(__file__).parent / "fixtures" / "two_heads.py"


@pytest.fixture(scope="module")
def two_heads():
    return load_model(f"{TWO_HEADS}:factory", input_shape="1,3,16,16")


def test_nested_outputs_are_named_flattened_and_split_back(two_heads):
    inputs = two_heads.example_input(3)
    with torch.no_grad():
        output = two_heads.module(inputs)
    assert two_heads.output_kind == "outputs"
    assert two_heads.outputs == (("logits", (5,)), ("extra.0", (4, 16, 16)), ("extra.1", (16, 16)))
    parts = split(flat(output, 3), layout(output))
    assert np.array_equal(parts["extra.0"], output["extra"][0].numpy())
    with pytest.raises(PrunelabError, match="returns a str"):
        leaves({"a": torch.zeros(1), "b": "text"})


def test_onnx_keeps_every_output_and_matches_torch(two_heads):
    inputs = two_heads.example_input(2)
    session = ort.InferenceSession(export_onnx(two_heads.module, inputs), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": inputs.numpy()})
    with torch.no_grad():
        expected = [tensor.numpy() for _, tensor in leaves(two_heads.module(inputs))]
    assert [value.name for value in session.get_outputs()] == ["output_logits", "output_extra_0", "output_extra_1"]
    assert all(np.abs(a - b).max() < 1e-5 for a, b in zip(got, expected))


def test_a_channel_plan_is_measured_output_by_output(two_heads, capsys):
    from core.cli.evaluate import print_report

    report = evaluate(two_heads, Plan(granularity="channel", sparsity=0.5))
    pruned = report["pruned"]
    assert set(pruned["outputs"]) == {"logits", "extra.0", "extra.1"}
    assert pruned["outputs"]["logits"]["agreement"] is not None and pruned["outputs"]["extra.0"]["agreement"] is None
    assert pruned["output_error"] == max(row["error"] for row in pruned["outputs"].values()) > 0
    assert set(pruned["parity_outputs"]) == set(pruned["outputs"]) and max(pruned["parity_outputs"].values()) < 1e-4
    assert pruned["macs"] < 0.7 * report["baseline"]["macs"]
    assert "boxes" in " ".join(report["notes"]) and "classes" in " ".join(report["notes"])  # output writers stay
    interval = pruned["quality_interval"]  # headline: the logits' agreement, bootstrapped over items
    assert pruned["label"] == "agreement" and interval["low"] <= pruned["agreement"] <= interval["high"]
    assert report["baseline"]["quality_interval"] is None  # the dense model against itself: exact
    print_report(report)
    lines = capsys.readouterr().out.splitlines()
    row = next(index for index, line in enumerate(lines) if line.startswith("agreement"))
    assert lines[row + 1].split()[:3] == ["95%", "interval", f"{interval['low']:.2%}-{interval['high']:.2%}"]


def detector_outputs(items: int = 60, classes: int = 6, anchors: int = 40, noise: float = 0.0, seed: int = 0):
    """Flat outputs of a YOLO-like detector, (4 + classes, anchors) then a feature map, and a noisy copy."""
    generator = np.random.default_rng(seed)
    outputs = (("0", (4 + classes, anchors)), ("1", (8, 2, 2)))
    dense = generator.normal(size=(items, (4 + classes) * anchors + 32))
    return outputs, dense, dense + noise * generator.normal(size=dense.shape)


def test_a_detectors_headline_is_its_top_detections_kept_with_a_bootstrap_interval():
    from core.outputs import TOP_DETECTIONS, interval, quality

    outputs, dense, same = detector_outputs()
    assert quality(same, dense, outputs)["detections"] == 1.0
    outputs, dense, noisy = detector_outputs(noise=0.5)
    figures = quality(noisy, dense, outputs)
    assert figures["label"] == "detections" and 0.0 < figures["detections"] < 1.0
    scores = [split(array, outputs)["0"][:, 4:, :].reshape(len(array), -1) for array in (noisy, dense)]
    by_hand = np.mean([len(set(np.argsort(-a)[:TOP_DETECTIONS]) & set(np.argsort(-b)[:TOP_DETECTIONS]))
                       for a, b in zip(*scores)]) / TOP_DETECTIONS
    assert figures["detections"] == pytest.approx(by_hand)
    bounds = interval(noisy, dense, outputs, "detections")
    assert bounds["low"] < figures["detections"] < bounds["high"] and bounds["high"] - bounds["low"] < 0.2
    error = interval(noisy, dense, outputs, "output_error")
    assert error["low"] < figures["output_error"] < error["high"]
    assert quality(noisy, dense, (("0", (40, 10)), ("1", (8, 2, 2))))["label"] == "output_error"  # no detections


def test_token_model_runs_in_onnx_runtime_at_any_length():
    handle = load_model("minilm")
    inputs = handle.example_input(2)
    session = ort.InferenceSession(export_onnx(handle.module, inputs), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", "sequence"]
    for length in (16, 5):
        ids = inputs[:, :length]
        with torch.no_grad():
            expected = handle.module(ids).numpy()
        assert np.abs(session.run(None, {"input": ids.numpy()})[0] - expected).max() < 1e-4


def test_a_forward_that_cannot_be_traced_names_its_module():
    from core.prune.tracing import build_graph
    module = load_model(f"{Path(__file__).parent / 'fixtures' / 'user_models.py'}:untraceable",
                        input_shape="1,3,8,8").module
    with pytest.raises(PrunelabError, match=r"in module '1\.1' \(_Untraceable\): TypeError"):
        build_graph(module, torch.zeros(1, 3, 8, 8))


def test_a_detector_is_swept_and_allocated_on_its_detections_kept_and_its_own_metric(monkeypatch, tmp_path):
    from core.search.allocate import allocate
    from core.search.sensitivity import sensitivity

    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path))
    handle = load_model(f"{TWO_HEADS}:detector", input_shape="1,3,16,16",
                        metric=f"{Path(__file__).parent / 'fixtures' / 'metrics.py'}:detections")
    result = sensitivity(handle, levels=(0.0, 0.9), max_items=64)
    assert result["complete"] and result["label"] == "detections" == swept_label(handle.outputs)
    assert result["baseline_accuracy"] == 1.0 and result["baseline_loss"] == 0.0  # the dense model against itself
    worst = min((layer["curve"][-1] for layer in result["layers"]), key=lambda point: point["accuracy"])
    assert worst["accuracy"] < 1.0 and worst["loss"] > 0.0
    assert set(worst["metrics"]) == {"detections per image", "top score"}
    plan = allocate(handle, max_accuracy_drop=0.01, sensitivity=result, quality="top score")
    assert all(0.0 <= level <= 0.9 for _, level in plan.layers)
