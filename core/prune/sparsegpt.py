"""SparseGPT: prune one layer's weights and reconstruct the survivors from its inputs' Hessian.

For a layer computing ``W @ x`` (rows = outputs, columns = inputs) and calibration inputs X, the
Hessian of the reconstruction error ``||W X - W' X||^2`` is ``H = X X^T`` (columns x columns).
Columns are visited left to right; when a weight is pruned, the optimal brain surgeon update
spreads its error over the not-yet-visited columns of its row through the upper Cholesky factor
of ``H^-1``. Columns are processed in blocks: updates inside a block are immediate, updates to the
columns after it are applied once per block (lazy batching), so memory stays at one
(rows x block) slice besides W and H. Which weights go is decided block by block from the
saliency ``w^2 / [H^-1]_jj^2``: within each block for unstructured targets, within each group of
M consecutive columns for N:M.

Unlike every other criterion, this one changes the weights that survive: that is its point.
Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot" (2023).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from core.errors import PrunelabError

BLOCK_COLUMNS = 128   # columns updated together before the lazy update of the rest
DAMPENING = 0.01      # added to H's diagonal, as a fraction of its mean diagonal


@dataclass(frozen=True)
class Target:
    """What to prune in one (rows x columns) weight: ``count`` weights in all, or ``n`` in every ``m`` columns."""

    count: int = 0
    n: int = 0
    m: int = 0


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the column loop's small operations slow down ~10x when two threads
    contend for two busy cores (measured: 0.11 s on one thread, 1.5 s on two, for a 1536 x 576 layer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _inverse_factor(hessian: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of the dampened ``H^-1`` (float64); more dampening if H is not positive definite."""
    scale = float(hessian.diagonal().mean()) or 1.0
    for attempt in range(6):
        damped = hessian + torch.eye(len(hessian), dtype=hessian.dtype) * (dampening * 10 ** attempt * scale)
        lower, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    raise PrunelabError("sparsegpt: the calibration Hessian stays singular after dampening (are the inputs all NaN?)")


def _block_counts(total: int, columns: int, block: int) -> list[int]:
    """How many weights each column block prunes, so that the blocks add up to exactly ``total``."""
    edges = [*range(0, columns, block), columns]
    cumulative = [round(total * edge / columns) for edge in edges]
    return [after - before for before, after in zip(cumulative, cumulative[1:])]


def _lowest_in_block(saliency: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean (rows x block) prune-mask of the ``count`` lowest saliencies of the block."""
    pruned = torch.zeros(saliency.numel(), dtype=torch.bool)
    if count > 0:
        pruned[torch.topk(saliency.reshape(-1), count, largest=False, sorted=False).indices] = True
    return pruned.reshape(saliency.shape)


def reconstruct(weight: torch.Tensor, hessian: torch.Tensor, target: Target,
                block: int = BLOCK_COLUMNS, dampening: float = DAMPENING) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (rows x columns) to ``target`` and update its survivors; return (new weight, keep-mask).

    ``hessian`` is ``sum x x^T`` over the calibration inputs (columns x columns). Inputs that were
    always zero (dead columns) cannot affect the outputs and are pruned first. N:M groups are M
    consecutive columns, so ``block`` is rounded up to a multiple of M.
    """
    with one_thread():
        return _reconstruct(weight, hessian, target, block, dampening)


def _reconstruct(weight: torch.Tensor, hessian: torch.Tensor, target: Target,
                 block: int, dampening: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows, columns = weight.shape
    if target.m and columns % target.m:
        raise PrunelabError(f"sparsegpt: {columns} columns do not split into groups of {target.m}")
    if target.m:
        block = -(-block // target.m) * target.m
    hessian = hessian.double().clone()
    dead = hessian.diagonal() == 0
    hessian[dead, dead] = 1.0
    factor = _inverse_factor(hessian, dampening).float()            # (columns, columns), upper triangular
    work = weight.detach().float().clone()
    pruned = torch.zeros(rows, columns, dtype=torch.bool)
    counts = _block_counts(target.count, columns, block) if not target.m else None
    for index, start in enumerate(range(0, columns, block)):
        end = min(start + block, columns)
        local = work[:, start:end].clone()                           # (rows, block)
        inverse = factor[start:end, start:end]
        diagonal = inverse.diagonal()
        errors = torch.zeros_like(local)
        if counts is not None:
            saliency = local.pow(2) / diagonal.pow(2)
            saliency[:, dead[start:end]] = -1.0
            pruned[:, start:end] = _lowest_in_block(saliency, counts[index])
        for column in range(end - start):
            if target.m and column % target.m == 0:
                group = slice(column, column + target.m)
                saliency = local[:, group].pow(2) / diagonal[group].pow(2)
                saliency[:, dead[start:end][group]] = -1.0
                lowest = torch.topk(saliency, target.n, dim=1, largest=False, sorted=False).indices
                pruned[:, start:end][:, group].scatter_(1, lowest, True)
            values = local[:, column]
            kept = values.masked_fill(pruned[:, start + column], 0.0)
            error = (values - kept) / diagonal[column]               # (rows,)
            local[:, column:] -= error.unsqueeze(1) * inverse[column, column:].unsqueeze(0)
            local[:, column] = kept
            errors[:, column] = error
        work[:, start:end] = local
        work[:, end:] -= errors @ factor[start:end, end:]
    return work.to(weight.dtype), ~pruned
