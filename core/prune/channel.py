"""Channel pruning: physical removal of output channels through torch-pruning's dependency graph.

Layers whose channels must shrink together (residual additions, concatenations, depthwise and
grouped convolutions, BatchNorm, LayerNorm, the embedding of nn.MultiheadAttention) form one
dependency group. A group is scored by summing the criterion's per-channel scores over its
Conv/Linear members, a selection picks the channels to drop (rounded to ``plan.round_to`` and
balanced over heads or convolution groups), and torch-pruning removes them. torch-pruning stays
behind this module: the rest of prunelab sees groups as plain dicts of layer names.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from core.errors import PrunelabError
from core.prune import criteria, select
from core.prune.conv1d import as_linear
from core.prune.heads import attention_modules, find_attention
from core.prune.plan import Plan
from core.prune.resolved import resolve
from core.prune.tracing import ROOT_TYPES, build_graph, module_names, too_large_note, traced_groups

SCORED_TYPES = ROOT_TYPES  # layers whose channels a criterion scores


@dataclass
class Group:
    """One dependency group: its root (leader) module, the tp group, and names for the report."""

    leader: str
    root: nn.Module
    items: object                   # the torch-pruning Group (all channels)
    channels: int
    blocks: int                     # channels are pruned evenly in this many consecutive blocks
    members: list[str]              # prunable layers whose output channels shrink
    consumers: list[str]            # prunable layers whose input channels shrink
    others: list[str]               # norms and other coupled modules

    def as_dict(self) -> dict:
        return {"leader": self.leader, "members": self.members, "channels": self.channels, "unit": "channel",
                "consumers": self.consumers, "coupled": self.others, "blocks": self.blocks}


def _blocks(graph, tp_group) -> int:
    """Channel blocks that must shrink evenly: attention heads, convolution / norm groups."""
    blocks = 1
    for dep, _ in tp_group:
        target = dep.target.module
        if isinstance(target, nn.MultiheadAttention):
            blocks = max(blocks, target.num_heads)
        elif isinstance(target, nn.Module) and not _is_depthwise(target):
            pruner = graph.get_pruner_of_module(target)
            if pruner is not None:
                out = graph.is_out_channel_pruning_fn(dep.handler)
                count = pruner.get_out_channel_groups(target) if out else pruner.get_in_channel_groups(target)
                blocks = max(blocks, count or 1)
    return blocks


def _is_depthwise(module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.out_channels


def _conflicts(graph, tp_group, names: dict, leader: str, channels: int) -> list[str]:
    """Parameters outside standard layers that this group would cut along a dimension of the wrong size."""
    dims = {id(param): dim for param, dim in graph.unwrapped_parameters}
    found = []
    for dep, _ in tp_group:
        target = dep.target.module
        if isinstance(target, nn.Parameter):
            dim = dims.get(id(target))
            if dim is None or target.shape[dim] != channels:
                found.append(f"parameter '{names.get(target, '?')}' {tuple(target.shape)} (coupled with '{leader}')")
    return found


def conflict_message(conflicts: list[str], leaders: list[str]) -> str:
    """One message for every coupling channel pruning cannot handle, and the layers to ignore instead."""
    return (f"channel pruning cannot restructure {len(conflicts)} coupling(s) with parameters used outside a "
            f"standard layer: {'; '.join(conflicts)}. Add these layers to the plan's ignore list: "
            f"{', '.join(dict.fromkeys(leaders))} (or use unstructured pruning)")


def _reroot(graph, tp_group, members: list[str], by_name: dict):
    """Lead the group by its first member in definition order that carries all of its channels."""
    root, channels = tp_group[0].dep.target.module, len(tp_group[0].idxs)
    for name in members:
        module = by_name.get(name)
        if module is root:
            break
        if module not in graph.module2node or not isinstance(module, ROOT_TYPES) or out_channels(module) != channels:
            continue
        pruner = graph.get_pruner_of_module(module)
        regrouped = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        if len(regrouped) == len(tp_group):
            return module, regrouped
    return root, tp_group


def _bucket(graph, dep, members: list, consumers: list, others: list) -> list:
    target = dep.target.module
    scored = isinstance(target, SCORED_TYPES + (nn.MultiheadAttention,))
    if graph.is_out_channel_pruning_fn(dep.handler):
        return members if scored else others
    return consumers if scored else others


def _describe(module: nn.Module, graph, tp_group, names: dict, by_name: dict) -> tuple[list, list, list]:
    """(members, consumers, others): layer names whose outputs shrink, whose inputs shrink, and the rest."""
    members, consumers, others = [], [], []
    for dep, _ in tp_group:
        target = dep.target.module
        name = names.get(target)
        if name is None or not isinstance(target, (nn.Module, nn.Parameter)):
            continue  # torch-pruning's own operator nodes (add, cat, reshape)
        bucket = _bucket(graph, dep, members, consumers, others)
        if name not in bucket:
            bucket.append(name)
        if bucket is members and isinstance(target, nn.MultiheadAttention) and f"{name}.out_proj" in by_name:
            members.append(f"{name}.out_proj")  # shrinks with the attention's embedding
    order = {name: index for index, name in enumerate(by_name)}
    for bucket in (members, consumers, others):
        bucket.sort(key=lambda name: order.get(name, len(order)))
    return members, consumers, others


# torch-pruning's index mappings (core of its dependency graph), in a person's words.
MAPPING_WORDS = {
    "_FlattenIndexMapping": "a flatten or reshape",
    "_SplitIndexMapping": "a chunk or split",
    "_SliceIndexMapping": "a slice",
    "_ConcatIndexMapping": "a concatenation",
    "_GQAIndexMapping": "a grouped-query repeat",
}


def _misfit(graph, tp_group, names: dict) -> str | None:
    """None when every channel index the group cuts lies within its layer; else which layer the indices
    passed the end of, and through what. torch-pruning misreads some patterns, such as YOLOv8's C2f
    chunks or a per-position parameter flattened into a classifier, and maps indices past the end."""
    for dep, idxs in tp_group:
        target = dep.target.module
        pruner = graph.get_pruner_of_module(target) if isinstance(target, nn.Module) else None
        if pruner is None or not idxs:
            continue
        out = graph.is_out_channel_pruning_fn(dep.handler)
        size = pruner.get_out_channels(target) if out else pruner.get_in_channels(target)
        if size is not None and max(idxs) >= size:
            kinds = {type(mapping).__name__ for dep, _ in tp_group for mapping in dep.index_mapping}
            words = [word for name, word in MAPPING_WORDS.items() if name in kinds]
            how = " and ".join(words) or "an operation torch-pruning cannot follow"
            side = "outputs" if out else "inputs"
            return f"past the {size} {side} of '{names.get(target, type(target).__name__)}' through {how}"
    return None


def _reads_attention(tp_group, names: dict, inside: tuple[str, ...]) -> bool:
    """Whether the group cuts the width attention reads: an nn.MultiheadAttention's embedding, or a
    layer or parameter inside a self-attention module (``inside``: their name prefixes)."""
    return any(isinstance(dep.target.module, nn.MultiheadAttention)
               or (inside and str(names.get(dep.target.module, "")).startswith(inside)) for dep, _ in tp_group)


def dependency_groups(module: nn.Module, graph, ignored: list[str], attention=(), keep_width: bool = True,
                      notes: list | None = None):
    """The prunable channel groups of ``module``: (groups, width), where ``width`` lists the layers kept
    at full width because their channels are the residual stream that attention layers read.

    Groups touching an ignored layer's outputs are left out, and so are the output channels of
    attention projections (``attention``: core.prune.heads.Attention values; their heads are pruned
    whole elsewhere), and layers whose couplings were too large to trace (named in ``notes``).
    Raises one PrunelabError listing every coupling that cannot be restructured.
    """
    names = module_names(module, graph)
    by_name = dict(module.named_modules())
    projections = {name for unit in attention for name in unit.projections}
    skipped = [by_name[name] for name in projections if name in by_name]
    inside = tuple(f"{name}." for name in attention_modules(module))
    groups, width, conflicts, leaders, too_large, misread = [], [], [], [], [], {}
    for tp_group in traced_groups(graph, skipped, names, too_large):
        members, consumers, others = _describe(module, graph, tp_group, names, by_name)
        if keep_width and (projections & set(consumers) or _reads_attention(tp_group, names, inside)):
            width += [name for name in members if name not in width]
            continue
        if set(ignored) & set(members):
            continue
        root, tp_group = _reroot(graph, tp_group, members, by_name)
        cause = _misfit(graph, tp_group, names)
        if cause:
            misread.setdefault(cause, []).append(names[root])
            continue
        channels = len(tp_group[0].idxs)
        found = _conflicts(graph, tp_group, names, names[root], channels)
        if found:
            conflicts += found
            leaders.append(names[root])
            continue
        groups.append(Group(names[root], root, tp_group, channels, _blocks(graph, tp_group),
                            members, consumers, others))
    order = list(by_name)
    if conflicts:
        raise PrunelabError(conflict_message(conflicts, sorted(leaders, key=order.index)))
    if too_large and notes is not None:
        notes.append(too_large_note(too_large))
    if notes is not None:
        notes += [f"left dense, their channels mapped {cause}: the groups led by {', '.join(found)}"
                  for cause, found in misread.items()]
    return sorted(groups, key=lambda group: order.index(group.leader)), width


def coupled_groups(module: nn.Module, example_input: torch.Tensor, ignore: list[str] | None = None,
                   keep_width: bool = True) -> list[dict]:
    """The units a channel plan prunes, as dicts {leader, members, channels, unit, consumers, coupled, blocks}:
    channel groups (``unit`` 'channel') and attention layers (``unit`` 'head', ``channels`` = heads).

    ``ignore`` names layers whose groups are left out; None means the final classifier. ``keep_width``
    leaves out the residual width attention reads (a plan's ``prune_width: false``).
    """
    ignore = list(resolve(Plan(granularity="channel", ignore=ignore), module, example_input).ignored)
    with as_linear(module):
        attention = find_attention(module, example_input)
        groups, _ = dependency_groups(module, build_graph(module, example_input), ignore, attention, keep_width)
    units = [group.as_dict() for group in groups]
    units += [{"leader": unit.leader, "members": list(unit.projections), "channels": unit.heads, "unit": "head",
               "consumers": [unit.output] if unit.output else [], "coupled": [], "blocks": unit.heads // unit.kv_heads}
              for unit in attention if not set(unit.projections) & set(ignore)]
    order = {name: index for index, name in enumerate(dict(module.named_modules()))}
    return sorted(units, key=lambda unit: order.get(unit["leader"], len(order)))


# ---- score ---------------------------------------------------------------------------------------

def _is_batchnorm(module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None


def group_scores(group: Group, graph, name: str, evidence: dict, names: dict) -> torch.Tensor:
    """One score per channel of ``group``: the criterion summed over its Conv/Linear members, or over
    its BatchNorms for a criterion that needs "batchnorm"."""
    ranking = criteria.criterion(name)
    total = torch.zeros(group.channels, dtype=torch.float64)
    scored = False
    for item in group.items:
        target, out = item.dep.target.module, graph.is_out_channel_pruning_fn(item.dep.handler)
        if not out or any(index is None for index in item.root_idxs):
            continue
        if "batchnorm" in ranking.needs:
            if not _is_batchnorm(target):
                continue
            scores = ranking(None, criteria.Evidence(bn_weight=target.weight.detach()), per="channel")
        elif isinstance(target, SCORED_TYPES) and names.get(target) in evidence:
            scores = ranking(target.weight.detach(), evidence[names[target]], per="channel")
        else:
            continue
        total.scatter_add_(0, torch.tensor(item.root_idxs), scores[item.idxs].double())
        scored = True
    if not scored:
        raise PrunelabError(f"criterion '{name}' finds no Conv or Linear layer to score in the group "
                            f"led by '{group.leader}'")
    return total


def scores_or_fallback(group: Group, graph, name: str, evidence: dict, names: dict, notes: list) -> torch.Tensor:
    """Group scores; a criterion that needs a BatchNorm falls back to its ``fallback`` (with a note)
    where no BatchNorm follows the group."""
    ranking = criteria.criterion(name)
    if "batchnorm" in ranking.needs and not any(_is_batchnorm(item.dep.target.module) for item in group.items):
        notes.append(f"{name}: no BatchNorm in the group led by '{group.leader}', ranked by {ranking.fallback} instead")
        name = ranking.fallback
    return group_scores(group, graph, name, evidence, names)


# ---- select --------------------------------------------------------------------------------------

def out_channels(module: nn.Module) -> int | None:
    for attribute in ("out_channels", "out_features", "embed_dim"):
        if hasattr(module, attribute):
            return getattr(module, attribute)
    return None


def _cut_layers(graph, tp_group, names: dict):
    """(layer name, output channel indices) of every Conv/Linear whose output channels ``tp_group`` cuts."""
    for item in tp_group:
        target = item.dep.target.module
        if graph.is_out_channel_pruning_fn(item.dep.handler) and isinstance(target, SCORED_TYPES) and target in names:
            yield names[target], item.idxs


def member_channels(group: Group, graph, names: dict) -> dict[str, int]:
    """Output channels of every Conv/Linear layer the group cuts."""
    by_name = {name: module for module, name in names.items() if isinstance(module, nn.Module)}
    return {name: out_channels(by_name[name]) for name, _ in _cut_layers(graph, group.items, names)}


def coupled_units(group: Group, graph, names: dict) -> tuple[list[list[int]], list[dict[str, int]]]:
    """Root channels that are cut together, and how many output channels each such unit takes per layer.

    One root channel can cut several channels of a layer (a cheap depthwise operation whose
    output is concatenated with its input); torch-pruning expands each root channel, and root
    channels whose expansions share a layer channel form one unit.
    """
    parent = list(range(group.channels))

    def find(index: int) -> int:
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    owner: dict[tuple[str, int], int] = {}
    handler = group.items[0].dep.handler
    for index in range(group.channels):
        for name, idxs in _cut_layers(graph, graph.get_pruning_group(group.root, handler, [index]), names):
            for channel in idxs:
                first = owner.setdefault((name, channel), index)
                parent[find(index)] = find(first)
    classes: dict[int, list[int]] = {}
    for index in range(group.channels):
        classes.setdefault(find(index), []).append(index)
    units = list(classes.values())
    position = {root: number for number, root in enumerate(classes)}
    removes: list[dict[str, int]] = [{} for _ in units]
    for (name, _), index in owner.items():
        counts = removes[position[find(index)]]
        counts[name] = counts.get(name, 0) + 1
    return units, removes


def _attention_heads(group: Group) -> tuple[int, int] | None:
    """(heads, head size) of the nn.MultiheadAttention whose embedding this group cuts, if any."""
    for item in group.items:
        target = item.dep.target.module
        if isinstance(target, nn.MultiheadAttention) and target.embed_dim == group.channels:
            return target.num_heads, target.embed_dim // target.num_heads
    return None


def choose_channels(group: Group, graph, names: dict, scores: torch.Tensor, target: float,
                    round_to: int) -> list[int]:
    """Root channel indices to remove from ``group`` at ``target``, honouring every member's own target."""
    heads = _attention_heads(group)
    if heads is not None:  # nn.MultiheadAttention: whole heads, the head size stays
        return select.select_blocks(scores, heads[1], select.kept_of(heads[0], target))
    counts = member_channels(group, graph, names)
    if all(count == group.channels for count in counts.values()):
        kept = select.kept_channels(group.channels, target, round_to, group.blocks)
        return select.select_channels(scores, kept, group.blocks, _segments(group, graph))
    units, removes = coupled_units(group, graph, names)
    allowed = {name: count - select.kept_of(count, target) for name, count in counts.items()}
    return select.select_units(units, scores, removes, allowed)


def _segments(group: Group, graph) -> list[list[int]]:
    """Root channel indices of every module whose output channels the group cuts."""
    return [list(item.root_idxs) for item in group.items
            if graph.is_out_channel_pruning_fn(item.dep.handler) and isinstance(item.dep.target.module, nn.Module)
            and not any(index is None for index in item.root_idxs)]


# ---- apply ---------------------------------------------------------------------------------------

def remove_channels(group: Group, graph, pruned: list[int], names: dict) -> dict[str, list[int]] | None:
    """Cut root channels ``pruned`` of ``group``: {layer: the output channels it lost}, or None (nothing
    cut) when an earlier group already changed its root, so the indices no longer apply."""
    if not pruned:
        return {}
    if out_channels(group.root) != group.channels:
        return None
    tp_group = graph.get_pruning_group(group.root, group.items[0].dep.handler, pruned)
    cut = {name: list(idxs) for name, idxs in _cut_layers(graph, tp_group, names)}
    tp_group.prune()
    return cut
