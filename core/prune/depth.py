"""Depth pruning: score whole blocks, pick the ones a plan drops, and take them out of the model.

Score -> select -> apply, as for weights. ``BlockRanking`` is the one ranking of removable blocks,
cheapest to remove first, that a plan's ``depth`` share and the allocation's depth option
(core.search.spend) both read; its score follows the criterion (Criterion.block_score):
``block_influence`` (how much a block changes what flows through it: 1 - cosine between its input
and output on calibration data, ShortGPT's Block Influence) for every criterion but fisher, and
``block_fisher`` (the Fisher information of a gate on the block's residual branch under the model's
own predictions, core.prune.fisher) for fisher. ``blocks_to_drop`` turns a plan's ``drop`` list and
``depth`` share into names; ``skip_blocks`` and ``compact`` remove them physically, so the exported
graph has fewer nodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.errors import PrunelabError
from core.limits import brief
from core.prune import criteria, fisher
from core.prune.blocks import Block, find_blocks, hidden_state
from core.prune.calibration_items import calibration

INFLUENCE_ITEMS = 64
INFLUENCE_BATCH = 16


class SkipBlock(nn.Module):
    """What a removed block leaves: its skip path. Returns the hidden state it is given, in the shape
    of what the block returned (a tensor, or a tuple whose other items are None)."""

    def __init__(self, items: int = 1):
        super().__init__()
        self.items = items

    def forward(self, hidden_states, *args, **kwargs):
        if self.items == 1:
            return hidden_states
        return (hidden_states,) + (None,) * (self.items - 1)


def _calibration(data, example_input) -> torch.Tensor:
    if data is None:
        return example_input
    inputs = torch.from_numpy(np.ascontiguousarray(data.calibration(INFLUENCE_ITEMS)))
    return inputs if not inputs.is_floating_point() else inputs.float()


def _cosines(before: torch.Tensor, after: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Cosine per position along the feature axis: channels of a feature map (dim 1), else the last dim.
    ``positions`` (batch, tokens), True at real tokens: padding positions are left out when it fits."""
    dim = 1 if before.ndim == 4 else -1
    cosines = nn.functional.cosine_similarity(before.float(), after.float(), dim=dim)
    if positions is not None and cosines.shape == positions.shape:
        return cosines[positions]
    return cosines.flatten()


def _positions(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor | None:
    """(items, tokens) True at real tokens of token-id inputs of a model with a padding id, else None."""
    pad_id = getattr(module, "pad_id", None)
    if pad_id is None or inputs.is_floating_point() or inputs.ndim != 2:
        return None
    return inputs != pad_id


@torch.no_grad()
def block_influence(module: nn.Module, names: list[str], data=None, example_input=None) -> dict[str, float]:
    """Block influence of each named block: the mean over calibration positions of 1 - cos(input, output).

    A block that barely changes its input (influence near 0) is the cheapest to remove. ``data`` is a
    Dataset (its calibration inputs are used) or None (``example_input`` alone). Padding tokens (of a
    token model with a ``pad_id``, as its attention mask leaves them out) do not count. The module is unchanged.
    """
    inputs = _calibration(data, example_input)
    positions = _positions(module, inputs)
    batch_positions: list[torch.Tensor | None] = [None]
    sums = {name: [0.0, 0] for name in names}
    pending: dict[str, torch.Tensor] = {}

    def hooks_for(name: str):
        def before(child, args, kwargs):
            pending[name] = hidden_state(args) if args else hidden_state(kwargs.get("hidden_states"))

        def after(child, args, kwargs, output):
            cosines = _cosines(pending.pop(name), hidden_state(output), batch_positions[0])
            sums[name][0] += float((1.0 - cosines).sum())
            sums[name][1] += cosines.numel()
        return before, after

    handles = []
    for name in names:
        before, after = hooks_for(name)
        child = module.get_submodule(name)
        handles += [child.register_forward_pre_hook(before, with_kwargs=True),
                    child.register_forward_hook(after, with_kwargs=True)]
    try:
        for start in range(0, len(inputs), INFLUENCE_BATCH):
            batch_positions[0] = None if positions is None else positions[start:start + INFLUENCE_BATCH]
            module(inputs[start:start + INFLUENCE_BATCH])
    finally:
        for handle in handles:
            handle.remove()
    return {name: total / max(count, 1) for name, (total, count) in sums.items()}


def block_fisher(module: nn.Module, names: list[str], ranking: BlockRanking) -> dict[str, float]:
    """Fisher score of each named block: the mean over calibration items (and drawn targets) of the squared
    gradient of the item's log-likelihood with respect to a gate on the block's residual branch
    (core.prune.fisher.block_gradients), on the calibration items of ``ranking.data`` (core.prune.calibration_items).
    The module is unchanged.
    Raises PrunelabError without data, or for a block whose output is not a hidden state shaped like its input."""
    cal = calibration(ranking, "fisher")  # reads the ranking's data and pad_id, as a job's
    data_key = f"{ranking.data.digest}:{len(cal.inputs)}:{ranking.pad_id}"
    gradients = fisher.cached_block_gradients(module, names, cal.batches(), ranking.output_kind, ranking.seed,
                                              data_key)
    missing = [name for name in names if name not in gradients]
    if missing:
        raise PrunelabError(f"fisher cannot score block {brief(missing[0])}: its output is not a hidden state "
                            f"shaped like its input; rank blocks with another criterion")
    return {name: float(fisher.fisher(gradients[name]).sum()) for name in names}


@dataclass(frozen=True)
class BlockRanking:
    """The one ranking of removable blocks, cheapest to remove first: a plan's ``depth`` share and the
    allocation's depth option both read it, so both remove the same blocks for the same criterion.

    score: 'influence' (``block_influence``) or 'fisher' (``block_fisher``); ``for_criterion`` reads it
        from the criterion (Criterion.block_score).
    data: a Dataset whose calibration inputs score the blocks; None: ``example_input`` alone (influence only).
    output_kind: the model's output (ModelHandle.output_kind), which decides fisher's likelihood.
    pad_id: a token model's padding id (its positions are not calibration data), else None.
    seed: seeds the targets fisher draws.
    """

    score: str = "influence"
    data: object = None
    example_input: torch.Tensor | None = None
    output_kind: str = "logits"
    pad_id: int | None = None
    seed: int = 0

    @classmethod
    def for_criterion(cls, criterion: str, **inputs) -> BlockRanking:
        """The ranking ``criterion`` gives blocks, on ``inputs`` (the other fields)."""
        return cls(criteria.criterion(criterion).block_score, **inputs)

    @classmethod
    def for_handle(cls, handle, criterion: str, seed: int = 0) -> BlockRanking:
        """The ranking ``criterion`` gives the blocks of ``handle`` (a ModelHandle), on its data."""
        return cls.for_criterion(criterion, data=handle.data, example_input=handle.example_input(1),
                                 output_kind=handle.output_kind, pad_id=handle.padding_id,
                                 seed=seed)

    def scores(self, module: nn.Module, names: list[str]) -> dict[str, float]:
        """{block: score} of the named blocks; low goes first. Raises PrunelabError (see block_fisher)."""
        if self.score == "fisher":
            return block_fisher(module, names, self)
        return block_influence(module, names, self.data, self.example_input)

    def order(self, module: nn.Module, names: list[str]) -> tuple[list[str], dict[str, float]]:
        """The named blocks cheapest first (ties keep call order), and their scores."""
        scores = self.scores(module, names)
        return sorted(names, key=scores.__getitem__), scores


def depth_count(depth: float, removable: int) -> int:
    """How many of ``removable`` blocks a ``depth`` share removes: rounded to the nearest whole block
    (halves up), so 0.25 of 6 layers is 2 and 0.25 of 3 blocks is 1."""
    return min(removable, int(np.floor(depth * removable + 0.5)))


def check_drop(drop, blocks: list[Block]) -> None:
    """PrunelabError naming the first name in ``drop`` that is not a removable block of the model, with why."""
    known = {block.name: block for block in blocks}
    removable = [block.name for block in blocks if block.removable]
    for name in drop:
        block = known.get(name)
        if block is not None and not block.removable:
            raise PrunelabError(f"plan drops block {brief(name)}, which cannot be removed: {block.reason}")
        if block is None:
            raise PrunelabError(f"plan drops block {brief(name)}, which is not a removable block of the model "
                                f"(removable blocks: {', '.join(removable) or 'none'})")


def blocks_to_drop(module: nn.Module, drop, depth: float, ranking: BlockRanking,
                   blocks: list[Block] | None = None) -> tuple[list[str], dict]:
    """The blocks a plan removes: every name in ``drop``, then the other removable blocks that ``ranking``
    puts first until ``depth`` of them all are gone. Returns (names in call order, {block: score} when
    ``depth`` needed scores, else {}). ``blocks``: find_blocks' answer when the caller has it.
    Raises PrunelabError for a name that is not a removable block."""
    blocks = find_blocks(module, ranking.example_input) if blocks is None else blocks
    check_drop(drop, blocks)
    removable = [block.name for block in blocks if block.removable]
    chosen = set(drop)
    scores = {}
    extra = depth_count(depth, len(removable)) - len(chosen)
    if extra > 0:
        ranked, scores = ranking.order(module, removable)
        chosen.update([name for name in ranked if name not in chosen][:extra])
    return [name for name in removable if name in chosen], scores


def _renumber(container: nn.ModuleList | nn.Sequential, removed: list[int], length: int) -> None:
    """Keep layer counts consistent after deleting ``removed`` indices of a list of ``length`` layers:
    ``layer_idx`` of what stays (KV-cache slots), ``num_hidden_layers`` and ``layer_types`` of its config."""
    kept = [index for index in range(length) if index not in removed]
    for new_index, (layer, old_index) in enumerate(zip(container, kept)):
        for child in layer.modules():
            if getattr(child, "layer_idx", None) == old_index:
                child.layer_idx = new_index
    configs = {id(config): config for layer in container for child in layer.modules()
               if (config := getattr(child, "config", None)) is not None}
    for config in configs.values():
        if getattr(config, "num_hidden_layers", None) == length:
            config.num_hidden_layers = len(container)
            types = getattr(config, "layer_types", None)
            if isinstance(types, list) and len(types) == length:
                config.layer_types = [kind for index, kind in enumerate(types) if index not in removed]


def skip_blocks(module: nn.Module, names: list[str], outputs: dict[str, str]) -> None:
    """Replace each named block of ``module`` by a SkipBlock, in place; every other layer keeps its name,
    so a width plan written for the dense model still finds its layers. ``compact`` then takes them out.
    ``outputs``: {block: "tensor" | "tuple:N"}, how each block returns its hidden state."""
    kinds = outputs
    for name in names:
        parent_name, _, child = name.rpartition(".")
        output = kinds.get(name, "tensor")
        items = int(output.split(":")[1]) if output.startswith("tuple:") else 1
        setattr(module.get_submodule(parent_name), child, SkipBlock(items))


def compact(module: nn.Module, example_input=None) -> None:
    """Delete the SkipBlocks that sit in a ModuleList or Sequential (the loop over the list then runs fewer
    layers), renumbering ``layer_idx`` and the config's layer counts; SkipBlocks elsewhere stay, as the
    identity they are (the exporter leaves no node for them). With ``example_input``, a list the model
    needs at its full length (Ultralytics' C2f concatenates one output per entry) keeps its SkipBlocks
    when the model no longer runs without them."""
    for container in [child for child in module.modules() if isinstance(child, (nn.ModuleList, nn.Sequential))]:
        removed = [index for index, layer in enumerate(container) if isinstance(layer, SkipBlock)]
        if not removed:
            continue
        length, entries = len(container), dict(container._modules)
        for index in reversed(removed):
            del container[index]
        if example_input is not None and not _runs(module, example_input):
            container._modules.clear()
            container._modules.update(entries)  # the pass-throughs stay in place
            continue
        _renumber(container, removed, length)


def _runs(module: nn.Module, example_input) -> bool:
    try:
        with torch.no_grad():
            module(example_input)
    except Exception:  # any failure: the shorter list is not what the model expects
        return False
    return True


def block_table(module: nn.Module, example_input, data=None) -> list[dict]:
    """One row per block ``find_blocks`` names, in call order: ``{"name", "kind", "removable", "reason",
    "layers" (prunable layers inside), "params", "macs" (per item, attention matmuls included), "influence"
    (removable blocks, on ``data``'s calibration inputs or the example input)}``."""
    from core.inspect import module_macs, prunable_layers

    blocks = find_blocks(module, example_input)
    removable = [block.name for block in blocks if block.removable]
    influence = block_influence(module, removable, data, example_input) if removable else {}
    macs = module_macs(module, example_input, [block.name for block in blocks])
    layers = prunable_layers(module)
    rows = []
    for block in blocks:
        inside = [layer for layer in layers if layer.name.startswith(block.name + ".")]
        rows.append({"name": block.name, "kind": block.kind, "removable": block.removable, "reason": block.reason,
                     "layers": [layer.name for layer in inside],
                     "params": sum(p.numel() for p in module.get_submodule(block.name).parameters()),
                     "macs": macs[block.name],
                     "influence": influence.get(block.name)})
    return rows
