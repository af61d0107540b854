"""Spending a latency target by measured per-layer cost: the dense model's profile, not its MACs.

A channel sweep times the whole model at every point, and MACs say nothing about which layers the
CPU is slow on (a depthwise layer costs far more per MAC than a pointwise one). Here the dense
model is profiled once (core.deploy.profile: ms per prunable layer, medians over runs), which
gives each layer a measured cost per MAC. A group's curve values the MACs it removes at its
layers' cost per MAC, and a candidate plan is priced exactly: the engine prunes it, each layer's
remaining MACs are counted, and the ms it saves is the sum of every layer's MACs removed times
that layer's cost. Time outside layers (normalisation, glue, layout reorders) is assumed to stay,
so the prediction errs on the slow side. No candidate is timed, so the budget is not noisy.
"""
from __future__ import annotations

import dataclasses

from core.deploy.profile import profile_plan
from core.inspect import layer_macs
from core.prune.engine import apply_plan
from core.prune.plan import Plan


def layer_costs(handle, threads: int = 2) -> dict:
    """``{"ms_per_mac": {layer: ms per MAC}, "macs": {layer: MACs}, "p50_ms", "layers_ms"}`` of
    ``handle``'s dense model, from one ONNX Runtime profile at batch 1 (layers without MACs or time are left out)."""
    report = profile_plan(handle, threads=threads)
    rates = {row["name"]: row["ms_dense"] / row["macs_dense"] for row in report["rows"]
             if row["macs_dense"] and row["ms_dense"] > 0}
    return {"ms_per_mac": rates, "macs": {row["name"]: row["macs_dense"] for row in report["rows"]},
            "p50_ms": report["dense"]["p50_ms"], "layers_ms": sum(row["ms_dense"] for row in report["rows"])}


def group_rate(members, costs: dict) -> float:
    """A group's measured ms per MAC: its layers' profiled ms over their MACs (0 when none was timed)."""
    timed = [name for name in members if name in costs["ms_per_mac"]]
    macs = sum(costs["macs"][name] for name in timed)
    return sum(costs["ms_per_mac"][name] * costs["macs"][name] for name in timed) / macs if macs else 0.0


def profiled_curves(curves: list, members: dict[str, list[str]], costs: dict) -> list:
    """MAC ``curves`` (core.search.curves.Curve) with each group's MACs removed valued at its measured
    ms per MAC; ``members`` maps a curve's name to its group's layers."""
    return [dataclasses.replace(curve, removed=curve.removed * group_rate(members.get(curve.name, [curve.name]), costs))
            for curve in curves]


def predicted_saving_ms(handle, plan: Plan, costs: dict) -> float:
    """The ms ``plan`` saves as the profile prices it: every layer's MACs removed times its ms per MAC."""
    pruned = layer_macs(apply_plan(handle, plan).module, handle.example_input(1))
    return sum(rate * (costs["macs"][name] - pruned.get(name, 0)) for name, rate in costs["ms_per_mac"].items())
