"""LLM pruning criteria on the built-in language model: tinylm's test perplexity after magnitude, Wanda
and SparseGPT at 50% unstructured, 4:8 and 2:4, and after 25% heads + FFN channel cuts, with prefill
and decode tokens/s in ONNX Runtime (paired against the dense model), printed beside the published
LLaMA-2-7B WikiText-2 table so the orderings can be compared. Then SparseGPT's wall time, CPU time
and peak resident memory, each on a line of its own, on tinylm and on a 135M-parameter Llama with
SmolLM-135M's configuration (random weights), each in a fresh process.

    python -m benchmarks.llm_criteria [--quick] [--timing-only] [--large-only]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

from benchmarks.common import print_table
from core.deploy import generation
from core.deploy.fidelity import next_token_quality
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources import load_model

# LLaMA-2-7B, WikiText-2 perplexity at context 4096 (Wanda's README, from Sun et al. 2024; SparseGPT there too).
PUBLISHED = {"dense": 5.12, ("unstructured", "magnitude"): 14.89, ("unstructured", "sparsegpt"): 6.51,
             ("unstructured", "wanda"): 6.42, ("2:4", "magnitude"): 54.59, ("2:4", "sparsegpt"): 10.17,
             ("2:4", "wanda"): 11.02}
CRITERIA = {"magnitude": "l1", "wanda": "wanda", "sparsegpt": "sparsegpt"}
SMOLLM = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
              num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True, max_position_embeddings=2048)
LARGE_TOKENS = 128  # context of the 135M model's calibration items


@torch.no_grad()
def perplexity(module, ids: np.ndarray) -> float:
    logits = torch.cat([module(torch.from_numpy(ids[start:start + 16])) for start in range(0, len(ids), 16)])
    return next_token_quality(logits.numpy(), ids, None, True)["perplexity"]


def plans(quick: bool) -> list[tuple[str, str, Plan]]:
    """(pattern, criterion label, plan) rows in table order."""
    patterns = ("2:4",) if quick else ("unstructured", "4:8", "2:4")
    rows = [(pattern, label, Plan(granularity=pattern, criterion=name, sparsity=0.5))
            for pattern in patterns for label, name in CRITERIA.items() if not quick or label != "wanda"]
    for name in ("l2",) if quick else ("l2", "taylor"):
        rows.append(("channel 25%", name, Plan(granularity="channel", criterion=name, sparsity=0.25)))
    return rows


def speed(dense_generator, module, prompt: np.ndarray, new_tokens: int, quick: bool) -> dict:
    pruned = generation.Generator(generation.export_cached(module), threads=2)
    return generation.compared_generation(dense_generator, pruned, prompt, new_tokens, live=quick)


def tinylm_table(quick: bool) -> None:
    torch.set_num_threads(2)
    handle = load_model("tinylm")
    test = handle.data.x_test[:8] if quick else handle.data.x_test
    dense_ppl = perplexity(handle.module, test)
    prompt = generation.prompt_for(handle.data.x_test, 1)
    new_tokens = generation.new_tokens_for(handle.module, prompt.shape[1])
    dense_generator = generation.Generator(generation.export_cached(handle.module), threads=2)
    dense_speed = generation.dense_generation(dense_generator, generation.Generator(
        generation.export_cached(handle.module), threads=2), prompt, new_tokens, live=quick)
    rows = [["dense", "-", round(dense_ppl, 2), f"{dense_speed['prefill_tokens_per_s']:.0f}",
             f"{dense_speed['decode_tokens_per_s']:.0f}", "-", PUBLISHED["dense"]]]
    for pattern, label, plan in plans(quick):
        started = time.perf_counter()
        result = apply_plan(handle, plan)
        seconds = time.perf_counter() - started
        figures = speed(dense_generator, result.module, prompt, new_tokens, quick)
        rows.append([pattern, label, round(perplexity(result.module, test), 2),
                     f"{figures['prefill_tokens_per_s']:.0f} ({figures['speedup']['prefill']['p50']:.2f}x)",
                     f"{figures['decode_tokens_per_s']:.0f} ({figures['speedup']['decode']['p50']:.2f}x)",
                     round(seconds, 1), PUBLISHED.get((pattern, label), "-")])
    print_table(["pattern", "criterion", "tinylm perplexity", "prefill tokens/s (vs dense)",
                 "decode tokens/s (vs dense)", "prune s", "LLaMA-2-7B published"], rows)
    print(f"\ntinylm test text: {len(test)} windows of {test.shape[1]} tokens (stride = context); "
          f"ONNX Runtime CPU, 2 threads, KV cache, prompt {prompt.shape[1]} tokens, {new_tokens} decoded, "
          f"paired with the dense model; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores. "
          "Published: WikiText-2, context 4096 (Wanda's README). Unstructured and N:M zeros stay in ONNX "
          "Runtime's dense kernels, so only the channel cuts can change tokens/s.")


def smollm_135m():
    """A Llama with SmolLM-135M's configuration and random weights (nothing downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(**SMOLLM))


TIMED = {"tinylm": ("tinylm", None), "135m": (f"{__file__}:smollm_135m", (1, LARGE_TOKENS))}
TIMED_NAMES = {"tinylm": "tinylm", "135m": "135M Llama (SmolLM-135M config, random weights)"}


def _timed_child(model: str) -> None:
    """Prune ``model`` (a TIMED key) with SparseGPT 50% and print parameters, wall s, CPU s, peak RSS GiB
    and the pruning note (this process only: loading happens before the clocks start)."""
    torch.set_num_threads(2)
    spec, shape = TIMED[model]
    handle = load_model(spec, input_shape=shape)
    params = sum(parameter.numel() for parameter in handle.module.parameters())
    started, cpu = time.perf_counter(), time.process_time()
    result = apply_plan(handle, Plan(criterion="sparsegpt", sparsity=0.5))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]
    note = next(note for note in result.notes if note.startswith("sparsegpt:"))
    print(f"{params} {seconds:.1f} {cpu:.1f} {int(peak) / 2 ** 20:.2f} {note}")


def timed_run(model: str) -> None:
    """SparseGPT 50% on ``model`` in a fresh process: wall time, CPU time and peak RSS, each on its own line."""
    started_load = os.getloadavg()[0]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get(
        "PYTHONPATH")]))}
    output = subprocess.run([sys.executable, "-m", "benchmarks.llm_criteria", "--child", model], env=environment,
                            capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    params, seconds, cpu, gib, note = output.split(" ", 4)
    label = f"sparsegpt 50% on {TIMED_NAMES[model]}, {int(params) / 1e6:.1f}M parameters"
    print(f"{label}: wall time {seconds} s")
    print(f"{label}: CPU time {cpu} s (all threads, torch threads 2)")
    print(f"{label}: peak RSS {gib} GiB (VmHWM of a fresh process that loaded and pruned the model)")
    print(f"  {note}\n  load average {started_load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
          f"{os.cpu_count()} cores (wall time stretches with the load; CPU time much less)")


def main(quick: bool = False) -> None:
    tinylm_table(quick)
    print()
    timed_run("tinylm")
    if not quick:
        timed_run("135m")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer test windows and patterns, no 135M run")
    parser.add_argument("--timing-only", action="store_true",
                        help="only SparseGPT's wall time, CPU time and peak RSS on tinylm and the 135M Llama")
    parser.add_argument("--large-only", action="store_true", help="only the 135M-parameter SparseGPT timing")
    parser.add_argument("--child", choices=TIMED, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        _timed_child(arguments.child)
    elif arguments.large_only:
        timed_run("135m")
    elif arguments.timing_only:
        timed_run("tinylm")
        timed_run("135m")
    else:
        main(arguments.quick)
