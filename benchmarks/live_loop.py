"""The live loop: time from a plan change to the first measured figures and to the final ones.

What the Tune page waits for on a slider release: the plan is pruned and exported, then measured
in stages (core.deploy.progressive) with the dashboard's settings (the full measurement of
``prunelab evaluate``, 2 ONNX Runtime threads, batch 1). "first" is the first stage (latency from
a short paired run, quality on a first slice of the test items), "final" the last (every item
scored, the full timed runs, the parity check). Each plan is a cache miss; the dense baseline is
measured once before (its time is printed apart).

Models: the digits demos, minilm (the pretrained demo), a ResNet-50 at 224x224 and a BERT-base
(128 tokens) built from ``transformers`` config classes with random weights (nothing downloaded).
Targets on 2 cores: first figures <= 2 s for minilm and the ResNet-50, final <= 10 s; digits-resnet
final <= 1 s.

    python -m benchmarks.live_loop [--quick] [--models minilm,resnet50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from benchmarks.common import print_table
from core.data import random_data
from core.deploy.evaluate import LiveEvaluator, clear_caches
from core.prune.plan import Plan
from core.sources import load_model

SPARSITIES = (0.3, 0.35, 0.4)
# name -> (load arguments, granularities timed, first target s, final target s)
MODELS = {
    "digits-mlp": ({"spec": "digits-mlp"}, ("unstructured", "channel"), None, 1.0),
    "digits-cnn": ({"spec": "digits-cnn"}, ("unstructured", "channel"), None, 1.0),
    "digits-resnet": ({"spec": "digits-resnet"}, ("unstructured", "channel"), None, 1.0),
    "minilm": ({"spec": "minilm"}, ("unstructured", "channel"), 2.0, 10.0),
    "resnet50": ({"spec": "benchmarks.scale:resnet50", "input_shape": (1, 3, 224, 224)}, ("unstructured", "channel"),
                 2.0, 10.0),
    "bert-base": ({"spec": "benchmarks.live_loop:bert_base", "input_shape": (1, 128), "vocab_size": 30522},
                  ("unstructured", "channel"), 2.0, 10.0),
}


def bert_base():
    """BERT-base (12 layers, 768 wide) from transformers' BertConfig, random weights: token ids in, the mean
    of the last hidden state out (a sentence embedding). For ``module:factory``."""
    from torch import nn
    from transformers import BertConfig, BertModel

    class Embeddings(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = BertModel(BertConfig(), add_pooling_layer=False)

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state.mean(1)

    return Embeddings().eval()


def _stages(evaluator: LiveEvaluator, plan: Plan) -> tuple[float, float, dict]:
    """Seconds to the first stage and to the final one, and the final report."""
    started = time.perf_counter()
    first, report = None, None
    for stage in evaluator.stages(plan):
        first = first if first is not None else time.perf_counter() - started
        report = stage
    return first, time.perf_counter() - started, report


def loop(name: str, sparsities: tuple[float, ...]) -> list[dict]:
    """One row per granularity: medians (and worst) of first and final over the plan changes."""
    arguments, granularities, first_target, final_target = MODELS[name]
    arguments = dict(arguments)
    vocab_size = arguments.pop("vocab_size", None)
    if vocab_size:  # a factory's token model: seeded random token ids, as prunelab gives a Hugging Face folder
        arguments["data"] = random_data(arguments["input_shape"], vocab_size=vocab_size)
    handle = load_model(**arguments)
    evaluator = LiveEvaluator(handle, live=False)
    started = time.perf_counter()
    evaluator.baseline()
    baseline_s = time.perf_counter() - started
    rows = []
    for granularity in granularities:
        firsts, finals, stages = [], [], []
        for level in sparsities:
            first, final, report = _stages(evaluator, Plan(granularity=granularity, sparsity=level))
            firsts.append(first)
            finals.append(final)
            stages.append(report["timings_ms"])
        progress = report["pruned"]["progress"]
        rows.append({"model": name, "granularity": granularity, "baseline_s": baseline_s,
                     "first_s": statistics.median(firsts), "first_max_s": max(firsts),
                     "final_s": statistics.median(finals), "final_max_s": max(finals),
                     "items": f"{progress['of']}", "runs": progress["runs"], "first_target": first_target,
                     "final_target": final_target, "stages": _median_stages(stages)})
    return rows


def _median_stages(stages: list[dict]) -> str:
    """'prune 23 / batchnorm 0 / export 2 / measure 347' in ms, the median of each stage over the plans."""
    names = [name for name in ("prune", "batchnorm", "export", "quantize", "measure") if name in stages[0]]
    return " / ".join(f"{name} {statistics.median(stage[name] for stage in stages):.0f}" for name in names)


def main(quick: bool = False, models: list[str] | None = None) -> list[dict]:
    import torch  # after core, which sets OMP_WAIT_POLICY before torch loads

    clear_caches()
    names = models or (["digits-mlp"] if quick else list(MODELS))
    sparsities = SPARSITIES[:2] if quick else SPARSITIES
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [row for name in names for row in loop(name, sparsities)]
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("Plan change -> first measured figures and -> final figures (LiveEvaluator.stages with the dashboard's "
          f"settings: evaluate's full measurement, 2 ORT threads, batch 1); {len(sparsities)} plans per row, each a "
          f"cache miss; medians (max). torch threads {torch.get_num_threads()}, load average "
          f"{load_before:.1f} before / {load_after:.1f} after on {os.cpu_count()} cores.\n")
    print_table(["model", "granularity", "dense baseline s", "first s", "first max s", "final s", "final max s",
                 "items scored", "timed runs", "target first s", "target final s"],
                [[row["model"], row["granularity"], row["baseline_s"], row["first_s"], row["first_max_s"],
                  row["final_s"], row["final_max_s"], row["items"], row["runs"],
                  "-" if row["first_target"] is None else row["first_target"], row["final_target"]]
                 for row in rows])
    print("\nMedian stage times (ms): pruning (engine, BatchNorm re-estimation included), of which BatchNorm "
          "re-estimation, export (same graph: weights into the exported graph), measurement (all stages).\n")
    print_table(["model", "granularity", "stages"], [[row["model"], row["granularity"], row["stages"]]
                                                     for row in rows])
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", help=f"comma-separated, of {', '.join(MODELS)}")
    options = parser.parse_args()
    main(options.quick, options.models.split(",") if options.models else None)
