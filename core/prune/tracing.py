"""Tracing a model's channel couplings with torch-pruning, bounded in time and memory.

``build_graph`` traces torch-pruning's DependencyGraph; ``traced_groups`` finds its groups layer by
layer, each search under a core.budget watchdog (torch-pruning's index propagation can loop on
strided slices), so a channel plan ends within
about a minute on any model. A layer whose search never ends stays dense, and ``too_large_note``
names it. core.prune.channel turns the groups found into prunelab's own Group values.
"""
from __future__ import annotations

import time
import traceback
import warnings
import weakref

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency import index_mapping
from torch_pruning.dependency.index_mapping import update_index_mapping

from core.budget import OverBudget, within
from core.errors import PrunelabError, error_line

ROOT_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
GROUP_SECONDS = 45  # finding the groups of a model stops here, so a channel plan ends within a minute
ROOT_SECONDS = (0.5, 3.0)  # one layer's coupling search: a first pass over every layer, then a retry
TRACE_BYTES = 2 * 2**30  # memory one layer's coupling search may add before it is abandoned


def build_graph(module: nn.Module, example_input: torch.Tensor):
    """torch-pruning's DependencyGraph of ``module`` traced on ``example_input``."""
    if example_input is None:
        raise PrunelabError("channel pruning needs an example input to trace the model")
    try:
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            return tp.DependencyGraph().build_dependency(module, example_inputs=example_input)
    except Exception as error:  # tracing of arbitrary user code: report, never crash
        where = failing_module(module, error)
        raise PrunelabError(f"the dependency graph cannot trace this model{where}: "
                            f"{error_line(error, with_type=True)}") from None


def failing_module(root: nn.Module, error: BaseException) -> str:
    """" in module 'name' (Class)" for the innermost module of ``root`` whose code ``error`` passed
    through (its traceback), or "" when none did (the tracer itself failed)."""
    names = {id(child): name for name, child in root.named_modules() if name}
    found = ""
    for frame, _ in traceback.walk_tb(error.__traceback__):
        owner = frame.f_locals.get("self")
        if id(owner) in names:
            found = f" in module '{names[id(owner)]}' ({type(owner).__name__})"
    return found


def module_names(module: nn.Module, graph) -> dict:
    names = {child: name for name, child in module.named_modules()}
    names.update(getattr(graph, "_param_to_name", {}))
    return names


def search_group(graph, root: nn.Module, seconds: float):
    """torch-pruning's group of every output channel of ``root``, or the budget that ran out."""
    pruner = graph.get_pruner_of_module(root)
    try:
        with within(seconds, TRACE_BYTES) as spent, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch-pruning's "Maximum recursive depth reached!"
            return graph.get_pruning_group(root, pruner.prune_out_channels,
                                           list(range(pruner.get_out_channels(root))))
    except OverBudget:
        return spent[0] if spent else f"{seconds:g} s"


# Graphs whose index mapping is current while their groups are searched. torch-pruning redoes the
# mapping of the whole graph before every group search, though nothing changes between searches
# (torchvision's swin_t: a 50% channel plan took 143.5 s with it and 74 s without, the same model out).
# Searches of these graphs skip it; every other graph (one being pruned, whose sizes do change) keeps
# torch-pruning's behaviour.
_MAPPED = weakref.WeakSet()


def _update_unless_mapped(graph) -> None:
    if graph not in _MAPPED:
        update_index_mapping(graph)


index_mapping.update_index_mapping = _update_unless_mapped  # get_pruning_group looks it up on the module


def _mapping_seconds(graph) -> float:
    """How long torch-pruning's index-mapping update takes on ``graph`` (it precedes every group search)."""
    started = time.monotonic()
    update_index_mapping(graph)
    return time.monotonic() - started


def traced_groups(graph, skipped: list, names: dict, too_large: list[str]):
    """torch-pruning's get_all_groups with every layer's search bounded in time and memory.

    Every root layer is searched once briefly; the slow ones are retried with a longer budget while
    GROUP_SECONDS last; each budget also covers the fixed cost torch-pruning pays before any search.
    A layer whose search never ends is appended to ``too_large`` (its channels stay) and the model's
    other groups are still found.
    """
    skipped = set(map(id, [*skipped, *graph.IGNORED_LAYERS_IN_TRACING]))
    roots = [module for module in graph.module2node if isinstance(module, ROOT_TYPES) and id(module) not in skipped
             and graph.get_pruner_of_module(module) is not None
             and graph.get_pruner_of_module(module).get_out_channels(module) is not None]
    overhead = _mapping_seconds(graph)  # once: the searches below reuse it (see _MAPPED)
    _MAPPED.add(graph)
    try:
        yield from _search_roots(graph, roots, names, too_large, overhead)
    finally:
        _MAPPED.discard(graph)


def _search_roots(graph, roots: list, names: dict, too_large: list[str], overhead: float):
    visited, deadline = set(), time.monotonic() + GROUP_SECONDS + overhead
    for seconds in ROOT_SECONDS:
        slow = []
        for root in roots:
            left = deadline - time.monotonic()
            if id(root) in visited:
                continue
            budget = min(seconds + 2 * overhead, left)
            found = search_group(graph, root, budget) if left > 0 else "the time for all layers"
            if isinstance(found, str):
                slow.append((root, found))
                continue
            visited.update(id(dep.target.module) for dep, _ in found if graph.is_out_channel_pruning_fn(dep.handler))
            yield found
        roots = [root for root, _ in slow]
    order = {id(root): index for index, root in enumerate(graph.model.modules())}
    too_large += [f"{names.get(root, '?')} (over {spent})" for root, spent in sorted(slow, key=lambda pair: order[
        id(pair[0])]) if id(root) not in visited]


def too_large_note(too_large: list[str]) -> str:
    """The one line naming the layers whose couplings could not be traced, and what to do about them."""
    return (f"left dense, their channel couplings too large to trace: {', '.join(too_large)}; add these layers "
            f"to the plan's ignore list to skip the search")
