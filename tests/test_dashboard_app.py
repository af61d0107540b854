"""Page logic of the dashboard, driven by streamlit.testing.v1.AppTest (no browser, no server)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from streamlit.testing.v1 import AppTest

from core.api import layer_table

PLAN = "prunelab.plan"
REPORT = "prunelab.report"


def layer_sliders(app: AppTest) -> list:
    return [slider for slider in app.slider if str(slider.key).startswith("w.layer.")]


def test_opens_on_tune_with_the_demo_and_no_error(app, cnn):
    assert not app.exception
    assert not app.error
    assert app.title[0].value == "Tune"
    names = [row["name"] for row in layer_table(cnn)["layers"]]
    assert [slider.label for slider in layer_sliders(app)] == names
    labels = [metric.label for metric in app.metric]
    for label in ("Accuracy", "p50 latency", "Speedup", "MACs", "Parameters", "File size (.onnx)", "Compressed (gzip)"):
        assert label in labels


def test_moving_a_layer_slider_changes_the_plan_and_the_measured_metrics(app):
    before = app.session_state[REPORT]
    app.slider(key="w.layer.features.1.0").set_value(50).run()
    assert not app.exception and not app.error
    assert app.session_state[PLAN].layer_targets == {"features.1.0": 0.5}
    after = app.session_state[REPORT]
    assert after["pruned"]["nonzero_params"] == before["pruned"]["nonzero_params"] - 32 * 64 * 9 // 2
    parameters = next(metric for metric in app.metric if metric.label == "Parameters")
    assert parameters.delta.startswith("-")


def test_the_global_slider_moves_every_layer_but_the_classifier(app):
    app.slider(key="w.global").set_value(40).run()
    values = {slider.key: slider.value for slider in layer_sliders(app)}
    assert values.pop("w.layer.fc2") == 0
    assert set(values.values()) == {40}
    assert app.slider(key="w.layer.fc2").disabled
    assert app.session_state[PLAN].sparsity == pytest.approx(0.4)
    assert app.session_state[REPORT]["pruned"]["sparsity"] > 0.3
    notes = [caption.value for caption in app.caption if "zeros stay in the dense ONNX graph" in caption.value]
    assert len(notes) == 1


def test_the_int8_toggle_measures_a_quantized_model(app):
    app.toggle(key="w.quantize").set_value(True).run()
    assert not app.exception and not app.error
    assert app.session_state["prunelab.quantize"] == "int8"
    report = app.session_state[REPORT]
    assert report["pruned"]["onnx_bytes"] < 0.5 * report["baseline"]["onnx_bytes"]


def test_channel_granularity_shows_one_slider_per_group_and_removes_work(app):
    app.selectbox(key="w.granularity").set_value("channel").run()
    assert not app.exception and not app.error
    assert [slider.key for slider in layer_sliders(app)] == [
        "w.layer.features.0.0", "w.layer.features.1.0", "w.layer.features.3.0", "w.layer.fc1"]
    app.slider(key="w.global").set_value(50).run()
    report = app.session_state[REPORT]
    assert report["pruned"]["macs"] < 0.5 * report["baseline"]["macs"]
    assert not any("zeros stay in the dense ONNX graph" in caption.value for caption in app.caption)


def test_channel_rounding_reaches_the_plan_and_keeps_multiples(app):
    app.selectbox(key="w.granularity").set_value("channel").run()
    app.selectbox(key="w.round_to").set_value(8).run()
    app.slider(key="w.global").set_value(30).run()
    assert not app.exception and not app.error
    report = app.session_state[REPORT]
    assert report["plan"]["round_to"] == 8
    assert report["pruned"]["macs"] < report["baseline"]["macs"]


def test_batchnorm_toggle_reaches_the_plan_and_changes_accuracy(app):
    assert not app.toggle(key="w.recalibrate").proto.disabled
    app.slider(key="w.global").set_value(90).run()
    with_statistics = app.session_state[REPORT]
    app.toggle(key="w.recalibrate").set_value(False).run()
    without = app.session_state[REPORT]
    assert not app.exception and not app.error
    assert with_statistics["plan"]["recalibrate"] is True and without["plan"]["recalibrate"] is False
    assert with_statistics["pruned"]["accuracy"] != without["pruned"]["accuracy"]


@pytest.mark.slow
def test_fisher_and_the_reconstruct_toggle_reach_the_channel_plan(app):
    app.selectbox(key="w.granularity").set_value("channel").run()
    assert "fisher" in app.selectbox(key="w.criterion").options
    app.selectbox(key="w.criterion").set_value("fisher").run()
    app.slider(key="w.global").set_value(50).run()
    with_refit = app.session_state[REPORT]
    app.toggle(key="w.reconstruct").set_value(False).run()
    without = app.session_state[REPORT]
    assert not app.exception and not app.error
    assert with_refit["plan"]["criterion"] == "fisher"
    assert with_refit["plan"]["reconstruct"] is True and without["plan"]["reconstruct"] is False
    assert with_refit["pruned"]["accuracy"] != without["pruned"]["accuracy"]


def test_a_criterion_that_does_not_fit_the_granularity_is_replaced(app):
    app.selectbox(key="w.granularity").set_value("channel").run()
    app.selectbox(key="w.criterion").set_value("fpgm").run()
    app.selectbox(key="w.granularity").set_value("unstructured").run()
    assert app.session_state[PLAN].criterion == "l1"
    assert "fpgm" not in app.selectbox(key="w.criterion").options
    assert not app.exception and not app.error


def test_a_criterion_that_reads_data_says_what_it_needs(app):
    app.selectbox(key="w.scope").set_value("global").run()
    app.selectbox(key="w.criterion").set_value("sparsegpt").run()
    assert app.session_state[PLAN].criterion == "sparsegpt"
    assert app.session_state[PLAN].scope == "layer" and app.selectbox(key="w.scope").disabled  # no global ranking
    assert any("calibration items" in caption.value for caption in app.caption)
    assert "sparsegpt" not in app.selectbox(key="w.granularity").set_value("channel").run().selectbox(
        key="w.criterion").options
    assert not app.exception and not app.error


def test_slider_values_survive_a_page_switch(app):
    app.slider(key="w.layer.fc1").set_value(70).run()
    app.switch_page("pages/layers.py").run()
    assert not app.exception and not app.error
    app.switch_page("pages/tune.py").run()
    assert app.slider(key="w.layer.fc1").value == 70


@pytest.mark.parametrize("page", ["pages/model.py", "pages/layers.py", "pages/export.py"])
def test_every_page_loads_and_explains_itself(app, page):
    app.switch_page(page).run()
    assert not app.exception
    assert not app.error
    assert app.caption[0].value  # the one line that says what the page is for


def test_layers_page_in_channel_mode_shows_channels(app):
    app.selectbox(key="w.granularity").set_value("channel").run()
    app.slider(key="w.global").set_value(50).run()
    app.switch_page("pages/layers.py").run()
    assert not app.exception and not app.error
    assert app.session_state[PLAN].granularity == "channel"
    assert app.dataframe[-1].value["leader"].tolist()  # the coupled groups table


def test_export_page_shows_the_plan_that_reproduces_the_sliders(app):
    app.slider(key="w.layer.features.3.0").set_value(30).run()
    app.switch_page("pages/export.py").run()
    plan = yaml.safe_load(app.code[0].value)
    assert plan["layers"] == {"features.3.0": 0.3}
    assert app.code[1].value.startswith("prunelab prune digits-cnn --plan ")


def test_a_pickled_module_without_trust_is_refused_with_a_message(app):
    app.switch_page("pages/model.py").run()
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(64, 10), buffer)
    app.file_uploader[0].upload("model.pt", buffer.getvalue()).run()
    next(button for button in app.button if button.label == "Load file").click().run()
    assert not app.exception
    assert any("runs code from the file" in error.value for error in app.error)
    assert app.session_state["prunelab.model"]["spec"] == "digits-cnn"  # the old model stays


def test_a_wrong_upload_is_refused_and_names_never_escape_the_upload_dir():
    from core.errors import PrunelabError
    from dashboard import session, uploads

    with pytest.raises(PrunelabError, match="is not one of"):
        session.save_upload("model.exe", b"x", session.UPLOAD_SUFFIXES)
    with pytest.raises(PrunelabError, match="empty"):
        session.save_upload("model.onnx", b"", session.UPLOAD_SUFFIXES)
    for name in ("../../../etc/passwd.onnx", "..\\..\\evil.onnx", "/abs/.hidden.onnx"):
        path = Path(session.save_upload(name, b"not onnx", session.UPLOAD_SUFFIXES))
        assert path.parent.parent == uploads.folder() and path.suffix == ".onnx"
        assert not path.name.startswith(".")
    assert session.shown(f"cannot read {path}") == f"cannot read {path.name}"


def test_two_uploads_of_the_same_bytes_never_share_a_file():
    from dashboard import uploads

    first = Path(uploads.save_upload("model.onnx", b"same bytes", {".onnx"}))
    second = Path(uploads.save_upload("model.onnx", b"same bytes", {".onnx"}))
    assert first != second and first.parent != second.parent
    uploads.discard(first)  # one visitor's refused file
    assert not first.exists() and second.read_bytes() == b"same bytes"


def test_two_visitors_keep_their_own_plans(open_app):
    first, second = open_app(), open_app()
    first.slider(key="w.layer.fc1").set_value(80).run()
    second.run()
    assert second.slider(key="w.layer.fc1").value == 0
    assert second.session_state[PLAN].layer_targets == {}


def test_an_uploaded_onnx_model_is_tuned_without_channel_granularity(app, cnn):
    from core.deploy.export import export_onnx

    app.switch_page("pages/model.py").run()
    app.file_uploader[0].upload("my model.onnx", export_onnx(cnn.module, cnn.example_input())).run()
    next(button for button in app.button if button.label == "Load file").click().run()
    assert not app.exception and not app.error
    assert app.subheader[0].value == "my_model"
    app.switch_page("pages/tune.py").run()
    assert "channel" not in app.selectbox(key="w.granularity").options
    assert app.toggle(key="w.recalibrate").proto.disabled  # the graph's weights are pruned as they are
    app.slider(key="w.global").set_value(50).run()
    assert not app.exception and not app.error
    assert app.session_state[REPORT]["pruned"]["sparsity"] > 0.4


def test_a_link_without_a_model_applies_its_plan_to_the_current_one(open_app):
    app = open_app(run=False)
    app.query_params.update({"granularity": "unstructured", "sparsity": "30", "layers": "fc1:10"})
    app.run()
    assert not app.exception and not app.error and not app.warning
    plan = app.session_state[PLAN]
    assert plan.granularity == "unstructured" and plan.sparsity == pytest.approx(0.3)
    assert plan.layer_targets["fc1"] == pytest.approx(0.1)
    assert app.slider(key="w.layer.fc1").value == 10


@pytest.mark.slow
def test_a_language_model_shows_perplexity_tokens_per_second_and_both_continuations(open_app):
    app = open_app("tinylm", timeout=600)
    assert not app.exception and not app.error
    labels = [metric.label for metric in app.metric]
    assert {"Perplexity", "Decode", "Prefill", "Next-token agreement"} <= set(labels)
    perplexity = next(metric for metric in app.metric if metric.label == "Perplexity")
    assert float(perplexity.value) == pytest.approx(96.6, abs=0.1)
    app.slider(key="w.global").set_value(50).run()
    app.button(key="tune-continue").click().run()
    assert not app.exception and not app.error
    shown = app.session_state["tune.continuation"]
    assert shown["prompt"] == "The with statement is used to" and shown["dense"] != shown["pruned"]
    texts = [element.value for element in app.text]
    assert shown["prompt"] + shown["dense"] in texts and shown["prompt"] + shown["pruned"] in texts
    app.switch_page("pages/recover.py").run()
    method = app.selectbox(key="w.recover.method")  # a language model recovers on its own text, not labels
    assert method.value == "next_token" and len(method.options) == 1 and not app.exception and not app.error


def test_a_mac_goal_on_a_model_with_blocks_offers_depth(open_app):
    app = open_app("digits-resnet", page="tune", timeout=600)
    assert not [box for box in app.selectbox if box.label == "Spend on"]  # unstructured: no MAC goal
    app.selectbox(key="w.granularity").set_value("channel").run()
    next(box for box in app.selectbox if box.label == "Goal").set_value("macs").run()
    spend = next(box for box in app.selectbox if box.label == "Spend on")
    assert len(spend.options) == 4 and "whole blocks (depth)" in spend.options
    assert any("remove the lowest influence first" in caption.value for caption in app.caption)
    assert any(toggle.label.startswith("layer3 · influence") for toggle in app.toggle)
    app.selectbox(key="w.criterion").set_value("fisher").run()  # blocks then go by their Fisher scores
    assert any("lowest block Fisher score first" in caption.value for caption in app.caption)
    assert any(toggle.label.startswith("layer3 · fisher 0.02") for toggle in app.toggle)  # 0.0203
    assert not app.exception



def test_the_model_page_states_a_language_models_context_and_stride(open_app):
    import re

    app = open_app("tests/fixtures/causal_lms.py:llama", page="model")
    assert not app.exception and not app.error
    captions = " ".join(caption.value for caption in app.caption)
    assert re.search(r"\d+ test windows, context (\d+) tokens, stride \1\b", captions), captions


def test_the_spending_options_show_their_figures_first_and_formatted(open_app):
    """The options table sits in a narrow column: the figures come before what each way removes."""
    app = open_app(run=False)
    rows = [{"way": way, "removes": "drops layer1", "macs": 1000.0, "reduction": 2.0, "agreement": 0.5, "loss": 1.0,
             "chosen": way == "depth", "note": ""} for way in ("width", "depth", "both")]
    app.session_state["tune.spending"] = {"way": "depth", "rows": rows, "resource": "macs"}
    app.run()
    (table,) = [frame for frame in app.dataframe if "removes" in frame.value.columns]
    assert list(table.proto.column_order) == ["way", "macs", "reduction", "agreement", "loss", "removes", "note"]
    formats = {name: column.get("type_config", {}).get("format") for name, column in
               json.loads(table.proto.columns).items()}
    assert formats["agreement"] == "percent" and formats["reduction"] == "%.2f×" and formats["macs"] == "localized"
