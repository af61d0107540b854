"""Unstructured selection and application: scores and targets in, boolean keep-masks out.

Exact counts: a layer (or, in global scope, the set of included layers) of n weights at
sparsity s loses exactly round(s * n) weights, the lowest-scored ones. Masks are applied by
multiplying the weights in place (of a copy the engine owns), so no reparametrization is left.
"""
from __future__ import annotations

import numpy as np
import torch


def _prune_count(sparsity: float, total: int) -> int:
    return int(round(sparsity * total))  # as torch.nn.utils.prune does


def _kth_smallest(flat: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based); numpy's introselect is several times faster than torch.kthvalue on CPU."""
    values = flat.detach().cpu().numpy()
    return torch.tensor(np.partition(values, k - 1)[k - 1], dtype=flat.dtype)


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """A flat keep-mask of ``scores`` with exactly ``count`` lowest entries False (ties broken by position)."""
    flat = scores.reshape(-1)
    if count <= 0:
        return torch.ones(flat.numel(), dtype=torch.bool)
    if count >= flat.numel():
        return torch.zeros(flat.numel(), dtype=torch.bool)
    threshold = _kth_smallest(flat, count)
    keep = flat > threshold
    dropped = flat.numel() - int(torch.count_nonzero(keep))
    if dropped > count:  # ties at the threshold: keep the later ones
        ties = torch.nonzero(flat == threshold).reshape(-1)
        keep[ties[len(ties) - (dropped - count):]] = True
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
        weight.mul_(mask)
