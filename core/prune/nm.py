"""N:M semi-structured sparsity: at least N zeros in every M consecutive weights along the input.

Linear (and attention projection) rows are split into groups of M consecutive input features.
Convolutions follow NVIDIA's 2:4 layout: groups of M consecutive input channels at each kernel
position; where the input channels per group do not divide by M, the flattened row
(in_channels * kernel elements) is used instead. Layers where neither divides stay dense.
"""
from __future__ import annotations

import torch

from core.prune import criteria

HARDWARE_NOTE = ("N:M sparsity gives no speed-up on ONNX Runtime's CPU kernels (no sparse kernels for it), so "
                 "latency here is unchanged; NVIDIA Ampere and later GPUs run 2:4 sparse weights on sparse "
                 "tensor cores (e.g. via TensorRT)")


def layout(weight: torch.Tensor, m: int) -> str | None:
    """How groups of ``m`` are formed for ``weight``: 'input', 'channels', 'row', or None (stays dense)."""
    if weight.ndim == 2:
        return "input" if weight.shape[1] % m == 0 else None
    if weight.shape[1] % m == 0:
        return "channels"
    return "row" if weight[0].numel() % m == 0 else None


def _grouped(tensor: torch.Tensor, how: str, m: int) -> torch.Tensor:
    """View ``tensor`` as (groups, m) in the layout ``how``."""
    if how == "channels":
        # (out, in, *kernel) -> (out, *kernel, in): consecutive input channels at each kernel position
        tensor = tensor.movedim(1, -1)
    return tensor.reshape(-1, m)


def _ungrouped(mask: torch.Tensor, how: str, shape: torch.Size) -> torch.Tensor:
    if how == "channels":
        moved = (shape[0], *shape[2:], shape[1])
        return mask.reshape(moved).movedim(-1, 1)
    return mask.reshape(shape)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """Keep-mask with the ``n`` lowest scores of every group of ``m`` pruned, or None if the layer cannot take it."""
    how = layout(scores, m)
    if how is None:
        return None
    groups = _grouped(scores, how, m)                                    # (groups, m)
    lowest = torch.topk(groups, n, dim=1, largest=False, sorted=False).indices
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(1, lowest, False)
    return _ungrouped(keep, how, scores.shape)


def nm_masks(job) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Keep-masks for every included layer that can take the plan's N:M pattern, and notes for the report."""
    n, m = job.plan.nm
    evidence = criteria.gather_evidence(job.module, job.layers, job.plan.criterion, job.data, job.plan.seed)
    masks, dense = {}, []
    for layer in job.layers:
        mask = nm_mask(criteria.weight_scores(layer, job.plan.criterion, evidence[layer.name]), n, m)
        if mask is None:
            dense.append(dense_name(layer))
        else:
            masks[layer.name] = mask
    return masks, nm_notes(job.plan, masks, dense)


def dense_name(layer) -> str:
    """A layer an N:M pattern cannot group, named for the notes with its inputs per group."""
    return f"{layer.name} ({layer.weight.shape[1]} inputs per group)"


def nm_notes(plan, masks: dict, dense: list[str]) -> list[str]:
    """What an N:M plan did: the layers it applied to, those left dense (named with why), the hardware remark."""
    n, m = plan.nm
    notes = [f"{plan.granularity} applied to: {', '.join(masks) or 'no layer'}"]
    if dense:
        notes.append(f"left dense, input size not divisible by {m}: {', '.join(dense)}")
    if plan.layers or plan.scope != "layer":
        notes.append(f"{plan.granularity} fixes the sparsity at {n}/{m} per layer; "
                     "the plan's sparsity, per-layer targets and scope do not apply")
    return notes + [HARDWARE_NOTE]
