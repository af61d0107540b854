"""Sensitivity analysis: prune one layer (or one coupled channel group) at a time and measure the damage.

For each prunable layer and each sparsity level the rest of the model stays dense and the
held-out split (val by default, so that selection never tunes on test) is scored in torch
batches: accuracy (or agreement with the dense model when the data has no labels) and loss.
Large models score the first items of the split only (enough to keep one point's forward passes
near SCORING_BUDGET_MACS); the result says so, and ``max_items="all"`` scores every item.
Each (layer, level) point is one job (core.search.sweep_points says how a point is measured);
the jobs run serially, on local worker processes or on a Ray cluster (core.search.parallel) and
give the same curves everywhere. Channel sweeps also time each pruned graph on ONNX Runtime and
name the machine that timed it: latencies from different machines are not comparable.

Results are JSON-able and cached on disk by (model digest, data digest, settings), written once
by the calling process when every point is in.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from core.cache import ResultCache, cache_key
from core.deploy.measure import total_macs
from core.errors import PrunelabError
from core.prune.channel import coupled_groups
from core.prune.plan import GRANULARITIES, Plan, granularity_kind
from core.search import sweep_points
from core.search.executors import executor_for
from core.search.parallel import Outcome, Work
from core.search.sweep_points import (  # noqa: F401
    BASELINE,
    BLOCK,
    LATENCY_RUNS,
    LATENCY_THREADS,
    Scorer,
    footprint,
    included_layers,
    split_arrays,
)
from core.sources import ModelHandle

DEFAULT_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
QUICK_LEVELS = (0.0, 0.3, 0.5, 0.7, 0.9)  # a first look in a fraction of the time
# Sweeps cut one layer or channel group at a time; N:M patterns are not swept.
SWEPT_GRANULARITIES = tuple(name for name in GRANULARITIES if granularity_kind(name) != "N:M")
CACHE_VERSION = 8  # 7: one point per removable block; 8: baseline_perplexity
SCORING_BUDGET_MACS = 40e9       # multiply-accumulates per scored point before a subset is used
MIN_AUTO_ITEMS = 128

FOOTPRINT = ("params", "macs", "latency_ms")  # what channel and block points measure beside quality
Progress = Callable[[int, int, str], None]


def scored_items(macs_per_item: int, available: int, max_items: int | str | None) -> tuple[int, str]:
    """How many items of the split a sweep scores, and why when it is not all of them.

    max_items: a count, "all", or "auto"/None (every item unless one point's forward passes would
    exceed SCORING_BUDGET_MACS, then that many items but at least MIN_AUTO_ITEMS).
    """
    if max_items == "all":
        return available, ""
    if max_items not in (None, "auto"):
        try:
            count = int(max_items)
        except (TypeError, ValueError):
            raise PrunelabError(f"max items is a positive count, 'all' or 'auto', got {max_items!r}") from None
        if count < 1:
            raise PrunelabError(f"max items is a positive count, 'all' or 'auto', got {max_items!r}")
        return min(count, available), ""
    if macs_per_item * available <= SCORING_BUDGET_MACS:
        return available, ""
    count = min(available, max(MIN_AUTO_ITEMS, int(SCORING_BUDGET_MACS // max(macs_per_item, 1))))
    return count, f"chosen for a model of {macs_per_item / 1e6:.0f}M MACs per item; max items 'all' scores every one"


def check_levels(levels) -> list[float]:
    """Levels as an ascending list of distinct fractions in [0, 1) that starts at 0 (added if absent)."""
    try:
        values = sorted({round(float(level), 6) for level in levels})
    except (TypeError, ValueError):
        raise PrunelabError(f"levels must be numbers in [0, 1), got {levels!r}") from None
    bad = [level for level in values if not 0.0 <= level < 1.0]
    if bad:
        raise PrunelabError(f"sparsity levels must be in [0, 1), got {bad[0]}")
    return values if values and values[0] == 0.0 else [0.0, *values]


def parse_levels(text: str) -> list[float]:
    """Read ``"0,0.1,0.5"`` into levels (see check_levels); PrunelabError on anything else."""
    try:
        return check_levels(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise PrunelabError(f"levels '{text}' must be numbers separated by commas, like 0,0.5,0.9") from None


def sensitivity(handle: ModelHandle, granularity: str = "unstructured", criterion: str = "l1",
                levels=DEFAULT_LEVELS, split: str = "val", progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None, max_items: int | str | None = "auto",
                workers: int | None = 1, ray_address: str | None = None) -> dict:
    """Per-layer sensitivity curves of ``handle`` as a JSON-able dict.

    granularity: 'unstructured' (one layer at a time) or 'channel' (one coupled group at a time,
    with the measured ONNX Runtime p50 latency of each level). criterion: a Plan criterion name.
    levels: sparsities to try; returned ascending, starting at 0 (whose point equals the baseline).
    split: the data split scored ('val' by default). progress: called as ``progress(done, total,
    text)`` after each point. should_stop: polled between points; when it returns True the partial
    result comes back with ``"complete": False`` (and is not cached). max_items: score only the
    first N items of the split, "all" of them, or "auto" (all, unless the model is so large that
    a subset keeps the sweep to minutes; see scored_items). ``evaluated_on`` says what was scored.
    workers: local processes to spread the points over (1: this process; None: one per core).
    ray_address: run the points as tasks on this Ray cluster instead (default: the
    PRUNELAB_RAY_ADDRESS variable). Points lost with a worker twice are listed in ``"missing"``
    (and the result is not complete). A second call with equal inputs reads the result from disk,
    whatever ran it. Raises PrunelabError for an unknown granularity or criterion, bad levels, a
    model source that cannot be pruned this way, or a Ray address that does not answer.
    """
    if granularity not in SWEPT_GRANULARITIES:
        raise PrunelabError(f"sensitivity granularity must be one of {', '.join(SWEPT_GRANULARITIES)}, "
                            f"got {granularity!r}")
    handle.require(granularity)
    if handle.module is None:
        raise PrunelabError(f"{handle.name}: sensitivity needs the PyTorch model")
    Plan(granularity=granularity, criterion=criterion, sparsity=0.0)  # validates the pair
    levels = check_levels(levels)
    executor = executor_for(workers, ray_address)
    available = len(split_arrays(handle, split)[0])
    macs = (total_macs(handle.module, handle.example_input(1)) or 0) if max_items in (None, "auto") else 0
    items, reason = scored_items(macs, available, max_items)
    settings = {"granularity": granularity, "criterion": criterion, "levels": levels, "split": split,
                "max_items": items, "reason": reason, "blocks": sweep_points.sweepable_blocks(handle),
                "metric": handle.metric.digest if handle.metric is not None else None}
    cache = ResultCache("sensitivity")
    key = cache_key("sensitivity", CACHE_VERSION, handle.digest, handle.data.digest, settings)
    cached = cache.get(key)
    if cached is not None:
        if progress:
            progress(1, 1, "read from cache")
        return cached
    result = _run(handle, settings, executor, progress or (lambda done, total, text: None),
                  should_stop or (lambda: False))
    if result["complete"]:
        cache.put(key, result)
    return result




def _run(handle: ModelHandle, settings: dict, executor, progress: Progress, should_stop) -> dict:
    started = time.perf_counter()
    entries = _entries(handle, settings["granularity"])
    jobs = [(BASELINE, 0.0)] + [(entry["name"], level) for entry in entries
                                for level in settings["levels"] if level != 0.0]
    jobs += [(f"{BLOCK}{name}", 1.0) for name in settings.get("blocks", [])]
    work = Work(jobs, prepare=lambda: sweep_points.prepare(handle, settings),
                pack=lambda: sweep_points.pack(handle, settings), build=sweep_points.build,
                run=sweep_points.measure, describe=sweep_points.describe_job)
    outcome = executor.map(work, progress, should_stop)
    result = _assemble(handle, settings, entries, jobs, outcome)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _entries(handle: ModelHandle, granularity: str) -> list[dict]:
    """One curve's description per layer (unstructured) or coupled group (channel), in sweep order."""
    example = handle.example_input(1)
    if granularity == "unstructured":
        return [{"name": layer.name, "members": [layer.name], "params": layer.weight.numel()}
                for layer in included_layers(handle.module, example)]
    return [{"name": group["leader"], "members": list(group["members"]), "channels": group["channels"]}
            for group in coupled_groups(handle.module, example)]


def _assemble(handle: ModelHandle, settings: dict, entries: list[dict], jobs: list, outcome: Outcome) -> dict:
    """The result dict from the measured points: curves in level order, lost points named."""
    points = {jobs[index]: value for index, value in outcome.values.items()}
    nodes = {jobs[index]: node for index, node in outcome.nodes.items()}
    baseline = points.get((BASELINE, 0.0))
    channel = settings["granularity"] == "channel"
    layers = []
    for entry in entries:
        curve = []
        for level in settings["levels"]:
            job = (BASELINE, 0.0) if level == 0.0 else (entry["name"], level)
            if job not in points:
                continue
            skipped = ("label", "evaluated_on") if channel else ("label", "evaluated_on", *FOOTPRINT)
            point = {key: value for key, value in points[job].items() if key not in skipped}
            if channel:
                point["measured_on"] = nodes[job]
            curve.append({"sparsity": level, **point})
        layers.append({**entry, "curve": curve})
    evaluated_on = dict(baseline["evaluated_on"]) if baseline else {"split": settings["split"]}
    evaluated_on.update(workers=outcome.executor.get("workers"), executor=outcome.executor.get("kind"))
    if "payload_bytes" in outcome.executor:  # what each worker received: the model, its data, the settings
        evaluated_on["transfer_bytes"] = outcome.executor["payload_bytes"]
    if channel:
        evaluated_on["latency"] = _latency_note(set(outcome.nodes.values()))
    missing = [sweep_points.describe_job(jobs[index]) for index in outcome.missing]
    return {"model": handle.name, "granularity": settings["granularity"], "criterion": settings["criterion"],
            "baseline_accuracy": baseline["accuracy"] if baseline else None,
            "baseline_loss": baseline["loss"] if baseline else None,
            "baseline_metrics": baseline.get("metrics") if baseline else None,
            "baseline_perplexity": _perplexity(handle, baseline),
            "label": baseline["label"] if baseline else None, "levels": settings["levels"],
            "evaluated_on": evaluated_on, "layers": layers, "complete": outcome.complete and baseline is not None,
            "missing": missing, "blocks": _block_points(settings, points, baseline)}


def _perplexity(handle: ModelHandle, baseline: dict | None) -> float | None:
    """The dense perplexity on the sweep's items, for a model that has one (sweep_points.has_perplexity)."""
    if baseline is None or not sweep_points.has_perplexity(handle):
        return None
    return float(math.exp(baseline["loss"]))


def _block_points(settings: dict, points: dict, baseline: dict | None) -> list[dict]:
    """One row per removable block: quality without it, its MACs and its measured latency saving (ms)."""
    rows = []
    for name in settings.get("blocks", []):
        point = points.get((f"{BLOCK}{name}", 1.0))
        if point is None:
            continue
        saving = None
        if baseline and baseline.get("latency_ms") is not None:
            saving = baseline["latency_ms"] - point["latency_ms"]
        rows.append({"name": name, **point, "latency_saving_ms": saving})
    return rows


def _latency_note(nodes: set) -> dict:
    note = {"runtime": "onnxruntime", "min_runs": LATENCY_RUNS, "batch": 1, "threads": LATENCY_THREADS,
            "statistic": "p50", "nodes": sorted(nodes)}
    if len(nodes) > 1:
        note["comparable"] = (f"latencies were measured on {len(nodes)} machines: compare them only between "
                              "points measured on the same machine (each point's measured_on)")
    return note
