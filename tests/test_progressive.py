"""Progressive measurement: first figures on a slice, refined stages, a final stage equal to ``evaluate``."""
from __future__ import annotations

import numpy as np
import pytest

from core.deploy import evaluate as evaluation
from core.deploy import progressive
from core.deploy.evaluate import LiveEvaluator, evaluate
from core.deploy.progressive import Cancelled
from core.prune.plan import Plan


def _same_figures(left: dict, right: dict) -> None:
    """Every figure but the timed ones (run-to-run noise) is the same."""
    timed = {"latency_ms", "throughput", "runs", "speedup", "session_ms", "progress"}
    assert {key: value for key, value in left.items() if key not in timed} == \
        {key: value for key, value in right.items() if key not in timed}


def test_stages_start_on_a_slice_and_end_with_evaluates_figures(mlp, monkeypatch):
    monkeypatch.setattr(progressive, "REFRESH_SECONDS", 0.0)  # a stage after every scored batch
    monkeypatch.setattr(progressive, "ACCURACY_BATCH", 64)  # small batches: several stages
    monkeypatch.setattr(progressive, "FIRST_ITEMS_MACS", 1)
    evaluation._REPORTS.clear()
    plan = Plan(granularity="channel", sparsity=0.5)
    stages = list(LiveEvaluator(mlp, live=False).stages(plan))
    first, final = stages[0]["pruned"], stages[-1]["pruned"]
    assert len(stages) >= 3 and [stage["pruned"]["progress"]["final"] for stage in stages].count(True) == 1
    assert 0 < first["progress"]["items"] < first["progress"]["of"] == final["progress"]["items"]
    assert first["progress"]["runs"] < final["progress"]["runs"]
    items = [stage["pruned"]["progress"]["items"] for stage in stages]
    assert items == sorted(items)
    interval = first["quality_interval"]
    assert interval["items"] == first["progress"]["items"]
    assert interval["low"] <= first["accuracy"] <= interval["high"]
    assert final["quality_interval"]["high"] - final["quality_interval"]["low"] < interval["high"] - interval["low"]
    assert first["speedup"]["pairs"] == first["runs"] >= progressive.MIN_FIRST_RUNS
    evaluation._REPORTS.clear()  # the same dense baseline; the plan measured again in one go
    _same_figures(final, evaluate(mlp, plan)["pruned"])


def test_a_cancelled_measurement_stops_and_caches_nothing(mlp):
    evaluator = LiveEvaluator(mlp, live=False)
    plan = Plan(granularity="channel", sparsity=0.35)
    stages = evaluator.stages(plan, cancelled=lambda: True)
    assert not next(stages)["pruned"]["progress"]["final"]
    with pytest.raises(Cancelled):
        next(stages)
    report = evaluator.measure(plan)  # measured afresh, to the end
    assert report["pruned"]["progress"]["final"] and next(evaluator.stages(plan)) is report  # now cached


def test_a_stopped_plan_goes_on_where_it_stopped_when_it_comes_back(mlp, monkeypatch):
    monkeypatch.setattr(progressive, "REFRESH_SECONDS", 0.0)
    monkeypatch.setattr(progressive, "ACCURACY_BATCH", 64)
    monkeypatch.setattr(progressive, "FIRST_ITEMS_MACS", 1)
    evaluator, plan = LiveEvaluator(mlp, live=False), Plan(granularity="channel", sparsity=0.45)
    stages = evaluator.stages(plan)
    next(stages)
    stopped = next(stages)["pruned"]["progress"]["items"]
    stages.close()  # a newer slider release: the job stops taking stages
    pruned = []
    monkeypatch.setattr(evaluation, "apply_plan", lambda *args, **kwargs: pruned.append(args))
    again = list(evaluator.stages(plan))
    assert not pruned  # the pruned model and its session were kept
    assert again[0]["pruned"]["progress"]["items"] == stopped and again[-1]["pruned"]["progress"]["final"]
    evaluation._REPORTS.clear()
    monkeypatch.undo()
    _same_figures(again[-1]["pruned"], evaluate(mlp, plan)["pruned"])


@pytest.mark.parametrize("kind", ["embedding", "logits"])
def test_quality_interval_covers_the_figure(kind):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 10))
    outputs = reference + rng.normal(scale=0.8, size=reference.shape)
    interval = progressive.quality_interval(outputs, None, reference, kind)
    if kind == "embedding":
        cosine = (outputs * reference).sum(1) / np.linalg.norm(outputs, axis=1) / np.linalg.norm(reference, axis=1)
        value = cosine.mean()
    else:
        value = (outputs.argmax(1) == reference.argmax(1)).mean()
    assert interval["low"] < value < interval["high"] and interval["high"] - interval["low"] < 0.3
    assert progressive.quality_interval(reference, None, None, kind) is None  # the dense model against itself


def test_weights_written_into_the_exported_bytes_equal_a_rebuilt_graph(cnn):
    import onnx
    import torch

    from core.deploy.export import changed_tensors, export_onnx, float_spans, patched_weights, with_weights
    from core.prune.engine import apply_plan

    model_bytes = export_onnx(cnn.module, cnn.example_input())
    template = onnx.load_from_string(model_bytes)
    pruned = apply_plan(cnn, Plan(sparsity=0.5), data=cnn.data).module
    changed = changed_tensors(cnn.module.state_dict(), pruned.state_dict())
    assert changed and patched_weights(model_bytes, float_spans(template, model_bytes), changed) == \
        with_weights(template, changed)
    wrong = {next(iter(changed)): torch.zeros(3)}  # a tensor of another shape: the caller exports again
    assert patched_weights(model_bytes, float_spans(template, model_bytes), wrong) is None


def test_a_cheap_plan_with_the_dense_kernels_comes_in_one_stage(mlp, monkeypatch):
    monkeypatch.setattr(progressive, "REFRESH_SECONDS", 0.0)
    monkeypatch.setattr(progressive, "ACCURACY_BATCH", 64)
    monkeypatch.setattr(progressive, "FIRST_ITEMS_MACS", 1)
    evaluation._REPORTS.clear()
    evaluator, plan = LiveEvaluator(mlp, live=False), Plan(granularity="unstructured", sparsity=0.4)
    stages = list(evaluator.stages(plan))
    assert len(stages) == 1 and stages[0]["pruned"]["progress"]["final"]
    assert stages[0]["pruned"]["speedup"]["same_kernels"]
    monkeypatch.setattr(progressive, "SINGLE_STAGE_MACS", 0)  # the same plan counted as dear: in stages
    evaluation._REPORTS.clear()
    again = list(evaluator.stages(plan))
    assert len(again) >= 3 and not again[0]["pruned"]["progress"]["final"]
    _same_figures(stages[0]["pruned"], again[-1]["pruned"])
