"""One-shot quality of channel plans: Fisher unit importance and least-squares reconstruction."""
import copy

import pytest
import torch
from torch import nn

from core.errors import PrunelabError
from core.prune import fisher, reconstruct
from core.prune.engine import apply_plan
from core.prune.plan import Plan


def test_solve_recovers_a_linear_map_and_a_large_ridge_keeps_the_prior():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(400, 6, generator=generator)
    weight, bias = torch.randn(3, 6, generator=generator), torch.randn(3, generator=generator)
    targets = inputs @ weight.T + bias
    prior = torch.zeros(3, 6)
    found, found_bias = reconstruct.solve(inputs, targets, prior, bias=True, ridge=1e-9)
    assert torch.allclose(found.float(), weight, atol=1e-4) and torch.allclose(found_bias.float(), bias, atol=1e-4)
    kept, _ = reconstruct.solve(inputs, targets, weight * 2, bias=True, ridge=1e6)
    assert torch.allclose(kept.float(), weight * 2, atol=1e-3)


def test_refit_layer_compensates_removed_inputs_and_leaves_an_exact_layer_alone():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(500, 8, generator=generator)
    inputs[:, 6:] = inputs[:, :2] * 0.9 + 0.5   # the two removed inputs are nearly copies of kept ones, plus a mean
    dense = nn.Linear(8, 4)
    with torch.no_grad():
        targets = dense(inputs)
    pruned = nn.Linear(6, 4)
    with torch.no_grad():
        pruned.weight.copy_(dense.weight[:, :6])
        pruned.bias.copy_(dense.bias)
    reduction = reconstruct.refit_layer(pruned, inputs[:, :6], targets, ridge=1e-6)
    assert reduction > 0.99
    with torch.no_grad():
        assert torch.allclose(pruned(inputs[:, :6]), targets, atol=1e-2)
    exact = nn.Linear(6, 4)
    with torch.no_grad():
        own = exact(inputs[:, :6])
    weight = exact.weight.detach().clone()
    assert reconstruct.refit_layer(exact, inputs[:, :6], own) == 0.0    # nothing to gain: the layer stays
    assert torch.equal(exact.weight, weight)


def _explicit_mask_gradient(model: nn.Sequential, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Oracle: per-item gradient of the summed cross-entropy with respect to a mask on layer 2's inputs."""
    rows = []
    for item, label in zip(inputs, labels):
        mask = torch.ones(model[2].in_features, requires_grad=True)
        output = model[2](model[1](model[0](item[None])) * mask)
        loss = nn.functional.cross_entropy(output, label[None], reduction="sum")
        rows.append(torch.autograd.grad(loss, mask)[0])
    return torch.stack(rows)


def test_mask_gradients_are_per_item_gradients_of_a_unit_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    inputs, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    gradients = fisher.mask_gradients(model, {"2": model[2]}, [(inputs[:4], labels[:4]), (inputs[4:], labels[4:])],
                                      "logits")
    assert gradients["2"].shape == (6, 7)
    assert torch.allclose(gradients["2"].float(), _explicit_mask_gradient(model, inputs, labels), atol=1e-5)


def test_embedding_fisher_is_not_zero_at_the_dense_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4)).eval()
    inputs = torch.randn(32, 5)
    gradients = fisher.mask_gradients(model, {"2": model[2]}, [(inputs, None)], "embedding")
    assert gradients["2"].shape == (64, 7)   # two draws per item
    scores = fisher.fisher(gradients["2"])
    assert (scores > 0).sum() >= 4           # every ReLU unit that ever fires matters


def test_shared_units_add_gradients_before_squaring():
    gradients = torch.tensor([[1.0, -1.0, 2.0, 0.0], [3.0, 3.0, 0.0, 1.0]])
    heads = fisher.head_importance(gradients, kv_heads=2)            # heads of two columns each
    assert torch.allclose(heads, torch.tensor([(0 + 36) / 2, (4 + 1) / 2], dtype=heads.dtype))
    channels = fisher.channel_importance([(gradients.double(), [0, 1, 2, 3], [0, 0, 1, 1])], channels=2)
    assert torch.allclose(channels, heads.double())


def test_plan_reconstruct_is_validated_and_round_trips(tmp_path):
    with pytest.raises(PrunelabError, match="reconstruct must be true or false"):
        Plan(reconstruct="yes")
    plan = Plan(granularity="channel", criterion="fisher", reconstruct=False)
    assert Plan.load(plan.save(tmp_path / "plan.yaml")) == plan
    with pytest.raises(PrunelabError, match="fisher"):
        Plan(criterion="fisher")  # unstructured


@pytest.mark.slow
def test_fisher_and_reconstruction_on_the_residual_cnn(resnet):
    from benchmarks.common import test_accuracy

    data = resnet.data
    results = {reconstruct_: apply_plan(resnet, Plan(granularity="channel", criterion="fisher", sparsity=0.5,
                                                      round_to=8, reconstruct=reconstruct_))
               for reconstruct_ in (False, True)}
    assert any("reconstruction:" in note for note in results[True].notes)
    assert not any("reconstruction:" in note for note in results[False].notes)
    accuracy = {key: test_accuracy(result.module, data.x_val, data.y_val) for key, result in results.items()}
    assert accuracy[True] > accuracy[False]
    l1 = apply_plan(resnet, Plan(granularity="channel", criterion="l1", sparsity=0.5, round_to=8, reconstruct=False))
    assert accuracy[False] > test_accuracy(l1.module, data.x_val, data.y_val)


def test_reconstruction_leaves_the_input_model_alone_and_skips_models_without_data(cnn):
    before = copy.deepcopy(cnn.module.state_dict())
    result = apply_plan(cnn, Plan(granularity="channel", sparsity=0.5))
    assert any("reconstruction:" in note for note in result.notes)
    assert all(torch.equal(value, cnn.module.state_dict()[key]) for key, value in before.items())
    bare = apply_plan(cnn.module, Plan(granularity="channel", sparsity=0.5), example_input=cnn.example_input())
    assert not any("reconstruction:" in note for note in bare.notes)


def test_fisher_evidence_is_computed_once_per_model_and_data(cnn, monkeypatch):
    calls = []
    compute = fisher.mask_gradients
    monkeypatch.setattr(fisher, "mask_gradients", lambda *args, **kwargs: calls.append(1) or compute(*args, **kwargs))
    fisher.clear_cache()
    plans = [Plan(granularity="channel", criterion="fisher", sparsity=share, reconstruct=False) for share in (0.3, 0.6)]
    first, second = (apply_plan(cnn, plan) for plan in plans)
    assert len(calls) == 1
    assert sum(p.numel() for p in first.module.parameters()) > sum(p.numel() for p in second.module.parameters())
    changed = copy.deepcopy(cnn.module)
    with torch.no_grad():
        next(changed.parameters()).mul_(0.5)
    apply_plan(changed, plans[0], data=cnn.data, example_input=cnn.example_input())
    assert len(calls) == 2


def test_comparable_scores_are_ranked_as_they_are_in_global_scope():
    from core.prune import select

    scores = {"quiet": torch.tensor([1.0, 2.0]), "loud": torch.tensor([10.0, 20.0])}
    assert select.global_sparsities(scores, 0.5) == {"quiet": 0.5, "loud": 0.5}
    assert select.global_sparsities(scores, 0.5, normalize=False) == {"quiet": 1.0, "loud": 0.0}


def test_global_fisher_shares_heads_and_neurons_between_layers(tinylm):
    import dataclasses

    data = tinylm.data
    few = dataclasses.replace(data, x_train=(data.x_train if data.x_train is not None else data.x_val)[:8])
    result = apply_plan(tinylm, Plan(granularity="channel", criterion="fisher", scope="global", sparsity=0.5,
                                     reconstruct=False), data=few)
    for unit in ("head", "channel"):
        rows = [row for row in result.kept.values() if row["unit"] == unit and row["target"] > 0]
        assert rows
        assert len({row["target"] for row in rows}) > 1                    # each layer its own share
        kept, total = sum(row["kept"] for row in rows), sum(row["total"] for row in rows)
        assert abs(kept / total - 0.5) < 0.1


class _PostNormBlock(nn.Module):
    """x -> norm(x + down(relu(up(x)))), with an optional layer scale module between down and the sum."""

    def __init__(self, width: int, hidden: int, scaled: bool = False):
        super().__init__()
        self.up, self.down, self.norm = nn.Linear(width, hidden), nn.Linear(hidden, width), nn.LayerNorm(width)
        self.scale = nn.Linear(width, width) if scaled else nn.Identity()

    def forward(self, value):
        return self.norm(value + self.scale(self.down(torch.relu(self.up(value)))))


def _norm_inputs(model: nn.Module, inputs: torch.Tensor) -> list[torch.Tensor]:
    seen = []
    handles = [block.norm.register_forward_pre_hook(lambda norm, args: seen.append(args[0].detach()))
               for block in model if isinstance(block, _PostNormBlock)]
    with torch.no_grad():
        model(inputs)
    for handle in handles:
        handle.remove()
    return seen


def _halve_hidden(block: _PostNormBlock) -> None:
    """Remove the second half of the block's hidden units (the rows of up, the columns of down)."""
    kept = block.up.out_features // 2
    up, down = nn.Linear(block.up.in_features, kept), nn.Linear(kept, block.down.out_features)
    with torch.no_grad():
        up.weight.copy_(block.up.weight[:kept])
        up.bias.copy_(block.up.bias[:kept])
        down.weight.copy_(block.down.weight[:, :kept])
        down.bias.copy_(block.down.bias)
    block.up, block.down = up, down


def test_a_layer_before_a_norm_is_fit_to_the_dense_residual_sum():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(8), _PostNormBlock(8, 16), _PostNormBlock(8, 16)).eval()
    inputs = torch.randn(600, 8)
    names = ["1.down", "2.down"]
    dense = reconstruct.dense_outputs(model, names, inputs, None)
    sums = _norm_inputs(model, inputs)
    assert set(dense.sums) == set(names)
    assert all(torch.equal(dense.sums[name], value) for name, value in zip(names, sums))
    for block in model[1:]:
        _halve_hidden(block)
    before = [(value - wanted).norm() for value, wanted in zip(_norm_inputs(model, inputs), sums)]
    reduced = reconstruct.refit(model, [reconstruct.Target(name, None) for name in names], dense, inputs, None)
    after = [(value - wanted).norm() for value, wanted in zip(_norm_inputs(model, inputs), sums)]
    assert set(reduced) == set(names) and min(reduced.values()) > 0
    assert all(late < early for late, early in zip(after, before))  # the refit weights are in the model


def test_a_layer_with_weights_between_the_layer_and_the_norm_breaks_the_pairing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.LayerNorm(8), _PostNormBlock(8, 16, scaled=True)).eval()
    dense = reconstruct.dense_outputs(model, ["1.down"], torch.randn(100, 8), None)
    assert "1.down" in dense.outputs and dense.sums == {}


class _PreNormBlock(_PostNormBlock):
    def forward(self, value):
        return value + self.down(torch.relu(self.up(self.norm(value))))


def test_a_pre_norm_stream_is_not_paired():
    """Pre-norm (Llama): the stream is never normalised in place, so layers keep the plain target."""
    torch.manual_seed(0)
    model = nn.Sequential(_PreNormBlock(8, 16), _PreNormBlock(8, 16), nn.LayerNorm(8)).eval()
    dense = reconstruct.dense_outputs(model, ["0.down", "1.down"], torch.randn(100, 8), None)
    assert set(dense.outputs) == {"0.down", "1.down"} and dense.sums == {}
