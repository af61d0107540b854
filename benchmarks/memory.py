"""Resident memory of the live loop across 200 plan changes: the caches are bounded, so memory
levels off instead of growing with every slider move.

    python -m benchmarks.memory [--quick]
"""
from __future__ import annotations

import argparse
import gc
import random
import time
from pathlib import Path

from benchmarks.common import print_table
from core.deploy.evaluate import REPORT_CACHE_ENTRIES, LiveEvaluator, clear_caches
from core.inspect import prunable_layers
from core.prune.plan import Plan
from core.sources import load_model


def resident_mb() -> float:
    """VmRSS of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def random_plan(rng: random.Random, layers: list[str]) -> Plan:
    """A plan like a person dragging sliders: mostly unstructured, sometimes channels."""
    granularity = rng.choice(["unstructured"] * 3 + ["channel"])
    targets = {name: round(rng.uniform(0, 0.9), 2) for name in rng.sample(layers, k=min(2, len(layers)))}
    return Plan(granularity=granularity, sparsity=round(rng.uniform(0, 0.9), 2), layers=targets)


def main(quick: bool = False, changes: int = 200, model: str | None = None) -> list[dict]:
    """Measure ``changes`` random plans of ``model`` (default digits-cnn) and print the resident memory;
    ``quick`` (the test suite's smoke run): 4 changes of digits-mlp."""
    changes, model = (4, model or "digits-mlp") if quick else (changes, model or "digits-cnn")
    clear_caches()
    handle = load_model(model)
    evaluator = LiveEvaluator(handle)
    layers = [layer.name for layer in prunable_layers(handle.module)][:-1]
    evaluator.baseline()
    gc.collect()
    rng, rows, started = random.Random(0), [], time.perf_counter()
    rows.append({"changes": 0, "rss_mb": resident_mb()})
    for change in range(1, changes + 1):
        evaluator.measure(random_plan(rng, layers))
        if change % max(1, changes // 10) == 0:
            gc.collect()
            rows.append({"changes": change, "rss_mb": resident_mb()})
    elapsed = time.perf_counter() - started
    print(f"{model}: {changes} plan changes in {elapsed:.1f} s ({1000 * elapsed / changes:.0f} ms each); "
          f"report cache bound: {REPORT_CACHE_ENTRIES} entries\n")
    print_table(["plan changes", "resident MB"], [[row["changes"], row["rss_mb"]] for row in rows])
    half = rows[len(rows) // 2]["rss_mb"]
    print(f"\ngrowth over the second half: {rows[-1]['rss_mb'] - half:+.1f} MB")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
