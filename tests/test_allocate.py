"""Allocation: targets are reached, bounds hold, the cheapest layers go first, and it beats uniform pruning."""
from __future__ import annotations

import pytest
import torch

from core.cli import main
from core.errors import PrunelabError
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.search.allocate import allocate
from core.search.curves import curves_for, greedy
from core.search.sensitivity import Scorer, sensitivity


@pytest.fixture(scope="module")
def sweep_home(tmp_path_factory):
    """A private home for this file's sweeps (never the person's); the CLI reads their cache there."""
    return tmp_path_factory.mktemp("sweep-home")


def swept(handle, home, **options) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELAB_HOME", str(home))
        return sensitivity(handle, **options)


@pytest.fixture(scope="module")
def sweep(cnn, sweep_home):
    """One default sweep for the whole file."""
    return swept(cnn, sweep_home)


@pytest.fixture(scope="module")
def channel_sweep(cnn, sweep_home):
    """One channel sweep for the channel allocations."""
    return swept(cnn, sweep_home, granularity="channel", levels=(0.0, 0.3, 0.6, 0.9))


def at_levels(result: dict, levels: tuple[float, ...]) -> dict:
    """``result`` as a sweep of only ``levels`` would have made it (every point is measured on its own)."""
    layers = [{**row, "curve": [point for point in row["curve"] if point["sparsity"] in levels]}
              for row in result["layers"]]
    return {**result, "levels": [level for level in result["levels"] if level in levels], "layers": layers}


def overall_sparsity(handle, plan: Plan) -> float:
    """Zeroed share of the weights of the layers the plan prunes (the classifier stays dense)."""
    result = apply_plan(handle, plan)
    zeros = total = 0
    for mask in result.masks.values():
        zeros += int((~mask).sum())
        total += mask.numel()
    return zeros / total


def synthetic(costs: dict[str, list[float]], params: dict[str, int]) -> dict:
    """A sensitivity result by hand: accuracy falls by ``costs`` at levels 0, 0.5, 0.9."""
    levels = [0.0, 0.5, 0.9]
    layers = [{"name": name, "members": [name], "params": params[name],
               "curve": [{"sparsity": level, "accuracy": 1.0 - cost, "loss": 0.1 + cost}
                         for level, cost in zip(levels, values)]} for name, values in costs.items()]
    return {"granularity": "unstructured", "criterion": "l1", "baseline_accuracy": 1.0, "label": "accuracy",
            "levels": levels, "layers": layers, "complete": True}


def test_the_cheapest_weights_are_taken_first():
    result = synthetic({"robust": [0.0, 0.0, 0.01], "fragile": [0.0, 0.3, 0.9]}, {"robust": 1000, "fragile": 1000})
    curves = curves_for(result, "weights", (0.0, 0.9))
    chosen = greedy(curves, 0.45 * 2000)
    assert chosen["robust"] == pytest.approx(0.9)
    assert chosen["fragile"] == pytest.approx(0.0)
    chosen = greedy(curves, 0.6 * 2000)  # the robust layer is full; the rest comes from the fragile one
    assert chosen["robust"] == pytest.approx(0.9) and chosen["fragile"] == pytest.approx(0.3)


def test_a_steep_then_flat_curve_is_judged_by_its_convex_hull():
    # 'step' costs a lot at once and nothing after; over its whole range it is cheaper than 'ramp'
    result = synthetic({"step": [0.0, 0.4, 0.4], "ramp": [0.0, 0.25, 0.45]}, {"step": 1000, "ramp": 1000})
    chosen = greedy(curves_for(result, "weights", (0.0, 0.9)), 900)
    assert chosen == pytest.approx({"step": 0.9, "ramp": 0.0})


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9])
def test_the_target_overall_sparsity_is_reached(cnn, sweep, target):
    plan = allocate(cnn, target_sparsity=target, sensitivity=sweep)
    assert plan.granularity == "unstructured" and plan.scope == "layer"
    assert overall_sparsity(cnn, plan) == pytest.approx(target, abs=0.002)


@pytest.mark.slow
def test_per_layer_bounds_are_respected(cnn, sweep):
    plan = allocate(cnn, target_sparsity=0.6, min_sparsity=0.2, max_sparsity=0.8, sensitivity=sweep)
    targets = plan.layer_targets
    assert set(targets) == {"features.0.0", "features.1.0", "features.3.0", "fc1"}
    assert all(0.2 - 1e-9 <= value <= 0.8 + 1e-9 for value in targets.values())
    assert targets["features.0.0"] == pytest.approx(0.2)  # the first convolution is the most fragile
    assert overall_sparsity(cnn, plan) == pytest.approx(0.6, abs=0.002)


@pytest.mark.slow
def test_allocated_beats_uniform_and_keeps_up_with_global_at_90_percent(cnn, sweep):
    x, y = torch.from_numpy(cnn.data.x_test), torch.from_numpy(cnn.data.y_test)

    def accuracy(plan: Plan) -> float:
        with torch.no_grad():
            return float((apply_plan(cnn, plan).module(x).argmax(1) == y).float().mean())

    allocated = accuracy(allocate(cnn, target_sparsity=0.9, sensitivity=sweep))
    assert allocated >= accuracy(Plan(sparsity=0.9)) + 0.02
    assert allocated >= accuracy(Plan(scope="global", sparsity=0.9)) - 0.01


@pytest.mark.slow
def test_max_accuracy_drop_alone_sets_the_sparsity(cnn, sweep):
    plan = allocate(cnn, max_accuracy_drop=0.01, sensitivity=sweep)
    sparsity = overall_sparsity(cnn, plan)
    assert 0.3 < sparsity < 0.95
    accuracy, _ = Scorer(cnn, "val")(apply_plan(cnn, plan).module)
    assert accuracy >= sweep["baseline_accuracy"] - 0.05
    with pytest.raises(PrunelabError, match="predicted to cost"):
        allocate(cnn, target_sparsity=0.9, max_accuracy_drop=0.01, sensitivity=sweep)


@pytest.mark.slow
def test_bad_requests_are_one_line_errors(cnn, sweep):
    cases = [
        ({}, "give a target"),
        ({"target_sparsity": 0.5, "target_latency_ms": 1.0}, "one target"),
        ({"target_latency_ms": 1.0}, "need granularity channel"),
        ({"target_sparsity": 0.97}, "out of reach"),
        ({"target_sparsity": 0.5, "min_sparsity": 0.6, "max_sparsity": 0.5}, "above max_sparsity"),
        ({"target_sparsity": 1.5}, r"\[0, 1\)"),
        ({"target_sparsity": 0.5, "granularity": "channel"}, "is for unstructured"),
    ]
    for kwargs, message in cases:
        with pytest.raises(PrunelabError, match=message):
            allocate(cnn, sensitivity=sweep, **kwargs)


@pytest.mark.slow
def test_cli_writes_a_plan_that_loads_and_matches_the_api(cnn, sweep, sweep_home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PRUNELAB_HOME", str(sweep_home))  # the CLI finds the fixture's sweep in its cache
    out = tmp_path / "allocated.yaml"
    assert main(["allocate", "digits-cnn", "--target-sparsity", "0.8", "--out", str(out)]) == 0
    assert Plan.load(out) == allocate(cnn, target_sparsity=0.8, sensitivity=sweep)
    assert "fc1" in capsys.readouterr().out
    assert main(["allocate", "digits-cnn", "--out", str(tmp_path / "plan.txt"), "--target-sparsity", "0.5"]) == 2
    assert main(["allocate", "digits-cnn", "--out", str(out), "--target-mac-reduction", "2"]) == 2
    assert main(["allocate", "digits-cnn", "--out", str(out), "--target-sparsity", "0.5", "--round-to", "0"]) == 2
    assert "prunelab: error:" in capsys.readouterr().err


@pytest.mark.slow
def test_channel_allocation_reaches_a_mac_reduction(cnn, channel_sweep):
    result = channel_sweep
    # round_to 1: this checks how closely the target is met; rounding is checked on its own below
    plan = allocate(cnn, target_mac_reduction=2.0, granularity="channel", sensitivity=result, round_to=1)
    assert plan.granularity == "channel"
    assert set(plan.layer_targets) <= {layer["name"] for layer in result["layers"]}
    from core.inspect import layer_macs

    example = cnn.example_input(1)
    dense = sum(layer_macs(cnn.module, example).values())
    pruned = sum(layer_macs(apply_plan(cnn, plan).module, example).values())
    assert pruned <= dense / 2 * 1.01
    assert pruned >= dense / 2 * 0.85  # not far beyond the target either


@pytest.mark.slow
def test_channel_allocation_with_rounding_checks_the_target_on_the_rounded_model(cnn, channel_sweep):
    from core.inspect import layer_macs, prunable_layers

    result = channel_sweep
    plan = allocate(cnn, target_mac_reduction=2.0, granularity="channel", sensitivity=result, round_to=8)
    assert plan.round_to == 8
    example = cnn.example_input(1)
    module = apply_plan(cnn, plan).module
    assert sum(layer_macs(module, example).values()) <= sum(layer_macs(cnn.module, example).values()) / 2 * 1.01
    convolutions = [layer for layer in prunable_layers(module) if layer.kind.startswith("conv")]
    assert convolutions and all(layer.weight.shape[0] % 8 == 0 for layer in convolutions)


@pytest.mark.slow
def test_the_tune_page_auto_allocate_button_fills_the_sliders(cnn, sweep, open_page):
    page = open_page("tune", timeout=90)
    page.session_state["prunelab.sensitivity"] = {**sweep, "model_key": f"{cnn.digest}-{cnn.data.digest}"}
    page.session_state["prunelab.plan"] = Plan(granularity="unstructured", criterion="l1", scope="layer", sparsity=0.9)
    page.run()
    page.selectbox(key="w.tune.goal.accuracy").set_value("sparsity").run()  # the goal: a share of the weights removed
    page.number_input(key="w.tune.goal.sparsity").set_value(90.0).run()
    next(button for button in page.button if button.label == "Auto-allocate").click().run()
    assert not page.exception and not page.error
    expected = allocate(cnn, target_sparsity=0.9, sensitivity=sweep).layer_targets
    assert page.session_state["prunelab.plan"].layer_targets == expected


@pytest.mark.slow
def test_the_global_candidate_keeps_every_layer_within_its_bounds(cnn):
    from core.inspect import final_classifier, prunable_layers
    from core.search.allocate import _global_within

    classifier = final_classifier(cnn.module, cnn.example_input(1))
    sizes = {layer.name: layer.weight.numel() for layer in prunable_layers(cnn.module) if layer.name != classifier}
    free = apply_plan(cnn, Plan(scope="global", sparsity=0.9)).layer_sparsity
    assert max(free[name] for name in sizes) > 0.91  # unbounded, the ranking takes some layers past 0.91
    spread = _global_within(cnn, "l1", list(sizes), 0.9, (0.0, 0.91))
    assert max(spread.values()) <= 0.91 + 1e-9
    reached = sum(spread[name] * size for name, size in sizes.items()) / sum(sizes.values())
    assert reached == pytest.approx(0.9, abs=1e-4)  # the pinned layers' share went to the others
    assert overall_sparsity(cnn, Plan(sparsity=0.0, layers=spread)) == pytest.approx(0.9, abs=1e-3)
    assert _global_within(cnn, "l1", list(sizes), 0.9, (0.0, 0.5)) is None  # out of reach within 50% each


@pytest.mark.slow
def test_a_target_at_the_end_of_the_curves_is_not_forced_to_uniform(cnn, sweep):
    # curves that end at 90% leave a 90% target no choice but uniform; the global candidate,
    # with its layers past the 91% bound pinned there, is another plan and the better one
    short = at_levels(sweep, (0.0, 0.5, 0.9))
    scorer = Scorer(cnn, "test")
    plan = allocate(cnn, target_sparsity=0.9, max_sparsity=0.91, sensitivity=short)
    assert max(plan.layer_targets.values()) <= 0.91 + 1e-9
    allocated = scorer(apply_plan(cnn, plan).module)[0]
    uniform = scorer(apply_plan(cnn, Plan(sparsity=0.9)).module)[0]
    assert allocated >= uniform + 0.2
