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


def _kth_smallest(scratch: np.ndarray, k: int) -> float:
    """The k-th smallest entry (1-based) of a flat array, which this reorders in place (introselect)."""
    scratch.partition(k - 1)
    return float(scratch[k - 1])


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy().reshape(-1)


# The selection and masking below run on numpy views of the tensors: numpy's single-threaded
# kernels stay fast when the machine is busy, where torch's elementwise CPU ops slow down ~10x
# under thread contention (measured on two shared cores). Same results either way.
def _lowest(scores: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
    """Keep-masks with exactly ``count`` lowest scores over all of ``scores`` False (ties: earlier ones go)."""
    total = sum(score.numel() for score in scores.values())
    if count <= 0 or count >= total:
        return {name: torch.full(score.shape, count <= 0, dtype=torch.bool) for name, score in scores.items()}
    flats = {name: _numpy(score) for name, score in scores.items()}
    threshold = _kth_smallest(np.concatenate(list(flats.values())), count)  # (total,) scratch copy
    keeps = {name: flat > threshold for name, flat in flats.items()}
    surplus = total - sum(int(np.count_nonzero(keep)) for keep in keeps.values()) - count
    for name in reversed(list(flats)):  # ties at the threshold: keep the last ones
        if surplus <= 0:
            break
        ties = np.flatnonzero(flats[name] == threshold)[-surplus:]
        keeps[name][ties] = True
        surplus -= len(ties)
    return {name: torch.from_numpy(keep).reshape(scores[name].shape) for name, keep in keeps.items()}


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask shaped like ``scores`` with round(sparsity * n) lowest entries pruned."""
    return _lowest({"layer": scores}, _prune_count(sparsity, scores.numel()))["layer"]


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask with round(sparsity * row length) lowest scores of every output row pruned
    (per-output comparison groups, as Wanda compares weights)."""
    rows = scores.reshape(scores.shape[0], -1)                   # (out_channels, inputs per output)
    count = _prune_count(sparsity, rows.shape[1])
    keep = torch.ones(rows.shape, dtype=torch.bool)
    if count:
        keep.scatter_(1, torch.topk(rows, count, dim=1, largest=False, sorted=False).indices, False)
    return keep.reshape(scores.shape)


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One threshold over all layers' scores: round(sparsity * total) lowest pruned across them."""
    if not scores:
        return {}
    return _lowest(scores, _prune_count(sparsity, sum(score.numel() for score in scores.values())))


def apply_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    """Zero the pruned entries of ``weight`` in place."""
    with torch.no_grad():
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.is_contiguous():
            values = weight.detach().numpy()
            np.multiply(values, mask.numpy().reshape(values.shape), out=values)
        else:
            weight.mul_(mask.to(weight.device))


def zero_fraction(weight: torch.Tensor) -> float:
    """The share of exactly-zero entries of ``weight``."""
    values = weight.detach().cpu().numpy()
    return 1.0 - np.count_nonzero(values) / values.size if values.size else 0.0
