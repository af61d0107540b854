"""Allocation curves read from a sensitivity sweep, and the exact greedy allocation on them.

Each layer's (or channel group's) damage as a function of its sparsity is its measured curve,
linearly interpolated between levels. ``greedy`` takes the lower convex hull of every curve (in
resource removed vs. damage) and spends a budget on hull segments in order of damage per unit of
resource, splitting the last segment: the exact solution for the convexified curves (a Lagrangian
sweep reaches the same points), and deterministic. core.search.allocate turns a target into a
budget on these curves; core.search.spend prices depth, width or both with them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import PrunelabError
from core.search.sweep_points import LOWER_IS_BETTER, quality_of

ACCURACY_WEIGHT = 1.0   # damage = loss increase + ACCURACY_WEIGHT * accuracy drop
BISECTION_STEPS = 14


@dataclass(frozen=True)
class Curve:
    """One layer's (or group's) options: sparsities with the resource each removes and its damage."""

    name: str
    sparsity: np.ndarray   # ascending levels within [min, max]
    removed: np.ndarray    # resource removed at each level, counted from the dense model
    damage: np.ndarray     # damage at each level (relative to the first)
    drop: np.ndarray       # accuracy drop at each level, for the max_accuracy_drop check


def _interpolate(levels, values, bounds: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Levels clipped to ``bounds`` (adding the interpolated end points) and the values there."""
    low, high = bounds
    inside = [level for level in levels if low < level < high]
    points = np.array([low, *inside, high])
    return points, np.interp(points, levels, values)


def quality_values(points: list[dict], quality: str | None) -> np.ndarray:
    """The quality figure at each point, higher being better (see sweep_points.quality_of)."""
    return np.array([quality_of(point, quality) for point in points])


def check_quality(result: dict, quality: str | None) -> None:
    """Refuse a quality figure the sensitivity result does not carry, naming the ones it does."""
    if quality is None:
        return
    if quality in LOWER_IS_BETTER:
        if result.get(f"baseline_{quality}") is None:
            raise PrunelabError(f"the sensitivity result has no {quality}: it needs a causal language model "
                                "scored on text (random token ids have none)")
        return
    named = result.get("baseline_metrics") or {}
    if quality not in named:
        have = f"its metric gives {', '.join(named)}" if named else "it was measured without --metric"
        raise PrunelabError(f"the sensitivity result has no figure '{quality}': {have}")


def rise_in_points(result: dict, quality: str, percent: float) -> float:
    """A largest rise of a lower-is-better figure given in percent of its dense value, in the figure's own
    units (5% of a dense perplexity of 96.6 is 4.83); PrunelabError for a negative percent."""
    check_quality(result, quality)
    if percent < 0:
        raise PrunelabError(f"largest {quality} rise must be at least 0%, got {percent}%")
    return percent / 100.0 * result[f"baseline_{quality}"]


def curves_for(result: dict, resource: str, bounds: tuple[float, float], quality: str | None = None) -> list[Curve]:
    """Allocation curves from a sensitivity ``result`` for ``resource`` ('weights', 'params', 'macs', 'latency_ms').

    'weights' counts zeroed weights of the layer itself; the others read the measured whole-model
    figure at each level (channel sweeps), so the removed amount is dense minus pruned. Damage is
    the loss increase plus the accuracy drop, or, with ``quality`` (a name the model's own metric
    returns, higher being better, or 'perplexity', lower being better), the drop (or rise) of that figure alone.
    """
    curves = []
    for layer in result["layers"]:
        points = layer["curve"]
        levels = np.array([point["sparsity"] for point in points])
        if len(levels) < 2:
            continue
        high = min(bounds[1], float(levels[-1]))
        low = min(bounds[0], high)
        values = quality_values(points, quality)
        loss = np.array([point["loss"] for point in points])
        if resource == "weights":
            removed = levels * layer["params"]
        else:
            measured = np.array([point[resource] for point in points], dtype=float)
            removed = measured[0] - measured
        drop = values[0] - values
        damage = drop if quality else (loss - loss[0]) + ACCURACY_WEIGHT * drop
        sparsity, removed = _interpolate(levels, removed, (low, high))
        _, damage = _interpolate(levels, damage, (low, high))
        _, drop = _interpolate(levels, drop, (low, high))
        curves.append(Curve(layer["name"], sparsity, removed, damage - damage[0], drop))
    return curves


def _hull(curve: Curve) -> list[int]:
    """Indices of the lower convex hull of (removed, damage), from the first point, left to right."""
    hull: list[int] = [0]
    for index in range(1, len(curve.sparsity)):
        if curve.removed[index] <= curve.removed[hull[-1]]:
            continue  # removes nothing more (a flat or noisy measurement): never worth taking
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = ((curve.removed[b] - curve.removed[a]) * (curve.damage[index] - curve.damage[a])
                     - (curve.damage[b] - curve.damage[a]) * (curve.removed[index] - curve.removed[a]))
            if cross > 0:
                break
            hull.pop()
        hull.append(index)
    return hull


def greedy(curves: list[Curve], budget: float) -> dict[str, float]:
    """Sparsity per curve that removes at least ``budget`` (or all that is possible) at the least damage."""
    segments = []
    for order, curve in enumerate(curves):
        hull = _hull(curve)
        for a, b in zip(hull, hull[1:]):
            gain = curve.removed[b] - curve.removed[a]
            segments.append(((curve.damage[b] - curve.damage[a]) / gain, order, a, b))
    segments.sort()
    chosen = {curve.name: float(curve.sparsity[0]) for curve in curves}
    remaining = budget - sum(curve.removed[0] for curve in curves)  # the minimum sparsities remove this much
    for _, order, a, b in segments:
        if remaining <= 0:
            break
        curve = curves[order]
        gain = curve.removed[b] - curve.removed[a]
        share = min(1.0, remaining / gain)
        chosen[curve.name] = float(curve.sparsity[a] + share * (curve.sparsity[b] - curve.sparsity[a]))
        remaining -= share * gain
    return chosen


def predicted_drop(curves: list[Curve], chosen: dict[str, float]) -> float:
    """The sum of the layers' own accuracy drops at their chosen sparsities (a first-order estimate)."""
    return float(sum(np.interp(chosen[curve.name], curve.sparsity, curve.drop) for curve in curves))


def largest_within(curves: list[Curve], limit: float, total: float) -> dict[str, float]:
    """The greedy allocation with the largest budget whose predicted accuracy drop stays within ``limit``."""
    low, high = 0.0, total
    for _ in range(BISECTION_STEPS * 2):
        middle = (low + high) / 2
        if predicted_drop(curves, greedy(curves, middle)) <= limit:
            low = middle
        else:
            high = middle
    return greedy(curves, low)
