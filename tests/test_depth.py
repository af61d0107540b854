"""Depth pruning: removable blocks found from the graph, removed physically, ranked by block influence."""
from __future__ import annotations

import onnx
import pytest
import torch

from core.deploy.export import export_onnx
from core.errors import PrunelabError
from core.prune.blocks import find_blocks, removable_blocks
from core.prune.depth import block_influence, depth_count
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from tests.fixtures import hf_models

DEPTH_ONLY = dict(granularity="unstructured", sparsity=0.0)


def _skipped_output(module, names, example):
    """The dense model's output with each named block's forward replaced by its input (the oracle)."""
    hooks = [module.get_submodule(name).register_forward_hook(
        lambda child, args, kwargs, output: args[0] if args else kwargs["hidden_states"], with_kwargs=True)
        for name in names]
    try:
        with torch.no_grad():
            return module(example)
    finally:
        for hook in hooks:
            hook.remove()


def test_digits_resnet_blocks_and_the_ones_that_cannot_go(resnet):
    blocks = {block.name: block for block in find_blocks(resnet.module, resnet.example_input())}
    assert [name for name, block in blocks.items() if block.removable] == ["layer1", "layer3", "layer5"]
    assert not blocks["layer2"].removable and "shape differs" in blocks["layer2"].reason  # projection + stride
    assert "layer4" not in blocks  # depthwise block: no residual at all
    for parameter in resnet.module.parameters():
        assert parameter.grad is None


@pytest.mark.parametrize("build, example, expected", [
    (hf_models.bert, torch.randint(0, hf_models.VOCAB, hf_models.TOKENS).float(),
     ["model.encoder.layer.0", "model.encoder.layer.1"]),
    (hf_models.vit, torch.randn(hf_models.IMAGE), ["model.vit.layers.0", "model.vit.layers.1"]),
    (hf_models.llama_gqa, torch.randint(0, hf_models.VOCAB, hf_models.TOKENS).float(),
     ["model.layers.0", "model.layers.1"]),
])
def test_transformer_layers_are_blocks_found_without_class_names(build, example, expected):
    module = build()
    assert removable_blocks(module, example) == expected


def test_resnet_and_mobilenet_blocks_with_and_without_a_skip():
    module = hf_models.mobilenet_v2()
    blocks = find_blocks(module, torch.randn(hf_models.IMAGE))
    removable = [block for block in blocks if block.removable]
    assert removable and all(block.kind == "MobileNetV2InvertedResidual" for block in removable)
    refused = [block for block in blocks if not block.removable]
    assert refused and all("no skip connection" in block.reason for block in refused)
    from transformers import ResNetConfig, ResNetModel
    torch.manual_seed(0)
    resnet = ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[2, 2],
                                      layer_type="bottleneck")).eval()
    blocks = {block.name: block for block in find_blocks(resnet, torch.randn(1, 3, 64, 64))}
    assert [name for name, block in blocks.items() if block.removable] == [
        "encoder.stages.0.layers.1", "encoder.stages.1.layers.1"]
    assert "16x16x16 -> 32x16x16" in blocks["encoder.stages.0.layers.0"].reason  # a projection widens it


def test_a_dropped_block_is_its_skip_path_and_the_onnx_is_smaller(resnet):
    example = resnet.example_input()
    result = apply_plan(resnet, Plan(drop=["layer1", "layer5"], recalibrate=False, **DEPTH_ONLY))
    assert result.dropped == ["layer1", "layer5"]
    with torch.no_grad():
        pruned = result.module(example)
    torch.testing.assert_close(pruned, _skipped_output(resnet.module, ["layer1", "layer5"], example))
    dense_nodes = len(onnx.load_from_string(export_onnx(resnet.module, example)).graph.node)
    pruned_nodes = len(onnx.load_from_string(export_onnx(result.module, example)).graph.node)
    assert pruned_nodes <= dense_nodes - 6  # two convolutions (BatchNorm folded), add and relu per block


def test_dropping_decoder_layers_keeps_cache_indices_and_counts_consistent():
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         layer_types=["full_attention"] * 3, use_cache=False)  # plain passes return logits only
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 6))
    names = removable_blocks(model, ids)
    assert names == ["model.layers.0", "model.layers.1", "model.layers.2"]
    result = apply_plan(model, Plan(drop=["model.layers.1"], **DEPTH_ONLY), example_input=ids)
    pruned = result.module
    assert len(pruned.model.layers) == 2 and pruned.config.num_hidden_layers == 2
    assert len(pruned.config.layer_types) == 2
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1]
    assert model.config.num_hidden_layers == 3  # the original is untouched
    with torch.no_grad():  # a KV cache of the shorter model decodes one more token like a full pass
        cache = DynamicCache(config=pruned.config)
        pruned(ids[:, :5], cache=cache, use_cache=True)
        step = pruned(ids[:, 5:], cache=cache, use_cache=True).logits[:, -1]
        full = pruned(ids).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
    assert len(cache.layers) == 2


def test_depth_share_drops_the_least_influential_blocks(resnet):
    module = resnet.module
    influence = block_influence(module, ["layer1", "layer3", "layer5"], resnet.data, resnet.example_input())
    assert all(0.0 <= value <= 2.0 for value in influence.values())
    result = apply_plan(resnet, Plan(depth=0.34, recalibrate=False, **DEPTH_ONLY))
    assert result.dropped == [min(influence, key=influence.get)]
    assert result.block_scores == pytest.approx(influence) and result.block_score == "influence"
    both = apply_plan(resnet, Plan(drop=["layer5"], depth=0.5, recalibrate=False, **DEPTH_ONLY))
    assert len(both.dropped) == 2 and "layer5" in both.dropped  # the named block counts towards the share


def test_depth_combines_with_a_channel_plan(resnet):
    result = apply_plan(resnet, Plan(granularity="channel", sparsity=0.25, drop=["layer5"], round_to=8))
    assert result.dropped == ["layer5"]
    assert not any(name.startswith("layer5.") for name in result.layer_sparsity)
    assert result.layer_sparsity["layer1.conv1"] > 0
    with torch.no_grad():
        assert result.module(resnet.example_input()).shape == (1, 10)


@pytest.mark.parametrize("depth, blocks, count", [(0.25, 6, 2), (0.25, 3, 1), (0.25, 2, 1), (0.1, 3, 0),
                                                  (0.5, 5, 3), (0.0, 4, 0)])
def test_depth_rounds_to_the_nearest_whole_block(depth, blocks, count):
    assert depth_count(depth, blocks) == count


def test_plan_keys_round_trip_and_bad_values_are_one_line(tmp_path, resnet):
    plan = Plan(drop=["layer5", "layer1"], depth=0.25)
    assert plan.drop == ("layer1", "layer5")
    assert Plan.load(plan.save(tmp_path / "plan.yaml")) == plan
    assert "drop" not in Plan().to_dict() and "depth" not in Plan().to_dict()  # width plans read as before
    for values, message in [({"drop": "layer1"}, "drop must be a list"), ({"depth": 1.0}, "depth must be in"),
                            ({"drop": ["a", "a"]}, "twice")]:
        with pytest.raises(PrunelabError, match=message):
            Plan.from_dict(values)
    with pytest.raises(PrunelabError, match="'nope', which is not a removable block.*layer1, layer3, layer5"):
        apply_plan(resnet, Plan(drop=["nope"], **DEPTH_ONLY))
    with pytest.raises(PrunelabError, match="'layer2', which cannot be removed: its output shape differs"):
        apply_plan(resnet, Plan(drop=["layer2"], **DEPTH_ONLY))


def test_inspect_lists_removable_blocks_with_influence_and_the_ones_that_cannot_go(cli, tmp_path):
    answer = cli("inspect", "digits-resnet")
    assert answer["code"] == 0
    assert "3 removable blocks" in answer["stdout"]
    assert "layer2 cannot be removed: its output shape differs" in answer["stdout"]
    plan = tmp_path / "plan.yaml"
    plan.write_text("sparsity: 0\ndrop: [layer9]\n")
    answer = cli("prune", "digits-resnet", "--plan", plan, "--out", tmp_path / "out")
    assert answer["code"] == 2 and "Traceback" not in answer["stderr"]
    assert "plan drops block 'layer9', which is not a removable block" in answer["stderr"]


def test_block_rows_count_the_attention_inside_a_layer():
    from core.inspect import count_macs
    from core.prune.depth import block_table
    module = hf_models.bert()
    example = torch.randint(0, hf_models.VOCAB, hf_models.TOKENS).float()
    rows = block_table(module, example)
    assert [row["removable"] for row in rows] == [True, True]
    assert all(row["influence"] > 0 and len(row["layers"]) == 6 for row in rows)
    result = apply_plan(module, Plan(drop=[rows[0]["name"]], **DEPTH_ONLY), example_input=example)
    assert count_macs(module, example) - count_macs(result.module, example) == rows[0]["macs"]


def test_width_targets_name_the_dense_models_layers_when_blocks_go():
    module = hf_models.bert()
    example = torch.randint(0, hf_models.VOCAB, hf_models.TOKENS).float()
    plan = Plan(granularity="channel", sparsity=0.0, drop=["model.encoder.layer.0"],
                layers={"model.encoder.layer.1.intermediate.dense": 0.5})
    result = apply_plan(module, plan, example_input=example)
    assert result.layer_sparsity["model.encoder.layer.1.intermediate.dense"] == pytest.approx(0.5)
    layers = result.module.model.encoder.layer
    assert len(layers) == 1 and layers[0].intermediate.dense.out_features == 64  # the old layer 1, halved


def test_prune_writes_the_blocks_a_depth_share_chose_by_name(cli, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("sparsity: 0\ndepth: 0.34\nrecalibrate: false\n")
    answer = cli("prune", "digits-resnet", "--plan", plan, "--out", tmp_path / "out", "--json")
    assert answer["code"] == 0, answer["stderr"]
    applied = Plan.load(tmp_path / "out" / "plan.yaml")
    assert applied.depth == 0 and applied.drop == ("layer3",)  # the least influential block


@pytest.mark.slow
def test_the_sensitivity_sweep_measures_one_point_per_block(resnet):
    from core.search.sensitivity import sensitivity
    result = sensitivity(resnet, "unstructured", levels=(0.0,), max_items=64)  # the dense point and the blocks
    assert [block["name"] for block in result["blocks"]] == ["layer1", "layer3", "layer5"]
    for block in result["blocks"]:
        assert 0.0 <= block["accuracy"] <= 1.0 and block["macs"] < 247_081_472
        assert block["latency_saving_ms"] is not None
    assert all("latency_ms" not in point for layer in result["layers"] for point in layer["curve"])


def test_block_influence_leaves_padding_tokens_out():
    from core.sources.huggingface import Pooling, TokenModel
    module = TokenModel(hf_models.bert().model, pad_id=0, pooling=Pooling()).eval()
    ids = torch.randint(1, hf_models.VOCAB, (4, 8), generator=torch.Generator().manual_seed(0))
    padded = torch.cat([ids, torch.zeros(4, 8, dtype=torch.long)], 1)  # the same sentences, half padding
    names = ["model.encoder.layer.0", "model.encoder.layer.1"]
    plain = block_influence(module, names, example_input=ids)
    assert block_influence(module, names, example_input=padded) == pytest.approx(plain, rel=1e-4)
