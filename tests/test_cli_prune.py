"""prunelab prune and prunelab evaluate: the five files, the report, one-line errors with exit code 2."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import yaml

from core.cli import main
from core.cli.evaluate import load_plan
from core.deploy.measure import create_session, run_batched
from core.prune.plan import Plan

PLAN = Plan(granularity="unstructured", criterion="l1", scope="global", sparsity=0.6)


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "out"
    plan_path = PLAN.save(out.parent / "plan.yaml")
    code = main(["prune", "digits-mlp", "--plan", str(plan_path), "--out", str(out), "--json"])
    assert code == 0
    return out


def test_prune_writes_all_five_files(pruned_dir):
    assert sorted(path.name for path in pruned_dir.iterdir()) == sorted(
        ["model.onnx", "state_dict.pt", "model.pt2", "plan.yaml", "report.json"])


def test_the_files_agree_with_each_other(pruned_dir, mlp):
    state = torch.load(pruned_dir / "state_dict.pt", weights_only=True)
    assert list(state) == list(mlp.module.state_dict())
    program = torch.export.load(str(pruned_dir / "model.pt2")).module()
    x = mlp.data.x_test[:8]
    session, _ = create_session((pruned_dir / "model.onnx").read_bytes())
    with torch.no_grad():
        expected = program(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_batched(session, x), expected, atol=1e-4)
    model = onnx.load(str(pruned_dir / "model.onnx"))
    weight = next(tensor for tensor in model.graph.initializer if tensor.name == "fc1.weight")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(weight), state["fc1.weight"].numpy())


def test_resolved_plan_reads_back_and_lists_effective_sparsity(pruned_dir):
    values = yaml.safe_load((pruned_dir / "plan.yaml").read_text())
    assert values["ignore"] == ["fc3"]
    assert set(values["effective_sparsity"]) == {"fc1", "fc2", "fc3"} and values["effective_sparsity"]["fc3"] == 0
    assert load_plan(str(pruned_dir / "plan.yaml")) == PLAN.replace(ignore=("fc3",))


def test_report_json_holds_pruned_and_baseline(pruned_dir, capsys):
    report = json.loads((pruned_dir / "report.json").read_text())
    included, classifier = 64 * 300 + 300 * 100, 100 * 10  # fc1 + fc2 pruned globally, fc3 left dense
    assert report["pruned"]["sparsity"] == pytest.approx(0.6 * included / (included + classifier), abs=1e-4)
    assert report["baseline"]["sparsity"] == 0
    assert set(report["files"]) == {"model.onnx", "state_dict.pt", "model.pt2", "plan.yaml", "report.json"}


def test_bad_plan_is_one_line_and_exit_2(tmp_path, capsys):
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text("granularity: unstructured\nlayers: {conv9: 0.5}\n")
    code = main(["prune", "digits-mlp", "--plan", str(plan_path), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].startswith("prunelab: error:") and "conv9" in error[-1]
    assert "Traceback" not in "\n".join(error) and not (tmp_path / "out").exists()


def test_data_of_the_wrong_shape_is_one_line_and_exit_2(tmp_path, capsys):
    data = tmp_path / "data.npz"
    np.savez(data, x=np.zeros((4, 1, 5, 5), dtype=np.float32))
    code = main(["evaluate", "digits-mlp", "--data", str(data)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].startswith("prunelab: error:") and "shape" in error[-1]


def test_onnx_that_runtime_refuses_is_one_line_and_exit_2(tmp_path, capsys):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("NoSuchOperator", ["x"], ["y"], domain="prunelab.missing")], "broken",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                         onnx.helper.make_opsetid("prunelab.missing", 1)])
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    code = main(["evaluate", str(path)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and error[-1].startswith("prunelab: error:")


def test_evaluate_json_prints_the_report(capsys):
    code = main(["evaluate", "digits-mlp", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["pruned"]["label"] == "accuracy"
    latency = report["baseline"]["latency_ms"]
    assert latency["p50"] <= latency["p90"] <= latency["p99"]


def test_evaluate_prints_the_share_of_weights_a_channel_plan_removes(tmp_path, capsys):
    plan_path = Plan(granularity="channel", criterion="l1", scope="layer", sparsity=0.5).save(tmp_path / "plan.yaml")
    assert main(["evaluate", "digits-mlp", "--plan", str(plan_path)]) == 0
    rows = {line.split("  ")[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert rows["zero weights (prunable)"][-1] == "0.00%"  # channels are gone, not zeroed
    removed = float(rows["weights removed"][-1].rstrip("%"))
    assert 20 < removed < 90  # coupled inputs of the next layer go too


def test_timed_rows_show_the_paired_ratio_not_one_of_figures_timed_apart(capsys):
    """Under load the dense figures timed on their own can be far from the dense figures of the paired rounds:
    the table shows the latter and the paired speedup, which the speedup line below it repeats."""
    from core.cli.evaluate import print_report

    def figures(prefill_ms: float, decode_ms: float) -> dict:
        return {"prompt_tokens": 128, "new_tokens": 32, "batch": 1, "rounds": 8, "prefill_ms": prefill_ms,
                "prefill_tokens_per_s": 128_000 / prefill_ms, "decode_ms_per_token": decode_ms,
                "decode_tokens_per_s": 1000 / decode_ms}

    paired = {"p50": 1.05, "low": 1.01, "high": 1.1, "measurable": True, "pairs": 8}
    pruned_generation = dict(figures(20.0, 4.0), dense=figures(21.0, 4.2),
                             speedup={"prefill": paired, "decode": dict(paired, p50=1.04)})
    latency = {"p50": 3.0, "p90": 4.0, "p99": 5.0}
    report = {"model": "lm", "plan": None, "notes": [],
              "settings": {"quantize": None, "data": "text", "threads": 1, "batch_size": 1},
              "baseline": {"accuracy": None, "generation": figures(6.0, 1.3), "latency_ms": dict(latency, p50=1.0)},
              "pruned": {"accuracy": None, "generation": pruned_generation, "latency_ms": latency,
                         "speedup": dict(paired, p50=1.2, reference_p50=3.6)}}
    print_report(report)
    rows = {line[:22].strip(): line.split()[-3:] for line in capsys.readouterr().out.splitlines()}
    assert rows["prefill (tokens/s)"] == ["6,095", "6,400", "1.05x"]
    assert rows["prefill (ms)"] == ["21.000", "20.000", "0.95x"]
    assert rows["decode (tokens/s)"] == ["238", "250", "1.04x"]
    assert rows["decode (ms/token)"] == ["4.200", "4.000", "0.96x"]
    assert rows["latency p50 (ms)"] == ["3.600", "3.000", "0.83x"]
