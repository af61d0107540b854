"""Measurement: latency percentiles, accuracy or agreement, sizes, the 80% global L1 figures, caching."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from core.api import layer_table
from core.data import random_data
from core.deploy.evaluate import LiveEvaluator, evaluate
from core.deploy.export import export_onnx
from core.deploy.measure import create_session, latency, quality, sizes
from core.errors import PrunelabError
from core.prune.plan import Plan
from core.sources import load_model

METRICS = {"accuracy", "loss", "agreement", "latency_ms", "throughput", "session_ms", "params", "nonzero_params",
           "sparsity", "macs", "onnx_bytes", "compressed_bytes", "max_abs_diff", "label"}
GLOBAL_80 = Plan(granularity="unstructured", criterion="l1", scope="global", sparsity=0.8)


@pytest.fixture(scope="module")
def dense_report(cnn):
    return evaluate(cnn)


@pytest.fixture(scope="module")
def global_80(cnn):
    return evaluate(cnn, GLOBAL_80)


def test_latency_percentiles_are_ordered_over_enough_runs(cnn):
    session, _ = create_session(export_onnx(cnn.module, cnn.example_input(1)))
    timing = latency(session, cnn.data.x_test[:1])
    ms = timing["latency_ms"]
    assert timing["runs"] >= 30
    assert 0 < ms["p50"] <= ms["p90"] <= ms["p99"]
    assert timing["throughput"] > 0


def test_dense_report_has_every_metric(dense_report):
    for side in ("pruned", "baseline"):
        metrics = dense_report[side]
        assert METRICS <= set(metrics)
        assert metrics["label"] == "accuracy" and metrics["accuracy"] > 0.95 and metrics["agreement"] == 1.0
        assert metrics["latency_ms"]["p50"] <= metrics["latency_ms"]["p90"] <= metrics["latency_ms"]["p99"]
        assert metrics["max_abs_diff"] < 1e-4 and metrics["sparsity"] == 0.0
        assert metrics["compressed_bytes"] < metrics["onnx_bytes"]


def test_global_l1_80_keeps_a_fifth_of_the_weights_and_shrinks_the_compressed_file(global_80):
    pruned, baseline = global_80["pruned"], global_80["baseline"]
    kept = pruned["nonzero_prunable_params"] / pruned["prunable_params"]
    assert 0.18 <= kept <= 0.23  # 80% of the included layers; the classifier stays dense
    assert pruned["params"] == baseline["params"] and pruned["onnx_bytes"] == baseline["onnx_bytes"]
    assert pruned["compressed_bytes"] < 0.5 * baseline["compressed_bytes"]
    assert pruned["macs"] == baseline["macs"]
    assert pruned["max_abs_diff"] < 1e-4


def test_unchanged_latency_is_explained(global_80):
    explained = [note for note in global_80["notes"] if "zeros stay in the dense ONNX graph" in note]
    assert explained and "channel" in explained[0] and "INT8" in explained[0] and "compressed" in explained[0]


def test_global_l1_80_stays_within_three_points(global_80):
    assert global_80["baseline"]["accuracy"] - global_80["pruned"]["accuracy"] <= 0.03


def test_unlabelled_data_reports_agreement_not_accuracy(cnn):
    report = LiveEvaluator(cnn, data=random_data(cnn.input_shape, count=64)).measure(Plan(sparsity=0.5))
    for side in ("pruned", "baseline"):
        assert report[side]["accuracy"] is None and report[side]["loss"] is None
        assert report[side]["label"] == "agreement"
    assert report["baseline"]["agreement"] == 1.0
    assert 0.0 <= report["pruned"]["agreement"] <= 1.0


def test_quality_counts_matches():
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0]])
    reference = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    result = quality(logits, np.array([0, 1, 1]), reference)
    assert result["accuracy"] == pytest.approx(2 / 3) and result["agreement"] == pytest.approx(2 / 3)
    assert result["loss"] > 0


def test_zeros_compress():
    dense = np.random.default_rng(0).standard_normal(10000).astype(np.float32).tobytes()
    assert sizes(bytes(len(dense)))["compressed_bytes"] < 0.01 * sizes(dense)["compressed_bytes"]


def test_live_evaluator_caches_reports_and_shares_them_between_threads(mlp):
    evaluator = LiveEvaluator(mlp)
    plan = Plan(sparsity=0.6)
    first = evaluator.measure(plan)
    assert evaluator.measure(Plan.from_dict(plan.to_dict())) is first
    assert LiveEvaluator(mlp).measure(plan) is first  # same model, plan, data and settings
    other = evaluator.measure(plan.replace(sparsity=0.7))
    assert other is not first and other["pruned"]["sparsity"] > first["pruned"]["sparsity"]
    results, errors = [], []

    def worker(level):
        try:
            results.append(evaluator.measure(plan.replace(sparsity=level)))
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(level,)) for level in (0.2, 0.3, 0.2, 0.3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 4
    assert evaluator.measure(plan.replace(sparsity=0.2))["pruned"]["sparsity"] == pytest.approx(0.2, abs=0.01)


def test_wrong_data_shape_is_one_line_error(cnn):
    with pytest.raises(PrunelabError, match="shape"):
        LiveEvaluator(cnn, data=random_data((1, 1, 4, 4), count=8))


def test_onnx_source_is_measured_and_pruned(cnn, tmp_path):
    path = tmp_path / "cnn.onnx"
    export_onnx(cnn.module, cnn.example_input(1), path)
    handle = load_model(str(path), data=None)
    table = layer_table(handle)
    assert [row["name"] for row in table["layers"]] == [row["name"] for row in layer_table(cnn)["layers"]]
    assert table["totals"]["prunable_params"] == layer_table(cnn)["totals"]["prunable_params"]
    report = LiveEvaluator(handle, data=cnn.data).measure(Plan(sparsity=0.5))
    assert report["baseline"]["accuracy"] == pytest.approx(0.99, abs=0.02)
    assert report["pruned"]["sparsity"] == pytest.approx(0.5 * 158624 / 159264, abs=0.02)
    assert set(report["layer_sparsity"]) == {"features.0.0", "features.1.0", "features.3.0", "fc1", "fc2"}
    with pytest.raises(PrunelabError, match="channel"):
        LiveEvaluator(handle, data=cnn.data).measure(Plan(granularity="channel", sparsity=0.5))


def test_pruned_and_dense_are_timed_in_the_same_run(cnn):
    from core.deploy import measure
    from core.deploy.evaluate import LiveEvaluator
    from core.deploy.export import export_onnx
    from core.prune.plan import Plan

    session, _ = measure.create_session(export_onnx(cnn.module, cnn.example_input()), threads=1)
    first, second = measure.paired_latency([session, session], cnn.data.x_test[:1], min_runs=7, min_seconds=0.0)
    assert first["runs"] == second["runs"] >= 7
    evaluator = LiveEvaluator(cnn)
    report = evaluator.measure(Plan(granularity="channel", sparsity=0.4))
    assert report["pruned"]["speedup"]["pairs"] == report["pruned"]["runs"] >= 7
    assert report["baseline"] == evaluator.baseline()  # one dense measurement, shown everywhere
    assert "reference_latency" not in report["pruned"]


def test_a_plan_that_changes_only_weight_values_is_never_slower_than_dense(cnn):
    from core.deploy.evaluate import LiveEvaluator
    from core.prune.plan import Plan

    for granularity in ("unstructured", "2:4"):
        report = LiveEvaluator(cnn).measure(Plan(granularity=granularity, sparsity=0.5))
        speedup = report["pruned"]["speedup"]
        assert speedup["same_kernels"] and speedup["p50"] == 1.0 and not speedup["measurable"]
        assert report["pruned"]["latency_ms"] == report["baseline"]["latency_ms"]
        assert report["pruned"]["sparsity"] > 0.3 and report["pruned"]["accuracy"] is not None
        assert any("1.00x" in note for note in report["notes"])


def test_a_cached_report_never_outlives_the_dense_measurement_it_was_compared_with(cnn):
    from core.deploy import evaluate
    from core.prune.plan import Plan

    evaluator = evaluate.LiveEvaluator(cnn)
    first = evaluator.measure(Plan(sparsity=0.3))
    assert first["baseline"] == evaluator.baseline()
    evaluate._BASELINES.clear()  # as when other models push this baseline out of its cache
    again = evaluator.measure(Plan(sparsity=0.3))
    assert again is not first and again["baseline"] == evaluator.baseline()


def test_speedup_within_noise_is_not_measurable_and_a_real_one_is():
    from core.deploy.measure import speedup

    rng = np.random.default_rng(0)
    dense = rng.gamma(20.0, 0.05, 300)  # (runs,) ms
    noisy = speedup(dense, dense * rng.normal(1.0, 0.1, 300))
    assert not noisy["measurable"] and noisy["low"] <= 1.0 <= noisy["high"]
    faster = speedup(dense, dense / 1.8 * rng.normal(1.0, 0.1, 300))
    assert faster["measurable"] and faster["low"] < 1.8 < faster["high"] * 1.05


def test_a_plan_that_changes_nothing_is_the_dense_measurement(cnn):
    from core.deploy.evaluate import LiveEvaluator
    from core.prune.plan import Plan

    evaluator = LiveEvaluator(cnn)
    for granularity in ("unstructured", "channel"):
        report = evaluator.measure(Plan(granularity=granularity, sparsity=0.0))
        assert report["pruned"]["speedup"]["same_model"] and report["pruned"]["speedup"]["p50"] == 1.0
        assert report["pruned"]["latency_ms"] == report["baseline"]["latency_ms"]
        assert report["pruned"]["removed"] == 0.0
