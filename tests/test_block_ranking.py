"""One ranking of removable blocks: block influence, or under criterion fisher the Fisher information of a
gate on each block's residual branch; depth plans and the allocation's depth option read the same one."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.data import Dataset
from core.prune import fisher
from core.prune.criteria import CRITERIA
from core.prune.depth import BlockRanking
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.search.spend import _Budget
from core.sources.handle import ModelHandle

FEATURES = 4


class _Residual(nn.Module):
    """``x + linear(x)``: a removable block."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.linear = nn.Linear(FEATURES, FEATURES, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weight)

    def forward(self, x):
        return x + self.linear(x)


class _LoudAndQuiet(nn.Module):
    """A stem, two blocks and a head that reads features 0 and 1 only. The first block (loud) writes large values
    into features 2 and 3, which nothing after it reads: a large change of its input (high influence)
    that the output never sees (Fisher 0). The second (quiet) changes features 0 and 1 a little."""

    def __init__(self):
        super().__init__()
        loud, quiet = torch.zeros(FEATURES, FEATURES), torch.zeros(FEATURES, FEATURES)
        loud[2:, :2] = 5.0
        quiet[:2, :2] = torch.tensor([[0.2, -0.1], [0.1, 0.3]])
        self.stem = _Residual(torch.zeros(FEATURES, FEATURES))  # the blocks' input comes out of a layer
        self.blocks = nn.Sequential(_Residual(loud), _Residual(quiet))
        self.head = nn.Linear(FEATURES, 3)
        with torch.no_grad():
            self.head.weight[:, 2:] = 0.0

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def _handle() -> ModelHandle:
    torch.manual_seed(0)
    items = np.random.default_rng(0).normal(size=(48, FEATURES)).astype(np.float32)
    data = Dataset("loud-quiet", items[:16], None, items[16:32], None, x_train=items[32:])
    return ModelHandle("loud-quiet", "factory", _LoudAndQuiet().eval(), (1, FEATURES), data)


DEPTH_HALF = dict(granularity="channel", sparsity=0.0, depth=0.5, recalibrate=False)


def test_fisher_ranks_blocks_by_what_the_output_notices_and_other_criteria_by_influence():
    handle = _handle()
    by_influence = apply_plan(handle, Plan(criterion="l1", **DEPTH_HALF))
    by_fisher = apply_plan(handle, Plan(criterion="fisher", **DEPTH_HALF))
    assert (by_influence.block_score, by_fisher.block_score) == ("influence", "fisher")
    assert by_influence.dropped == ["blocks.1"]  # the loud block changes its input most
    assert by_influence.block_scores["blocks.0"] > by_influence.block_scores["blocks.1"]
    assert by_fisher.dropped == ["blocks.0"]  # ... and the output never sees it
    assert by_fisher.block_scores["blocks.0"] < 1e-12 < by_fisher.block_scores["blocks.1"]
    assert any("the depth share ranked blocks by fisher" in note for note in by_fisher.notes)
    with torch.no_grad():  # the loud block was invisible: removing it leaves the output as it was
        example = handle.example_input(4)
        torch.testing.assert_close(by_fisher.module(example), handle.module(example))


def test_a_new_criterion_re_ranks_the_blocks_of_a_resolved_plan():
    from core.prune.resolved import resolve
    handle = _handle()
    plan = Plan(criterion="l1", **DEPTH_HALF)
    resolved = resolve(plan, handle.module, handle.example_input()).with_depth(handle.module, handle.example_input(),
                                                                                handle.data)
    assert resolved.dropped == ("blocks.1",)
    same = Plan(criterion="l1", granularity="channel", sparsity=0.0, depth=0.5)  # recalibrate differs
    assert resolved.with_plan(same).dropped == ("blocks.1",)
    assert resolved.with_plan(Plan(criterion="fisher", **DEPTH_HALF)).dropped == ()  # to be ranked afresh


@pytest.mark.parametrize("criterion, order", [("l1", ["blocks.1", "blocks.0"]), ("fisher", ["blocks.0", "blocks.1"])])
def test_the_allocations_depth_option_ranks_blocks_as_depth_plans_do(criterion, order):
    handle = _handle()
    budget = _Budget.__new__(_Budget)  # the ranking alone: no sweep, no measurement
    budget.handle, budget.criterion = handle, criterion
    budget.result = {"blocks": [{"name": "blocks.0"}, {"name": "blocks.1"}]}
    assert budget.blocks() == order
    ranking = BlockRanking.for_criterion(criterion, data=handle.data, example_input=handle.example_input())
    assert ranking.order(handle.module, ["blocks.0", "blocks.1"])[0] == order
    assert apply_plan(handle, Plan(criterion=criterion, **DEPTH_HALF)).dropped == order[:1]


def test_a_block_gate_gradient_is_the_output_change_its_branch_makes():
    """Oracle: with the Gaussian likelihood, the per-item gradient of a gate on block b is noise . d(out)/dm,
    and out is linear in m here: out(m) = head(quiet(x + m * loud_branch(x))) for the loud block, etc."""
    module = _LoudAndQuiet().eval()
    module.head.weight.data[:, 2:] = 1.0  # now the head sees the loud block too
    x = torch.randn(6, FEATURES, generator=torch.Generator().manual_seed(1))
    gradients = fisher.block_gradients(module, ["blocks.0", "blocks.1"], [(x, None)], "embedding", seed=3, draws=2)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        dense = module(x)
        loud_in, quiet_in = x, module.blocks[0](x)
        loud_effect = module.head(module.blocks[1](loud_in + module.blocks[0].linear(loud_in))) \
            - module.head(module.blocks[1](loud_in))
        quiet_effect = module.head.weight @ module.blocks[1].linear(quiet_in).T       # (classes, items)
    expected = {"blocks.0": [], "blocks.1": []}
    for _ in range(2):
        noise = torch.randn(dense.shape, generator=generator)
        expected["blocks.0"].append((noise * loud_effect).sum(1))
        expected["blocks.1"].append((noise * quiet_effect.T).sum(1))
    for name, parts in expected.items():
        torch.testing.assert_close(gradients[name][:, 0], torch.cat(parts).double(), atol=1e-5, rtol=1e-5)


def test_criteria_built_on_fishers_scores_rank_blocks_by_fisher_and_the_others_by_influence():
    for name, entry in CRITERIA.items():
        assert entry.block_score == ("fisher" if "mask_gradients" in entry.needs else "influence"), name
    assert "residual branch" in CRITERIA["fisher"].help


def test_the_api_gives_the_scores_the_plans_criterion_ranks_blocks_by():
    from core import api
    handle = _handle()
    score, scores = api.block_scores(handle, "fisher")
    assert score == "fisher" and scores["blocks.0"] < 1e-12 < scores["blocks.1"]
    score, scores = api.block_scores(handle, "l2")
    assert score == "influence" and scores["blocks.0"] > scores["blocks.1"]
