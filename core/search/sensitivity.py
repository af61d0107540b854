"""Sensitivity analysis: prune one layer (or one coupled channel group) at a time and measure the damage.

For each prunable layer and each sparsity level the rest of the model stays dense and the
held-out split (val by default, so that selection never tunes on test) is scored in torch
batches: accuracy (or agreement with the dense model when the data has no labels) and loss.
Large models score the first items of the split only (enough to keep one point's forward passes
near SCORING_BUDGET_MACS); the result says so, and ``max_items="all"`` scores every item.
Unstructured sweeps score each layer's weights once and threshold them per level, writing the
masked weights into a private copy of the model; this is exactly what the engine would do for a
one-layer plan and avoids a full plan application per point. Channel sweeps apply a one-group
plan with the engine per level and also time the exported graph on ONNX Runtime.

Results are JSON-able and cached on disk by (model digest, data digest, settings).
"""
from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.cache import ResultCache, cache_key
from core.deploy.export import export_onnx
from core.deploy.measure import create_session, latency, total_macs
from core.errors import PrunelabError
from core.inspect import final_classifier, prunable_layers
from core.prune import batchnorm
from core.prune.channel import coupled_groups
from core.prune.criteria import gather_evidence, weight_scores
from core.prune.engine import apply_plan
from core.prune.plan import GRANULARITIES, Plan, granularity_kind
from core.prune.unstructured import layer_mask
from core.sources import ModelHandle

DEFAULT_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
# Sweeps cut one layer or channel group at a time; N:M patterns are not swept.
SWEPT_GRANULARITIES = tuple(name for name in GRANULARITIES if granularity_kind(name) != "N:M")
CACHE_VERSION = 4
LATENCY_RUNS = 30
LATENCY_SECONDS = 0.05
LATENCY_THREADS = 1
SCORE_BATCH = 64                 # smaller batches stay in cache: 0.88 s vs 1.4 s for 359 items on digits-resnet
SCORING_BUDGET_MACS = 40e9       # multiply-accumulates per scored point before a subset is used
MIN_AUTO_ITEMS = 128

Progress = Callable[[int, int, str], None]


class Scorer:
    """Accuracy (or agreement) and loss of a module on one split, in batches of SCORE_BATCH.

    Without labels the dense model's top-1 predictions serve as labels, so the "accuracy" is the
    agreement with the dense model and the loss is the cross-entropy against those predictions.
    For an embedding model (``handle.output_kind == "embedding"``) the "accuracy" is the mean cosine
    similarity to the dense embeddings (label 'cosine') and the loss is one minus it.
    """

    def __init__(self, handle: ModelHandle, split: str = "val", max_items: int | None = None, reason: str = ""):
        x, labels = split_arrays(handle, split)
        available = len(x)
        count = available if max_items is None else max(1, min(int(max_items), available))
        self.split, self.items, self.available, self.reason = split, count, available, reason
        self.inputs = torch.from_numpy(np.ascontiguousarray(x[:count]))
        self.embedding = handle.output_kind == "embedding"
        if self.embedding:
            self.label, self.targets = "cosine", F.normalize(self._predict(handle.module), dim=1)
        elif labels is not None:
            self.label, self.targets = "accuracy", torch.from_numpy(labels[:count])
        else:
            self.label, self.targets = "agreement", self._predict(handle.module).argmax(1)

    def _predict(self, module: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([module(self.inputs[start:start + SCORE_BATCH])
                              for start in range(0, len(self.inputs), SCORE_BATCH)])

    def __call__(self, module: nn.Module) -> tuple[float, float]:
        """``(accuracy, loss)`` of ``module`` on the split."""
        logits = self._predict(module)
        if self.embedding:
            cosine = (F.normalize(logits, dim=1) * self.targets).sum(1).mean().item()
            return float(cosine), float(1.0 - cosine)
        accuracy = (logits.argmax(1) == self.targets).float().mean().item()
        loss = F.cross_entropy(logits, self.targets).item()
        return float(accuracy), float(loss)

    def describe(self) -> dict:
        subset = None
        if self.items != self.available:
            subset = f"first {self.items} of {self.available}" + (f", {self.reason}" if self.reason else "")
        return {"split": self.split, "items": self.items, "available": self.available, "subset": subset,
                "workers": 1, "torch_threads": torch.get_num_threads()}


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
                should_stop: Callable[[], bool] | None = None, max_items: int | str | None = "auto") -> dict:
    """Per-layer sensitivity curves of ``handle`` as a JSON-able dict.

    granularity: 'unstructured' (one layer at a time) or 'channel' (one coupled group at a time,
    with the measured ONNX Runtime p50 latency of each level). criterion: a Plan criterion name.
    levels: sparsities to try; returned ascending, starting at 0 (whose point equals the baseline).
    split: the data split scored ('val' by default). progress: called as ``progress(done, total,
    text)`` after each point. should_stop: polled between points; when it returns True the partial
    result comes back with ``"complete": False`` (and is not cached). max_items: score only the
    first N items of the split, "all" of them, or "auto" (all, unless the model is so large that
    a subset keeps the sweep to minutes; see scored_items). ``evaluated_on`` says what was scored.
    A second call with equal inputs reads the result from disk.
    Raises PrunelabError for an unknown granularity or criterion, bad levels or a model source
    that cannot be pruned this way.
    """
    if granularity not in SWEPT_GRANULARITIES:
        raise PrunelabError(f"sensitivity granularity must be one of {', '.join(SWEPT_GRANULARITIES)}, "
                            f"got {granularity!r}")
    handle.require(granularity)
    if handle.module is None:
        raise PrunelabError(f"{handle.name}: sensitivity needs the PyTorch model")
    Plan(granularity=granularity, criterion=criterion, sparsity=0.0)  # validates the pair
    levels = check_levels(levels)
    available = len(split_arrays(handle, split)[0])
    macs = (total_macs(handle.module, handle.example_input(1)) or 0) if max_items in (None, "auto") else 0
    items, reason = scored_items(macs, available, max_items)
    settings = {"granularity": granularity, "criterion": criterion, "levels": levels, "split": split,
                "max_items": items, "reason": reason}
    cache = ResultCache("sensitivity")
    key = cache_key("sensitivity", CACHE_VERSION, handle.digest, handle.data.digest, settings)
    cached = cache.get(key)
    if cached is not None:
        if progress:
            progress(1, 1, "read from cache")
        return cached
    result = _run(handle, settings, progress or (lambda done, total, text: None), should_stop or (lambda: False))
    if result["complete"]:
        cache.put(key, result)
    return result


def _run(handle: ModelHandle, settings: dict, progress: Progress, should_stop) -> dict:
    started = time.perf_counter()
    # a private copy: the handle's module may be shared, and sweeps write weights and register hooks
    handle = dataclasses.replace(handle, module=copy.deepcopy(handle.module).eval())
    scorer = Scorer(handle, settings["split"], settings["max_items"], settings["reason"])
    accuracy, loss = scorer(handle.module)
    sweep = unstructured_sweep if settings["granularity"] == "unstructured" else channel_sweep
    layers, complete = sweep(handle, settings["criterion"], settings["levels"], scorer, progress, should_stop,
                             baseline=(accuracy, loss))
    evaluated_on = scorer.describe()
    recalibration = batchnorm.calibration_inputs(handle.data)
    evaluated_on["batchnorm_items"] = 0 if recalibration is None or not batchnorm.batchnorm_layers(handle.module) \
        else len(recalibration)
    if settings["granularity"] == "channel":
        evaluated_on["latency"] = {"runtime": "onnxruntime", "min_runs": LATENCY_RUNS, "batch": 1,
                                   "threads": LATENCY_THREADS, "statistic": "p50"}
    return {"model": handle.name, "granularity": settings["granularity"], "criterion": settings["criterion"],
            "baseline_accuracy": accuracy, "baseline_loss": loss, "label": scorer.label,
            "levels": settings["levels"], "evaluated_on": evaluated_on, "layers": layers,
            "complete": complete, "seconds": round(time.perf_counter() - started, 3)}


def split_arrays(handle: ModelHandle, split: str):
    """``(inputs, labels or None)`` of one split of the handle's data; PrunelabError when it has none."""
    x = getattr(handle.data, f"x_{split}", None)
    if x is None:
        raise PrunelabError(f"the data '{handle.data.name}' has no {split} split")
    return x, getattr(handle.data, f"y_{split}")


def included_layers(module: nn.Module, example: torch.Tensor) -> list:
    """The layers a plan prunes by default: every prunable layer but the final classifier."""
    ignored = final_classifier(module, example)
    return [layer for layer in prunable_layers(module) if layer.name != ignored]


def unstructured_sweep(handle: ModelHandle, criterion: str, levels: list[float], scorer: Scorer,
                       progress: Progress, should_stop, baseline: tuple[float, float]) -> tuple[list, bool]:
    """One curve per prunable layer: masks from scores computed once per layer, thresholded per level."""
    module = handle.module  # a private copy (see _run); every weight is restored after its layer
    layers = included_layers(module, handle.example_input(1))
    evidence = gather_evidence(module, layers, criterion, handle.data, seed=0)
    # as the engine does by default: BatchNorm statistics re-estimated after each cut, then restored
    recalibration = batchnorm.calibration_inputs(handle.data)
    dense_statistics = batchnorm.snapshot(module)
    total, done, curves = len(layers) * len(levels), 0, []
    for layer in layers:
        weight = layer.weight
        original = weight.detach().clone()
        scores = weight_scores(layer, criterion, evidence[layer.name])
        curve = []
        try:
            for level in levels:
                if should_stop():
                    curves.append({"name": layer.name, "members": [layer.name], "params": original.numel(),
                                   "curve": curve})
                    return curves, False
                if level == 0.0:
                    accuracy, loss = baseline
                else:
                    with torch.no_grad():
                        weight.copy_(original * layer_mask(scores, level))
                    if recalibration is not None:
                        batchnorm.recalibrate(module, recalibration)
                    accuracy, loss = scorer(module)
                    batchnorm.restore(module, dense_statistics)
                curve.append({"sparsity": level, "accuracy": accuracy, "loss": loss})
                done += 1
                progress(done, total, f"{layer.name} at {level:.0%}")
        finally:
            with torch.no_grad():
                weight.copy_(original)
            batchnorm.restore(module, dense_statistics)
        curves.append({"name": layer.name, "members": [layer.name], "params": original.numel(), "curve": curve})
    return curves, True


def channel_sweep(handle: ModelHandle, criterion: str, levels: list[float], scorer: Scorer,
                  progress: Progress, should_stop, baseline: tuple[float, float]) -> tuple[list, bool]:
    """One curve per coupled channel group: the engine removes the group's channels at each level."""
    example = handle.example_input(1)
    groups = coupled_groups(handle.module, example)
    dense = footprint(handle.module, example)
    total, done, curves = len(groups) * len(levels), 0, []
    for group in groups:
        curve = []
        entry = {"name": group["leader"], "members": list(group["members"]), "channels": group["channels"],
                 "curve": curve}
        for level in levels:
            if should_stop():
                curves.append(entry)
                return curves, False
            if level == 0.0:
                accuracy, loss = baseline
                point = dense
            else:
                plan = Plan(granularity="channel", criterion=criterion, sparsity=0.0,
                            layers={group["leader"]: level})
                pruned = apply_plan(handle, plan).module.eval()
                accuracy, loss = scorer(pruned)
                point = footprint(pruned, example)
            curve.append({"sparsity": level, "accuracy": accuracy, "loss": loss, **point})
            done += 1
            progress(done, total, f"{group['leader']} at {level:.0%}")
        curves.append(entry)
    return curves, True


def footprint(module: nn.Module, example: torch.Tensor, timed: bool = True) -> dict:
    """Parameters, MACs per item and ORT p50 latency (ms, batch 1) of ``module``."""
    figures = {"params": int(sum(parameter.numel() for parameter in module.parameters())),
               "macs": total_macs(module, example) or 0}
    if timed:
        session, _ = create_session(export_onnx(module, example), threads=LATENCY_THREADS)
        timing = latency(session, example.numpy(), min_runs=LATENCY_RUNS, min_seconds=LATENCY_SECONDS)
        figures["latency_ms"] = timing["latency_ms"]["p50"]
    return figures
