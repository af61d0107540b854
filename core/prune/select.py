"""Selection: from scores and a target to the channels (or heads) to remove. Pure functions on tensors.

Scores come from core.prune.criteria (one per channel, summed over a coupling group); the
physical removal lives in core.prune.channel and core.prune.heads.
"""
from __future__ import annotations

import math

import torch


def kept_of(count: int, sparsity: float) -> int:
    """Units (channels or heads) a layer of ``count`` keeps at ``sparsity``: rounded, at least one."""
    return max(1, count - int(round(sparsity * count)))


def kept_channels(channels: int, sparsity: float, round_to: int, blocks: int) -> int:
    """Channels kept at ``sparsity``: rounded to a multiple of round_to and of blocks, at least one unit."""
    unit = round_to * blocks // math.gcd(round_to, blocks)
    if unit > channels or channels % blocks:
        return channels
    kept = channels - int(round(sparsity * channels))
    return min(channels, max(unit, int(math.floor(kept / unit + 0.5)) * unit))


def select_channels(scores: torch.Tensor, kept: int, blocks: int, segments: list[list[int]] = ()) -> list[int]:
    """Indices to remove: the lowest-scored channels, the same number in each of ``blocks`` blocks.

    ``segments`` (channel index lists of the layers sharing the group, e.g. the inputs of a
    concatenation) each keep their best channel, so no layer is left with zero channels.
    """
    per_block = len(scores) // blocks
    drop = per_block - kept // blocks
    protected = {max(segment, key=lambda index: (float(scores[index]), -index)) for segment in segments if segment}
    chosen = []
    for block in range(blocks):
        order = torch.argsort(scores[block * per_block:(block + 1) * per_block], stable=True) + block * per_block
        chosen += [index for index in order.tolist() if index not in protected][:drop]
    return sorted(chosen)


def select_blocks(scores: torch.Tensor, block_size: int, kept_blocks: int) -> list[int]:
    """Indices to remove in whole blocks of ``block_size`` consecutive channels (attention heads):
    the blocks with the lowest summed score go first, ``kept_blocks`` (at least one) stay."""
    totals = scores.reshape(-1, block_size).sum(1)                    # (blocks,)
    order = sorted(range(len(totals)), key=lambda block: (float(totals[block]), -block))
    dropped = order[:len(totals) - max(1, kept_blocks)]
    return sorted(block * block_size + offset for block in dropped for offset in range(block_size))


def select_units(units: list[list[int]], scores: torch.Tensor, removes: list[dict[str, int]],
                 allowed: dict[str, int]) -> list[int]:
    """Indices to remove when cutting one channel also cuts others (a cheap operation + concatenation).

    ``units`` lists the root channels that go together, ``removes[i]`` how many output channels
    unit ``i`` takes from each layer and ``allowed`` how many each layer may lose: units are taken
    lowest mean score first while no layer would lose more than it is allowed.
    """
    taken = dict.fromkeys(allowed, 0)
    chosen = []
    for index in sorted(range(len(units)), key=lambda i: (float(scores[units[i]].mean()), i)):
        if all(taken[layer] + count <= allowed[layer] for layer, count in removes[index].items()):
            for layer, count in removes[index].items():
                taken[layer] += count
            chosen += units[index]
    return sorted(chosen)


def global_sparsities(scores: dict[str, torch.Tensor], sparsity: float, normalize: bool = True) -> dict[str, float]:
    """Sparsity per unit group from one ranking over all groups; ``normalize`` divides each group's scores
    by their mean first (scores whose scale differs between layers, such as weight norms)."""
    if not scores:
        return {}
    normalized = {key: values / values.mean().clamp_min(1e-12) if normalize else values
                  for key, values in scores.items()}
    flat = torch.cat(list(normalized.values()))
    count = int(round(sparsity * len(flat)))
    if count == 0:
        return dict.fromkeys(scores, 0.0)
    threshold = torch.kthvalue(flat, count).values
    return {key: float((values <= threshold).sum()) / len(values) for key, values in normalized.items()}
