"""The live loop: time from a plan change to all metrics (what the dashboard waits for on a slider release).

For each demo model: the first call (dense baseline measured and cached, then the plan), then a
series of slider moves for an unstructured plan (fast path: new weights written into the exported
graph) and for a channel plan (re-export), each a cache miss; then one repeated plan (a cache hit).
Targets: <= 1 s for digits-cnn and digits-mlp, <= 3 s for digits-resnet, on 2 cores.

    python -m benchmarks.live_loop [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

from benchmarks.common import print_table
from core.deploy.evaluate import LiveEvaluator, clear_caches
from core.prune.plan import Plan
from core.sources import load_model

MODELS = {"digits-mlp": 1.0, "digits-cnn": 1.0, "digits-resnet": 3.0}  # name -> target seconds
SPARSITIES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _timed(evaluator: LiveEvaluator, plan: Plan | None, stages: list | None = None) -> float:
    started = time.perf_counter()
    report = evaluator.measure(plan)
    if stages is not None:
        stages.append(report["timings_ms"])
    return time.perf_counter() - started


def _median_stages(stages: list[dict]) -> str:
    """'prune 23 / export 2 / measure 347' in ms, the median of each stage over the plans."""
    names = [name for name in ("prune", "export", "quantize", "measure") if name in stages[0]]
    medians = {name: sorted(stage[name] for stage in stages)[len(stages) // 2] for name in names}
    return " / ".join(f"{name} {value:.0f}" for name, value in medians.items())


def loop(name: str, sparsities: tuple[float, ...]) -> dict:
    """Round-trip seconds for one model: first call, per-granularity median and max, a cache hit."""
    handle = load_model(name)
    evaluator = LiveEvaluator(handle)
    first = _timed(evaluator, Plan(sparsity=sparsities[0] / 2))
    row = {"model": name, "first_call_s": first}
    for granularity in ("unstructured", "channel"):
        stages: list[dict] = []
        times = sorted(_timed(evaluator, Plan(granularity=granularity, sparsity=level), stages)
                       for level in sparsities)
        row[f"{granularity}_median_s"] = times[len(times) // 2]
        row[f"{granularity}_max_s"] = times[-1]
        row[f"{granularity}_stages"] = _median_stages(stages)
    row["cache_hit_ms"] = _timed(evaluator, Plan(granularity="channel", sparsity=sparsities[0])) * 1000.0
    row["target_s"] = MODELS[name]
    return row


def main(quick: bool = False) -> list[dict]:
    import torch  # after core, which sets OMP_WAIT_POLICY before torch loads

    clear_caches()
    names = ["digits-mlp"] if quick else list(MODELS)
    sparsities = SPARSITIES[:2] if quick else SPARSITIES
    rows = [loop(name, sparsities) for name in names]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print("Plan change -> all metrics (accuracy, loss, agreement, latency percentiles, sizes, MACs, parity), "
          "LiveEvaluator, 2 ORT threads, batch 1; each plan a cache miss unless stated. "
          f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {load:.1f} on {os.cpu_count()} cores.\n")
    print_table(["model", "first call s (baseline + plan)", "unstructured median s", "unstructured max s",
                 "channel median s", "channel max s", "cache hit ms", "target s"],
                [[row["model"], row["first_call_s"], row["unstructured_median_s"], row["unstructured_max_s"],
                  row["channel_median_s"], row["channel_max_s"], row["cache_hit_ms"], row["target_s"]]
                 for row in rows])
    print("\nMedian stage times (ms): pruning (engine), export (fast path: weights into the graph), "
          "measurement (ORT session, accuracy pass, timed runs, sizes, parity).\n")
    print_table(["model", "unstructured", "channel"],
                [[row["model"], row["unstructured_stages"], row["channel_stages"]] for row in rows])
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
