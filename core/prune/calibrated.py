"""The layer-wise criteria, ``wanda`` and ``sparsegpt``, for unstructured and N:M plans.

Both run layer by layer on calibration inputs (core.prune.layerwise), each layer seeing the
outputs of the layers already pruned before it:

- wanda scores each weight by ``|w| * ||x_j||`` (the L2 norm of its input over the calibration
  inputs) and compares weights within each output row (N:M: within each group of M). Surviving
  weights are unchanged. Sun et al., "A Simple and Effective Pruning Approach for LLMs" (2024).
- sparsegpt chooses and prunes weights from the inputs' Hessian and **updates the surviving
  weights** to reconstruct the layer's dense outputs (core.prune.sparsegpt), so "surviving weights
  are unchanged" does not hold for it.

A layer whose inputs no hook sees (an attention output projection called functionally) falls back
to magnitude, and the notes say so.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from core.errors import PrunelabError
from core.inspect import Layer
from core.prune import layer_inputs, nm, unstructured
from core.prune.layerwise import Observer, Solve, prune_layerwise
from core.prune.sparsegpt import Target, reconstruct

CALIBRATION_ITEMS = 128   # items of the train split seen layer by layer
CALIBRATION_BATCH = 16


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask with round(sparsity * row length) lowest scores of every output row pruned."""
    rows = scores.reshape(scores.shape[0], -1)                   # (out_channels, inputs per output)
    count = int(round(sparsity * rows.shape[1]))
    keep = torch.ones(rows.shape, dtype=torch.bool)
    if count:
        keep.scatter_(1, torch.topk(rows, count, dim=1, largest=False, sorted=False).indices, False)
    return keep.reshape(scores.shape)


def _select(scores: torch.Tensor, sparsity: float, pattern: tuple[int, int] | None, rows: bool) -> torch.Tensor | None:
    if pattern is not None:
        return nm.nm_mask(scores, *pattern)
    return row_mask(scores, sparsity) if rows else unstructured.layer_mask(scores, sparsity)


def _wanda_scores(layer: Layer, observer: Observer) -> torch.Tensor:
    """|w| times the L2 norm of the input column it reads, shaped like the weight."""
    parts = layer_inputs.adapter(layer).parts(layer)
    norms = [total.sqrt().float() for total in observer.sums]
    return layer_inputs.assemble(layer, [part.abs() * norm for part, norm in zip(parts, norms)])


def _split(total: int, sizes: list[int]) -> list[int]:
    """``total`` shared out over parts of ``sizes`` in proportion, adding up exactly."""
    edges = np.cumsum([0, *sizes])
    cumulative = [round(total * edge / edges[-1]) for edge in edges]
    return [after - before for before, after in zip(cumulative, cumulative[1:])]


def _sparsegpt(layer: Layer, observer: Observer, sparsity: float,
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


def _solver(name: str, targets: Callable[[str], float], pattern, unseen: list[str]) -> Solve:
    """The solve step of criterion ``name``: prune one observed layer in place, return its keep-mask."""
    def solve(layer: Layer, observer: Observer) -> torch.Tensor | None:
        sparsity = targets(layer.name)
        if observer.sums is None:  # no calibration input reached it: magnitude, within the same groups
            unseen.append(layer.name)
            mask = _select(layer.weight.detach().abs(), sparsity, pattern, rows=name == "wanda")
        elif name == "sparsegpt":
            return _sparsegpt(layer, observer, sparsity, pattern)
        else:
            mask = _select(_wanda_scores(layer, observer), sparsity, pattern, rows=True)
        if mask is not None:
            unstructured.apply_mask(layer.weight, mask)
        return mask
    return solve


SOLVERS = ("wanda", "sparsegpt")
FULL_HESSIAN = {"wanda": False, "sparsegpt": True}


def calibration_batches(data, name: str) -> list[torch.Tensor]:
    """The calibration inputs for criterion ``name``, in batches; PrunelabError without data."""
    if data is None:
        raise PrunelabError(f"criterion '{name}' needs calibration data (pass --data or use a model that has some)")
    inputs = torch.from_numpy(np.ascontiguousarray(data.calibration(CALIBRATION_ITEMS)))
    inputs = inputs if not inputs.is_floating_point() else inputs.float()  # token ids stay integer
    return list(inputs.split(CALIBRATION_BATCH))


def prune_calibrated(job, name: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Prune ``job``'s layers in place with criterion ``name`` layer by layer; (keep-masks, notes)."""
    plan = job.plan
    batches = calibration_batches(job.data, name)
    unseen: list[str] = []
    started = time.perf_counter()
    solve = _solver(name, job.target, plan.nm, unseen)
    masks = prune_layerwise(job.module, job.layers, batches, FULL_HESSIAN[name], solve)
    seconds = time.perf_counter() - started
    items = sum(len(batch) for batch in batches)
    what = ("weights chosen from the inputs' Hessian and the surviving weights reconstructed"
            if name == "sparsegpt" else "|weight| x input norm compared within each output row")
    notes = [f"{name}: {what}, layer by layer on {items} calibration items in {seconds:.1f} s"]
    if unseen:
        notes.append(f"{name}: no calibration input reached {', '.join(unseen)}; magnitude used there")
    if plan.scope != "layer" and plan.nm is None:
        notes.append(f"{name} prunes each layer to its own target; scope '{plan.scope}' does not apply")
    return {key: mask for key, mask in masks.items() if mask is not None}, notes
