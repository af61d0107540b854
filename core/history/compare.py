"""Comparing stored runs: per-layer and metric differences, and the accuracy/latency Pareto front."""
from __future__ import annotations

import math

from core.history.runs import Run, get_run


def flat_metrics(metrics: dict) -> dict[str, float]:
    """Numeric metrics with nested ones flattened: ``{"latency_ms": {"p50": 2}}`` -> ``{"latency_ms.p50": 2}``."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in flat_metrics(value).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = value
    return flat


def planned_sparsity(run: Run, layers=()) -> dict[str, float]:
    """Per-layer sparsity of a run: measured when recorded, else the plan's targets.

    ``layers`` names layers to fill with the plan's default sparsity when nothing more is known.
    """
    if run.layer_sparsity:
        return dict(run.layer_sparsity)
    targets = dict(run.plan.get("layers") or {})
    ignored = set(run.plan.get("ignore") or ())
    default = run.plan.get("sparsity")
    for name in layers:
        if name not in targets and default is not None:
            targets[name] = 0.0 if name in ignored else default
    return targets


def compare_runs(first: Run | int, second: Run | int) -> dict:
    """Side by side: per-layer sparsity and pruned metrics of two runs, with ``delta = second - first``.

    Returns ``{"runs": [id, id], "layers": [{"layer", "a", "b", "delta"}], "metrics": [{"metric",
    "a", "b", "delta"}], "plan": [{"field", "a", "b"}]}``; a value missing on one side is None.
    """
    first, second = (run if isinstance(run, Run) else get_run(run) for run in (first, second))
    names = sorted(set(first.layer_sparsity) | set(second.layer_sparsity)
                   | set(first.plan.get("layers") or {}) | set(second.plan.get("layers") or {}))
    sparsity_a, sparsity_b = planned_sparsity(first, names), planned_sparsity(second, names)
    metrics_a, metrics_b = flat_metrics(first.pruned), flat_metrics(second.pruned)
    plan_fields = [key for key in dict.fromkeys([*first.plan, *second.plan]) if key != "layers"]
    return {
        "runs": [first.id, second.id],
        "layers": [_difference("layer", name, sparsity_a.get(name), sparsity_b.get(name)) for name in names],
        "metrics": [_difference("metric", name, metrics_a.get(name), metrics_b.get(name))
                    for name in dict.fromkeys([*metrics_a, *metrics_b])],
        "plan": [{"field": key, "a": first.plan.get(key), "b": second.plan.get(key)} for key in plan_fields],
    }


def _difference(kind: str, name: str, first, second) -> dict:
    delta = None if first is None or second is None else second - first
    return {kind: name, "a": first, "b": second, "delta": delta}


def pareto_indices(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: higher first value, lower second value.

    A point is dominated when another is at least as good in both and better in one. Points
    with a None or NaN coordinate are never on the front. Returned sorted by the second value.
    """
    valid = [index for index, (quality, cost) in enumerate(points)
             if _number(quality) and _number(cost)]
    front = []
    for index in valid:
        quality, cost = points[index]
        dominated = any(points[other][0] >= quality and points[other][1] <= cost
                        and (points[other][0] > quality or points[other][1] < cost) for other in valid)
        if not dominated:
            front.append(index)
    return sorted(front, key=lambda index: (points[index][1], -points[index][0]))


def pareto_front(runs: list[Run]) -> list[Run]:
    """The runs on the accuracy (or agreement) vs p50 latency front, fastest first."""
    return [runs[index] for index in pareto_indices([(run.quality, run.latency_p50) for run in runs])]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
