"""Settings a person changes stay put: every page visited with its settings changed, then every page again.

Also the Recover page's gradual method without a target, per-layer targets kept across granularity
changes, the Layers page's channel preview with rounding, and 2:4 layers that stay dense.
"""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.api import Plan, apply_plan, channel_importance
from dashboard import formatting

PAGES = ["pages/model.py", "pages/layers.py", "pages/sensitivity.py", "pages/tune.py", "pages/recover.py",
         "pages/history.py", "pages/export.py"]
PLAN = "prunelab.plan"


@pytest.fixture
def mlp_app(open_app):
    return open_app("digits-mlp")


def visit(app: AppTest, page: str) -> AppTest:
    app.switch_page(page).run()
    assert not app.exception, page
    assert not app.error, [error.value for error in app.error]
    return app


# (page, widget kind, key, changed value)
CHANGES = [
    ("pages/tune.py", "selectbox", "w.scope", "global"),
    ("pages/tune.py", "selectbox", "w.criterion", "l2"),  # digits-mlp has no BatchNorm: that toggle is greyed out
    ("pages/tune.py", "slider", "w.layer.fc1", 60),
    ("pages/tune.py", "toggle", "w.quantize", True),
    ("pages/layers.py", "selectbox", "w.layers.layer", "fc2"),
    ("pages/sensitivity.py", "selectbox", "w.sensitivity.criterion", "random"),
    ("pages/sensitivity.py", "toggle", "w.sensitivity.quick", True),
    ("pages/sensitivity.py", "toggle", "w.sensitivity.every", True),
    ("pages/recover.py", "selectbox", "w.recover.method", "iterative"),
    ("pages/recover.py", "number_input", "w.recover.epochs", 7),
    ("pages/recover.py", "number_input", "w.recover.rounds", 4),
    ("pages/history.py", "text_input", "w.history.label", "my run"),
    ("pages/history.py", "text_area", "w.history.notes", "kept across pages"),
    ("pages/history.py", "toggle", "w.history.only", False),
]


def widget(app: AppTest, kind: str, key: str):
    return getattr(app, kind)(key=key)


@pytest.mark.slow
def test_every_setting_on_every_page_survives_visiting_every_other_page(mlp_app):
    app = mlp_app
    for page, kind, key, value in CHANGES:
        visit(app, page)
        widget(app, kind, key).set_value(value).run()
        assert not app.exception and not app.error, key
    for page in PAGES + PAGES[::-1]:
        visit(app, page)
    for page, kind, key, value in CHANGES:
        visit(app, page)
        assert widget(app, kind, key).value == value, f"{key} on {page} was reset"
    assert app.session_state[PLAN].scope == "global" and app.session_state[PLAN].layer_targets["fc1"] == 0.6


def test_changing_granularity_keeps_the_per_layer_targets_for_a_switch_back(app):
    app.slider(key="w.layer.features.1.0").set_value(70).run()
    app.selectbox(key="w.granularity").set_value("channel").run()
    assert not app.exception and not app.error
    assert app.session_state[PLAN].layer_targets == {}
    assert any("switch back to unstructured" in toast.value for toast in app.toast)
    app.selectbox(key="w.granularity").set_value("unstructured").run()
    assert app.slider(key="w.layer.features.1.0").value == 70
    assert app.session_state[PLAN].layer_targets == {"features.1.0": 0.7}


def test_gradual_pruning_without_a_target_explains_itself_and_uses_the_per_layer_plan(mlp_app):
    app = visit(mlp_app, "pages/recover.py")
    app.selectbox(key="w.recover.method").set_value("gradual").run()
    assert not app.exception and not app.error
    assert any("set a target above 0%" in info.value for info in app.info)
    assert next(button for button in app.button if button.label == "Run").disabled
    app.session_state[PLAN] = app.session_state[PLAN].replace(layers={"fc1": 0.5})
    app.run()
    assert not app.exception and not app.error
    assert app.slider(key="w.recover.initial").max == pytest.approx(0.5)  # the schedule ends at the layer's target
    assert not next(button for button in app.button if button.label == "Run").disabled
    assert "per-layer targets" in app.caption[1].value
    app.session_state[PLAN] = app.session_state[PLAN].replace(granularity="channel")
    app.run()
    assert any("cannot: use fine-tuning or iterative pruning" in info.value for info in app.info)
    assert next(button for button in app.button if button.label == "Run").disabled


def test_the_layers_page_prints_no_stray_values_and_previews_rounded_channels(app, cnn):
    app.selectbox(key="w.granularity").set_value("channel").run()
    app.selectbox(key="w.round_to").set_value(8).run()
    app.slider(key="w.global").set_value(30).run()
    visit(app, "pages/layers.py")
    assert not [element.value for element in app.markdown if str(element.value).strip() == "None"]
    assert not [element.value for element in app.text if str(element.value).strip() == "None"]
    pruned = apply_plan(cnn, Plan(granularity="channel", sparsity=0.3, round_to=8)).module
    kept = dict(pruned.named_modules())["features.0.0"].out_channels
    preview = channel_importance(cnn, "features.0.0", "l1", 0.3, round_to=8)
    assert len(preview["removed"]) - sum(preview["removed"]) == kept  # the preview removes what the engine removes
    assert sum(channel_importance(cnn, "features.0.0", "l1", 0.3)["removed"]) != sum(preview["removed"])


def test_2_of_4_sliders_show_the_fixed_pattern_and_the_layers_it_leaves_dense(app):
    app.selectbox(key="w.granularity").set_value("2:4").run()
    assert not app.exception and not app.error
    first = app.slider(key="w.layer.features.0.0")  # 1 input channel x 3x3: no groups of 4
    assert first.disabled and first.value == 0 and "groups of 4" in first.help
    second = app.slider(key="w.layer.features.1.0")
    assert second.disabled and second.value == 50
    measured = app.session_state["prunelab.report"]["layer_sparsity"]
    assert measured["features.0.0"] == 0 and measured["features.1.0"] == pytest.approx(0.5)


def test_channel_mode_shows_the_share_of_weights_removed(app):
    app.selectbox(key="w.granularity").set_value("channel").run()
    app.slider(key="w.global").set_value(50).run()
    cards = {metric.label: metric.value for metric in app.metric}
    report = app.session_state["prunelab.report"]
    assert report["pruned"]["sparsity"] < 0.01 < 0.3 < report["pruned"]["removed"]
    assert cards["Weights removed"] == f"{100 * report['pruned']['removed']:.1f}%"


def test_int8_notes_do_not_claim_the_file_stays_the_same(app):
    app.slider(key="w.global").set_value(50).run()
    app.toggle(key="w.quantize").set_value(True).run()
    captions = " ".join(caption.value for caption in app.caption)
    assert "neither speed it up nor shrink" not in captions
    assert "because of INT8" in captions
    report = app.session_state["prunelab.report"]
    assert report["pruned"]["onnx_bytes"] < 0.5 * report["baseline"]["onnx_bytes"]


@pytest.mark.slow
def test_export_describes_the_plan_it_hands_over_after_a_run_is_loaded_from_history(app):
    app.slider(key="w.global").set_value(50).run()
    visit(app, "pages/history.py")
    app.button(key="history-save").click().run()
    visit(app, "pages/tune.py")
    app.slider(key="w.global").set_value(0).run()
    app.slider(key="w.layer.features.3.0").set_value(40).run()
    visit(app, "pages/export.py")
    report = app.session_state["prunelab.report"]
    assert report["plan"]["layers"] == {"features.3.0": 0.4}
    assert f"{100 * report['pruned']['removed']:.1f}% of prunable weights removed" in app.markdown[0].value
    assert "-perlayer" in app.code[-1].value and f"-{round(100 * report['pruned']['removed'])}pct" in app.code[-1].value
    visit(app, "pages/history.py")
    app.button(key="history-load").click().run()
    visit(app, "pages/export.py")
    loaded = app.session_state["prunelab.report"]
    assert loaded["plan"]["sparsity"] == 0.5 and loaded["plan"]["layers"] == {}
    assert f"accuracy {100 * loaded['pruned']['accuracy']:.1f}%" in app.markdown[0].value
    assert "-perlayer" not in app.code[-1].value


def test_the_model_page_and_tune_show_the_same_dense_latency(app):
    app.toggle(key="w.quantize").set_value(True).run()
    tune_dense = app.session_state["prunelab.report"]["baseline"]["latency_ms"]["p50"]
    visit(app, "pages/model.py")
    shown = next(metric.value for metric in app.metric if metric.label == "p50 latency")
    assert shown == formatting.milliseconds(tune_dense)  # one dense measurement, whatever page shows it
