"""The rules of spending a budget, without a model: when a reached figure meets its target (exact for MACs,
within the latency slack for a timed p50), when an option overshoots, and that depth drops no block the
target does not need."""
from __future__ import annotations

import pytest

from core.errors import PrunelabError
from core.search.spend import LATENCY_SLACK, OVERSHOOT, _Budget, meets, overshoots


def test_a_latency_meets_its_target_within_the_slack_and_macs_almost_exactly():
    dense, goal = 20.0, 10.0
    edge = goal + LATENCY_SLACK * (dense - goal)
    assert meets(edge, goal, dense, timed=True) and not meets(edge + 0.01, goal, dense, timed=True)
    assert not meets(edge, goal, dense, timed=False)  # MACs are counted, not timed: no such slack
    assert meets(goal, goal, dense, timed=False) and meets(goal * 0.5, goal, dense, timed=False)


def test_an_option_far_past_its_target_overshoots():
    dense, goal = 100.0, 50.0  # a 2x target
    assert not overshoots(50.0, goal, dense) and not overshoots(100.0 / (2 * OVERSHOOT) + 0.1, goal, dense)
    assert overshoots(100.0 / 134, goal, dense)  # the 134x that two blocks of a two-layer model give


class _Ladder(_Budget):
    """A budget whose blocks and the MACs each set of removed blocks leaves are given, not measured."""

    def __init__(self, order: list[str], saves: dict[str, float], dense: float, goal: float):
        self.order, self.saves, self.dense, self.goal = order, saves, dense, goal
        self.timed, self._ladder, self.measured = False, None, []

    def blocks(self) -> list[str]:
        return list(self.order)

    def measure(self, plan) -> float:
        self.measured.append(tuple(plan.drop))
        return self.dense - sum(self.saves[name] for name in plan.drop)


def test_depth_drops_no_block_the_target_does_not_need():
    # cheapest first: two small blocks miss the target, the third meets it alone
    budget = _Ladder(["a", "b", "c"], {"a": 5.0, "b": 5.0, "c": 60.0}, dense=100.0, goal=50.0)
    assert budget.depth_plan().drop == ("c",)
    assert ("a", "b", "c") in budget.measured  # the ladder itself went up to the first set that met


def test_depth_keeps_every_block_the_target_needs():
    budget = _Ladder(["a", "b", "c"], {"a": 20.0, "b": 20.0, "c": 20.0}, dense=100.0, goal=50.0)
    assert budget.depth_plan().drop == ("a", "b", "c")


def test_depth_says_when_all_blocks_miss():
    budget = _Ladder(["a"], {"a": 5.0}, dense=100.0, goal=1.0)
    with pytest.raises(PrunelabError, match="removing all 1 removable blocks"):
        budget.depth_plan()
