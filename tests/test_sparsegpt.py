"""SparseGPT and Wanda: the reconstruction on small exact cases, Wanda against a hand computation,
convolutions as matrix products, and the layer-by-layer order of calibration inputs."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from core.data import Dataset
from core.errors import PrunelabError
from core.inspect import prunable_layers
from core.prune import calibrated, layer_inputs, layerwise
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.prune.sparsegpt import Target, reconstruct


def correlated_problem(rows=32, columns=64, samples=512, seed=0):
    """A weight and full-rank but strongly correlated inputs (columns x samples), as real activations are."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator)
    mixing = torch.randn(columns, columns, generator=generator)
    inputs = mixing @ torch.randn(columns, samples, generator=generator)
    return weight, inputs


def magnitude_keep(weight: torch.Tensor, target: Target) -> torch.Tensor:
    if target.m:
        groups = weight.abs().reshape(-1, target.m)
        lowest = groups.topk(target.n, dim=1, largest=False).indices
        return torch.ones_like(groups, dtype=torch.bool).scatter_(1, lowest, False).reshape(weight.shape)
    threshold = weight.abs().flatten().kthvalue(target.count).values
    return weight.abs() > threshold


@pytest.mark.parametrize("target", [Target(count=32 * 32), Target(n=2, m=4), Target(n=4, m=8)],
                         ids=["50%", "2:4", "4:8"])
def test_reconstruction_beats_magnitude_at_equal_sparsity_and_pattern(target):
    weight, inputs = correlated_problem()
    assert torch.linalg.matrix_rank(inputs) == 64
    pruned, keep = reconstruct(weight, inputs @ inputs.T, target, block=16)
    assert int((~keep).sum()) == 32 * 32 == int((pruned == 0).sum())
    assert torch.all(pruned[~keep] == 0)
    if target.m:
        assert torch.all((~keep).reshape(-1, target.m).sum(1) == target.n)
    error = torch.linalg.norm(weight @ inputs - pruned @ inputs)
    baseline = torch.linalg.norm(weight @ inputs - (weight * magnitude_keep(weight, target)) @ inputs)
    assert error < 0.8 * baseline
    assert not torch.equal(pruned[keep], weight[keep])  # survivors moved: reconstruction, not masking


def test_exact_count_when_blocks_do_not_divide_the_columns():
    weight, inputs = correlated_problem(rows=5, columns=37)
    _, keep = reconstruct(weight, inputs @ inputs.T, Target(count=61), block=8)
    assert int((~keep).sum()) == 61


def test_nothing_to_prune_leaves_the_weight_unchanged():
    weight, inputs = correlated_problem(rows=4, columns=16)
    pruned, keep = reconstruct(weight, inputs @ inputs.T, Target(count=0))
    assert keep.all() and torch.allclose(pruned, weight)


def test_inputs_that_never_fire_are_pruned_first():
    weight, inputs = correlated_problem(rows=8, columns=16)
    inputs[3] = 0.0                                   # column 3 is dead on the calibration data
    _, keep = reconstruct(weight, inputs @ inputs.T, Target(count=8))
    assert not keep[:, 3].any() and int((~keep).sum()) == 8


def test_wanda_equals_a_hand_computation():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 0.6], [4.0, 1.0, -1.0, 2.0]]))
    inputs = np.array([[1.0, 0.0, 0.1, 2.0], [1.0, 0.0, 0.1, 2.0], [1.0, 3.0, 0.1, 2.0], [1.0, 4.0, 0.1, 2.0]],
                      dtype=np.float32)
    # input norms 2, 5, 0.2, 4: scores row 0: 2, 10, 0.6, 2.4; row 1: 8, 5, 0.2, 8. Globally the two lowest
    # of row 1 would survive row 0's 2 and 2.4; compared within rows, each row loses its own two lowest.
    data = Dataset("hand", inputs, None, inputs, None, x_train=inputs)
    result = apply_plan(nn.Sequential(layer), Plan(criterion="wanda", ignore=[]), data, torch.from_numpy(inputs[:1]))
    expected = torch.tensor([[0.0, -2.0, 0.0, 0.6], [4.0, 0.0, 0.0, 2.0]])
    assert torch.equal(result.module[0].weight.detach(), expected)
    assert torch.equal(layer.weight[0], torch.tensor([1.0, -2.0, 3.0, 0.6]))  # the input model is untouched


@pytest.mark.parametrize("conv", [nn.Conv2d(6, 8, 3, stride=2, padding=1, dilation=2, groups=2),
                                  nn.Conv1d(4, 6, 5, padding="same", padding_mode="reflect"),
                                  nn.Conv3d(2, 4, (2, 3, 3), padding=1)], ids=["2d-grouped", "1d-same", "3d"])
def test_convolutions_read_as_matrix_products(conv):
    inputs = torch.randn(2, conv.in_channels, *([7] * len(conv.kernel_size)))
    layer = prunable_layers(nn.Sequential(conv))[0]
    adapter = layer_inputs.adapter(layer)
    products = [patches @ part.T for patches, part in
                zip(adapter.inputs(conv, (inputs,), {}), adapter.parts(layer))]
    expected = conv(inputs).movedim(1, -1).reshape(-1, conv.out_channels) - conv.bias
    assert torch.allclose(torch.cat(products, dim=1), expected, atol=1e-5)


def test_each_layer_sees_the_already_pruned_layers_before_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    batches = [torch.randn(32, 8), torch.randn(32, 8)]
    seen = {}

    def solve(layer, observer):
        seen[layer.name] = observer.sums[0].clone()
        return calibrated.solver(lambda name: 0.5, None, [])(layer, observer)

    layerwise.prune_layerwise(model, prunable_layers(model), batches, solve)
    hidden = torch.cat([model[1](model[0](batch)) for batch in batches]).detach()  # the pruned first layer
    assert torch.allclose(seen["2"], hidden.T @ hidden, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.mark.slow
def test_transformer_blocks_chain_and_match_the_pass_that_stops_at_each_block(tiny_llama, monkeypatch):
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(2)]
    stages = layerwise.stages_of(tiny_llama, blocks_of(tiny_llama))
    assert [len(stage.layers) for stage in stages] == [7, 7, 7]
    solve = calibrated.solver(lambda name: 0.5, (2, 4), [])
    chained = copy.deepcopy(tiny_llama)
    chain = layerwise._Chain(chained, list(chained.model.layers), 0, batches)
    assert chain.valid
    assert chain.calls[2][1][1] is chain.calls[1][1][1]  # alike layers: block 2 reuses block 1's arguments
    masks = layerwise.prune_layerwise(chained, blocks_of(chained),
                                      batches, solve)
    monkeypatch.setattr(layerwise._Chain, "__init__", _invalid_chain)
    unchained = copy.deepcopy(tiny_llama)
    again = layerwise.prune_layerwise(unchained, blocks_of(unchained),
                                      batches, solve)
    assert masks.keys() == again.keys() and len(masks) == 21
    for name, mask in masks.items():
        assert torch.equal(mask, again[name]), name
    weight = dict(chained.named_modules())["model.layers.2.mlp.down_proj"].weight
    assert torch.allclose(weight, dict(unchained.named_modules())["model.layers.2.mlp.down_proj"].weight, atol=1e-5)


def test_only_alike_hugging_face_layers_share_their_arguments(tiny_llama):
    assert layerwise._uniform_layers(tiny_llama)
    assert not layerwise._uniform_layers(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)))  # no config: full pass
    mixed = copy.deepcopy(tiny_llama)
    mixed.config.layer_types = ["sliding_attention", "full_attention", "sliding_attention"]  # Gemma 2's pattern
    assert not layerwise._uniform_layers(mixed)
    mask = torch.ones(2, 3)
    assert layerwise._same_arguments([((None, mask), {"position": (mask, mask)})],
                                     [((torch.zeros(1), mask.clone()), {"position": (mask, mask)})])
    assert not layerwise._same_arguments([((None,), {"bias": mask})], [((None,), {"bias": mask + 1})])


def blocks_of(model):
    return [layer for layer in prunable_layers(model) if layer.name != "lm_head"]


def _invalid_chain(self, model, blocks, first, batches):
    self.calls, self.valid = [], False


@pytest.mark.slow
def test_sparsegpt_plans_prune_exactly_and_say_what_they_did(cnn):
    before = {key: value.clone() for key, value in cnn.module.state_dict().items()}
    result = apply_plan(cnn, Plan(granularity="2:4", criterion="sparsegpt"))
    assert set(result.masks) == {"features.1.0", "features.3.0", "fc1"}
    layers, dense = dict(result.module.named_modules()), dict(cnn.module.named_modules())
    for name, keep in result.masks.items():
        weight = layers[name].weight.detach()
        assert int((weight[~keep] != 0).sum()) == 0
        groups = (~keep).movedim(1, -1).reshape(-1, 4) if keep.ndim == 4 else (~keep).reshape(-1, 4)
        assert torch.all(groups.sum(1) == 2)
    keep = result.masks["fc1"]
    assert not torch.equal(layers["fc1"].weight[keep], dense["fc1"].weight[keep])  # survivors rebuilt
    assert any("calibration items" in note and "surviving weights" in note for note in result.notes)
    assert any("features.0.0" in note for note in result.notes)
    assert all(torch.equal(before[key], value) for key, value in cnn.module.state_dict().items())
    unstructured = apply_plan(cnn, Plan(criterion="sparsegpt", sparsity=0.6, layers={"fc1": 0.3}))
    for name, keep in unstructured.masks.items():
        assert int((~keep).sum()) == round((0.3 if name == "fc1" else 0.6) * keep.numel())


def test_wanda_compares_within_rows_and_keeps_survivors(cnn):
    result = apply_plan(cnn, Plan(criterion="wanda", sparsity=0.5))
    dense = dict(cnn.module.named_modules())
    for name, keep in result.masks.items():
        rows = keep.reshape(keep.shape[0], -1)
        assert torch.all((~rows).sum(1) == round(0.5 * rows.shape[1]))
        assert torch.equal(dict(result.module.named_modules())[name].weight[keep], dense[name].weight[keep])


@pytest.mark.parametrize("name, hint", [("wanda", "criterion 'activation'"), ("sparsegpt", "per-layer targets")])
def test_layer_only_criteria_refuse_global_scope_in_one_line(name, hint):
    with pytest.raises(PrunelabError, match=f"scope 'global' does not apply to criterion '{name}'") as refused:
        Plan(criterion=name, scope="global")
    assert hint in str(refused.value) and "\n" not in str(refused.value)
    assert Plan(criterion=name, granularity="2:4", scope="global").scope == "global"  # N:M has no ranking anyway
    assert Plan(criterion="activation", scope="global").scope == "global"


def test_calibrated_criteria_need_data_and_weights():
    with pytest.raises(PrunelabError, match="calibration data"):
        apply_plan(nn.Sequential(nn.Linear(8, 8)), Plan(criterion="sparsegpt", ignore=[]), data=None,
                   example_input=torch.randn(1, 8))
    for name in ("wanda", "sparsegpt"):
        with pytest.raises(PrunelabError, match="not channel"):
            Plan(criterion=name, granularity="channel")
