"""Where the time goes: ONNX Runtime's per-node profile, mapped back to the model's prunable layers.

ONNX Runtime's profiler (``SessionOptions.enable_profiling``) records the time of every node of
every run. The exporter names nodes by module scope (``/layer1/conv2/Conv``), but ONNX Runtime's
fusions rename what they fuse after a tensor (``/layer1/bn2/BatchNormalization_output_0_nchwc`` is
conv2 + bn2 + relu). ``LayerMap`` reads the exported graph once and answers, for any profiled node
name, the prunable layer it computes, or None for work outside layers (softmax, layout reorders,
normalisation, residual glue).

Where the profiler's own time lands: ONNX Runtime stamps a node's start before it formats the
node's input shapes and its end after the output shapes and thread statistics, so every node's
duration carries a few µs of the profiler's work, and recording each event adds more between nodes.
On a graph of many small nodes (minilm: 368 per run) that makes profiled runs visibly slower than
plain ones. So the profile is reconciled with plain runs, not with itself: ``p50_ms`` is the median
of the same sessions timed with the profiler ended, ``node_cost_us`` the profiler's time inside a
node, measured on a chain of trivial nodes run beside the models, and every node's time is given
less that cost (never below 0).

A profile is ``{"layers": [{"name", "ms", "share", "nodes"}], "other_ms", "other": {op: ms},
"overhead_ms", "p50_ms", "runs", "timed_runs", "profiled_p50_ms", "nodes_per_run", "node_cost_us",
"profiler_ms"}``: ``ms`` are medians over profiled runs of the per-run sums; ``overhead_ms`` is the
rest of the plain p50 (``p50_ms`` less the layers and ``other_ms``: the session's own time between
nodes; negative when node times overstate the plain run), shown, not hidden; ``profiler_ms`` is what
profiling added to a run (profiled p50 less plain p50).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from core.deploy import measure
from core.errors import PrunelabError, error_line

PROFILE_RUNS = 20
MIN_PROFILED_RUNS = 5
WARMUP_RUNS = 3
STABLE = 0.03  # profiled runs stop early once each model's median run is known within 3%
CALIBRATION_NODES = 200
# Ops that ONNX Runtime folds into the convolution or matrix product before them (their output
# names the fused node); walking back through them from a fused node reaches the layer's own node.
FOLDED_OPS = {"BatchNormalization", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu",
              "Add", "Sum", "Mul", "Tanh", "Erf", "Div", "Transpose", "Identity", "Cast"}
COMPUTE_OPS = {"Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "MatMulNBits",
               "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
               "QGemm", "ConvTranspose"}
SUFFIXES = ("_kernel_time", "_nchwc", "_fence_before", "_fence_after")


def scope_path(node_name: str) -> str:
    """The module path a legacy-exporter node name carries: ``/layer3/branch3x3/branch3x3.2/Relu`` ->
    ``layer3.branch3x3.2`` (a child of a Sequential or ModuleList is written ``parent.index``)."""
    parts = [part for part in node_name.split("/")[1:-1] if part]
    path: list[str] = []
    for part in parts:
        previous = path[-1] if path else None
        if previous is not None and part.startswith(previous.split(".")[-1] + ".") and "." in part:
            path.append(part.split(".", 1)[1])
        else:
            path.append(part)
    return ".".join(path)


class LayerMap:
    """Profiled node name -> prunable layer name (or None), read from the exported graph."""

    def __init__(self, model_bytes: bytes, layer_names: list[str]):
        graph = onnx.load_from_string(model_bytes).graph
        self.layers = sorted(layer_names, key=len, reverse=True)  # the longest path wins: "a.b" before "a"
        self.initializers = {initializer.name for initializer in graph.initializer}
        self.nodes = {node.name: node for node in graph.node}
        self.producer = {output: node for node in graph.node for output in node.output}
        self._known: dict[str, str | None] = {}

    def layer_of(self, profiled_name: str, op: str | None = None) -> str | None:
        """The layer ``profiled_name`` (an ORT node name, fused or not) computes, or None."""
        key = (profiled_name, op)
        if key not in self._known:
            self._known[key] = self._find(profiled_name, op)
        return self._known[key]

    def _find(self, profiled_name: str, op: str | None) -> str | None:
        name = profiled_name.removeprefix("fused ")
        for suffix in SUFFIXES:
            name = name.removesuffix(suffix)
        node = self.nodes.get(name) or self.producer.get(name)
        if node is None:
            return None
        found = self._layer_of_node(node)
        if found is None and (op in COMPUTE_OPS or op is None):
            found = self._walk_back(node)
        return found

    def _layer_of_node(self, node) -> str | None:
        path = scope_path(node.name)
        for layer in self.layers:
            if path == layer or path.startswith(layer + "."):
                return layer
        for value in node.input:  # a weight read by name: features.0.weight
            if value in self.initializers:
                prefix = value.rpartition(".")[0]
                if prefix in self.layers:
                    return prefix
        return None

    def _walk_back(self, node, depth: int = 6) -> str | None:
        """The first layer upstream of a fused node, through the ops ONNX Runtime folds into it."""
        frontier = [node]
        for _ in range(depth):
            following = []
            for current in frontier:
                if current is not node:
                    found = self._layer_of_node(current)
                    if found is not None:
                        return found
                if current is node or current.op_type in FOLDED_OPS:
                    following += [self.producer[value] for value in current.input if value in self.producer]
            frontier = following
            if not frontier:
                return None
        return None


def _profiled_session(model_bytes: bytes, threads: int, prefix: str):
    options = measure.session_options(threads)
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/... types
        raise PrunelabError(f"ONNX Runtime cannot load the model: {error_line(error)[:300]}") from None


def _events(session) -> list[dict]:
    """The session's trace events; ending the profile leaves the session running plain (unprofiled)."""
    path = session.end_profiling()
    try:
        return json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)


def calibration_model(nodes: int = CALIBRATION_NODES) -> bytes:
    """A chain of ``nodes`` Neg nodes on 8 floats: each does next to no work, so its profiled duration is
    what the profiler itself adds inside a node."""
    from onnx import TensorProto, helper

    chain = [helper.make_node("Neg", [f"v{index}"], [f"v{index + 1}"], name=f"neg{index}") for index in range(nodes)]
    graph = helper.make_graph(chain, "calibration", [helper.make_tensor_value_info("v0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"v{nodes}", TensorProto.FLOAT, [1, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _timed_runs(events: list[dict]) -> list[dict]:
    runs = sorted((event for event in events if event.get("cat") == "Session" and event.get("name") == "model_run"),
                  key=lambda event: event["ts"])[WARMUP_RUNS:]
    if not runs:
        raise PrunelabError("the ONNX Runtime profile recorded no runs")
    return runs


def _node_events(events: list[dict], runs: list[dict]):
    """(run index, event) for every kernel event of a timed run (warm-up runs are left out)."""
    starts = np.array([run["ts"] for run in runs])
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        index = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if index >= 0 and event["ts"] <= runs[index]["ts"] + runs[index]["dur"]:
            yield index, event


def node_cost_us(events: list[dict], plain_ms: np.ndarray, nodes: int = CALIBRATION_NODES) -> float:
    """What the profiler adds inside each node's duration (µs), from the calibration chain's trace: its
    nodes' median profiled duration less their unprofiled time (the chain's plain p50 over its nodes)."""
    durations = [event["dur"] for _, event in _node_events(events, _timed_runs(events))]
    return max(0.0, float(np.median(durations)) - 1000.0 * float(np.median(plain_ms)) / nodes)


def summarise(events: list[dict], layer_map: LayerMap, layer_order: list[str], plain_ms: np.ndarray,
              node_us: float = 0.0) -> dict:
    """A profile (see the module docstring) from ORT trace events of the timed runs, the unprofiled run
    times ``plain_ms`` of the same session, and the profiler's own cost inside a node ``node_us``."""
    runs = _timed_runs(events)
    per_run_layer = [defaultdict(float) for _ in runs]
    per_run_other = [defaultdict(float) for _ in runs]
    node_counts: dict[str, set] = defaultdict(set)
    nodes = [0] * len(runs)
    for index, event in _node_events(events, runs):
        op = event.get("args", {}).get("op_name")
        layer = layer_map.layer_of(event["name"], op)
        milliseconds = max(0.0, event["dur"] - node_us) / 1000.0
        nodes[index] += 1
        if layer is None:
            per_run_other[index][op or "other"] += milliseconds
        else:
            per_run_layer[index][layer] += milliseconds
            node_counts[layer].add(event["name"])
    run_ms = np.array([run["dur"] / 1000.0 for run in runs])
    layer_ms = {name: float(np.median([record[name] for record in per_run_layer])) for name in layer_order}
    other_by_op = {op: float(np.median([record[op] for record in per_run_other]))
                   for op in sorted({op for record in per_run_other for op in record})}
    other_ms = float(np.median([sum(record.values()) for record in per_run_other]))
    p50, profiled = float(np.median(plain_ms)), float(np.median(run_ms))
    nodes_per_run = float(np.median(nodes))
    return {
        "layers": [{"name": name, "ms": layer_ms[name], "share": layer_ms[name] / p50 if p50 else 0.0,
                    "nodes": len(node_counts[name])} for name in layer_order],
        "other_ms": other_ms,
        "other": dict(sorted(other_by_op.items(), key=lambda item: -item[1])),
        "overhead_ms": p50 - sum(layer_ms.values()) - other_ms,
        "p50_ms": p50, "runs": len(runs), "timed_runs": len(plain_ms),
        "profiled_p50_ms": profiled, "nodes_per_run": nodes_per_run, "node_cost_us": node_us,
        "profiler_ms": profiled - p50,
    }


def _profiled_runs(sessions: list, feeds: list[dict], runs: int) -> None:
    """Warm-up, then profiled runs of every session in turn: at least MIN_PROFILED_RUNS, at most ``runs``,
    fewer once every session's median run is stable (its 95% interval within STABLE of it)."""
    seconds: list[list[float]] = [[] for _ in sessions]
    for round_index in range(WARMUP_RUNS + runs):
        for session, feed, record in zip(sessions, feeds, seconds):
            started = time.perf_counter()
            try:
                session.run(None, feed)
            except Exception as error:  # shape or type mismatch with the example
                raise PrunelabError(f"ONNX Runtime cannot run the model: {error_line(error)[:300]}") from None
            if round_index >= WARMUP_RUNS:
                record.append(time.perf_counter() - started)
        if round_index + 1 - WARMUP_RUNS >= MIN_PROFILED_RUNS and all(_stable(record) for record in seconds):
            return


def _stable(seconds: list[float]) -> bool:
    ordered = np.sort(seconds)
    rank = measure.order_rank(len(ordered))
    median = float(np.median(ordered))
    return ordered[len(ordered) - 1 - rank] - ordered[rank] <= 2 * STABLE * median


def profile_models(models: list[bytes], example: np.ndarray, layer_names: list[list[str]], threads: int = 2,
                   runs: int = PROFILE_RUNS) -> list[dict]:
    """Profiles of several ONNX models on ``example``, their runs in alternation (as latency is timed).

    One session per model: profiled runs after a warm-up (see ``_profiled_runs``), then, with the
    profiler ended, the same warm sessions timed plain in alternation as ``prunelab evaluate`` times
    them, which gives each profile its ``p50_ms``. A chain of trivial nodes runs beside them to measure
    what the profiler adds inside every node (``node_cost_us``), which each node's time is given without.
    ``layer_names[i]`` are the prunable layers of model ``i`` in the order the table lists them.
    Each profile also carries ``seconds``, the time it took to profile all of them.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prunelab-profile-") as folder:
        sessions = [_profiled_session(model, threads, os.path.join(folder, f"model{index}"))
                    for index, model in enumerate([*models, calibration_model()])]
        feeds = [{session.get_inputs()[0].name: np.ascontiguousarray(example)} for session in sessions[:-1]]
        feeds.append({"v0": np.ones((1, 8), dtype=np.float32)})
        with measure.timing_lock():
            _profiled_runs(sessions, feeds, runs)
            events = [_events(session) for session in sessions]
        plain = measure.paired_times(sessions[:-1], example, warmup=0)
        calibration = measure.paired_times(sessions[-1:], feeds[-1]["v0"], min_runs=MIN_PROFILED_RUNS,
                                           min_seconds=0.0, warmup=0)[0]
    node_us = node_cost_us(events[-1], calibration)
    profiles = [summarise(trace, LayerMap(model, names), names, times, node_us)
                for trace, model, names, times in zip(events, models, layer_names, plain)]
    seconds = time.perf_counter() - started
    for profile in profiles:
        profile["seconds"] = seconds
    return profiles


def compare(dense: dict, pruned: dict, macs_dense: dict[str, int], macs_pruned: dict[str, int]) -> list[dict]:
    """One row per layer of the dense profile: ms dense, ms pruned, ms saved and µs per million MACs.

    A layer the pruned model no longer has reads 0 ms pruned. ``ms_per_mac`` is the pruned layer's
    time per MAC relative to the dense layer's (1.0: time fell with the MACs; above 1: the cut bought
    less time than it removed work).
    """
    pruned_ms = {row["name"]: row["ms"] for row in pruned["layers"]}
    rows = []
    for row in dense["layers"]:
        name, before = row["name"], row["ms"]
        after = pruned_ms.get(name, 0.0)
        mac_before, mac_after = macs_dense.get(name) or 0, macs_pruned.get(name) or 0
        per_mac_before = before / mac_before if mac_before else None
        per_mac_after = after / mac_after if mac_after else None
        relative = per_mac_after / per_mac_before if per_mac_before and per_mac_after else None
        rows.append({"name": name, "ms_dense": before, "ms_pruned": after, "ms_saved": before - after,
                     "macs_dense": mac_before, "macs_pruned": mac_after,
                     "us_per_mmac_dense": None if per_mac_before is None else per_mac_before * 1e9,
                     "us_per_mmac_pruned": None if per_mac_after is None else per_mac_after * 1e9,
                     "ms_per_mac": relative})
    return rows


def profile_plan(handle, plan=None, *, batch_size: int = 1, threads: int = 2, runs: int = PROFILE_RUNS) -> dict:
    """Per-layer measured time of ``handle``'s dense model and, with ``plan``, of the pruned one.

    Returns ``{"model", "plan", "settings", "dense": profile, "pruned": profile or None, "rows"}``
    (``rows`` from ``compare``; without a plan, ``ms_pruned`` repeats the dense figures). Raises
    PrunelabError for a source without a PyTorch module or a plan the model cannot take.
    """
    import torch

    from core.deploy.export import export_onnx
    from core.inspect import layer_macs, prunable_layers
    from core.prune.engine import apply_plan

    if handle.module is None:
        raise PrunelabError("profiling by layer needs a PyTorch model; an ONNX file has no layers to map nodes to")
    items = handle.data.x_test
    example = np.ascontiguousarray(np.resize(items, (batch_size, *items.shape[1:])))  # repeated when too few
    one = torch.from_numpy(np.ascontiguousarray(handle.data.x_test[:1]))
    modules = [handle.module] + ([apply_plan(handle, plan).module] if plan is not None else [])
    models = [export_onnx(module, one) for module in modules]
    names = [[layer.name for layer in prunable_layers(module)] for module in modules]
    profiles = profile_models(models, example, names, threads=threads, runs=runs)
    macs = [layer_macs(module, one) for module in modules]
    dense, pruned = profiles[0], (profiles[1] if plan is not None else None)
    return {"model": handle.name, "plan": None if plan is None else plan.to_dict(),
            "settings": {"batch_size": batch_size, "threads": threads, "runs": runs},
            "dense": dense, "pruned": pruned,
            "rows": compare(dense, pruned or dense, macs[0], macs[-1])}


def summary(report: dict) -> dict:
    """The few figures a run keeps of a ``profile_plan`` report (its HTML report draws them)."""
    measured = report["pruned"] or report["dense"]
    keys = ("name", "ms_dense", "ms_pruned", "ms_saved")
    return {"rows": [{key: row[key] for key in keys} for row in report["rows"]],
            "other_ms": measured["other_ms"], "overhead_ms": measured["overhead_ms"],
            "dense_p50_ms": report["dense"]["p50_ms"], "pruned_p50_ms": measured["p50_ms"],
            "runs": measured["runs"]}
