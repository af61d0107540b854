"""Sensitivity sweeps: curve shape, agreement with the engine, the disk cache, progress and stopping."""
from __future__ import annotations

import importlib
import json

import pytest

from core.cache import ResultCache, cache_key
from core.cli import main
from core.errors import PrunelabError
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.search.sensitivity import Scorer, check_levels, scored_items, sensitivity
from tests.conftest import wait_until

LEVELS = (0.0, 0.5, 0.9)
# the module, not the function of the same name that the core package exports
sensitivity_module = importlib.import_module("core.search.sensitivity")


@pytest.fixture(scope="module")
def sweep_home(tmp_path_factory):
    """A private home for the file's one sweep and its cache entry."""
    return tmp_path_factory.mktemp("sweep-home")


@pytest.fixture(scope="module")
def sweep(cnn, sweep_home):
    """One sweep of digits-cnn at LEVELS for the file (read, never changed, by the tests that take it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELAB_HOME", str(sweep_home))
        return sensitivity(cnn, levels=LEVELS)


@pytest.mark.slow
def test_curves_have_every_level_ascending_and_start_at_the_baseline(cnn, sweep):
    assert sweep["levels"] == list(LEVELS)
    assert sweep["label"] == "accuracy" and sweep["complete"] is True
    assert [layer["name"] for layer in sweep["layers"]] == ["features.0.0", "features.1.0", "features.3.0", "fc1"]
    for layer in sweep["layers"]:
        levels = [point["sparsity"] for point in layer["curve"]]
        assert levels == sorted(levels) == list(LEVELS)
        assert layer["curve"][0]["accuracy"] == sweep["baseline_accuracy"]
        assert layer["curve"][0]["loss"] == sweep["baseline_loss"]
    # pruning the first convolution to 90% hurts; the result must show it
    assert sweep["layers"][0]["curve"][-1]["accuracy"] < sweep["baseline_accuracy"] - 0.2
    assert sweep["evaluated_on"]["split"] == "val" and sweep["evaluated_on"]["items"] == len(cnn.data.x_val)
    json.dumps(sweep)


@pytest.mark.slow
def test_fast_path_matches_a_one_layer_plan_through_the_engine(cnn, sweep):
    scorer = Scorer(cnn, "val")
    for layer in sweep["layers"][1:3]:
        point = layer["curve"][1]
        pruned = apply_plan(cnn, Plan(sparsity=0.0, layers={layer["name"]: point["sparsity"]})).module
        accuracy, loss = scorer(pruned)
        assert accuracy == pytest.approx(point["accuracy"], abs=1e-9)
        assert loss == pytest.approx(point["loss"], rel=1e-5)


def test_the_handle_is_left_unchanged(cnn):
    before = {key: value.clone() for key, value in cnn.module.state_dict().items()}
    sensitivity(cnn, levels=(0.0, 0.9), max_items=50)
    for key, value in cnn.module.state_dict().items():
        assert value.equal(before[key]), key


@pytest.mark.slow
def test_a_second_call_reads_the_cache_without_recomputing(cnn, sweep, sweep_home, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setenv("PRUNELAB_HOME", str(sweep_home))  # where the fixture's sweep left its cache entry
    monkeypatch.setattr(sensitivity_module, "_run", fail)
    calls = []
    again = sensitivity(cnn, levels=LEVELS, progress=lambda done, total, text: calls.append(text))
    assert again == sweep
    assert calls == ["read from cache"]
    with pytest.raises(AssertionError, match="recomputed"):  # other settings miss the cache
        sensitivity(cnn, levels=(0.0, 0.5))


def test_progress_counts_every_point(cnn):
    seen = []
    sensitivity(cnn, levels=LEVELS, max_items=60, progress=lambda done, total, text: seen.append((done, total, text)))
    jobs = 1 + 4 * (len(LEVELS) - 1)  # the dense model once, then every layer at every level above 0
    assert [done for done, _, _ in seen] == list(range(1, jobs + 1))
    assert {total for _, total, _ in seen} == {jobs}
    assert seen[0][2] == "dense model" and seen[1][2] == "features.0.0 at 50%"


@pytest.mark.slow
def test_stopping_returns_a_partial_result_that_is_not_cached(cnn):
    polls = []

    def should_stop():
        polls.append(1)
        return len(polls) > 4

    partial = sensitivity(cnn, levels=LEVELS, should_stop=should_stop)
    assert partial["complete"] is False
    # four jobs ran: the dense model (every curve's 0% point), features.0.0 at 50% and 90%, features.1.0 at 50%
    assert [len(layer["curve"]) for layer in partial["layers"]] == [3, 2, 1, 1]
    full = sensitivity(cnn, levels=LEVELS)
    assert full["complete"] is True and len(full["layers"]) == 4


def test_max_items_scores_a_subset_and_says_so(cnn):
    result = sensitivity(cnn, levels=(0.0, 0.5), max_items=40)
    assert result["evaluated_on"]["items"] == 40
    assert result["evaluated_on"]["subset"] == f"first 40 of {len(cnn.data.x_val)}"


def test_large_models_score_a_subset_automatically_and_say_why(cnn, monkeypatch):
    assert scored_items(10_000_000, 359, "auto") == (359, "")
    count, reason = scored_items(250_000_000, 359, "auto")
    assert count == 160 and "250M MACs" in reason and "'all'" in reason
    assert scored_items(250_000_000, 359, "all") == (359, "")
    assert scored_items(250_000_000, 359, 50) == (50, "")
    assert scored_items(10**12, 359, None)[0] == sensitivity_module.MIN_AUTO_ITEMS
    for bad in (0, -3, "some"):
        with pytest.raises(PrunelabError, match="max items"):
            scored_items(1, 359, bad)
    monkeypatch.setattr(sensitivity_module, "SCORING_BUDGET_MACS", 1.0)
    monkeypatch.setattr(sensitivity_module, "MIN_AUTO_ITEMS", 30)
    result = sensitivity(cnn, levels=(0.0, 0.5))
    assert result["evaluated_on"]["items"] == 30
    assert result["evaluated_on"]["subset"].startswith(f"first 30 of {len(cnn.data.x_val)}, chosen for a model of")
    assert result["evaluated_on"]["batchnorm_items"] == 256


@pytest.mark.slow
def test_unlabelled_data_reports_agreement(user_model):
    result = sensitivity(user_model, levels=(0.0, 0.8))
    assert result["label"] == "agreement"
    assert result["baseline_accuracy"] == 1.0
    assert min(layer["curve"][-1]["accuracy"] for layer in result["layers"]) < 1.0


def test_levels_are_sorted_deduplicated_and_start_at_zero():
    assert check_levels([0.9, 0.5, 0.5]) == [0.0, 0.5, 0.9]
    for bad in ([0.5, 1.0], [-0.1], ["x"]):
        with pytest.raises(PrunelabError):
            check_levels(bad)


def test_bad_requests_are_one_line_errors(cnn):
    with pytest.raises(PrunelabError, match="granularity"):
        sensitivity(cnn, granularity="2:4")
    with pytest.raises(PrunelabError, match="criterion"):
        sensitivity(cnn, criterion="magic")
    with pytest.raises(PrunelabError, match="split"):
        sensitivity(cnn, split="nowhere")


@pytest.mark.slow
def test_cli_prints_json_and_a_table(capsys):
    assert main(["sensitivity", "digits-cnn", "--levels", "0.5,0", "--max-items", "30", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["levels"] == [0.0, 0.5] and len(result["layers"]) == 4
    assert main(["sensitivity", "digits-cnn", "--levels", "0,0.5", "--max-items", "30"]) == 0
    table = capsys.readouterr().out
    assert "features.1.0" in table and "50%" in table
    assert main(["sensitivity", "digits-cnn", "--levels", "0,1.5"]) == 2
    assert "prunelab: error:" in capsys.readouterr().err


def test_cache_is_bounded_atomic_and_tolerates_damage(tmp_path):
    cache = ResultCache("demo", limit=3, root=tmp_path)
    keys = [cache_key("entry", index) for index in range(5)]
    for index, key in enumerate(keys):
        cache.put(key, {"index": index})
    assert len(list(cache.directory.glob("*.json"))) == 3
    assert not list(cache.directory.glob(".tmp-*"))
    assert cache.get(keys[-1]) == {"index": 4}
    (cache.directory / f"{keys[-1]}.json").write_text("{not json")
    assert cache.get(keys[-1]) is None
    assert cache_key({"b": 1, "a": 2}) == cache_key({"a": 2, "b": 1}) != cache_key({"a": 1, "b": 2})


@pytest.mark.slow
def test_channel_sweeps_prune_coupled_groups_and_time_each_level(cnn):
    result = sensitivity(cnn, granularity="channel", levels=(0.0, 0.5))
    assert result["evaluated_on"]["latency"]["runtime"] == "onnxruntime"
    assert {layer["name"] for layer in result["layers"]} == {"features.0.0", "features.1.0", "features.3.0", "fc1"}
    for layer in result["layers"]:
        dense, half = layer["curve"]
        assert layer["name"] in layer["members"]
        assert dense["accuracy"] == result["baseline_accuracy"]
        assert dense["latency_ms"] > 0 and half["latency_ms"] > 0
        assert half["macs"] < dense["macs"] and half["params"] < dense["params"]
    one = result["layers"][1]
    plan = Plan(granularity="channel", sparsity=0.0, layers={one["name"]: 0.5})
    accuracy, _ = Scorer(cnn, "val")(apply_plan(cnn, plan).module)
    assert accuracy == pytest.approx(one["curve"][1]["accuracy"], abs=1e-9)


def test_dashboard_page_runs_a_sweep_and_shows_it(open_page):
    page = open_page("sensitivity")
    page.run()
    page.toggle(key="w.sensitivity.quick").set_value(True)
    page.toggle(key="w.sensitivity.every").set_value(True)
    page.button[0].click().run()
    def finished():  # the sweep runs in a worker thread; each run of the page polls it
        return "prunelab.sensitivity" in page.run().session_state

    wait_until(finished, 60, "the sweep's end")
    assert not page.exception
    result = page.session_state["prunelab.sensitivity"]
    assert result["complete"] and result["levels"] == [0.0, 0.3, 0.5, 0.7, 0.9]
    assert result["evaluated_on"]["subset"] is None
    assert any("baseline accuracy" in caption.value and "BatchNorm re-estimated on 256" in caption.value
               for caption in page.caption)
