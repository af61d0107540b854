"""apply_plan: read a Plan, prune a copy of a model, hand back a PruneResult.

The engine resolves the plan against the model once (core.prune.resolved: which layers stay
dense, each layer's target), gathers the evidence its criterion needs, then hands the copy to
the handler registered for the plan's granularity (unstructured, N:M or channel).
"""
from __future__ import annotations

import copy
import dataclasses
import time
import weakref

import torch
from torch import nn

from core.data import Dataset
from core.errors import PrunelabError
from core.inspect import dense_by_default, prunable_layers
from core.prune import batchnorm, calibrated, conv1d, criteria, depth, nm, shrink, unstructured
from core.prune.plan import Plan, granularity_kind
from core.prune.resolved import resolve
from core.prune.result import Job, PruneResult


def _weight_masks(job: Job) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keep-masks for unstructured plans: per-layer targets (within each layer or each output row, as the
    criterion compares), or one global ranking; and notes."""
    plan = job.plan
    ranking = criteria.criterion(plan.criterion)
    evidence = criteria.gather_evidence(job.module, job.layers, plan.criterion, job.data, plan.seed)
    scores = {layer.name: criteria.weight_scores(layer, plan.criterion, evidence[layer.name])
              for layer in job.layers}
    if ranking.compare == "row":  # a plan refuses global scope for it (Criterion.layer_scope_only)
        return {name: unstructured.row_mask(score, job.target(name)) for name, score in scores.items()}, []
    if plan.scope == "layer":
        return {name: unstructured.layer_mask(score, job.target(name)) for name, score in scores.items()}, []
    overridden = {name: score for name, score in scores.items() if name in plan.layer_targets}
    ranked = {name: score for name, score in scores.items() if name not in overridden}
    masks = unstructured.global_masks(ranked, plan.sparsity)
    masks.update({name: unstructured.layer_mask(score, job.target(name)) for name, score in overridden.items()})
    return masks, []


def _apply_masks(job: Job, masks: dict[str, torch.Tensor], result: PruneResult) -> PruneResult:
    for layer in job.layers:
        if layer.name in masks:
            unstructured.apply_mask(layer.weight, masks[layer.name])
    result.masks = masks
    result.layer_sparsity = {layer.name: unstructured.zero_fraction(layer.weight)
                             for layer in prunable_layers(job.module)}
    return result


def _prune_weights(job: Job) -> PruneResult:
    """Unstructured and N:M plans: a criterion that prunes layer by layer itself, or scores then masks."""
    if criteria.criterion(job.plan.criterion).prunes_layers:
        masks, notes = calibrated.prune_calibrated(job)
    elif job.plan.nm is not None:
        masks, notes = nm.nm_masks(job)
    else:
        masks, notes = _weight_masks(job)
    return _apply_masks(job, masks, PruneResult(job.module, job.plan, notes=notes))


def _prune_channels(job: Job) -> PruneResult:
    with conv1d.as_linear(job.module) as swapped:  # GPT-2's Conv1D layers are cut as the Linear they compute
        if swapped:
            job = dataclasses.replace(job, layers=[layer for layer in prunable_layers(job.module)
                                                   if layer.name not in job.ignored])
        return shrink.prune_structure(job)


# source model -> {input signature: layers plans leave dense}. Finding them runs the model (a ResNet-50: two
# forward passes), and the answer depends on its structure alone, the same for every plan.
_DENSE_DEFAULT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _dense_default(source: nn.Module, working: nn.Module, example_input, plan: Plan) -> list[str] | None:
    """core.inspect.dense_by_default of ``source``, found on its copy ``working`` once per source model and
    input shape (None when the plan names its own ignore list)."""
    if plan.ignore is not None:
        return None
    signature = None if example_input is None else (tuple(example_input.shape), example_input.dtype)
    known = _DENSE_DEFAULT.setdefault(source, {})
    if signature not in known:
        known[signature] = tuple(dense_by_default(working, example_input))
    return list(known[signature])


HANDLERS = {"unstructured": _prune_weights, "N:M": _prune_weights, "channel": _prune_channels}
OPERATIONS = {"unstructured": "unstructured", "N:M": "unstructured", "channel": "channel"}


def _unpack(model, data, example_input):
    """(module, data, example input) from a ModelHandle or a bare nn.Module."""
    module = getattr(model, "module", model)
    if not isinstance(module, nn.Module):
        raise PrunelabError("pruning needs a PyTorch model; this source has no module "
                            "(an ONNX file can only be pruned through the measurement fast path)")
    if hasattr(model, "data"):
        data = model.data if data is None else data
        example_input = model.example_input() if example_input is None else example_input
    return module, data, example_input


def _recalibrate(result: PruneResult, data: Dataset | None) -> None:
    """Re-estimate BatchNorm statistics of the pruned copy on real inputs, and say so in the notes."""
    inputs = batchnorm.calibration_inputs(data)
    if inputs is None or not batchnorm.batchnorm_layers(result.module):
        return
    started = time.perf_counter()
    count = batchnorm.recalibrate(result.module, inputs)
    result.batchnorm_ms = (time.perf_counter() - started) * 1000.0
    result.notes.append(f"BatchNorm statistics of {count} layers re-estimated on {len(inputs)} inputs "
                        f"(set recalibrate: false to keep the dense model's)")


def apply_plan(model, plan: Plan, data: Dataset | None = None, example_input=None) -> PruneResult:
    """Prune a copy of ``model`` (a ModelHandle or an nn.Module) as ``plan`` says; the input is never mutated.

    ``data`` feeds data-driven criteria (taylor, activation), defaulting to the handle's data;
    ``example_input`` drives the dependency graph and finds the final classifier, defaulting to
    one item of the handle's data. Raises PrunelabError for a plan the model cannot take.
    """
    kind = granularity_kind(plan.granularity)
    if hasattr(model, "require"):
        model.require(OPERATIONS[kind])
    module, data, example_input = _unpack(model, data, example_input)
    working = copy.deepcopy(module).eval()
    for parameter in working.parameters():  # gradients for taylor, even where the original is frozen
        parameter.requires_grad_(True)
    pad_id = getattr(model, "padding_id", None)  # a bare module has none
    output_kind = getattr(model, "output_kind", "logits")
    resolved = resolve(plan, working, example_input, _dense_default(module, working, example_input, plan)) \
        .with_depth(working, example_input, data, output_kind, pad_id)
    ignored = list(resolved.ignored)
    dropped = list(resolved.dropped)
    depth.skip_blocks(working, dropped, dict(resolved.outputs))
    layers = [layer for layer in prunable_layers(working) if layer.name not in ignored]
    result = HANDLERS[kind](Job(working, resolved, layers, data, example_input, output_kind=output_kind,
                                pad_id=pad_id))
    result.dropped, result.block_scores, result.block_score = dropped, dict(resolved.block_scores), \
        resolved.block_score
    depth.compact(result.module, example_input)  # after the width plan, whose layer names are the dense model's
    if dropped:
        ranked = f" (the depth share ranked blocks by {resolved.block_score})" if resolved.block_score else ""
        result.notes.insert(0, f"removed {len(dropped)} block(s), each replaced by its skip path: "
                               f"{', '.join(dropped)}{ranked}")
    if ignored:
        result.notes.insert(0, f"left dense: {', '.join(ignored)}")
    changed = any(result.layer_sparsity.values()) or dropped
    if plan.recalibrate and changed:  # nothing removed: the dense statistics hold
        _recalibrate(result, data)
    for parameter in result.module.parameters():
        parameter.grad = None
    result.module.eval()
    return result
