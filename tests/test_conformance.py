"""Conformance: architectures prunelab was not written against, loaded as a user's factory, take a
50% channel plan with no ignore list: the pruned model runs, exports, matches torch in ONNX
Runtime, keeps every layer within its target, costs clearly fewer MACs, and its attention layers
keep head counts consistent with their weight shapes."""
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from core.deploy.export import export_onnx  # noqa: E402
from core.deploy.measure import create_session, total_macs  # noqa: E402
from core.inspect import inspect_model  # noqa: E402
from core.prune.engine import apply_plan  # noqa: E402
from core.prune.heads import find_attention  # noqa: E402
from core.prune.plan import Plan  # noqa: E402
from core.prune.resize import fit_to  # noqa: E402
from core.prune.resolved import resolve  # noqa: E402
from core.sources.load import load_model  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
IMAGE, TOKENS = "1,3,32,32", "1,16"
FAST = [("hf_models.py:bert", TOKENS), ("hf_models.py:vit", IMAGE), ("hf_models.py:resnet", IMAGE),
        ("hf_models.py:convnext", IMAGE), ("hf_models.py:fused_vit", IMAGE)]
SLOW = [("hf_models.py:swin", IMAGE), ("hf_models.py:mobilenet_v2", IMAGE), ("hf_models.py:efficientnet", IMAGE),
        ("hf_models.py:regnet", IMAGE), ("ghost.py:ghostnet", IMAGE), ("hf_models.py:llama_gqa", TOKENS)]
CASES = [pytest.param(*case, id=case[0]) for case in FAST] + [
    pytest.param(*case, id=case[0], marks=pytest.mark.slow) for case in SLOW]


def load(spec: str, shape: str):
    return load_model(str(FIXTURES / spec), input_shape=shape)


def ort_gap(module: torch.nn.Module, inputs: torch.Tensor) -> float:
    session, _ = create_session(export_onnx(module, inputs), threads=1)
    with torch.no_grad():
        expected = module(inputs).numpy()
    [name] = [value.name for value in session.get_inputs()]
    return float(np.abs(session.run(None, {name: inputs.numpy()})[0] - expected).max())


def check_heads(module: torch.nn.Module, inputs: torch.Tensor, before: dict) -> None:
    """Every attention layer's head count agrees with its weight shapes and lost heads, never all."""
    for attention in find_attention(module, inputs):
        rows = sum(module.get_submodule(name).out_features for name in attention.projections)
        assert rows == (attention.heads + 2 * attention.kv_heads) * attention.head_size
        assert 1 <= attention.heads < before[attention.name]
        assert module.get_submodule(attention.output).in_features == attention.heads * attention.head_size
        for name, parameter in attention.module.named_parameters():
            if "relative_position" in name:
                assert parameter.shape[-1] == attention.heads


@pytest.mark.parametrize("spec, shape", CASES)
def test_half_channel_plan_without_ignore_list(spec, shape):
    handle = load(spec, shape)
    inputs = handle.example_input(2)
    heads_before = {attention.name: attention.heads for attention in find_attention(handle.module, inputs)}
    result = apply_plan(handle, Plan(granularity="channel", sparsity=0.5))

    assert ort_gap(result.module, inputs) < 1e-3
    assert total_macs(result.module, inputs[:1]) < 0.7 * total_macs(handle.module, inputs[:1])
    assert not any("targets not met" in note for note in result.notes), result.notes
    pruned = {name: row for name, row in result.kept.items() if row["kept"] < row["total"]}
    # each kept count is its target up to the CPU's channel rounding (round_to: auto) for that layer's size
    rounding = resolve(Plan(granularity="channel", sparsity=0.5), handle.module).rounding
    assert pruned and all(1 <= row["kept"] and abs(row["kept"] - row["target_kept"]) <= max(2, rounding(row["total"]))
                          for row in pruned.values()), pruned
    check_heads(result.module, inputs, heads_before)
    if heads_before:  # attention keeps the residual width, loses half its heads, the FFN half its neurons
        dense = {name: row for name, row in result.kept.items() if "dense" in row}
        assert dense and all(row["kept"] == row["total"] and row["target"] == 0.0 for row in dense.values())
        assert {row["unit"] for row in pruned.values()} == {"head", "channel"}


def test_heads_are_shown_as_heads_in_the_layer_table():
    handle = load("hf_models.py:bert", TOKENS)
    rows = {row["name"]: row for row in inspect_model(handle.module, handle.example_input())["layers"]}
    query = rows["model.encoder.layer.0.attention.self.query"]
    assert (query["unit"], query["heads"]) == ("head", 4)
    assert query["attention"] == "model.encoder.layer.0.attention.self"
    assert rows["model.encoder.layer.0.intermediate.dense"]["unit"] == "channel"


def test_heads_removed_whole_and_outputs_unchanged_elsewhere():
    """Removing a head equals zeroing its value rows: the other heads' contributions stay exact."""
    handle = load("hf_models.py:bert", TOKENS)
    result = apply_plan(handle, Plan(granularity="channel", sparsity=0.5, layers={
        "model.encoder.layer.0.intermediate.dense": 0.0, "model.encoder.layer.1.intermediate.dense": 0.0}))
    dropped = {group["attention"]: group["pruned_heads"] for group in result.groups if "attention" in group}
    masked = handle.module
    with torch.no_grad():
        for name, heads in dropped.items():
            value = masked.get_submodule(f"{name}.value")
            for head in heads:
                value.weight[head * 16:(head + 1) * 16] = 0
                value.bias[head * 16:(head + 1) * 16] = 0
        inputs = handle.example_input(2)
        assert torch.allclose(result.module(inputs), masked(inputs), atol=1e-5)
    assert all(len(heads) == 2 for heads in dropped.values())


def test_width_is_pruned_only_when_asked():
    handle = load("hf_models.py:vit", IMAGE)
    result = apply_plan(handle, Plan(granularity="channel", sparsity=0.5, prune_width=True))
    embeddings = result.module.model.vit.embeddings
    assert embeddings.position_embeddings.shape[-1] == 32 and embeddings.cls_token.shape[-1] == 32
    assert ort_gap(result.module, handle.example_input(2)) < 1e-3


@pytest.mark.parametrize("spec, shape", [("hf_models.py:bert", TOKENS), ("hf_models.py:swin", IMAGE),
                                         ("hf_models.py:llama_gqa", TOKENS), ("hf_models.py:fused_vit", IMAGE),
                                         ("ghost.py:ghostnet", IMAGE)])
def test_pruned_state_dict_reloads_into_a_rebuilt_model(spec, shape):
    handle = load(spec, shape)
    result = apply_plan(handle, Plan(granularity="channel", sparsity=0.5))
    rebuilt = load(spec, shape).module
    inputs = handle.example_input(2)
    fit_to(rebuilt, result.module.state_dict(), inputs).load_state_dict(result.module.state_dict())
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(inputs), result.module(inputs), atol=1e-5)
