"""KV-cache export and generation: ONNX Runtime's greedy tokens equal torch's, for every family and for
layers pruned to different widths; prefill and decode are timed against the dense model."""
import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from core.deploy.evaluate import LiveEvaluator  # noqa: E402
from core.deploy.generation import Generator, export_cached  # noqa: E402
from core.prune.engine import apply_plan  # noqa: E402
from core.prune.plan import Plan  # noqa: E402
from core.sources import load_model  # noqa: E402
from tests.test_lm import CAUSAL  # noqa: E402


def torch_greedy(module, prompt: np.ndarray, count: int) -> list[int]:
    ids, chosen = torch.from_numpy(prompt)[None], []
    with torch.no_grad():
        for _ in range(count):
            token = int(module(ids).reshape(1, ids.shape[1], -1)[0, -1].argmax())
            chosen.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    return chosen


@pytest.mark.parametrize("name", ["llama", "opt"] + [pytest.param(name, marks=pytest.mark.slow)
                                                     for name in ("qwen2", "gemma", "phi", "gpt2")])
def test_cached_graph_generates_what_torch_generates(name):
    handle = load_model(f"{CAUSAL}:{name}", input_shape="1,16")
    prompt = handle.data.x_test[0][:10]
    generator = Generator(export_cached(handle.module), threads=1)
    assert generator.greedy(prompt, 6) == torch_greedy(handle.module, prompt, 6)


def test_layers_pruned_to_different_widths_export_with_their_own_cache_shapes(tinylm):
    plan = Plan(granularity="channel", sparsity=0.25, layers={"model.model.layers.0.self_attn.q_proj": 0.5,
                                                              "model.model.layers.1.mlp.gate_proj": 0.5})
    pruned = apply_plan(tinylm, plan).module
    generator = Generator(export_cached(pruned), threads=1)
    heads = {shape[1] for name, shape in generator.past if name.endswith(".key")}
    assert len(heads) > 1  # layer 0 kept fewer key/value heads than the others
    prompt = tinylm.data.x_test[0][:20]
    assert generator.greedy(prompt, 5) == torch_greedy(pruned, prompt, 5)


@pytest.mark.slow
def test_prefill_and_decode_are_timed_against_the_dense_model(tinylm):
    evaluator = LiveEvaluator(tinylm, threads=1)
    report = evaluator.measure(Plan(granularity="channel", sparsity=0.25))
    dense, pruned = report["baseline"]["generation"], report["pruned"]["generation"]
    assert dense["prompt_tokens"] == 128 and dense["new_tokens"] == 32
    assert pruned["decode_tokens_per_s"] == pytest.approx(1000.0 / pruned["decode_ms_per_token"])
    assert set(pruned["speedup"]) == {"prefill", "decode"} and pruned["speedup"]["decode"]["pairs"] >= 4
    same = evaluator.measure(Plan(granularity="unstructured", sparsity=0.5))["pruned"]["generation"]
    assert same["speedup"]["decode"]["same_kernels"] and same["decode_ms_per_token"] == dense["decode_ms_per_token"]


def test_int8_prefill_and_decode_run_an_int8_graph_paired_against_dense_fp32():
    import onnx

    from core.deploy.generation import int8_cached

    handle = load_model(f"{CAUSAL}:llama", input_shape="1,16")
    graph = onnx.load_from_string(int8_cached(handle.module))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in graph.graph.node}
    report = LiveEvaluator(handle, threads=1, quantize="int8").measure(None)
    dense, int8 = report["baseline"]["generation"], report["pruned"]["generation"]
    assert int8["quantized"] == "int8-dynamic" and "quantized" not in dense
    assert not int8["speedup"]["decode"].get("same_kernels") and int8["speedup"]["decode"]["pairs"] >= 4
    assert int8["decode_tokens_per_s"] == pytest.approx(1000.0 / int8["decode_ms_per_token"])


@pytest.mark.slow
def test_continuations_come_from_the_dense_and_the_pruned_graph(tinylm):
    evaluator = LiveEvaluator(tinylm, threads=1)
    dense = evaluator.continuations(None, "The with statement is used to", new_tokens=12)
    assert dense["dense"] == dense["pruned"] and dense["prompt_tokens"] > 3
    ids = tinylm.tokenizer("The with statement is used to", add_special_tokens=False)["input_ids"]
    assert tinylm.tokenizer.decode(torch_greedy(tinylm.module, np.asarray(ids), 12)) == dense["dense"]
    pruned = evaluator.continuations(Plan(granularity="channel", sparsity=0.5), "The with statement is used to", 12)
    assert pruned["dense"] == dense["dense"] and pruned["pruned"] != dense["dense"]


def test_language_model_cards_read_perplexity_and_tokens_per_second():
    from dashboard import formatting

    dense = {"label": "perplexity", "perplexity": 96.6, "context": 128, "stride": 128, "agreement": 1.0, "kl": 0.0}
    pruned = dict(dense, perplexity=131.1, agreement=0.54, kl=0.42)
    card = formatting.quality(pruned, dense)
    assert card["title"] == "Perplexity" and card["value"] == "131.1" and card["delta"] == "+36%"
    assert card["lower_is_better"] and "context 128, stride 128" in card["help"]
    figures = {"decode_tokens_per_s": 445.2, "prefill_tokens_per_s": 7857.0,
               "speedup": {"decode": {"p50": 1.15, "low": 1.05, "high": 1.3, "measurable": True},
                           "prefill": {"p50": 1.06, "low": 0.9, "high": 1.46, "measurable": False}}}
    assert formatting.tokens_per_second(figures, "decode") == ("445 tok/s", "+15% (1.05–1.30×)")
    assert formatting.tokens_per_second(figures, "prefill")[1].startswith("noise")


def test_channel_pruned_gpt2_keeps_conv1d_and_generates_what_torch_generates():
    handle = load_model(f"{CAUSAL}:gpt2", input_shape="1,16")
    pruned = apply_plan(handle, Plan(granularity="channel", sparsity=0.5)).module
    generator = Generator(export_cached(pruned), threads=1)
    assert {shape[1] for _, shape in generator.past} == {2}  # half of the 4 heads, in the cache too
    prompt = handle.data.x_test[0][:10]
    assert generator.greedy(prompt, 5) == torch_greedy(pruned, prompt, 5)
