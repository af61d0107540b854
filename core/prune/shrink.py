"""Channel plans: a physically smaller model, and what every layer kept against its target.

Convolution and feed-forward channels are cut in coupling groups (core.prune.channel, torch-
pruning behind it); attention layers lose whole heads (core.prune.heads). The residual stream
that attention layers read keeps its width unless the plan says ``prune_width``. Everything is
scored and selected on the dense copy first, then removed, then the model is run once to check it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from core.errors import PrunelabError, error_line
from core.prune import channel, conv1d, criteria, heads, oneshot, select, tracing
from core.prune.resolved import resolve
from core.prune.result import PruneResult

ROUNDING_NOTED = 0.10  # a layer rounding moves further than this share of its channels is named in the notes


def _head_scores(attention: heads.Attention, name: str, evidence: dict, module: nn.Module) -> torch.Tensor:
    ranking = criteria.criterion(name)
    if "batchnorm" in ranking.needs:  # no BatchNorm follows an attention projection
        ranking = criteria.criterion(ranking.fallback)
    rows = {layer: ranking(module.get_submodule(layer).weight.detach(), evidence[layer], per="channel")
            for layer in attention.projections}
    return heads.head_scores(attention, rows)


def _targets(job, units: dict[str, list[str]], scores: dict, kinds: dict[str, str]) -> dict[str, float]:
    """Sparsity per unit group (a channel group or an attention layer), keyed by its leader.

    ``units`` maps each leader to the layers whose plan targets apply to it; ``kinds`` maps it to its
    unit ('head' or 'channel'). Global scope ranks every group without its own target at once; scores
    comparable between layers (criteria.Criterion.comparable) are ranked as they are, within each kind.
    """
    targets = job.plan.layer_targets
    chosen = {}
    for leader, layers in units.items():
        chosen[leader], named = job.resolved.group_target(leader, layers)
        if len({targets[name] for name in named}) > 1:
            job.notes.append(f"coupled layers {', '.join(named)} have different targets; the group led by "
                             f"'{leader}' uses {targets[named[0]]} ('{named[0]}')")
    grouped = {name for leader, layers in units.items() for name in [leader, *layers]}
    for name in sorted(set(targets) - grouped):
        job.notes.append(f"target for '{name}' not applied: its output channels are not in a prunable group")
    if job.plan.scope == "global":
        ranked = {leader: scores[leader] for leader, value in chosen.items() if value is None}
        if criteria.criterion(job.plan.criterion).comparable:
            for kind in set(kinds.values()):
                chosen.update(select.global_sparsities({leader: values for leader, values in ranked.items()
                                                        if kinds[leader] == kind}, job.plan.sparsity, normalize=False))
        else:
            chosen.update(select.global_sparsities(ranked, job.plan.sparsity))
    return {leader: job.plan.sparsity if value is None else value for leader, value in chosen.items()}


def _multihead_sizes(module: nn.Module) -> dict[nn.MultiheadAttention, int]:
    return {child: child.embed_dim // child.num_heads for child in module.modules()
            if isinstance(child, nn.MultiheadAttention)}


def _restore_head_sizes(sizes: dict[nn.MultiheadAttention, int]) -> None:
    """nn.MultiheadAttention lost whole heads: the head size stays, the head count follows the embedding."""
    for attention, size in sizes.items():
        attention.head_dim, attention.num_heads = size, attention.embed_dim // size


def _remove_groups(groups, graph, names, scores: dict, targets: dict, rounding, notes: list,
                   removed: dict[str, list[int]]) -> list[dict]:
    """Cut every channel group as chosen on the dense copy; one report entry per group. ``rounding``
    maps a group's channel count to the multiple it rounds to; ``removed`` collects the output channels
    each layer lost."""
    sizes, report = _multihead_sizes(graph.model), []
    for group in groups:
        pruned = channel.choose_channels(group, graph, names, scores[group.leader], targets[group.leader],
                                         rounding(group.channels))
        cut = channel.remove_channels(group, graph, pruned, names)
        if cut is None:
            notes.append(f"the group led by '{group.leader}' was left as it is: an earlier coupled group "
                         f"already changed it")
            pruned = []
        for name, idxs in (cut or {}).items():
            removed.setdefault(name, []).extend(idxs)
        report.append({**group.as_dict(), "target": targets[group.leader], "kept": group.channels - len(pruned),
                       "pruned": pruned})
    _restore_head_sizes(sizes)
    return report


def _remove_heads(module: nn.Module, attention, dropped: dict, targets: dict) -> list[dict]:
    """Remove the chosen heads of every attention layer; one report entry per layer (in key/value heads)."""
    report = []
    for unit in attention:
        entry = {"leader": unit.leader, "attention": unit.name, "members": list(unit.projections),
                 "unit": "head", "heads": unit.kv_heads, "target": targets[unit.leader],
                 "pruned_heads": dropped[unit.leader]}
        heads.remove_heads(module, unit, dropped[unit.leader])
        report.append({**entry, "kept_heads": unit.kv_heads})
    return report


def prune_structure(job) -> PruneResult:
    """Physically remove channels and attention heads of ``job.module`` as ``job.plan`` says."""
    module, plan, notes = job.module, job.plan, job.notes
    dense_output = _run(module, job.example_input)
    found = heads.find_attention(module, job.example_input)
    before = _units(module, job.layers, found)
    included = {layer.name for layer in job.layers}
    attention = [unit for unit in found if included.issuperset(unit.projections)]
    graph = tracing.build_graph(module, job.example_input)
    names = tracing.module_names(module, graph)
    groups, width = channel.dependency_groups(module, graph, job.ignored, found, keep_width=not plan.prune_width,
                                              notes=notes)
    groups = [group for group in groups if included & set(group.members)]
    evidence = criteria.gather_evidence(module, job.layers, plan.criterion, job.data, plan.seed)
    if "mask_gradients" in criteria.criterion(plan.criterion).needs:  # whole units at once (core.prune.oneshot)
        scores = oneshot.unit_fisher(job, groups, attention, graph, names, evidence)
    else:
        scores = {group.leader: channel.scores_or_fallback(group, graph, plan.criterion, evidence, names, notes)
                  for group in groups}
        scores.update({unit.leader: _head_scores(unit, plan.criterion, evidence, module) for unit in attention})
    units = {group.leader: group.members for group in groups}
    units.update({unit.leader: list(unit.projections) for unit in attention})
    kinds = {**dict.fromkeys(units, "channel"), **{unit.leader: "head" for unit in attention}}
    targets = _targets(job, units, scores, kinds)
    dropped = {unit.leader: heads.select_heads(scores[unit.leader], heads.kept_heads(unit, targets[unit.leader]))
               for unit in attention}
    reconstruction = _reconstruction(job, groups, attention, graph, names)
    if criteria.LAYER_INPUTS in criteria.criterion(plan.criterion).needs:  # each layer chooses (core.prune.obs)
        scores = oneshot.surgery(job, groups, attention, graph, names, scores, targets, dropped)
    removed: dict[str, list[int]] = {}
    report = _remove_groups(groups, graph, names, scores, targets, job.resolved.rounding, notes, removed)
    report += _remove_heads(module, attention, dropped, targets)
    refit = reconstruction.refit(module, removed) if reconstruction is not None else None
    if refit:
        notes.append(refit)
    _check_output(module, job.example_input, dense_output, plan.prune_width)
    result = PruneResult(module, plan, masks=None, groups=report, notes=notes)
    after = _units(module, job.layers, found)
    result.layer_sparsity = {name: 1.0 - after[name][1] / count for name, (_, count) in before.items() if count}
    result.kept = kept_table(before, after, _layer_targets(units, targets), _dense_reasons(job, units, width))
    _explain(result, included, units, width, _slack(groups, attention, job.resolved.rounding), job.resolved)
    if groups:
        result.notes.append(job.resolved.rounding_note)
    return result


def _reconstruction(job, groups, attention, graph, names) -> oneshot.Reconstruction | None:
    """The dense outputs reconstruction needs, when the plan asks for it and the data is real."""
    if not job.plan.reconstruct or job.data is None or job.data.synthetic:
        return None
    consumers = oneshot.consumers_of(groups, attention, graph, names, job.module)
    return oneshot.Reconstruction(job, consumers) if consumers else None


def _units(module: nn.Module, layers, attention) -> dict[str, tuple[str, int]]:
    """{layer: (unit, count)}: heads for attention projections, output channels for the rest."""
    counts = {}
    for unit in attention:
        for name in unit.projections:
            counts[name] = ("head", unit.heads)
    for layer in layers:
        if layer.name in counts:
            continue
        child = module.get_submodule(layer.name)
        counts[layer.name] = (("head", child.num_heads) if isinstance(child, nn.MultiheadAttention)
                              else ("channel", channel.out_channels(child)))
    return counts


def _layer_targets(units: dict[str, list[str]], targets: dict[str, float]) -> dict[str, float]:
    """The target each layer in a unit group (channel group or attention layer) was pruned to."""
    return {layer: targets[leader] for leader, layers in units.items() for layer in [leader, *layers]}


def _dense_reasons(job, units: dict[str, list[str]], width: list[str]) -> dict[str, str]:
    """Why each included layer outside every unit group kept all its channels."""
    grouped = {name for leader, layers in units.items() for name in [leader, *layers]}
    return {layer.name: "kept at full width" if layer.name in width else "left dense"
            for layer in job.layers if layer.name not in grouped}


def _slack(groups, attention, rounding) -> dict[str, int]:
    """How far rounding may move each layer's kept count from its target: the group's rounding unit
    (round_to and equal blocks) for channels, the query heads sharing one key/value head for heads."""
    slack = {}
    for group in groups:
        multiple = rounding(group.channels)
        unit = multiple * group.blocks // math.gcd(multiple, group.blocks)
        slack.update(dict.fromkeys(group.members, unit))
    for unit in attention:
        slack.update(dict.fromkeys(unit.projections, unit.heads // unit.kv_heads))
    return slack


def kept_table(before: dict, after: dict, targets: dict[str, float], dense: dict[str, str]) -> dict[str, dict]:
    """{layer: {unit, total, target, target_kept, kept}} for every included layer; a layer outside
    every unit group has target 0 and ``dense`` saying why (``dense`` maps layer -> reason)."""
    table = {}
    for name, (unit, total) in before.items():
        if not total:
            continue
        target = targets.get(name, 0.0)
        table[name] = {"unit": unit, "total": total, "target": target,
                       "target_kept": select.kept_of(total, target), "kept": after[name][1]}
        if name in dense:
            table[name]["dense"] = dense[name]
    return table


def _explain(result: PruneResult, included: set, units: dict, width: list[str], slack: dict[str, int],
             resolved) -> None:
    """Notes: layers kept at full width, layers left dense, every target that could not be met, and
    the layers Round kept channels moved far from their targets (a small layer rounds coarsely)."""
    grouped = {name for leader, layers in units.items() for name in [leader, *layers]}
    kept_width = [name for name in width if name in included]
    if kept_width:
        result.notes.append("kept at full width (the residual stream attention layers read, with every "
                            "nn.MultiheadAttention, whose heads span that width; set prune_width: true to prune "
                            f"it): {', '.join(kept_width)}")
    untouched = sorted(included - grouped - set(kept_width))
    if untouched:
        result.notes.append("left dense (coupled with an ignored layer, or outside the traced graph): "
                            + ", ".join(untouched))
    missed = [f"{name} kept {row['kept']}/{row['total']} {row['unit']}s (target {row['target_kept']})"
              for name, row in result.kept.items() if name in slack
              and abs(row["kept"] - row["target_kept"]) > max(slack[name], 1)]
    if missed:
        result.notes.append("targets not met (coupled layers, rounding or at least one channel kept): "
                            + "; ".join(missed))
    rounded = [f"{name} kept {row['kept']}/{row['total']} (target {row['target_kept']})"
               for name, row in result.kept.items() if name in slack and row["unit"] == "channel"
               and ROUNDING_NOTED * row["total"] < abs(row["kept"] - row["target_kept"]) <= slack[name]]
    if rounded:
        how = "round_to: auto" if resolved.auto_rounding else "round_to"
        result.notes.append(f"rounding to multiples of {resolved.round_to} channels ({how}) moved these "
                            f"layers more than {ROUNDING_NOTED:.0%} of their channels from the target: "
                            + "; ".join(rounded))


def _run(module: nn.Module, example_input):
    with torch.no_grad():
        return module(example_input)


def _check_output(module: nn.Module, example_input, dense_output, width: bool = False) -> None:
    try:
        output = _run(module, example_input)
    except Exception as error:
        advice = "set prune_width: false, " if width else ""
        raise PrunelabError(f"the channel-pruned model fails to run ({error_line(error, with_type=True)}); "
                            f"{advice}ignore the layers involved or use unstructured pruning") from None
    shape = lambda value: tuple(value.shape) if isinstance(value, torch.Tensor) else None  # noqa: E731
    if shape(output) != shape(dense_output):
        raise PrunelabError(f"channel pruning changed the model's output shape from {shape(dense_output)} "
                            f"to {shape(output)}; add the final layer to the plan's ignore list")


def check_structure(module: nn.Module, plan, example_input) -> None:
    """Raise, within seconds and before anything is exported or measured, the PrunelabError a channel
    plan would meet: one message listing every coupling it cannot restructure. No-op for other plans."""
    if plan.granularity != "channel" or example_input is None:
        return
    ignored = list(resolve(plan, module, example_input).ignored)
    with conv1d.as_linear(module):
        found = heads.find_attention(module, example_input)
        channel.dependency_groups(module, tracing.build_graph(module, example_input), ignored, found,
                                  keep_width=not plan.prune_width)
