"""Automatic per-layer allocation: choose each layer's sparsity from its sensitivity curve.

The problem is separable: remove a required amount of a resource (weights, MACs or latency)
while adding up as little damage as possible, where each layer's (or channel group's) damage as
a function of its sparsity is its measured curve (core/search/curves.py reads the curves and
spends a budget on them exactly, on their lower convex hulls). This module turns a request into
that budget and checks what it gives.

Damage is the loss increase on the selection split plus the accuracy drop, both measured with
every other layer dense. Weights removed add up exactly across layers, so an unstructured target
is met directly; MACs, parameters and latency of channel plans do not (a convolution between two
pruned groups loses both its inputs and its outputs), so channel plans are checked with the
engine and the budget is bisected until the real figure meets the target.
"""
from __future__ import annotations

from core.errors import PrunelabError
from core.inspect import prunable_layers
from core.prune.criteria import CRITERIA
from core.prune.engine import apply_plan
from core.prune.plan import AUTO, MAX_SPARSITY, Plan
from core.search import candidates, profile_cost
from core.search.curves import (
    BISECTION_STEPS,
    Curve,
    check_quality,
    curves_for,
    greedy,
    largest_within,
    predicted_drop,
)
from core.search.executors import executor_for
from core.search.sensitivity import footprint
from core.search.sensitivity import sensitivity as sweep
from core.sources import ModelHandle

TOLERANCE = 0.002       # relative slack on the reached target
# How a latency target is priced: each candidate timed whole, or the dense profile's ms per layer.
LATENCY_COSTS = ("sweep", "profile")


def _check_bounds(min_sparsity: float, max_sparsity: float) -> tuple[float, float]:
    for name, value in (("min_sparsity", min_sparsity), ("max_sparsity", max_sparsity)):
        if not 0.0 <= float(value) < 1.0:
            raise PrunelabError(f"{name} must be in [0, 1), got {value!r}")
    if min_sparsity > max_sparsity:
        raise PrunelabError(f"min_sparsity {min_sparsity} is above max_sparsity {max_sparsity}")
    return float(min_sparsity), float(max_sparsity)


def _single_target(target_sparsity, target_latency_ms, target_mac_reduction, max_accuracy_drop) -> tuple[str, float]:
    """``(kind, value)`` of the one target given ('sparsity', 'latency_ms', 'mac_reduction' or 'drop')."""
    given = [(kind, value) for kind, value in (("sparsity", target_sparsity), ("latency_ms", target_latency_ms),
                                               ("mac_reduction", target_mac_reduction)) if value is not None]
    if len(given) > 1:
        raise PrunelabError(f"give one target, not {' and '.join(kind for kind, _ in given)}")
    if not given:
        if max_accuracy_drop is None:
            raise PrunelabError("give a target: target_sparsity, target_latency_ms, target_mac_reduction "
                                "or max_accuracy_drop")
        return "drop", float(max_accuracy_drop)
    kind, value = given[0]
    value = float(value)
    if kind == "sparsity" and not 0.0 <= value < 1.0:
        raise PrunelabError(f"target sparsity must be in [0, 1), got {value}")
    if kind == "latency_ms" and value <= 0:
        raise PrunelabError(f"target latency must be a positive number of milliseconds, got {value}")
    if kind == "mac_reduction" and value < 1.0:
        raise PrunelabError(f"target MAC reduction is a factor of at least 1 (2 halves the MACs), got {value}")
    return kind, value


def check_request(target_sparsity, target_latency_ms, target_mac_reduction, max_accuracy_drop, granularity: str,
                  bounds: tuple[float, float], quality: str | None = None) -> tuple[str, float, tuple[float, float]]:
    """``(target kind, value, (min, max))`` for an allocation request; PrunelabError for a bad one."""
    bounds = _check_bounds(*bounds)
    kind, value = _single_target(target_sparsity, target_latency_ms, target_mac_reduction, max_accuracy_drop)
    if granularity not in ("unstructured", "channel"):
        raise PrunelabError(f"allocation granularity must be unstructured or channel, got {granularity!r}")
    if granularity != "channel" and kind in ("latency_ms", "mac_reduction"):
        raise PrunelabError("zeroed weights leave latency and MACs unchanged on ONNX Runtime: "
                            "latency and MAC targets need granularity channel")
    if max_accuracy_drop is not None and quality is not None and float(max_accuracy_drop) < 0:
        raise PrunelabError(f"max drop of {quality} must be at least 0, got {max_accuracy_drop}")
    if max_accuracy_drop is not None and quality is None and not 0.0 <= float(max_accuracy_drop) <= 1.0:
        raise PrunelabError(f"max accuracy drop is a fraction in [0, 1] (0.01 = one point), got {max_accuracy_drop}")
    return kind, value, bounds


def allocate(handle: ModelHandle, target_sparsity: float | None = None, target_latency_ms: float | None = None,
             granularity: str = "unstructured", criterion: str = "l1", max_accuracy_drop: float | None = None,
             min_sparsity: float = 0.0, max_sparsity: float = MAX_SPARSITY, sensitivity: dict | None = None,
             target_mac_reduction: float | None = None, round_to: int | str = AUTO, workers: int | None = 1,
             ray_address: str | None = None, quality: str | None = None, latency_cost: str = "sweep") -> Plan:
    """A per-layer plan that reaches one target while losing as little accuracy as the curves predict.

    Targets (give one): target_sparsity, the overall fraction of weights removed (zeroed weights of
    the pruned layers for unstructured plans, parameters of the whole model for channel plans);
    target_latency_ms, the ONNX Runtime p50 at batch 1 (channel plans); target_mac_reduction, dense
    MACs over pruned MACs (channel plans, 2 halves them). Without a target, max_accuracy_drop (a
    fraction: 0.01 is one point) asks for the highest sparsity whose predicted drop stays within it;
    with a target it is a limit, and an allocation predicted to exceed it raises PrunelabError.
    min_sparsity/max_sparsity bound every layer. sensitivity: a result of core.search.sensitivity with the
    same granularity and criterion (computed on the val split when omitted). round_to (channel
    plans): kept channels rounded to a multiple or "auto", as in Plan; the target is checked on the rounded
    model and the plan carries the rounding. The final classifier stays dense, as in every plan.
    workers / ray_address: where the omitted sweep and the candidate checks run (see
    core.search.executors.executor_for). quality: the figure the damage and max_accuracy_drop are read
    in: accuracy (None) or a number the model's own metric returns (``handle.metric``, e.g. 'mAP'),
    its drop then in the metric's own units. Raises PrunelabError for conflicting or unreachable
    targets, or a quality figure the sweep did not measure. latency_cost: how a latency target is priced,
    "sweep" (each candidate plan timed whole) or "profile" (the dense model's measured ms per layer,
    core.search.profile_cost).
    """
    kind, value, bounds = check_request(target_sparsity, target_latency_ms, target_mac_reduction, max_accuracy_drop,
                                        granularity, (min_sparsity, max_sparsity), quality)
    check_latency_cost(latency_cost, kind)
    executor = executor_for(workers, ray_address)
    result = sensitivity if sensitivity is not None else sweep(handle, granularity, criterion, workers=workers,
                                                                ray_address=ray_address)
    if (result.get("granularity"), result.get("criterion")) not in ((granularity, criterion), (None, None)):
        raise PrunelabError(f"the sensitivity result is for {result.get('granularity')}/{result.get('criterion')}, "
                            f"not {granularity}/{criterion}")
    if not result.get("complete", True):
        raise PrunelabError("the sensitivity sweep was stopped early; allocation needs every layer's curve")
    check_quality(result, quality)
    if kind == "latency_ms" and latency_cost == "profile":
        chosen = _allocate_by_profile(handle, result, value, bounds, criterion, round_to, quality)
    elif granularity == "channel":
        chosen = _allocate_channels(handle, result, kind, value, bounds, criterion, round_to, quality)
    else:
        chosen = _allocate_weights(result, kind, value, bounds, quality)
        if kind == "sparsity":
            chosen = candidates.best(handle, criterion, _weight_candidates(handle, criterion, chosen, value, bounds),
                                     executor, quality)
    if max_accuracy_drop is not None and kind != "drop":
        _check_drop(result, chosen, granularity, bounds, max_accuracy_drop, quality)
    return Plan(granularity=granularity, criterion=criterion, scope="layer", sparsity=0.0,
                layers={name: round(level, 4) for name, level in chosen.items()},
                round_to=round_to if granularity == "channel" else AUTO)


def _allocate_by_profile(handle: ModelHandle, result: dict, target_ms: float, bounds, criterion: str,
                         round_to, quality: str | None = None) -> dict[str, float]:
    """Group sparsities whose latency, priced by the dense model's profile (core.search.profile_cost), meets
    ``target_ms`` at the least predicted damage. The dense figure is the profile's p50 of plain runs, so a target
    below the time outside layers and between nodes is out of reach."""
    costs = profile_cost.layer_costs(handle)
    members = {layer["name"]: layer.get("members", [layer["name"]]) for layer in result["layers"]}
    curves = profile_cost.profiled_curves(curves_for(result, "macs", bounds, quality), members, costs)
    if not curves:
        raise PrunelabError(f"{handle.name}: the sensitivity result has no channel groups to allocate")
    dense = float(costs["p50_ms"])

    def saved(chosen: dict[str, float]) -> float:  # refits and BatchNorm statistics leave MACs as they are
        plan = Plan(granularity="channel", criterion=criterion, sparsity=0.0, round_to=round_to,
                    layers={name: round(level, 4) for name, level in chosen.items()}, reconstruct=False,
                    recalibrate=False)
        return profile_cost.predicted_saving_ms(handle, plan, costs)

    return _spend(curves, saved, dense - target_ms, f"p50 at most {target_ms:g} ms, priced by the profile", dense)


def _spend(curves: list[Curve], saved, needed: float, words: str, dense: float) -> dict[str, float]:
    """The smallest greedy budget whose ``saved(chosen)`` reaches ``needed`` (bisected), or PrunelabError."""
    if needed <= 0:
        return greedy(curves, 0.0)
    most = saved(greedy(curves, float("inf")))
    if most < needed:
        raise PrunelabError(f"the target ({words}) is out of reach: pruning every group as far as allowed "
                            f"saves {most:.3g} of {dense:.3g}")
    low, high = 0.0, float(sum(curve.removed[-1] for curve in curves))
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        low, high = (low, middle) if saved(greedy(curves, middle)) >= needed else (middle, high)
    return greedy(curves, high)


def check_latency_cost(latency_cost: str, kind: str) -> None:
    """PrunelabError for an unknown latency pricing, or "profile" without a latency target."""
    if latency_cost not in LATENCY_COSTS:
        raise PrunelabError(f"latency cost must be one of {', '.join(LATENCY_COSTS)}, got {latency_cost!r}")
    if latency_cost == "profile" and kind != "latency_ms":
        raise PrunelabError("pricing by the profile spends a latency target: give target_latency_ms")


def _check_drop(result: dict, chosen: dict, granularity: str, bounds, limit: float, quality: str | None) -> None:
    curves = curves_for(result, "weights" if granularity != "channel" else "params", bounds, quality)
    drop = predicted_drop(curves, chosen)
    if drop > limit + 1e-9:
        cost, allowed = (f"{drop:.4g}", f"{limit:.4g}") if quality else (f"{drop:.1%}", f"{limit:.1%}")
        raise PrunelabError(f"reaching that target is predicted to cost {cost} of {quality or result['label']}, "
                            f"more than the allowed {allowed}")


def _weight_candidates(handle: ModelHandle, criterion: str, chosen: dict[str, float], target: float,
                       bounds: tuple[float, float]) -> list[dict[str, float]]:
    """The curve allocation, the split a global ranking makes at the same target, and their mean.

    Curves measure one layer at a time; a global ranking sees every layer at once. Both reach the
    same overall sparsity (the target is a parameter-weighted sum), and so does their mean. A
    criterion with no ranking across layers (wanda, sparsegpt) has the curve allocation only.
    """
    if CRITERIA[criterion].layer_scope_only:
        return [chosen]
    spread = _global_within(handle, criterion, list(chosen), target, bounds)
    if spread is None:
        return [chosen]
    mean = {name: (chosen[name] + spread[name]) / 2 for name in chosen}
    return [chosen, mean, spread]


def _global_within(handle: ModelHandle, criterion: str, names: list[str], target: float,
                   bounds: tuple[float, float]) -> dict[str, float] | None:
    """Per-layer sparsities of one global ranking at ``target`` with every layer kept inside ``bounds``.

    A layer the ranking would take past a bound is pinned at it and the rest are ranked again for
    the remaining weights (so the overall target still holds). None when no such split exists.
    """
    sizes = {layer.name: layer.weight.numel() for layer in prunable_layers(handle.module) if layer.name in names}
    total = float(sum(sizes.values()))
    pinned: dict[str, float] = {}
    for _ in range(len(names) + 1):
        free = [name for name in names if name not in pinned]
        free_size = float(sum(sizes[name] for name in free))
        if not free or free_size == 0:
            return None
        remaining = (target * total - sum(level * sizes[name] for name, level in pinned.items())) / free_size
        if not 0.0 <= remaining < 1.0:
            return None
        plan = Plan(criterion=criterion, scope="global", sparsity=round(remaining, 6), layers=pinned,
                    ignore=[layer.name for layer in prunable_layers(handle.module) if layer.name not in names])
        reached = apply_plan(handle, plan).layer_sparsity
        outside = {name: min(max(reached[name], bounds[0]), bounds[1]) for name in free
                   if not bounds[0] <= reached[name] <= bounds[1]}
        if not outside:
            return {name: pinned.get(name, reached[name]) for name in names}
        pinned.update(outside)
    return None


def _allocate_weights(result: dict, kind: str, value: float, bounds, quality: str | None) -> dict[str, float]:
    curves = curves_for(result, "weights", bounds, quality)
    params = {layer["name"]: layer["params"] for layer in result["layers"]}
    total = float(sum(params[curve.name] for curve in curves))
    if kind == "drop":
        return largest_within(curves, value, total)
    reachable = sum(curve.removed[-1] for curve in curves) / total
    if value > reachable + 1e-9:
        raise PrunelabError(f"target sparsity {value:.1%} is out of reach: with at most "
                            f"{bounds[1]:.0%} per layer the most is {reachable:.1%}")
    return greedy(curves, value * total)


TARGET_WORDS = {"sparsity": "{:.1%} of the parameters removed", "mac_reduction": "{:g}x fewer MACs",
                "latency_ms": "p50 of {:.4g} ms"}
CHANNEL_RESOURCES = {"sparsity": "params", "mac_reduction": "macs", "latency_ms": "latency_ms", "drop": "params"}


def _allocate_channels(handle: ModelHandle, result: dict, kind: str, value: float, bounds,
                       criterion: str, round_to: int | str = AUTO, quality: str | None = None) -> dict[str, float]:
    """Group sparsities whose real (engine-measured) params, MACs or latency meet the target."""
    resource = CHANNEL_RESOURCES[kind]
    curves = curves_for(result, resource, bounds, quality)
    if not curves:
        raise PrunelabError(f"{handle.name}: the sensitivity result has no channel groups to allocate")
    dense = float(result["layers"][0]["curve"][0][resource])
    if kind == "drop":
        return largest_within(curves, value, sum(float(curve.removed[-1]) for curve in curves))
    needed = {"sparsity": value * dense, "mac_reduction": dense * (1.0 - 1.0 / value),
              "latency_ms": dense - value}[kind]
    if needed <= 0:
        return greedy(curves, 0.0)

    def removed(chosen: dict[str, float]) -> float:
        return dense - measure_channel_plan(handle, criterion, chosen, timed=resource == "latency_ms",
                                            round_to=round_to)[resource]

    most = greedy(curves, float("inf"))
    if removed(most) < needed * (1 - TOLERANCE):
        raise PrunelabError(f"the target ({TARGET_WORDS[kind].format(value)}) is out of reach: with at most "
                            f"{bounds[1]:.0%} per group the model keeps {dense - removed(most):,.4g} {resource} "
                            f"of {dense:,.4g}")
    low, high = 0.0, float(sum(curve.removed[-1] for curve in curves))
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if removed(greedy(curves, middle)) >= needed:
            high = middle
        else:
            low = middle
    return greedy(curves, high)  # high always meets the target: it starts at ``most`` and only moves to passing budgets


def measure_channel_plan(handle: ModelHandle, criterion: str, chosen: dict[str, float], timed: bool = True,
                         round_to: int | str = AUTO) -> dict:
    """Parameters, MACs per item and ORT p50 latency of the channel plan ``chosen`` (as the sweep measures)."""
    plan = Plan(granularity="channel", criterion=criterion, sparsity=0.0,
                layers={name: round(level, 4) for name, level in chosen.items()}, round_to=round_to)
    return footprint(apply_plan(handle, plan).module, handle.example_input(1), timed=timed)
