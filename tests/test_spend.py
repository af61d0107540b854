"""Spending a MAC budget on depth, width or both: every option is measured, the chosen one meets the
budget and scores best, and the CLI says which it chose."""
from __future__ import annotations

import pytest

from core.errors import PrunelabError
from core.inspect import count_macs
from core.prune.engine import apply_plan
from core.search.sensitivity import sensitivity
from core.search.spend import spend_budget
from core.sources import load_model

TINY_VIT = "tests/fixtures/transformer_models.py:tiny_vit"


@pytest.fixture(scope="module")
def vit_sweep(tmp_path_factory):
    """A tiny ViT (2 layers, no BatchNorm) and a short channel sweep of it with its block points."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELAB_HOME", str(tmp_path_factory.mktemp("spend-home")))
        handle = load_model(TINY_VIT, input_shape=(1, 1, 8, 8))
        return handle, sensitivity(handle, "channel", levels=(0.0, 0.5, 0.9), max_items=32)


def _check(handle, spending, target: float) -> None:
    dense = count_macs(handle.module, handle.example_input(1))
    reached = count_macs(apply_plan(handle, spending.plan).module, handle.example_input(1))
    assert dense / reached >= target * 0.99
    chosen = next(option for option in spending.options if option.way == spending.way)
    assert chosen.plan == spending.plan and chosen.meets
    for option in spending.options:
        if option.meets:
            assert option.accuracy - option.loss <= chosen.accuracy - chosen.loss + 1e-12


def test_best_of_depth_width_and_both_on_a_tiny_transformer(vit_sweep):
    handle, result = vit_sweep
    assert len(result["blocks"]) == 2
    spending = spend_budget(handle, "best", target_mac_reduction=2.5, sensitivity=result)
    assert [option.way for option in spending.options] == ["width", "depth", "both"]
    _check(handle, spending, 2.5)
    width, depth, both = spending.options
    assert width.plan.layers and not width.plan.drop
    assert depth.plan.drop and not depth.plan.layers  # whole blocks only
    assert len(both.plan.drop) == 1 and both.plan.layers  # one block, then channels for the rest
    rows = spending.rows()
    assert sum(row["chosen"] for row in rows) == 1 and all(row["reduction"] >= 2.5 * 0.99 for row in rows)
    with pytest.raises(PrunelabError, match="no way reaches"):
        spend_budget(handle, "width", target_mac_reduction=500, sensitivity=result)


def test_digits_resnet_spends_on_depth_and_says_why_not_width(resnet, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path))
    result = sensitivity(resnet, "channel", levels=(0.0,), max_items=64)  # the dense point and the 3 blocks
    spending = spend_budget(resnet, "best", target_mac_reduction=1.2, sensitivity=result)
    _check(resnet, spending, 1.2)
    assert spending.way == "depth" and spending.plan.drop
    width, _, both = spending.options
    assert width.plan is None and "no channel groups" in width.note  # this sweep has no channel curves
    assert both.plan is None and both.note
    lines = spending.lines()
    assert lines[0].startswith("spent on depth: drops layer") and lines[2].startswith("-> depth")
    bad = cli("allocate", "digits-resnet", "--spend", "best", "--target-sparsity", "0.5", "--out", tmp_path / "p.yaml")
    assert bad["code"] != 0 and "needs --target-mac-reduction or --target-latency-ms" in bad["stderr"]
    assert "Traceback" not in bad["stderr"]
