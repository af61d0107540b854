"""--metric file.py:function: the user's own named numbers beside accuracy, dense and pruned; a metric
that cannot load, raises or returns something else is one line and exit 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from core.deploy.evaluate import evaluate
from core.errors import PrunelabError
from core.metric import load_metric
from core.prune.plan import Plan
from core.sources import load_model

METRICS = Path(__file__).parent / "fixtures" / "metrics.py"
TWO_HEADS = Path(__file__).parent / "fixtures" / "two_heads.py"


def test_macro_f1_rides_along_with_accuracy(cnn):
    report = evaluate(cnn, Plan(granularity="channel", sparsity=0.5), metric=load_metric(f"{METRICS}:macro_f1"))
    for side in ("baseline", "pruned"):
        figures = report[side]
        assert 0 < figures["metrics"]["macro F1"] <= 1
        assert abs(figures["metrics"]["macro F1"] - figures["accuracy"]) < 0.1  # balanced digits: F1 near accuracy
    assert report["pruned"]["metrics"]["macro F1"] != report["baseline"]["metrics"]["macro F1"]


def test_a_many_output_model_hands_its_outputs_by_name():
    handle = load_model(f"{TWO_HEADS}:factory", input_shape="1,3,16,16")
    report = evaluate(handle, None, metric=load_metric(f"{METRICS}:box_energy"))
    assert report["baseline"]["metrics"]["box energy"] > 0


@pytest.mark.parametrize("spec, words", [
    ("broken", "raised IndexError"), ("not_numbers", "'value': str, not a number"),
    ("missing", "no callable named 'missing'"), (None, "file not found")])
def test_bad_metrics_are_one_line(cnn, spec, words):
    with pytest.raises(PrunelabError, match=words) as caught:
        metric = load_metric(f"{METRICS}:{spec}" if spec else "nowhere/metric.py:f1")
        evaluate(cnn, None, metric=metric, data=None)
    assert "\n" not in str(caught.value)


def test_cli_prints_the_metric_and_refuses_a_bad_one(cli):
    done = cli("evaluate", "digits-mlp", "--metric", f"{METRICS}:macro_f1")
    assert done["code"] == 0 and "macro F1" in done["stdout"]
    done = cli("evaluate", "digits-mlp", "--metric", "no-colon")
    assert done["code"] == 2 and done["stderr"].strip().splitlines()[-1].startswith("prunelab: error: --metric")


def test_the_metric_travels_with_the_model_to_sensitivity_allocation_and_evaluation(monkeypatch, tmp_path):
    """One path: the handle carries the metric; every measurement of the model reports its numbers."""
    import pickle

    from core.search.allocate import allocate
    from core.search.sensitivity import sensitivity
    from core.sources.load import load_model

    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path))
    handle = load_model("digits-mlp", metric=f"{METRICS}:macro_f1")
    assert pickle.loads(pickle.dumps(handle.metric)).spec == handle.metric.spec  # workers import it again
    result = sensitivity(handle, levels=(0.0, 0.5, 0.9), max_items=120)
    assert 0 < result["baseline_metrics"]["macro F1"] <= 1
    curve = result["layers"][0]["curve"]
    assert curve[0]["metrics"]["macro F1"] == result["baseline_metrics"]["macro F1"]
    assert curve[-1]["metrics"]["macro F1"] != curve[0]["metrics"]["macro F1"]
    plan = allocate(handle, max_accuracy_drop=0.02, sensitivity=result, quality="macro F1")
    loose = allocate(handle, max_accuracy_drop=0.3, sensitivity=result, quality="macro F1")
    assert sum(level for _, level in plan.layers) < sum(level for _, level in loose.layers)
    with pytest.raises(PrunelabError, match="no figure 'mAP': its metric gives macro F1"):
        allocate(handle, max_accuracy_drop=0.02, sensitivity=result, quality="mAP")
    report = evaluate(handle, plan)  # no metric argument: the model's own
    assert set(report["pruned"]["metrics"]) == {"macro F1"}
