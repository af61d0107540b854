"""Recovery: masks held exactly, accuracy regained, determinism, rewinding, schedules in training."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from core.data import random_data
from core.errors import PrunelabError
from core.inspect import prunable_layers
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.train import phases, recovery
from core.train.schedule import PolynomialDecay

GLOBAL_95 = Plan(granularity="unstructured", criterion="l1", scope="global", sparsity=0.95)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models train faster on one thread than on two contended ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def weights(module) -> dict[str, torch.Tensor]:
    return {layer.name: layer.weight.detach().clone() for layer in prunable_layers(module)}


@pytest.fixture(scope="module")
def recovered_cnn(cnn):
    pruned = apply_plan(cnn, GLOBAL_95)
    return pruned, recovery.finetune(cnn, GLOBAL_95, epochs=3, pruned=pruned)


def test_pruned_weights_stay_exactly_zero_and_survivors_train(recovered_cnn):
    pruned, result = recovered_cnn
    after, before = weights(result.module), weights(pruned.module)
    assert set(result.masks) == {"features.0.0", "features.1.0", "features.3.0", "fc1"}
    for name, mask in result.masks.items():
        assert torch.all(after[name][~mask] == 0), name
        assert not torch.equal(after[name][mask], before[name][mask]), name
    assert result.summary()["pruned_layers_sparsity"] == pytest.approx(0.95, abs=1e-4)
    assert result.sparsity >= 0.94


def test_finetuning_beats_one_shot_at_95_percent(recovered_cnn):
    _, result = recovered_cnn
    assert result.accuracy["recovered"] > result.accuracy["one_shot"] + 0.1
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert all(0 <= row["val_accuracy"] <= 1 and row["loss"] > 0 for row in result.history)


def test_finetune_does_not_touch_the_pruned_result_or_the_handle(cnn, recovered_cnn):
    pruned, result = recovered_cnn
    assert result.module is not pruned.module
    assert torch.equal(weights(apply_plan(cnn, GLOBAL_95).module)["fc1"], weights(pruned.module)["fc1"])


def test_same_seed_same_weights_other_seed_other_weights(mlp):
    plan = Plan(sparsity=0.8)
    runs = [recovery.finetune(mlp, plan, epochs=1, seed=seed) for seed in (3, 3, 4)]
    states = [run.module.state_dict() for run in runs]
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
    assert not all(torch.equal(states[0][key], states[2][key]) for key in states[0])


def test_training_needs_training_data(mlp):
    unlabelled = dataclasses.replace(mlp, data=random_data(mlp.input_shape))
    with pytest.raises(PrunelabError, match="x_train/y_train"):
        recovery.finetune(unlabelled, Plan(sparsity=0.5), epochs=1)


def test_should_stop_ends_the_run_early_with_masks_held(mlp):
    steps = []
    result = recovery.finetune(mlp, Plan(sparsity=0.9), epochs=3, on_step=lambda step, loss: steps.append(step),
                               should_stop=lambda: len(steps) >= 2)
    assert result.stopped and steps == [1, 2] and result.history == []
    for layer in prunable_layers(result.module):
        if layer.name in result.masks:
            assert torch.all(layer.weight[~result.masks[layer.name]] == 0)


def test_channel_plan_fine_tunes_the_smaller_model(mlp):
    # without least-squares reconstruction, so the one-shot model has accuracy to win back
    plan = Plan(granularity="channel", criterion="l1", sparsity=0.5, reconstruct=False, round_to=1)
    pruned = apply_plan(mlp, plan)
    result = recovery.finetune(mlp, plan, epochs=2, pruned=pruned)
    shapes = {name: tensor.shape for name, tensor in weights(result.module).items()}
    assert shapes == {name: tensor.shape for name, tensor in weights(pruned.module).items()}
    assert shapes["fc1"][0] == 150 and result.masks is None
    assert result.sparsity > 0.5
    assert result.accuracy["recovered"] >= result.accuracy["one_shot"]


def test_gradual_pruning_follows_the_schedule_to_the_final_sparsity(mlp):
    per_epoch = recovery.steps_per_epoch(mlp)
    schedule = PolynomialDecay(0.0, 0.9, begin_step=0, end_step=3 * per_epoch, frequency=per_epoch // 2)
    result = recovery.gradual_prune(mlp, Plan(sparsity=0.9), epochs=4, schedule=schedule)
    sparsities = [row["sparsity"] for row in result.history]
    assert sparsities == sorted(sparsities) and 0 < sparsities[0] < 0.9 and sparsities[-1] == pytest.approx(0.9)
    assert result.summary()["pruned_layers_sparsity"] == pytest.approx(0.9, abs=1e-3)
    for layer in prunable_layers(result.module):
        if layer.name in result.masks:
            assert torch.all(layer.weight[~result.masks[layer.name]] == 0)


def test_iterative_rounds_reach_the_target(mlp):
    result = recovery.iterative_prune(mlp, Plan(scope="global", sparsity=0.9), rounds=3, epochs=1)
    reached = [row["sparsity"] for row in result.details["rounds"]]
    assert reached == sorted(reached) and len(reached) == 3
    assert result.summary()["pruned_layers_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert len(result.history) == 3 and result.history[-1]["phase"] == "round 3"


def test_lottery_ticket_rewinds_survivors_to_their_initial_values(mlp, monkeypatch):
    starts = []
    real_fit = phases.fit

    def recording_fit(module, *args, **kwargs):
        starts.append(weights(module))
        return real_fit(module, *args, **kwargs)

    monkeypatch.setattr(phases, "fit", recording_fit)
    result = recovery.lottery_ticket(mlp, Plan(scope="global", sparsity=0.8), rounds=1, epochs=2, seed=5)
    initial = dataclasses.replace(mlp).module.__class__()
    recovery.reinitialize(initial, 5)
    initial = weights(initial)
    assert len(starts) == 3  # dense training, the ticket's retraining, the random re-init control
    assert all(torch.equal(starts[0][name], initial[name]) for name in initial)
    for name, mask in result.masks.items():
        assert torch.equal(starts[1][name], initial[name] * mask), name
        assert torch.equal(starts[2][name] == 0, ~mask | (starts[2][name] == 0)), name
        assert not torch.equal(starts[2][name], starts[1][name]), name
    assert set(result.accuracy) == {"dense", "one_shot", "recovered", "random_reinit"}


def test_prune_cli_finetune_reports_one_shot_and_recovered_and_writes_zeros(capsys, tmp_path):
    import json

    from core.cli import main

    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text("granularity: unstructured\ncriterion: l1\nscope: global\nsparsity: 0.9\n")
    code = main(["prune", "digits-mlp", "--plan", str(plan_file), "--out", str(tmp_path / "out"),
                 "--finetune", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and "fine-tuning [" in captured.err and "2/2" in captured.err
    report = json.loads(captured.out)
    assert report["recovery"]["accuracy"]["recovered"] > report["recovery"]["accuracy"]["one_shot"]
    assert report["pruned"]["accuracy"] == pytest.approx(report["recovery"]["accuracy"]["recovered"], abs=1e-6)
    assert report["one_shot"]["accuracy"] == pytest.approx(report["recovery"]["accuracy"]["one_shot"], abs=1e-6)
    sizes = [note for note in report["notes"] if "compressed size" in note]  # the saved model's, not the one-shot's
    assert len(sizes) == 1 and f"-> {report['pruned']['compressed_bytes']:,} bytes" in sizes[0]
    assert report["pruned"]["compressed_bytes"] != report["one_shot"]["compressed_bytes"]
    state = torch.load(tmp_path / "out" / "state_dict.pt")
    masked = [state[f"{name}.weight"] for name in ("fc1", "fc2")]
    zeros = sum(int((weight == 0).sum()) for weight in masked) / sum(weight.numel() for weight in masked)
    assert zeros == pytest.approx(0.9, abs=1e-3)


def test_recover_cli_needs_training_data(capsys, tmp_path):
    import numpy as np

    from core.cli import main

    data = tmp_path / "test-only.npz"
    np.savez(data, x=np.zeros((8, 1, 8, 8), np.float32), y=np.zeros(8, np.int64))
    code = main(["recover", "digits-mlp", "--data", str(data), "--epochs", "1"])
    assert code == 2 and "x_train/y_train" in capsys.readouterr().err


def test_recover_page_trains_and_hands_the_recovered_model_to_the_metric_panel(open_page):
    page = open_page("recover", model="digits-mlp")
    page.session_state["prunelab.plan"] = Plan(granularity="unstructured", criterion="l1", scope="global", sparsity=0.9)
    page.run()
    page.number_input(key="w.recover.epochs").set_value(2)
    page.run()
    page.button[0].click().run()
    job = page.session_state["prunelab.job.recovery run"]
    job.thread.join(timeout=50)
    page.run()
    assert not page.error and [row["epoch"] for row in job.rows] == [1, 2]
    assert job.done == job.total > 2  # the progress bar follows optimizer steps, and they were counted right
    summary = page.session_state["prunelab.recovered"]["summary"]
    labels = {metric.label: metric.value for metric in page.metric}
    assert labels["recovered accuracy"] == f"{summary['accuracy']['recovered']:.2%}"
    assert page.number_input(key="w.recover.epochs").value == 2  # the form keeps its settings after a run

    # the Export page measures and hands out the fine-tuned model, not the one-shot one
    export_page = open_page("export", model="digits-mlp")
    for key in ("prunelab.plan", "prunelab.recovered"):
        export_page.session_state[key] = page.session_state[key]
    export_page.run()
    assert not export_page.exception and not export_page.error
    assert any("fine-tuned weights" in info.value for info in export_page.info)
    report = export_page.session_state["prunelab.report"]
    assert report["pruned"]["accuracy"] == pytest.approx(summary["accuracy"]["recovered"], abs=0.01)
    assert "recovered" in export_page.code[-1].value or "--finetune" in export_page.code[-1].value

    def export_state_dict():
        import io

        import streamlit as st
        import torch

        from dashboard import handover, state

        weights = torch.load(io.BytesIO(handover.download("state_dict")()), weights_only=True)
        module = st.session_state["prunelab.recovered"]["handle"].module
        st.session_state["same"] = all(weights[name].equal(value) for name, value in module.state_dict().items())
        import onnx

        state.set_quantize(True)  # INT8 on: the ONNX download is the recovered model, quantized
        operations = {node.op_type for node in onnx.load_from_string(handover.download("onnx")()).graph.node}
        st.session_state["int8"] = bool(operations & {"QuantizeLinear", "MatMulInteger", "DynamicQuantizeLinear"})
        st.session_state["command"] = handover.reproduce_command()
        state.set_quantize(False)
        st.session_state.pop(state.RECOVERED)  # without the recovered model: the one-shot pruned weights
        one_shot = torch.load(io.BytesIO(handover.download("state_dict")()), weights_only=True)
        st.session_state["differs"] = not one_shot["fc1.weight"].equal(weights["fc1.weight"])

    from streamlit.testing.v1 import AppTest

    export = AppTest.from_function(export_state_dict, default_timeout=60)
    for key in ("prunelab.plan", "prunelab.recovered"):
        export.session_state[key] = page.session_state[key]
    export.run()
    assert not export.exception
    assert export.session_state["same"] and export.session_state["differs"]
    assert export.session_state["int8"]
    assert "--quantize int8 --finetune 2" in export.session_state["command"]
    assert export.session_state["same"] and export.session_state["differs"]
    assert export.session_state["int8"]
    assert "--quantize int8 --finetune 2" in export.session_state["command"]


def test_one_name_per_method_runs_through_the_table(mlp, monkeypatch):
    from core.train import methods

    calls = []
    monkeypatch.setattr(phases, "fit", lambda module, data, epochs, *args, **kwargs: calls.append(epochs))
    result = methods.recover(mlp, Plan(scope="global", sparsity=0.5), "lottery", epochs=1, rounds=1)
    assert result.method == "lottery" and result.summary()["method"] == "lottery"
    assert sum(calls) == methods.total_epochs("lottery", 1, 1) == 3  # dense, one round, the control
    assert list(methods.METHODS) == ["finetune", "next_token", "gradual", "iterative", "lottery"]
    with pytest.raises(PrunelabError, match="unknown recovery method 'ticket'"):
        methods.recover(mlp, Plan(), "ticket", epochs=1)
