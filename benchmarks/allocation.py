"""Sensitivity sweep times, and allocated plans against uniform and global pruning at the same budget.

- digits-cnn, unstructured, 90% of the prunable weights (final classifier dense): test accuracy of
  the allocated plan, the layer-uniform plan and global magnitude pruning.
- digits-resnet, channel, 2x fewer MACs: the allocated plan against a uniform and a global
  channel plan whose sparsity is bisected until they also halve the MACs; with ORT p50 latency.
Sweeps run on the val split with a fresh cache; accuracy is on the test split. ``--quick`` (the
test suite's smoke run) goes through every step on digits-mlp alone, 48 val items per point.

    python -m benchmarks.allocation [--quick]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.common import macs, ort_p50_ms, print_table, test_accuracy
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.search.allocate import allocate
from core.search.sensitivity import DEFAULT_LEVELS, sensitivity
from core.sources import load_model

QUICK_LEVELS = (0.0, 0.3, 0.6, 0.9)
MODELS = ("digits-cnn", "digits-resnet")  # (unstructured, channel)
QUICK_MODELS = ("digits-mlp", "digits-mlp")


def timed_sweep(handle, granularity: str, levels, max_items: int | None = None) -> tuple[dict, float]:
    started = time.perf_counter()
    result = sensitivity(handle, granularity=granularity, levels=levels, max_items=max_items)
    return result, time.perf_counter() - started


def zero_share(result) -> float:
    """Zeroed share of the weights the plan pruned (the masks cover exactly the included layers)."""
    zeros = sum(int((~mask).sum()) for mask in result.masks.values())
    return zeros / sum(mask.numel() for mask in result.masks.values())


def unstructured_comparison(handle, sweep: dict, sparsity: float = 0.9) -> list[list]:
    x, y = handle.data.x_test, handle.data.y_test
    plans = {"allocated": allocate(handle, target_sparsity=sparsity, sensitivity=sweep),
             "uniform (layer scope)": Plan(sparsity=sparsity),
             "global magnitude": Plan(scope="global", sparsity=sparsity)}
    rows = []
    for method, plan in plans.items():
        result = apply_plan(handle, plan)
        rows.append([method, zero_share(result), test_accuracy(result.module, x, y)])
    return rows


def halving(handle, scope: str, dense_macs: int) -> Plan:
    """The lowest channel sparsity (in ``scope``) whose plan at least halves the MACs."""
    example = handle.example_input(1)
    low, high = 0.0, 0.95
    for _ in range(12):
        middle = (low + high) / 2
        plan = Plan(granularity="channel", scope=scope, sparsity=middle)
        if macs(apply_plan(handle, plan).module, example) <= dense_macs / 2:
            high = middle
        else:
            low = middle
    return Plan(granularity="channel", scope=scope, sparsity=round(high, 4))


def channel_comparison(handle, sweep: dict, quick: bool) -> list[list]:
    x, y = handle.data.x_test, handle.data.y_test
    example = handle.example_input(1)
    dense_macs = macs(handle.module, example)
    dense_latency = ort_p50_ms(handle.module, example, seconds=0.3 if quick else 1.0)
    plans = {"allocated": allocate(handle, target_mac_reduction=2.0, granularity="channel", sensitivity=sweep)}
    if not quick:  # tests/test_allocate.py covers the rounding; the smoke run stays short
        plans["allocated, round_to=8"] = allocate(handle, target_mac_reduction=2.0, granularity="channel",
                                                  sensitivity=sweep, round_to=8)
    plans.update({"uniform (layer scope)": halving(handle, "layer", dense_macs),
                  "global (l1)": halving(handle, "global", dense_macs)})
    rows = [["dense", 1.0, dense_latency, test_accuracy(handle.module, x, y)]]
    for method, plan in plans.items():
        module = apply_plan(handle, plan).module
        rows.append([method, dense_macs / macs(module, example),
                     ort_p50_ms(module, example, seconds=0.3 if quick else 1.0), test_accuracy(module, x, y)])
    return rows


def main(quick: bool = False) -> None:
    levels = QUICK_LEVELS if quick else DEFAULT_LEVELS
    os.environ["PRUNELAB_HOME"] = tempfile.mkdtemp(prefix="prunelab-bench-")  # a cold cache
    by_weights, by_channels = (load_model(name) for name in (QUICK_MODELS if quick else MODELS))
    weights_sweep, weights_seconds = timed_sweep(by_weights, "unstructured", levels)
    _, cached_seconds = timed_sweep(by_weights, "unstructured", levels)
    items = 48 if quick else None  # the smoke run scores a few items only
    unstructured_sweep, unstructured_seconds = timed_sweep(by_channels, "unstructured", levels, items)
    channel_sweep, channel_seconds = timed_sweep(by_channels, "channel", levels, items)
    print(f"Sweep times ({len(levels)} levels, val split, one process, torch threads "
          f"{weights_sweep['evaluated_on']['torch_threads']}, BatchNorm re-estimated on "
          f"{weights_sweep['evaluated_on']['batchnorm_items']} training items per point):\n")
    rows = []
    for model, kind, sweep, seconds in ((by_weights.name, "unstructured", weights_sweep, weights_seconds),
                                        (by_weights.name, "unstructured (cached)", weights_sweep, cached_seconds),
                                        (by_channels.name, "unstructured", unstructured_sweep, unstructured_seconds),
                                        (by_channels.name, "channel (+ ORT timing)", channel_sweep, channel_seconds)):
        where = sweep["evaluated_on"]
        scored = f"first {where['items']} of {where['available']}" if where["subset"] else str(where["items"])
        points = 0 if "cached" in kind else len(sweep["layers"]) * len(levels)
        rows.append([model, kind, len(sweep["layers"]), points, scored, seconds])
    print_table(["model", "granularity", "layers or groups", "points", "val items scored", "seconds"], rows)
    print(f"\n{by_weights.name} at 90% unstructured sparsity (test split):\n")
    print_table(["plan", "sparsity", "test accuracy"], unstructured_comparison(by_weights, weights_sweep))
    print(f"\n{by_channels.name} channel plans at a 2x MAC reduction (test split, ORT p50 at batch 1, 2 threads):\n")
    print_table(["plan", "MAC reduction", "p50 ms", "test accuracy"],
                channel_comparison(by_channels, channel_sweep, quick))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
