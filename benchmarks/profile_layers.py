"""Where the time goes: per-layer ONNX Runtime profiles of dense and pruned models, reconciled with
the latency measured without the profiler, and what profiling costs against a normal measurement.

For each model: the per-layer sum and the time outside layers (node durations less the profiler's
own time inside a node), the rest of the plain p50 (the same sessions timed with the profiler ended,
dense and pruned in alternation, as ``prunelab evaluate`` times them), the p50 of a separate normal
measurement, the gap between node times and the plain p50 with and without the profiler's time
taken out, and the seconds profiling and the normal measurement took. Then the
per-layer table of minilm with 50% of its attention heads removed (with --quick, of digits-resnet).
The targets: the per-layer times plus the time outside layers within 10% of the unprofiled p50
("gap"), and profiling under 2x the time of the normal latency measurement ("profiling / timing").

    python -m benchmarks.profile_layers [--quick]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.common import print_table
from core.deploy.export import export_onnx
from core.deploy.measure import MIN_RUNS, MIN_SECONDS, create_session, paired_latency
from core.deploy.profile import PROFILE_RUNS, profile_plan
from core.inspect import attention_heads
from core.prune.engine import apply_plan
from core.prune.plan import Plan
from core.sources import load_model


def head_plan(handle, share: float) -> Plan:
    """Only attention heads: ``share`` of the heads of every attention block (FFN and hidden size stay)."""
    leaders = [name for name in attention_heads(handle.module, handle.example_input(1))
               if name.endswith(("query", "q_proj"))]
    return Plan(granularity="channel", sparsity=0.0, layers=dict.fromkeys(leaders, share))


def models(quick: bool) -> list[tuple[str, object, Plan]]:
    chosen = [("digits-resnet, 50% channels", load_model("digits-resnet"),
               Plan(granularity="channel", sparsity=0.5, round_to=8))]
    if quick:
        return chosen
    minilm = load_model("minilm")
    chosen.append(("minilm, 50% heads", minilm, head_plan(minilm, 0.5)))
    if not quick:
        resnet = load_model("benchmarks.scale:resnet50", input_shape=(1, 3, 224, 224))
        chosen.append(("ResNet-50 224x224, 50% channels", resnet, Plan(granularity="channel", sparsity=0.5,
                                                                        round_to=8)))
    return chosen


def reconcile(label: str, handle, plan: Plan, runs: int) -> tuple[list[list], dict]:
    """Rows comparing the profile with unprofiled paired timing, for the dense and the pruned model."""
    report = profile_plan(handle, plan, runs=runs)
    profile_seconds = report["dense"]["seconds"]  # sessions, runs and reading the trace; not pruning or export
    one = torch.from_numpy(np.ascontiguousarray(handle.data.x_test[:1]))
    models = [export_onnx(module, one) for module in (handle.module, apply_plan(handle, plan).module)]
    started = time.perf_counter()
    sessions = [create_session(model)[0] for model in models]
    timed = paired_latency(sessions, handle.data.x_test[:1], MIN_RUNS, MIN_SECONDS)
    latency_seconds = time.perf_counter() - started
    rows = []
    for which, profile, measured in (("dense", report["dense"], timed[0]), ("pruned", report["pruned"], timed[1])):
        layers = sum(layer["ms"] for layer in profile["layers"])
        nodes = layers + profile["other_ms"]
        raw = nodes + profile["nodes_per_run"] * profile["node_cost_us"] / 1000.0  # as the profiler timed them
        p50 = profile["p50_ms"]
        rows.append([label, which, round(layers, 3), round(profile["other_ms"], 3), round(profile["overhead_ms"], 3),
                     round(p50, 3), round(measured["latency_ms"]["p50"], 3), round(profile["profiled_p50_ms"], 3),
                     f"{profile['nodes_per_run']:.0f} x {profile['node_cost_us']:.1f}",
                     f"{100 * (raw - p50) / p50:+.1f}%", f"{100 * (nodes - p50) / p50:+.1f}%"])
    rows[-1] += [round(profile_seconds, 2), round(latency_seconds, 2), f"{profile_seconds / latency_seconds:.2f}x",
                 f"{report['dense']['runs']}", f"{os.getloadavg()[0]:.1f}"]
    rows[0] += ["", "", "", "", ""]
    return rows, report


def layer_table(report: dict, top: int) -> None:
    rows = sorted(report["rows"], key=lambda row: -row["ms_dense"])[:top]
    print_table(["layer", "ms dense", "ms pruned", "ms saved", "MACs removed", "time per MAC (pruned/dense)"],
                [[row["name"], round(row["ms_dense"], 3), round(row["ms_pruned"], 3), round(row["ms_saved"], 3),
                  f"{1 - row['macs_pruned'] / row['macs_dense']:.0%}" if row["macs_dense"] else "-",
                  "-" if row["ms_per_mac"] is None else f"{row['ms_per_mac']:.2f}x"] for row in rows])
    for which in ("dense", "pruned"):
        other = report[which]["other"]
        print(f"\n{which}: outside layers {report[which]['other_ms']:.3f} ms: "
              + ", ".join(f"{op} {ms:.3f}" for op, ms in list(other.items())[:8]))


def main(quick: bool = False) -> None:
    runs = 8 if quick else PROFILE_RUNS
    rows, reports = [], {}
    for label, handle, plan in models(quick):
        found, reports[label] = reconcile(label, handle, plan, runs)
        rows += found
    print_table(["model", "", "layers ms", "outside layers ms", "rest ms", "p50 ms (profile's plain runs)",
                 "p50 ms (separate timing)", "profiled p50 ms", "nodes x profiler us", "gap, raw node times",
                 "gap", "profiling s (both)", "timing s (both)", "profiling / timing", "profiled runs", "load"], rows)
    print(f"\nORT CPU, 2 threads, batch 1; at most {runs} profiled runs per model after a warm-up (fewer once the "
          f"medians are stable), then the same sessions timed plain in alternation, >= {MIN_RUNS} runs and "
          f"{MIN_SECONDS} s, as `prunelab evaluate` times (the separate timing: new sessions, the same way). "
          "Layer and outside times are node durations less the profiler's own time inside a node, measured on a "
          "chain of trivial nodes (nodes x profiler us); gap: layers + outside against the plain p50 (raw: "
          "without that subtraction). Seconds: sessions created, runs, and (profiling) reading the trace; "
          "pruning and export excluded.")
    for label in reports if quick else [label for label in reports if "heads" in label]:
        print(f"\n### {label}: the slowest layers\n")
        layer_table(reports[label], 12)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="digits-resnet alone, fewer runs")
    main(parser.parse_args().quick)
