"""Unstructured pruning checked against torch.nn.utils.prune; exact counts; inputs never mutated."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from core.errors import PrunelabError
from core.prune.engine import apply_plan
from core.prune.plan import Plan


def tie_free_mlp() -> nn.Module:
    """An MLP whose weights are distinct in magnitude across all layers."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5))
    count = sum(layer.weight.numel() for layer in model if isinstance(layer, nn.Linear))
    magnitudes = (torch.randperm(count).float() + 1) / count
    signs = torch.where(torch.rand(count) < 0.5, -1.0, 1.0)
    start = 0
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            size = layer.weight.numel()
            layer.weight.copy_((magnitudes[start:start + size] * signs[start:start + size]).reshape(layer.weight.shape))
            start += size
    return model


def masks_of(model: nn.Module) -> list[torch.Tensor]:
    return [layer.weight != 0 for layer in model if isinstance(layer, nn.Linear)]


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.87])
def test_global_l1_equals_torch_global_unstructured(sparsity):
    model = tie_free_mlp()
    ours = apply_plan(model, Plan(criterion="l1", scope="global", sparsity=sparsity, ignore=()))
    oracle = copy.deepcopy(model)
    parameters = [(layer, "weight") for layer in oracle if isinstance(layer, nn.Linear)]
    prune.global_unstructured(parameters, pruning_method=prune.L1Unstructured, amount=sparsity)
    expected = [layer.weight_mask.bool() for layer, _ in parameters]
    for mine, theirs in zip(masks_of(ours.module), expected):
        assert torch.equal(mine, theirs)
    for name, expected_mask in zip(("0", "2", "4"), expected):
        assert torch.equal(ours.masks[name], expected_mask)


@pytest.mark.parametrize("sparsity", [0.25, 0.6])
def test_layer_l1_equals_torch_l1_unstructured(sparsity):
    model = tie_free_mlp()
    ours = apply_plan(model, Plan(criterion="l1", sparsity=sparsity, ignore=()))
    for index in (0, 2, 4):
        oracle = copy.deepcopy(model[index])
        prune.l1_unstructured(oracle, "weight", amount=sparsity)
        assert torch.equal(ours.module[index].weight != 0, oracle.weight_mask.bool())


@pytest.mark.parametrize("criterion", ["l1", "l2", "random", "taylor", "activation"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_exact_counts_surviving_weights_and_input_untouched(cnn, criterion, scope):
    before = {key: value.clone() for key, value in cnn.module.state_dict().items()}
    plan = Plan(criterion=criterion, scope=scope, sparsity=0.6, layers={"features.1.0": 0.3})
    result = apply_plan(cnn, plan)
    dense = dict(cnn.module.named_modules())
    pruned = dict(result.module.named_modules())
    ranked_total, ranked_zeros = 0, 0
    for name, keep in result.masks.items():
        weight, original = pruned[name].weight.detach(), dense[name].weight.detach()
        assert torch.equal(weight[keep], original[keep])          # survivors unchanged
        assert int((weight[~keep] != 0).sum()) == 0
        zeros = int((~keep).sum())
        if scope == "layer" or name == "features.1.0":
            assert zeros == round(plan.layer_targets.get(name, 0.6) * keep.numel())
        else:
            ranked_total, ranked_zeros = ranked_total + keep.numel(), ranked_zeros + zeros
    if scope == "global":
        assert ranked_zeros == round(0.6 * ranked_total)
    assert "fc2" not in result.masks and result.layer_sparsity["fc2"] == 0.0  # final classifier left dense
    after = cnn.module.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert not any(hasattr(module, "weight_orig") for module in result.module.modules())
    result.module(cnn.example_input())


def test_data_criteria_without_data_say_so():
    model = tie_free_mlp()
    for criterion in ("taylor", "activation"):
        with pytest.raises(PrunelabError, match="needs data"):
            apply_plan(model, Plan(criterion=criterion), data=None)


@pytest.mark.slow
def test_taylor_works_on_unlabelled_data(user_model):
    assert not user_model.data.labelled
    result = apply_plan(user_model, Plan(criterion="taylor", sparsity=0.5))
    assert result.layer_sparsity["pointwise"] == pytest.approx(0.5)
    assert result.layer_sparsity["head"] == 0.0


def test_ignore_overrides_the_default(mlp):
    result = apply_plan(mlp, Plan(sparsity=0.5, ignore=["fc1"]))
    assert result.layer_sparsity["fc1"] == 0.0
    assert result.layer_sparsity["fc3"] == pytest.approx(0.5)
