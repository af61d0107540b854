"""A latency target spent by measured per-layer cost (the dense profile's ms per layer), not by MACs."""
from __future__ import annotations

import pytest

from core.cli import main
from core.errors import PrunelabError
from core.prune.plan import Plan
from core.search import profile_cost
from core.search.allocate import allocate
from core.search.curves import curves_for, greedy
from core.search.sensitivity import sensitivity


def mac_sweep(macs_removed: dict[str, list[float]], damage: dict[str, list[float]]) -> dict:
    """A channel sweep by hand at levels 0, 0.5, 0.9: whole-model MACs fall by each group's own removal."""
    total = 1000.0
    layers = [{"name": name, "members": [name], "curve": [
        {"sparsity": level, "accuracy": 1.0 - cost, "loss": 0.1 + cost, "macs": total - removed, "latency_ms": 1.0}
        for level, removed, cost in zip((0.0, 0.5, 0.9), macs_removed[name], damage[name])]} for name in macs_removed]
    return {"granularity": "channel", "criterion": "l1", "layers": layers, "complete": True}


def test_a_group_slow_per_mac_is_worth_more_time_than_its_macs_say():
    # two groups removing the same MACs at the same damage; "depthwise" costs 4x more per MAC on this CPU
    result = mac_sweep({"pointwise": [0, 200, 360], "depthwise": [0, 200, 360]},
                       {"pointwise": [0, 0.1, 0.3], "depthwise": [0, 0.1, 0.3]})
    costs = {"ms_per_mac": {"pointwise": 1e-3, "depthwise": 4e-3}, "macs": {"pointwise": 400, "depthwise": 400}}
    curves = profile_cost.profiled_curves(curves_for(result, "macs", (0.0, 0.9)), {"pointwise": ["pointwise"],
                                          "depthwise": ["depthwise"]}, costs)
    priced = {curve.name: list(curve.removed) for curve in curves}
    assert priced["depthwise"] == pytest.approx([0, 0.8, 1.44]) and priced["pointwise"] == pytest.approx([0, 0.2, 0.36])
    chosen = greedy(curves, 0.8)  # 0.8 ms: all of it from the slow group, none from the fast one
    assert chosen["depthwise"] == pytest.approx(0.5) and chosen["pointwise"] == 0.0
    by_macs = greedy(curves_for(result, "macs", (0.0, 0.9)), 200)
    assert by_macs["pointwise"] > 0 or by_macs["depthwise"] < 0.5  # MACs alone cannot tell the two apart


def test_group_rate_weighs_members_by_their_macs():
    costs = {"ms_per_mac": {"a": 1e-3, "b": 3e-3}, "macs": {"a": 300, "b": 100, "c": 50}}
    assert profile_cost.group_rate(["a", "b", "c"], costs) == pytest.approx((0.3 + 0.3) / 400)
    assert profile_cost.group_rate(["c"], costs) == 0.0


@pytest.fixture(scope="module")
def priced(cnn, tmp_path_factory):
    """One channel sweep and one dense profile of digits-cnn (its ms per layer), shared by the tests below;
    the sweep's cache goes to a private home, never the person's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELAB_HOME", str(tmp_path_factory.mktemp("sweep-home")))
        return sensitivity(cnn, granularity="channel", levels=(0.0, 0.5)), profile_cost.layer_costs(cnn)


def reachable_target(costs: dict) -> float:
    """A latency halfway between the dense p50 and the p50 less every layer's measured time."""
    return costs["p50_ms"] - 0.5 * min(costs["layers_ms"], costs["p50_ms"])


@pytest.mark.slow
def test_the_profile_priced_plan_meets_the_target_as_the_profile_prices_it(cnn, priced, tmp_path, monkeypatch):
    result, costs = priced
    dense = costs["p50_ms"]
    assert set(costs["ms_per_mac"]) and costs["layers_ms"] > 0 and dense > 0
    monkeypatch.setattr(profile_cost, "layer_costs", lambda handle, threads=2: costs)  # the same profile below
    target = reachable_target(costs)

    def saving(plan: Plan) -> float:
        return profile_cost.predicted_saving_ms(cnn, plan.replace(reconstruct=False, recalibrate=False), costs)

    # kept counts unrounded, so how close the plan lands is the allocation's, not the CPU's channel blocks
    # (under AVX-512 one block of 16 is a quarter to half of a digits-cnn layer)
    exact = allocate(cnn, target_latency_ms=target, granularity="channel", sensitivity=result,
                     latency_cost="profile", round_to=1)
    assert saving(exact) >= dense - target > 0  # reached, priced by every layer's measured ms per MAC
    assert saving(exact) <= (dense - target) * 1.25  # and not far beyond it
    plan = allocate(cnn, target_latency_ms=target, granularity="channel", sensitivity=result, latency_cost="profile")
    assert saving(plan) >= dense - target  # the default rounding still reaches it
    # a run mostly outside the layers (p50 ten times the layers' time): no pruning brings it to a tenth
    far = {**costs, "p50_ms": 10 * costs["layers_ms"]}
    monkeypatch.setattr(profile_cost, "layer_costs", lambda handle, threads=2: far)
    with pytest.raises(PrunelabError, match="out of reach"):
        allocate(cnn, target_latency_ms=far["p50_ms"] * 0.1, granularity="channel", sensitivity=result,
                 latency_cost="profile")
    with pytest.raises(PrunelabError, match="give target_latency_ms"):
        allocate(cnn, target_mac_reduction=2.0, granularity="channel", sensitivity=result, latency_cost="profile")
    assert isinstance(plan, Plan) and plan.round_to == "auto"
    assert main(["allocate", "digits-cnn", "--out", str(tmp_path / "p.yaml"), "--target-mac-reduction", "2",
                 "--granularity", "channel", "--latency-cost", "profile"]) == 2


@pytest.mark.slow
def test_the_goal_box_switch_prices_a_latency_goal_by_the_profile(cnn, priced, open_page, monkeypatch):
    from dashboard import goals, session

    result, costs = priced
    profiled = []
    monkeypatch.setattr(profile_cost, "layer_costs", lambda handle, threads=2: profiled.append(handle.name) or costs)
    target = round(reachable_target(costs), 3)
    page = open_page("tune", timeout=90)
    page.session_state["prunelab.sensitivity"] = {**result, "model_key": f"{cnn.digest}-{cnn.data.digest}"}
    page.session_state["prunelab.plan"] = Plan(granularity="channel", criterion="l1", scope="layer", sparsity=0.0)
    page.run()
    page.selectbox(key="w.tune.goal.accuracy").set_value("latency").run()
    page.number_input(key="w.tune.goal.latency").set_value(target).run()
    assert not page.toggle(key=goals.BY_PROFILE).value and not profiled  # off by default; drawing it profiles nothing
    page.toggle(key=goals.BY_PROFILE).set_value(True).run()
    page.button(key="tune-allocate").click().run()
    assert not page.exception and not page.error
    assert profiled == [cnn.name]  # priced by the dense model's profile, once
    expected = allocate(cnn, target_latency_ms=target, granularity="channel", sensitivity=result,
                        max_sparsity=session.MAX_SPARSITY, latency_cost="profile").layer_targets
    assert expected and page.session_state["prunelab.plan"].layer_targets == expected
    for name, level in expected.items():  # the sliders show the priced targets
        assert page.slider(key=f"w.layer.{name}").value == round(100 * level)
