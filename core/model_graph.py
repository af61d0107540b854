"""The model as a directed graph of its prunable layers: which layer's output feeds which layer.

The data flow comes from torch-pruning's trace of the model (the autograd graph of one forward
pass, through additions, concatenations and reshapes), reduced to the prunable layers: an edge
a -> b means b reads what a wrote, perhaps through operations without weights. Each layer carries
its coupled channel group (layers whose output channels must shrink together). Models with more
layers than ``max_nodes`` have their repeated blocks (``encoder.layer.0`` ... ``encoder.layer.11``)
folded into one node each, so the picture stays readable. A model the trace cannot follow falls
back to the order in which its layers run.
"""
from __future__ import annotations

import re
from collections import defaultdict

import torch
from torch import nn

from core.errors import PrunelabError
from core.hooks import forward_once
from core.inspect import layer_macs, prunable_layers

MAX_NODES = 48
_BLOCK = re.compile(r"^(?P<stem>.*?\.)(?P<index>\d+)(?:\.|$)")


def _traced_edges(module: nn.Module, example_input: torch.Tensor, names: dict) -> tuple[list, object]:
    """Edges between prunable layers from torch-pruning's graph (walking through weightless operations)."""
    from core.prune.tracing import build_graph

    graph = build_graph(module, example_input)
    edges = []
    for target, node in graph.module2node.items():
        if target not in names:
            continue
        seen, frontier = set(), list(node.outputs)
        while frontier:
            current = frontier.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if current.module in names:
                edges.append((names[target], names[current.module]))
            else:
                frontier.extend(current.outputs)
    return sorted(set(edges)), graph


def _call_order(module: nn.Module, example_input: torch.Tensor, names: dict) -> list[tuple[str, str]]:
    """Edges of a chain in the order the layers run (when the trace cannot follow the model)."""
    order: list[str] = []
    hooks = [child.register_forward_hook(lambda layer, args, output: order.append(names[layer]))
             for child in names]
    forward_once(module, example_input, hooks)
    ran = list(dict.fromkeys(order))
    return list(zip(ran, ran[1:]))


def _groups(module: nn.Module, example_input) -> dict[str, int]:
    """Layer name -> index of the unit a channel plan prunes it with (coupled channels or attention heads)."""
    from core.prune.channel import coupled_groups

    try:
        groups = coupled_groups(module, example_input)
    except PrunelabError:  # a model channel pruning cannot restructure still has a graph
        return {}
    return {name: index for index, group in enumerate(groups) for name in group["members"]}


def _depths(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Longest path from a source for every node (a layered drawing: data flows left to right)."""
    incoming, outgoing = defaultdict(list), defaultdict(list)
    for source, target in edges:
        incoming[target].append(source)
        outgoing[source].append(target)
    depth = {name: 0 for name in nodes}
    remaining = {name: len(incoming[name]) for name in nodes}
    ready = [name for name in nodes if remaining[name] == 0]
    while ready:
        current = ready.pop(0)
        for target in outgoing[current]:
            depth[target] = max(depth[target], depth[current] + 1)
            remaining[target] -= 1
            if remaining[target] == 0:
                ready.append(target)
    return depth


def _reduced(edges: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Edges without those implied by a longer path (a folded residual stream reads as one chain)."""
    outgoing = defaultdict(set)
    for source, target in edges:
        outgoing[source].add(target)

    def reachable(start: str, skip: str) -> set[str]:
        seen, frontier = set(), [node for node in outgoing[start] if node != skip]
        while frontier:
            current = frontier.pop()
            if current not in seen:
                seen.add(current)
                frontier.extend(outgoing[current])
        return seen

    return [(source, target) for source, target in edges if target not in reachable(source, target)]


def _block_of(name: str, stems: set[str]) -> str:
    found = _BLOCK.match(name)
    while found:
        if found["stem"] in stems:
            return f"{found['stem']}{found['index']}"
        found = _BLOCK.match(name, found.end())
    return name


def _repeated_stems(names: list[str]) -> set[str]:
    """Name stems ('encoder.layer.') followed by at least three numbered blocks of several layers."""
    blocks = defaultdict(lambda: defaultdict(int))
    for name in names:
        position = 0
        while (found := _BLOCK.match(name, position)) is not None:
            blocks[name[:found.start("index")]][found["index"]] += 1
            position = found.end()
    return {stem for stem, indices in blocks.items() if len(indices) >= 3 and max(indices.values()) >= 2}


def layer_graph(module: nn.Module, example_input: torch.Tensor, max_nodes: int = MAX_NODES) -> dict:
    """The prunable layers of ``module`` as a directed graph, as plain values.

    Returns ``{"nodes": [{"id", "layers", "kind", "params", "macs", "group", "depth"}], "edges":
    [[source id, target id]], "traced": "data flow" | "call order", "collapsed": bool}``. A node
    is one layer, or one folded block whose ``layers`` lists the layers inside; ``group`` is the
    coupled channel group's index (-1 for none, several groups in a folded block give the first).
    """
    layers = prunable_layers(module)
    names = {layer.module: layer.name for layer in layers}
    try:
        edges, graph = _traced_edges(module, example_input, names)
        traced = "data flow"
    except PrunelabError:
        edges, graph, traced = _call_order(module, example_input, names), None, "call order"
    groups = _groups(module, example_input) if graph is not None else {}
    macs = layer_macs(module, example_input)
    order = [layer.name for layer in layers]
    stems = _repeated_stems(order) if len(order) > max_nodes else set()
    node_of = {name: _block_of(name, stems) for name in order}
    nodes: dict[str, dict] = {}
    for layer in layers:
        node = nodes.setdefault(node_of[layer.name], {"id": node_of[layer.name], "layers": [], "kind": layer.kind,
                                                      "params": 0, "macs": 0, "group": -1})
        node["layers"].append(layer.name)
        node["params"] += int(layer.weight.numel())
        node["macs"] += int(macs.get(layer.name) or 0)
        if node["group"] < 0:
            node["group"] = groups.get(layer.name, -1)
    folded = sorted({(node_of[source], node_of[target]) for source, target in edges
                     if node_of[source] != node_of[target]})
    if stems:
        folded = _reduced(folded)
    depth = _depths(list(nodes), folded)
    for node in nodes.values():
        node["depth"] = depth[node["id"]]
        if len(node["layers"]) > 1:
            node["kind"] = f"block of {len(node['layers'])} layers"
    return {"nodes": list(nodes.values()), "edges": [list(edge) for edge in folded], "traced": traced,
            "collapsed": bool(stems)}
