"""The Python API: everything the CLI and the dashboard can do, as plain functions."""
from __future__ import annotations

from core.engine import PruneResult, apply_plan
from core.inspect import inspect_model, weight_histogram
from core.plan import Plan
from core.sources import ModelHandle, load_model


def inspect(handle: ModelHandle) -> dict:
    """Per-layer table and totals for ``handle`` (see core.inspect.inspect_model)."""
    handle.require("inspect")
    if handle.module is None:
        from core.onnx_source import inspect_onnx  # ONNX sources have no module structure
        return inspect_onnx(handle)
    return inspect_model(handle.module, handle.example_input())


def coupled_groups(module, example_input) -> list[dict]:
    """Channel dependency groups of ``module`` (see core.structured.coupled_groups)."""
    from core.structured import coupled_groups as groups
    return groups(module, example_input)


def histogram(handle: ModelHandle, layer: str, bins: int = 60, absolute: bool = True) -> dict:
    """Histogram data of one layer's weights, for the dashboard."""
    return weight_histogram(handle.module, layer, bins=bins, absolute=absolute)


__all__ = ["ModelHandle", "load_model", "inspect", "histogram", "Plan", "PruneResult", "apply_plan",
           "coupled_groups"]
