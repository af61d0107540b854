"""Spending a MAC budget on depth, width or both: every option is measured, the chosen one meets the
budget and scores best, and the CLI says which it chose."""
from __future__ import annotations

from pathlib import Path

import pytest

import core.cli.allocate as allocate_command
from core.cli import main
from core.errors import PrunelabError
from core.inspect import count_macs
from core.prune.engine import apply_plan
from core.search.sensitivity import sensitivity
from core.search.spend import spend_budget
from core.search.sweep_points import Scorer
from core.sources import load_model

TINY_VIT = "tests/fixtures/transformer_models.py:tiny_vit"


@pytest.fixture(scope="module")
def vit_sweep(tmp_path_factory):
    """A tiny ViT (2 layers, no BatchNorm) and a short channel sweep of it with its block points."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELAB_HOME", str(tmp_path_factory.mktemp("spend-home")))
        handle = load_model(TINY_VIT, input_shape=(1, 1, 8, 8))
        return handle, sensitivity(handle, "channel", levels=(0.0, 0.5, 0.9), max_items=32)


METRIC = f"{Path(__file__).parent / 'fixtures' / 'metrics.py'}:macro_f1"


@pytest.fixture(scope="module")
def resnet_sweep(tmp_path_factory):
    """digits-resnet with the user's macro F1 and one sweep of its dense point and its 3 blocks, for the file."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELAB_HOME", str(tmp_path_factory.mktemp("spend-resnet-home")))
        handle = load_model("digits-resnet", metric=METRIC)
        return handle, sensitivity(handle, "channel", levels=(0.0,), max_items=64)


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


def test_digits_resnet_spends_on_depth_and_says_why_not_width(resnet_sweep, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path))
    resnet, result = resnet_sweep
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


def test_spending_reads_the_users_own_metric(resnet_sweep, tmp_path, monkeypatch, capsys):
    """quality= ranks the blocks, scores the options and labels them by a number of the user's metric."""
    monkeypatch.setenv("PRUNELAB_HOME", str(tmp_path))
    handle, result = resnet_sweep
    assert all("macro F1" in point["metrics"] for point in result["blocks"])
    spending = spend_budget(handle, "depth", target_mac_reduction=1.2, sensitivity=result, quality="macro F1")
    assert spending.label == "macro F1" and "macro F1" in spending.rows()[0]
    dense_f1 = result["baseline_metrics"]["macro F1"]
    cheapest = min(result["blocks"], key=lambda point: dense_f1 - point["metrics"]["macro F1"])
    assert spending.plan.drop[0] == cheapest["name"]
    (depth,) = spending.options
    module = apply_plan(handle, spending.plan).module.eval()
    assert depth.accuracy == pytest.approx(Scorer(handle, "val").figures(module)["metrics"]["macro F1"])
    with pytest.raises(PrunelabError, match="no figure 'mAP'"):
        spend_budget(handle, "depth", target_mac_reduction=1.2, sensitivity=result, quality="mAP")
    monkeypatch.setattr(allocate_command, "sensitivity", lambda *args, **options: result)  # no second sweep
    out = tmp_path / "plan.yaml"
    assert main(["allocate", "digits-resnet", "--metric", METRIC, "--quality", "macro F1", "--spend", "depth",
                 "--target-mac-reduction", "1.2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"dense macro F1 {spending.dense_accuracy:.4g}" in printed and f"macro F1 {depth.accuracy:.4g}" in printed
