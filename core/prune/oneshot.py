"""One-shot quality of channel plans: Fisher scores for channel groups and heads, and reconstruction.

core.prune.shrink calls these around the removal: ``unit_fisher`` ranks every channel group and
attention layer by the Fisher information of its unit masks (core.prune.fisher); ``surgery`` (a
criterion that also needs layer inputs) lets each Linear layer that reads heads or neurons choose
them itself by structured OBS, weighted by those scores, and compensate the rest
(core.prune.obs); ``Reconstruction`` records the dense outputs of every layer that reads a removed
unit before the removal, then refits those layers afterwards (core.prune.reconstruct). All read
the same calibration items.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.prune import channel, fisher, heads, obs, reconstruct
from core.prune.calibration_items import calibration

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


# ---- structured OBS ---------------------------------------------------------------------------------

def _weighting(scores: torch.Tensor) -> torch.Tensor:
    """A unit's criterion score relative to its layer's mean: the factor on its OBS cost."""
    scores = scores.double()
    return (scores / scores.mean().clamp_min(1e-30)).clamp_min(1e-6)


def _neuron_choice(group, graph, names: dict, module: nn.Module, scores: torch.Tensor, count: int):
    """The obs.Choice of a channel group that one Linear layer reads, a column per channel, in one block;
    None for any other group (those keep the criterion's own selection)."""
    items = list(_consumer_items(group, graph, names))
    if len(items) != 1 or group.blocks != 1 or not isinstance(module.get_submodule(items[0][0]), nn.Linear):
        return None
    name, item = items[0]
    columns = dict(zip(item.root_idxs, item.idxs))
    if sorted(columns) != list(range(group.channels)):
        return None
    order = torch.tensor([columns[channel] for channel in range(group.channels)])
    return obs.Choice(group.leader, name, order.reshape(-1, 1), count, _weighting(scores))


def _head_choice(unit, module: nn.Module, scores: torch.Tensor, count: int):
    """The obs.Choice of an attention layer's key/value head groups at its output projection (None without one)."""
    if not unit.output or not isinstance(module.get_submodule(unit.output), nn.Linear):
        return None
    size = unit.head_size * (unit.heads // unit.kv_heads)
    return obs.Choice(unit.leader, unit.output, torch.arange(unit.kv_heads * size).reshape(unit.kv_heads, size),
                      count, _weighting(scores))


def surgery(job, groups, attention, graph, names: dict, scores: dict, targets: dict, dropped: dict) -> dict:
    """Let every Linear layer that reads heads or neurons choose which of them go by structured OBS
    weighted by ``scores`` (core.prune.obs), layer by layer on calibration items, compensating its
    remaining weights in place; as many go as the criterion's own selection takes.

    Returns ``scores`` with those groups' scores replaced by the removal order (lowest first), so the
    selection takes exactly the units chosen; ``dropped`` (heads by attention leader) is updated in place.
    """
    module, rounding = job.module, job.resolved.rounding
    choices = [_head_choice(unit, module, scores[unit.leader], len(dropped[unit.leader])) for unit in attention]
    choices += [_neuron_choice(group, graph, names, module, scores[group.leader], len(channel.choose_channels(
        group, graph, names, scores[group.leader], targets[group.leader], rounding(group.channels))))
        for group in groups]
    choices = [choice for choice in choices if choice is not None and choice.count]
    if not choices:
        return scores
    cal = calibration(job, job.plan.criterion)
    chosen = obs.choose(module, choices, cal.inputs, cal.positions)
    scores = dict(scores)
    for leader, order in chosen.items():
        if leader in dropped:
            dropped[leader] = sorted(order)
        else:
            ranks = torch.full((len(scores[leader]),), float(len(order)), dtype=torch.float64)
            ranks[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order), dtype=torch.float64)
            scores[leader] = ranks
    job.notes.append(f"{job.plan.criterion}: {len(chosen)} layers that read heads or neurons chose which go by "
                     f"structured OBS weighted by Fisher scores, and compensated their remaining weights, on "
                     f"{len(cal.inputs)} calibration items")
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
