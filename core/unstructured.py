"""Unstructured selection and application: scores and targets in, boolean keep-masks out.

Exact counts: a layer (or, in global scope, the set of included layers) of n weights at
sparsity s loses exactly round(s * n) weights, the lowest-scored ones. Masks are applied by
multiplying the weights in place (of a copy the engine owns), so no reparametrization is left.
"""
from __future__ import annotations

import torch


def _prune_count(sparsity: float, total: int) -> int:
    return int(round(sparsity * total))  # as torch.nn.utils.prune does


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A flat keep-mask of ``scores`` with exactly ``count`` lowest entries False (ties broken by position)."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if count <= 0:
        return keep
    if count >= flat.numel():
        return ~keep
    threshold = torch.kthvalue(flat, count).values
    keep = flat > threshold
    surplus = count - int((flat < threshold).sum())  # entries equal to the threshold still to drop
    ties = torch.nonzero(flat == threshold).reshape(-1)
    keep[ties[surplus:]] = True
    return keep


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask shaped like ``scores`` with round(sparsity * n) lowest entries pruned."""
    return _lowest(scores.float(), _prune_count(sparsity, scores.numel())).reshape(scores.shape)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all layers' scores: round(sparsity * total) lowest pruned across them."""
    if not scores:
        return {}
    flat = torch.cat([score.reshape(-1).float() for score in scores.values()])  # (total weights,)
    keep = _lowest(flat, _prune_count(sparsity, flat.numel()))
    masks, start = {}, 0
    for name, score in scores.items():
        masks[name] = keep[start:start + score.numel()].reshape(score.shape)
        start += score.numel()
    return masks


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the pruned entries of ``weight`` in place."""
    with torch.no_grad():
        weight.mul_(mask.to(weight.dtype))
