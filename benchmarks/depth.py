"""Depth against width at equal MAC reductions: whole blocks removed (least block influence first),
channels and heads removed, and both, with the measured ONNX Runtime speedup and the quality kept.

    python -m benchmarks.depth [--quick] [--model NAME ...]

For each model and MAC-reduction target (about 1.5x and 2x), depth removes the k least influential
removable blocks whose MAC reduction is closest to the target; width is a uniform channel plan
bisected to the same MAC count; "both" removes fewer blocks (about half the reduction in log
terms) and bisects width for the rest. Latency: dense and pruned sessions timed alternately at
batch 1, medians; for a language model (tinylm), greedy decode tokens/s through the KV-cache graph.
Quality: test accuracy (digits-resnet), the mean cosine of the pruned model's outputs to the dense
ones on the test split (embeddings), or test perplexity (language models). No fine-tuning.
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np
import torch

from benchmarks.common import paired_p50_ms, print_table
from core.inspect import count_macs
from core.prune.blocks import removable_blocks
from core.prune.depth import BlockRanking
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources import load_model
from core.zoo.registry import BUILTINS

TARGETS = (1.5, 2.0)
ROUND_TO = {"digits-resnet": 8}  # channel counts ONNX Runtime's blocked convolutions like


def _models() -> list[str]:
    return ["minilm", "digits-resnet"] + (["tinylm"] if "tinylm" in BUILTINS else [])


@torch.no_grad()
def quality(handle, module, dense_outputs) -> tuple[str, float]:
    """('accuracy', test accuracy) for labelled classifiers, else ('cosine', mean cosine to the dense outputs)."""
    outputs = torch.cat([module(torch.from_numpy(np.ascontiguousarray(handle.data.x_test[start:start + 32])))
                         for start in range(0, len(handle.data.x_test), 32)])
    if handle.data.y_test is not None:
        return "accuracy", float((outputs.argmax(1).numpy() == handle.data.y_test).mean())
    cosine = torch.nn.functional.cosine_similarity(outputs.flatten(1), dense_outputs.flatten(1), dim=1)
    return "cosine", float(cosine.mean())


def _width(handle, target_macs: float, drop: list[str], steps: int) -> tuple[torch.nn.Module, float]:
    """The channel plan (uniform sparsity, bisected) that with ``drop`` brings MACs closest to ``target_macs``."""
    example = handle.example_input()
    low, high, best = 0.0, 0.9, None
    for _ in range(steps):
        sparsity = (low + high) / 2
        plan = Plan(granularity="channel", sparsity=round(sparsity, 4), drop=drop,
                    round_to=ROUND_TO.get(handle.name, 1))
        module = apply_plan(handle, plan).module
        macs = count_macs(module, example)
        if best is None or abs(math.log(macs / target_macs)) < abs(math.log(best[2] / target_macs)):
            best = (module, sparsity, macs)
        low, high = (sparsity, high) if macs > target_macs else (low, sparsity)
    return best[0], best[1]


def _depth_choice(dense_macs: int, ranked: list[str], block_macs: dict, target: float) -> list[str]:
    """The k least influential blocks whose removal brings the MAC reduction closest to ``target``."""
    best = []
    for count in range(1, len(ranked) + 1):
        reduction = dense_macs / (dense_macs - sum(block_macs[name] for name in ranked[:count]))
        current = dense_macs / (dense_macs - sum(block_macs[name] for name in best)) if best else 1.0
        if abs(math.log(reduction / target)) < abs(math.log(current / target)):
            best = ranked[:count]
    return best


def _block_macs(handle, names: list[str]) -> dict[str, int]:
    from core.inspect import module_macs
    return module_macs(handle.module, handle.example_input(), names)


def configurations(handle, steps: int, targets: tuple[float, ...] = TARGETS) -> list[tuple]:
    """(method, target, dropped blocks, pruned module, width sparsity) for every target and method."""
    example = handle.example_input()
    dense_macs = count_macs(handle.module, example)
    blocks = removable_blocks(handle.module, example)
    # the ranking a depth: plan of the width plans' criterion (l1, the default) reads: block influence
    ranked, _ = BlockRanking.for_criterion(Plan().criterion, data=handle.data, example_input=example).order(
        handle.module, blocks)
    block_macs = _block_macs(handle, blocks)
    rows, seen = [], set()
    for target in targets:
        drop = _depth_choice(dense_macs, ranked, block_macs, target)
        if not drop or tuple(drop) in seen:
            continue
        seen.add(tuple(drop))
        depth_module = apply_plan(handle, Plan(sparsity=0.0, drop=drop)).module
        reached = dense_macs / count_macs(depth_module, example)
        rows.append(("depth", reached, drop, depth_module, 0.0))
        width_module, sparsity = _width(handle, dense_macs / reached, [], steps)
        rows.append(("width", reached, [], width_module, sparsity))
        if steps < 2:  # the quick smoke run stops at depth against width
            continue
        half = _depth_choice(dense_macs, ranked, block_macs, math.sqrt(reached))
        half = half if len(half) < len(drop) else drop[:-1]
        if half:
            both_module, sparsity = _width(handle, dense_macs / reached, half, steps)
            rows.append(("both", reached, half, both_module, sparsity))
    return rows


def _timed_figures(handle, module, quick: bool) -> dict:
    """Classifiers and embeddings: ORT p50 at batch 1 (dense and pruned alternately) and the quality kept."""
    example = handle.example_input(1)
    dense_ms, pruned_ms = paired_p50_ms(handle.module, module, example, threads=2, rounds=5 if quick else 150)
    with torch.no_grad():
        dense_outputs = torch.cat([handle.module(torch.from_numpy(np.ascontiguousarray(handle.data.x_test[i:i + 32])))
                                   for i in range(0, len(handle.data.x_test), 32)])
    label, dense_quality = quality(handle, handle.module, dense_outputs)
    return {"label": label, "dense_quality": dense_quality, "quality": quality(handle, module, dense_outputs)[1],
            "dense_speed": dense_ms, "speed": pruned_ms, "speedup": dense_ms / pruned_ms,
            "lost": 100 * (dense_quality - quality(handle, module, dense_outputs)[1])}


def _decoding_figures(handle, module, quick: bool) -> dict:
    """Causal language models: test perplexity and greedy decode tokens/s through the KV-cache graph
    (dense and pruned rounds alternately, core.deploy.generation)."""
    from core.deploy import generation
    from core.zoo.tinylm import perplexity

    windows = handle.data.x_test.astype(np.int64)
    dense_perplexity, pruned_perplexity = perplexity(handle.module.model, windows), perplexity(module.model, windows)
    dense, pruned = (generation.Generator(generation.export_cached(model)) for model in (handle.module, module))
    prompt = generation.prompt_for(windows, 1)
    new_tokens = generation.new_tokens_for(module, prompt.shape[1])
    dense_times, pruned_times = generation.paired_rounds([dense, pruned], prompt, new_tokens, live=quick)
    dense_speed = generation.summary(dense_times, prompt, new_tokens)["decode_tokens_per_s"]
    speed = generation.summary(pruned_times, prompt, new_tokens)["decode_tokens_per_s"]
    return {"label": "perplexity", "dense_quality": dense_perplexity, "quality": pruned_perplexity,
            "dense_speed": dense_speed, "speed": speed, "speedup": speed / dense_speed,
            "lost": pruned_perplexity - dense_perplexity}


FIGURES = {"causal": _decoding_figures}  # output kind -> how quality and speed are measured (else _timed_figures)


def measure_model(name: str, quick: bool) -> list[dict]:
    """One row per method and target: blocks removed, width, MACs, measured speed and quality."""
    handle = load_model(name)
    example = handle.example_input(1)
    dense_macs = count_macs(handle.module, example)
    figures_of = FIGURES.get(handle.output_kind, _timed_figures)
    blocks = len(removable_blocks(handle.module, example))
    rows = []
    for method, target, drop, module, sparsity in configurations(handle, 1 if quick else 7,
                                                                 TARGETS[:1] if quick else TARGETS):
        figures = figures_of(handle, module, quick)
        lost = figures["lost"]
        rows.append({"model": name, "method": method, "target": target, "blocks": f"{len(drop)} of {blocks}",
                     "width": sparsity, "mac_reduction": dense_macs / count_macs(module, example), **figures,
                     "speedup_per_lost": (figures["speedup"] - 1) / lost if lost > 0.05 else None, "dropped": drop})
    return rows


def main(quick: bool = False, models: list[str] | None = None) -> list[dict]:
    torch.set_num_threads(2)
    rows = []
    for name in models or (["digits-resnet"] if quick else _models()):
        rows += measure_model(name, quick)
    load = os.getloadavg()[0]
    print(f"batch 1, ONNX Runtime 2 threads, dense and pruned timed alternately, medians; load average at the "
          f"end {load:.1f} on {os.cpu_count()} cores; one-shot (no fine-tuning). Speed: p50 ms per item, or "
          "greedy decode tokens/s for language models (32 new tokens after a 128-token prompt, KV cache). "
          "Lost: points of accuracy or cosine, or the rise in test perplexity\n")
    print_table(["model", "method", "blocks removed", "width sparsity", "MAC reduction", "dense speed",
                 "pruned speed", "measured speedup", "quality", "dense", "pruned", "lost",
                 "speedup gained per unit lost"],
                [[row["model"], row["method"], row["blocks"], row["width"], row["mac_reduction"], row["dense_speed"],
                  row["speed"], row["speedup"], row["label"], row["dense_quality"], row["quality"],
                  row["lost"], "-" if row["speedup_per_lost"] is None else row["speedup_per_lost"]]
                 for row in rows])
    print()
    for row in rows:
        if row["method"] != "width":
            print(f"{row['model']} {row['method']}: removed {', '.join(row['dropped'])}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", action="append", help="measure only this model (repeatable)")
    arguments = parser.parse_args()
    main(arguments.quick, arguments.model)
