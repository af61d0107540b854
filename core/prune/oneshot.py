"""One-shot quality of channel plans: Fisher scores for channel groups and heads, and reconstruction.

core.prune.shrink calls these around the removal: ``unit_fisher`` ranks every channel group and
attention layer by the Fisher information of its unit masks (core.prune.fisher), and
``Reconstruction`` records the dense outputs of every layer that reads a removed unit before the
removal, then refits those layers afterwards (core.prune.reconstruct). Both read the same
calibration items.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.prune import channel, criteria, fisher, heads, reconstruct

BATCH = 16


@dataclass
class Calibration:
    """Calibration items, their labels and (token models) which positions are real.

    Token items are sorted by length and cut after the longest sequence, and each batch after its
    own longest: padded positions are masked out of attention and pooling, so the real positions
    compute the same values, several times faster.
    """

    inputs: torch.Tensor
    labels: torch.Tensor | None
    positions: torch.Tensor | None      # (items, tokens) bool, or None

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(inputs, labels) per batch of BATCH items."""
        found = []
        for start in range(0, len(self.inputs), BATCH):
            batch = self.inputs[start:start + BATCH]
            if self.positions is not None:
                batch = batch[:, :_length(self.positions[start:start + BATCH])]
            found.append((batch, None if self.labels is None else self.labels[start:start + BATCH]))
        return found


def _length(positions: torch.Tensor) -> int:
    """Columns up to the last real position of any item (at least one)."""
    used = positions.any(0).nonzero()
    return int(used.max()) + 1 if len(used) else 1


def calibration(job, name: str) -> Calibration:
    """The calibration items of ``job`` (PrunelabError naming ``name`` when the model has no data)."""
    inputs, labels = criteria.calibration_items(job.data, name)
    if job.pad_id is None or inputs.is_floating_point() or inputs.ndim != 2:
        return Calibration(inputs, labels, None)
    order = torch.argsort((inputs != job.pad_id).sum(1), stable=True)
    inputs, labels = inputs[order], None if labels is None else labels[order]
    positions = inputs != job.pad_id
    length = _length(positions)
    return Calibration(inputs[:, :length], labels, positions[:, :length])


# ---- Fisher scores --------------------------------------------------------------------------------

def _consumer_items(group, graph, names: dict):
    """(layer name, torch-pruning item) of every Conv/Linear whose input columns the group cuts."""
    for item in group.items:
        target = item.dep.target.module
        if (not graph.is_out_channel_pruning_fn(item.dep.handler) and isinstance(target, fisher.CONSUMER_TYPES)
                and target in names and not any(index is None for index in item.root_idxs)):
            yield names[target], item


def unit_fisher(job, groups, attention, graph, names: dict, evidence: dict) -> dict[str, torch.Tensor]:
    """Fisher scores per channel of every group and per key/value head of every attention layer, by leader.

    A group no consumer reads (its channels are the model's output) and an attention layer with no
    output projection are ranked by l2 instead, with a note.
    """
    module = job.module
    consumers = {name: target for group in groups for name, item in _consumer_items(group, graph, names)
                 for target in [item.dep.target.module]}
    consumers.update({unit.output: module.get_submodule(unit.output) for unit in attention if unit.output})
    cal = calibration(job, job.plan.criterion)
    data_key = f"{job.data.digest}:{len(cal.inputs)}:{job.pad_id}"
    gradients = fisher.cached_mask_gradients(module, consumers, cal.batches(), job.output_kind, job.plan.seed,
                                             data_key)
    scores, fallen = {}, []
    for group in groups:
        columns = [(gradients[name], item.idxs, item.root_idxs)
                   for name, item in _consumer_items(group, graph, names) if name in gradients]
        if columns:
            scores[group.leader] = fisher.channel_importance(columns, group.channels)
        else:
            fallen.append(group.leader)
            scores[group.leader] = channel.group_scores(group, graph, "l2", evidence, names)
    for unit in attention:
        if unit.output in gradients:
            scores[unit.leader] = fisher.head_importance(gradients[unit.output], unit.kv_heads)
        else:
            fallen.append(unit.leader)
            rows = {layer: module.get_submodule(layer).weight.detach().norm(dim=1) for layer in unit.projections}
            scores[unit.leader] = heads.head_scores(unit, rows)
    if fallen:
        job.notes.append(f"{job.plan.criterion}: no layer reads the units of {', '.join(fallen)} inside the "
                         f"model; ranked by l2 instead")
    return scores


# ---- reconstruction ---------------------------------------------------------------------------------

def consumers_of(groups, attention, graph, names: dict, module: nn.Module) -> list[str]:
    """Layers that read a group's channels or an attention layer's heads and that reconstruction can refit."""
    found = [name for group in groups for name, _ in _consumer_items(group, graph, names)]
    found += [unit.output for unit in attention if unit.output]
    return [name for name in dict.fromkeys(found) if reconstruct.refittable(module.get_submodule(name))]


class Reconstruction:
    """Dense outputs of the consumers, taken before the removal; ``refit`` after it (see module doc)."""

    def __init__(self, job, names: list[str]):
        self.cal = calibration(job, "reconstruct")
        module = job.module
        self.inputs = {name: module.get_submodule(name).weight.shape[1] for name in names}
        self.outputs = {name: module.get_submodule(name).weight.shape[0] for name in names}
        self.dense = reconstruct.dense_outputs(module, names, self.cal.inputs, self.cal.positions)

    def refit(self, module: nn.Module, removed: dict[str, list[int]]) -> str | None:
        """Refit every consumer whose inputs shrank; ``removed`` maps layers to the output channels they
        lost. Returns the sentence for the notes (None when nothing was refit)."""
        targets = []
        for name in self.dense.outputs:
            if module.get_submodule(name).weight.shape[1] == self.inputs[name]:
                continue
            lost = set(removed.get(name, ()))
            kept = torch.tensor([index for index in range(self.outputs[name]) if index not in lost], dtype=torch.long)
            targets.append(reconstruct.Target(name, kept if lost else None))
        if not targets:
            return None
        reduced = reconstruct.refit(module, targets, self.dense, self.cal.inputs, self.cal.positions)
        if not reduced:
            return None
        mean = float(np.mean(list(reduced.values())))
        sums = sum(name in self.dense.sums for name in reduced)
        return (f"reconstruction: {len(reduced)} layers that read removed channels or heads refit by least squares "
                f"to the dense outputs{f' ({sums} before a norm: to the dense residual sum)' if sums else ''} on "
                f"{len(self.cal.inputs)} calibration items (their error there down "
                f"{mean:.0%} on average; set reconstruct: false to keep the dense weights)")
