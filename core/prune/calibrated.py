"""The ``sparsegpt`` criterion: unstructured and N:M pruning that rebuilds each layer's outputs.

Layers are pruned layer by layer on the calibration items (core.prune.layerwise), each seeing the
outputs of the layers already pruned before it. For each layer the Hessian of its inputs chooses
the weights to prune and the surviving weights are **updated** to reconstruct the dense layer's
outputs (core.prune.sparsegpt), so, unlike every other criterion, "surviving weights are
unchanged" does not hold: that is the point. The notes say how many calibration items were used
and how long it took. A layer whose inputs no hook sees (an attention output projection called
functionally) falls back to magnitude, and the notes name it.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from core.errors import PrunelabError
from core.inspect import Layer
from core.prune import layer_inputs, nm, unstructured
from core.prune.criteria import CALIBRATION_BATCH, CALIBRATION_ITEMS
from core.prune.layerwise import Observer, Solve, prune_layerwise
from core.prune.sparsegpt import Target, reconstruct

SURVIVORS_NOTE = ("sparsegpt updates the surviving weights to rebuild each layer's outputs, so they differ from "
                  "the dense model's")


def _split(total: int, sizes: list[int]) -> list[int]:
    """``total`` shared out over parts of ``sizes`` in proportion, adding up exactly."""
    edges = np.cumsum([0, *sizes])
    cumulative = [round(total * edge / edges[-1]) for edge in edges]
    return [after - before for before, after in zip(cumulative, cumulative[1:])]


def _reconstruct_layer(layer: Layer, observer: Observer, sparsity: float,
                       pattern: tuple[int, int] | None) -> torch.Tensor | None:
    """Prune and reconstruct ``layer`` in place; its keep-mask, or None if it cannot take the N:M pattern."""
    order = layer_inputs.column_order(layer, pattern[1]) if pattern else torch.arange(layer.weight[0].numel())
    if order is None:
        return None
    parts = layer_inputs.adapter(layer).parts(layer)
    inverse = torch.argsort(order)
    counts = _split(int(round(sparsity * layer.weight.numel())), [part.numel() for part in parts])
    weights, keeps = [], []
    for part, hessian, count in zip(parts, observer.sums, counts):
        target = Target(n=pattern[0], m=pattern[1]) if pattern else Target(count=count)
        weight, keep = reconstruct(part[:, order], hessian[order][:, order], target)
        weights.append(weight[:, inverse])
        keeps.append(keep[:, inverse])
    with torch.no_grad():
        layer.weight.copy_(layer_inputs.assemble(layer, weights))
    return layer_inputs.assemble(layer, keeps)


def solver(targets, pattern: tuple[int, int] | None, unseen: list[str]) -> Solve:
    """Prune one observed layer in place to ``targets(name)`` (or the N:M ``pattern``); return its keep-mask."""
    def solve(layer: Layer, observer: Observer) -> torch.Tensor | None:
        if observer.sums is not None:
            return _reconstruct_layer(layer, observer, targets(layer.name), pattern)
        unseen.append(layer.name)  # no calibration input reached it: magnitude
        scores = layer.weight.detach().abs()
        mask = nm.nm_mask(scores, *pattern) if pattern else unstructured.layer_mask(scores, targets(layer.name))
        if mask is not None:
            unstructured.apply_mask(layer.weight, mask)
        return mask
    return solve


def calibration_batches(data, name: str) -> list[torch.Tensor]:
    """The calibration items for criterion ``name``, in batches; PrunelabError without data."""
    if data is None:
        raise PrunelabError(f"criterion '{name}' needs calibration data (pass --data or use a model that has some)")
    inputs = torch.from_numpy(np.ascontiguousarray(data.calibration(CALIBRATION_ITEMS)))
    inputs = inputs if not inputs.is_floating_point() else inputs.float()  # token ids stay integer
    return list(inputs.split(CALIBRATION_BATCH))


def prune_calibrated(job) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Prune ``job``'s layers in place layer by layer with SparseGPT; (keep-masks, notes)."""
    plan = job.plan
    batches = calibration_batches(job.data, plan.criterion)
    unseen: list[str] = []
    started = time.perf_counter()
    layers = [layer for layer in job.layers if plan.nm or job.target(layer.name) > 0]  # a 0 target: nothing to do
    masks = prune_layerwise(job.module, layers, batches, solver(job.target, plan.nm, unseen))
    seconds = time.perf_counter() - started
    items = sum(len(batch) for batch in batches)
    notes = [f"sparsegpt: weights chosen from each layer's input Hessian, layer by layer on {items} calibration "
             f"items in {seconds:.1f} s; {SURVIVORS_NOTE}"]
    if unseen:
        notes.append(f"sparsegpt: no calibration input reached {', '.join(unseen)}; magnitude used there")
    if plan.nm:
        dense = [nm.dense_name(layer) for layer in job.layers if masks.get(layer.name) is None]
        notes += nm.nm_notes(plan, {name: mask for name, mask in masks.items() if mask is not None}, dense)
    return {name: mask for name, mask in masks.items() if mask is not None}, notes
