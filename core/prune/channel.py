"""Channel pruning: physical removal of output channels through torch-pruning's dependency graph.

Layers whose channels must shrink together (residual additions, concatenations, depthwise and
grouped convolutions, BatchNorm, LayerNorm, the embedding of nn.MultiheadAttention) form one
dependency group. A group is scored by summing the criterion's per-channel scores over its
Conv/Linear members, a selection picks the channels to drop (rounded to ``plan.round_to`` and
balanced over heads or convolution groups), and torch-pruning removes them. torch-pruning stays
behind this module: the rest of prunelab sees groups as plain dicts of layer names.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from core.errors import PrunelabError, error_line
from core.inspect import final_classifier
from core.prune import criteria
from core.prune.result import PruneResult

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SCORED_TYPES = ROOT_TYPES


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
        return {"leader": self.leader, "members": self.members, "channels": self.channels,
                "consumers": self.consumers, "coupled": self.others, "blocks": self.blocks}


def build_graph(module: nn.Module, example_input: torch.Tensor):
    """torch-pruning's DependencyGraph of ``module`` traced on ``example_input``."""
    if example_input is None:
        raise PrunelabError("channel pruning needs an example input to trace the model")
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(module, example_inputs=example_input)
    except Exception as error:  # tracing of arbitrary user code: report, never crash
        raise PrunelabError(f"the dependency graph cannot trace this model: "
                            f"{error_line(error, with_type=True)}") from None


def _module_names(module: nn.Module, graph) -> dict:
    names = {child: name for name, child in module.named_modules()}
    names.update(getattr(graph, "_param_to_name", {}))
    return names


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


def _check_supported(graph, tp_group, names: dict, leader: str) -> None:
    """PrunelabError naming a coupled layer that torch-pruning could only guess how to cut."""
    for dep, _ in tp_group:
        target = dep.target.module
        if isinstance(target, nn.Parameter):
            owner = names.get(target, "a parameter").rpartition(".")[0] or names.get(target, "?")
            raise PrunelabError(f"channel pruning cannot restructure layer '{owner}' (a parameter used outside "
                                f"a standard layer), which is coupled with '{leader}': add one of them to the "
                                f"plan's ignore list")


def _reroot(graph, tp_group, members: list[str], by_name: dict):
    """Lead the group by its first member in definition order that carries all of its channels."""
    root, channels = tp_group[0].dep.target.module, len(tp_group[0].idxs)
    for name in members:
        module = by_name.get(name)
        if module is root:
            break
        if module not in graph.module2node or not isinstance(module, ROOT_TYPES) or _out_channels(module) != channels:
            continue
        pruner = graph.get_pruner_of_module(module)
        regrouped = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        if len(regrouped) == len(tp_group):
            return module, regrouped
    return root, tp_group


def dependency_groups(module: nn.Module, graph, ignored: list[str]) -> list[Group]:
    """The prunable channel groups of ``module``; groups touching an ignored layer's outputs are left out."""
    names = _module_names(module, graph)
    by_name = dict(module.named_modules())
    ignored_modules = [by_name[name] for name in ignored if name in by_name]
    groups = []
    for tp_group in graph.get_all_groups(ignored_layers=ignored_modules, root_module_types=ROOT_TYPES):
        root = tp_group[0].dep.target.module
        members, consumers, others = [], [], []
        for dep, _ in tp_group:
            target = dep.target.module
            name = names.get(target)
            if name is None or not isinstance(target, (nn.Module, nn.Parameter)):
                continue  # torch-pruning's own operator nodes (add, cat, reshape)
            out = graph.is_out_channel_pruning_fn(dep.handler)
            bucket = members if out and isinstance(target, SCORED_TYPES + (nn.MultiheadAttention,)) else (
                consumers if isinstance(target, SCORED_TYPES + (nn.MultiheadAttention,)) and not out else others)
            if name not in bucket:
                bucket.append(name)
            if out and isinstance(target, nn.MultiheadAttention) and f"{name}.out_proj" in by_name:
                members.append(f"{name}.out_proj")  # shrinks with the attention's embedding
        order = list(by_name)
        for bucket in (members, consumers, others):
            bucket.sort(key=lambda name: order.index(name) if name in by_name else len(order))
        root, tp_group = _reroot(graph, tp_group, members, by_name)
        groups.append(Group(names[root], root, tp_group, len(tp_group[0].idxs), _blocks(graph, tp_group),
                            members, consumers, others))
        _check_supported(graph, tp_group, names, names[root])
    order = list(by_name)
    return sorted(groups, key=lambda group: order.index(group.leader))


def coupled_groups(module: nn.Module, example_input: torch.Tensor, ignore: list[str] | None = None) -> list[dict]:
    """Channel dependency groups as dicts {leader, members, channels, consumers, coupled, blocks}.

    ``ignore`` names layers whose groups are left out; None means the final classifier.
    """
    if ignore is None:
        ignore = [name for name in [final_classifier(module, example_input)] if name]
    return [group.as_dict() for group in dependency_groups(module, build_graph(module, example_input), ignore)]


# ---- score ---------------------------------------------------------------------------------------

def group_scores(group: Group, graph, name: str, evidence: dict, names: dict) -> torch.Tensor:
    """One score per channel of ``group``: the criterion summed over its Conv/Linear members (or BatchNorms)."""
    criterion = criteria.criterion(name)
    total = torch.zeros(group.channels, dtype=torch.float64)
    scored = False
    for item in group.items:
        target, out = item.dep.target.module, graph.is_out_channel_pruning_fn(item.dep.handler)
        if not out or any(index is None for index in item.root_idxs):
            continue
        if name == "bn_scale":
            if not isinstance(target, nn.modules.batchnorm._BatchNorm) or target.weight is None:
                continue
            scores = criterion.channel_score(None, criteria.Evidence(bn_weight=target.weight.detach()))
        elif isinstance(target, SCORED_TYPES) and names.get(target) in evidence:
            scores = criterion.channel_score(target.weight.detach(), evidence[names[target]])
        else:
            continue
        total.scatter_add_(0, torch.tensor(item.root_idxs), scores[item.idxs].double())
        scored = True
    if not scored:
        raise PrunelabError(f"criterion '{name}' finds no Conv or Linear layer to score in the group "
                            f"led by '{group.leader}'")
    return total


def _scores_or_fallback(group: Group, graph, name: str, evidence: dict, names: dict, notes: list) -> torch.Tensor:
    """Group scores; bn_scale falls back to l2 (with a note) where no BatchNorm follows the group."""
    has_norm = any(isinstance(item.dep.target.module, nn.modules.batchnorm._BatchNorm) for item in group.items)
    if name == "bn_scale" and not has_norm:
        notes.append(f"bn_scale: no BatchNorm in the group led by '{group.leader}', ranked by l2 instead")
        name = "l2"
    return group_scores(group, graph, name, evidence, names)


# ---- select --------------------------------------------------------------------------------------

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


def _segments(group: Group, graph) -> list[list[int]]:
    """Root channel indices of every module whose output channels the group cuts."""
    return [list(item.root_idxs) for item in group.items
            if graph.is_out_channel_pruning_fn(item.dep.handler) and isinstance(item.dep.target.module, nn.Module)
            and not any(index is None for index in item.root_idxs)]


def _global_sparsities(groups: list[Group], scores: dict, sparsity: float) -> dict[str, float]:
    """Per-group sparsity from one ranking of mean-normalized scores over all groups."""
    if not groups:
        return {}
    normalized = [scores[group.leader] / scores[group.leader].mean().clamp_min(1e-12) for group in groups]
    flat = torch.cat(normalized)
    count = int(round(sparsity * len(flat)))
    if count == 0:
        return {group.leader: 0.0 for group in groups}
    threshold = torch.kthvalue(flat, count).values
    return {group.leader: float((values <= threshold).sum()) / group.channels
            for group, values in zip(groups, normalized)}


# ---- apply ---------------------------------------------------------------------------------------

def _out_channels(module: nn.Module) -> int | None:
    for attribute in ("out_channels", "out_features", "embed_dim"):
        if hasattr(module, attribute):
            return getattr(module, attribute)
    return None


def _group_targets(job, groups: list[Group], scores: dict) -> dict[str, float]:
    targets = job.plan.layer_targets
    chosen = {}
    for group in groups:
        named = [name for name in [group.leader, *group.members] if name in targets]
        chosen[group.leader] = targets[named[0]] if named else None
        if len({targets[name] for name in named}) > 1:
            job.notes.append(f"coupled layers {', '.join(named)} have different targets; the group led by "
                             f"'{group.leader}' uses {targets[named[0]]} ('{named[0]}')")
    grouped = {name for group in groups for name in group.members}
    for name in sorted(set(targets) - grouped):
        job.notes.append(f"target for '{name}' not applied: its output channels are not in a prunable group")
    if job.plan.scope == "global":
        ranked = [group for group in groups if chosen[group.leader] is None]
        chosen.update(_global_sparsities(ranked, scores, job.plan.sparsity))
    return {leader: job.plan.sparsity if value is None else value for leader, value in chosen.items()}


def prune_channels(job):
    """Physically remove channels of ``job.module`` as ``job.plan`` says; returns a PruneResult."""
    module, plan = job.module, job.plan
    dense_output = _run(module, job.example_input)
    before = {layer.name: _out_channels(layer.module) for layer in job.layers}
    graph = build_graph(module, job.example_input)
    names = _module_names(module, graph)
    included = {layer.name for layer in job.layers}
    groups = [group for group in dependency_groups(module, graph, job.ignored)
              if included & set(group.members)]
    evidence = criteria.gather_evidence(module, job.layers, plan.criterion, job.data, plan.seed)
    notes = job.notes
    scores = {group.leader: _scores_or_fallback(group, graph, plan.criterion, evidence, names, notes)
              for group in groups}
    targets = _group_targets(job, groups, scores)
    report = []
    for group in groups:
        kept = kept_channels(group.channels, targets[group.leader], plan.round_to, group.blocks)
        pruned = select_channels(scores[group.leader], kept, group.blocks, _segments(group, graph))
        if pruned:
            graph.get_pruning_group(group.root, group.items[0].dep.handler, pruned).prune()
        report.append({**group.as_dict(), "target": targets[group.leader], "kept": kept, "pruned": pruned})
    _check_output(module, job.example_input, dense_output)
    result = PruneResult(module, plan, masks=None, groups=report, notes=notes)
    result.layer_sparsity = {layer.name: 1.0 - _out_channels(layer.module) / before[layer.name]
                             for layer in job.layers if before[layer.name]}
    untouched = sorted(included - {name for group in groups for name in group.members})
    if untouched:
        result.notes.append("left dense (coupled with an ignored layer, or outside the traced graph): "
                            + ", ".join(untouched))
    return result


def _run(module: nn.Module, example_input: torch.Tensor):
    with torch.no_grad():
        return module(example_input)


def _check_output(module: nn.Module, example_input: torch.Tensor, dense_output) -> None:
    try:
        output = _run(module, example_input)
    except Exception as error:
        raise PrunelabError(f"the channel-pruned model fails to run ({error_line(error, with_type=True)}); "
                            "ignore the layers involved or use unstructured pruning") from None
    shape = lambda value: tuple(value.shape) if isinstance(value, torch.Tensor) else None  # noqa: E731
    if shape(output) != shape(dense_output):
        raise PrunelabError(f"channel pruning changed the model's output shape from {shape(dense_output)} "
                            f"to {shape(output)}; add the final layer to the plan's ignore list")
