"""The History page, driven by AppTest: runs table, save, open, load the plan into the sliders, compare."""
from __future__ import annotations

import pytest

from core.history.runs import list_runs, record_run
from tests.test_runs import make_report

PLAN = "prunelab.plan"
OPEN_RUN = "prunelab.history.open"


@pytest.fixture
def history(open_app):
    first = record_run(make_report(accuracy=0.9, p50=2.0, model="digits-cnn"), label="accurate")
    report = make_report(accuracy=0.8, p50=1.0, sparsity=0.3, model="digits-cnn")
    report["plan"]["layers"] = {"fc1": 0.6}
    second = record_run(report, label="fast")
    return open_app(page="history"), first, second


def test_history_lists_runs_and_compares_without_error(history):
    app, first, second = history
    assert not app.exception and not app.error
    assert app.title[0].value == "History"
    table = app.dataframe[0].value
    assert list(table.index) == [second.id, first.id]
    assert list(table["label"]) == ["fast", "accurate"]
    assert [box.value for box in app.selectbox if str(box.key).startswith("w.history.")] == [second.id, first.id]
    layers = app.dataframe[1].value
    assert "fc1" in list(layers["layer"])


def test_opening_a_run_and_loading_its_plan_into_the_sliders(history):
    app, first, second = history
    app.session_state[OPEN_RUN] = second.id
    app.run()
    assert app.subheader[0].value.startswith(f"Run {second.id}")
    app.button(key="history-load").click().run()
    assert not app.exception and not app.error
    assert app.session_state[PLAN].sparsity == 0.3
    assert app.session_state[PLAN].layer_targets == {"fc1": 0.6}
    app.switch_page("pages/tune.py").run()
    assert app.slider(key="w.layer.fc1").value == 60


def test_save_run_records_the_current_plan(history):
    app, first, second = history
    app.text_input(key="w.history.label").input("from the page").run()
    app.button(key="history-save").click().run()
    assert not app.exception and not app.error
    newest = list_runs()[0]
    assert newest.label == "from the page" and newest.model == "digits-cnn"
    assert newest.pruned["latency_ms"]["p50"] > 0
    assert set(newest.artifacts) == {"plan.yaml", "report.json"}
