"""N:M sparsity: at least N zeros in every group of M along the input; ineligible layers stay dense."""
import pytest
import torch

from core.prune.engine import apply_plan
from core.prune.nm import nm_mask
from core.prune.plan import Plan


def groups_of(weight: torch.Tensor, m: int) -> torch.Tensor:
    """(groups, m) along input channels at each kernel position, or along the row."""
    if weight.ndim == 2:
        return weight.reshape(-1, m)
    if weight.shape[1] % m == 0:
        return weight.movedim(1, -1).reshape(-1, m)
    return weight.reshape(-1, m)


@pytest.mark.parametrize("granularity", ["2:4", "1:4", "4:8"])
@pytest.mark.parametrize("criterion", ["l1", "activation"])
def test_every_group_of_every_eligible_layer_has_n_zeros(cnn, granularity, criterion):
    n, m = map(int, granularity.split(":"))
    result = apply_plan(cnn, Plan(granularity=granularity, criterion=criterion))
    layers = dict(result.module.named_modules())
    assert set(result.masks) == {"features.1.0", "features.3.0", "fc1"}
    for name in result.masks:
        zeros = (groups_of(layers[name].weight.detach(), m) == 0).sum(1)
        assert int(zeros.min()) >= n
        assert result.layer_sparsity[name] == pytest.approx(n / m)
    assert result.layer_sparsity["features.0.0"] == 0.0          # one input channel, 9 weights a row
    assert any("features.0.0" in note for note in result.notes)
    assert any("no sparse kernels" in note for note in result.notes)


def test_groups_follow_input_channels_not_kernel_positions():
    scores = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(2, 4, 3, 3)
    mask = nm_mask(scores, 2, 4)
    # along input channels the scores rise, so channels 0 and 1 are pruned at every kernel position
    assert not mask[:, :2].any() and mask[:, 2:].all()


def test_row_layout_when_channels_do_not_divide():
    scores = torch.rand(3, 2, 2, 2)                    # 2 input channels, rows of 8
    mask = nm_mask(scores, 2, 4)
    assert int((~mask.reshape(-1, 4)).sum(1).min()) == 2
    assert nm_mask(torch.rand(3, 1, 3, 3), 2, 4) is None


def test_attention_and_surviving_weights(user_model):
    result = apply_plan(user_model, Plan(granularity="2:4"))
    assert {"attention", "attention.out_proj", "pointwise"} <= set(result.masks)
    dense = dict(user_model.module.named_modules())["pointwise"].weight
    pruned = result.module.pointwise.weight
    keep = result.masks["pointwise"]
    assert torch.equal(pruned[keep], dense[keep]) and int((pruned[~keep] != 0).sum()) == 0
    assert int((user_model.module.pointwise.weight == 0).sum()) == 0   # input untouched
