"""Layer by layer: prune a model stage by stage, each stage's calibration inputs taken from the
already-pruned stages before it (the way SparseGPT and Wanda run).

A stage is one repeated block of a transformer (every layer in it is observed on the same pass,
then pruned) or one layer outside such blocks. A block's inputs come from the previous block's
pruned output when the model chains its blocks directly (checked once on the dense model);
otherwise, and for every other stage, from a forward pass of the whole model that stops where
the stage begins. Memory stays at one block's inputs and one Hessian per layer of the stage.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from core.hooks import Stop, forward_each
from core.inspect import Layer
from core.prune import layer_inputs

Inputs = list[tuple[tuple, dict]]  # per calibration batch: (positional arguments, keyword arguments)


class Observer:
    """What one layer's calibration inputs say: per part, ``X^T X`` summed over every input row."""

    def __init__(self, layer: Layer):
        self.layer = layer
        self.sums: list[torch.Tensor] | None = None  # (columns, columns) per part; None until an input arrives
        self.samples = 0

    def add(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        matrices = layer_inputs.adapter(self.layer).inputs(module, args, kwargs)
        if self.sums is None:
            self.sums = [torch.zeros(matrix.shape[1], matrix.shape[1]) for matrix in matrices]
        for total, matrix in zip(self.sums, matrices):
            matrix = matrix.detach().float()
            total.addmm_(matrix.T, matrix)                           # (columns, columns)
        self.samples += len(matrices[0])

    def hook(self):
        return self.layer.module.register_forward_pre_hook(
            lambda module, args, kwargs: self.add(module, args, kwargs), with_kwargs=True)


@dataclass
class Stage:
    """Layers pruned together: ``module`` runs on their recorded inputs (a block, or the layer itself)."""

    module: nn.Module
    layers: list[Layer]
    block: tuple[str, int] | None = None   # (name of the block list, index) for a transformer block
    inputs: Inputs = field(default_factory=list)


def repeated_blocks(module: nn.Module, layers: list[Layer]) -> tuple[str, list[nn.Module]] | None:
    """The ModuleList of like blocks holding the most of ``layers`` (a transformer's layers), or None."""
    best, best_count = None, 0
    for name, child in module.named_modules():
        if not isinstance(child, nn.ModuleList) or len(child) < 2 or len({type(b) for b in child}) != 1:
            continue
        count = sum(1 for layer in layers if layer.name.startswith(f"{name}."))
        if count > best_count:
            best, best_count = (name, list(child)), count
    return best


def stages_of(module: nn.Module, layers: list[Layer]) -> list[Stage]:
    """``layers`` grouped into stages, in order: a block's layers together, any other layer alone."""
    found = repeated_blocks(module, layers)
    stages: list[Stage] = []
    for layer in layers:
        index = None
        if found and layer.name.startswith(f"{found[0]}."):
            index = int(layer.name[len(found[0]) + 1:].split(".")[0])
        if index is not None and stages and stages[-1].block == (found[0], index):
            stages[-1].layers.append(layer)
        elif index is not None:
            stages.append(Stage(found[1][index], [layer], (found[0], index)))
        else:
            stages.append(Stage(layer.module, [layer]))
    return stages


def record_inputs(model: nn.Module, target: nn.Module, batches: list[torch.Tensor]) -> Inputs:
    """The arguments ``target`` is called with on each batch, stopping the pass there."""
    recorded: Inputs = []

    def hook(child, args, kwargs):
        recorded.append((args, kwargs))
        raise Stop

    forward_each(model, batches, [target.register_forward_pre_hook(hook, with_kwargs=True)])
    return recorded


def first_output(output):
    """The hidden states a block hands on: its output, or the first item of a tuple."""
    return output[0] if isinstance(output, (tuple, list)) else output


def chain_inputs(outputs: list[torch.Tensor], following: Inputs) -> Inputs:
    """The next block's inputs: the previous block's outputs in place of its first argument."""
    return [((output, *args[1:]), kwargs) for output, (args, kwargs) in zip(outputs, following)]


def run(stage: Stage, observers: list[Observer]) -> None:
    """Run the stage's module on its inputs with the observers watching."""
    handles = [observer.hook() for observer in observers]
    try:
        for args, kwargs in stage.inputs:
            stage.module(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()


Solve = Callable[[Layer, Observer], torch.Tensor]  # prunes the layer in place, returns its keep-mask


class _Chain:
    """Every block's own arguments from one pass over the model, and whether outputs can be handed on.

    Blocks chain when each is called once per batch and the first included block's output is the
    next block's first argument (checked on the first batch). A Hugging Face model whose layers are
    all alike (no per-layer ``layer_types``) and whose first two included blocks get equal arguments
    besides the hidden states hands those same arguments to every later block, so the pass stops
    after the second block instead of running the whole stack once more (a third of SparseGPT's
    forward work on a 30-layer Llama)."""

    def __init__(self, model: nn.Module, blocks: list[nn.Module], first: int, batches: list[torch.Tensor]):
        last = len(blocks) - 1
        calls = _record(model, blocks, first, batches, min(first + 1, last))
        if first + 1 < last:
            if _uniform_layers(model) and _same_arguments(calls[first], calls[first + 1]):
                shared = [((None, *args[1:]), kwargs) for args, kwargs in calls[first + 1]]
                calls[first + 2:] = [list(shared) for _ in range(first + 2, last + 1)]
            else:
                calls = _record(model, blocks, first, batches, last)
        self.calls = calls
        self.valid = first + 1 < len(blocks) and all(len(call) == len(batches) for call in calls[first:])
        if self.valid:
            (args, kwargs), following = calls[first][0], calls[first + 1][0][0][0]
            output = first_output(blocks[first](*args, **kwargs))
            self.valid = (isinstance(output, torch.Tensor) and output.shape == following.shape
                          and torch.allclose(output, following, rtol=1e-4, atol=1e-5))


def _record(model: nn.Module, blocks: list[nn.Module], first: int, batches: list[torch.Tensor],
            stop: int) -> list[Inputs]:
    """Each block's arguments per batch from one pass stopping at block ``stop``; the hidden states are
    kept for blocks ``first`` and ``first + 1`` only (the chain check), the rest hold None there."""
    calls: list[Inputs] = [[] for _ in blocks]

    def hook_for(index: int):
        def hook(child, args, kwargs):
            kept = args if index in (first, first + 1) else (None, *args[1:])
            calls[index].append((kept, kwargs))
            if index == stop:  # the rest of the model (an LM's vocabulary projection) is not needed
                raise Stop
        return hook

    forward_each(model, batches,
                 [block.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, block in enumerate(blocks)])
    return calls


def _uniform_layers(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face model whose layers are all of one type (no alternating sliding and
    global attention, as Gemma 2's ``layer_types``): its layers then get the same arguments."""
    for child in model.modules():
        config = getattr(child, "config", None)
        if config is not None and hasattr(config, "to_dict") and hasattr(config, "num_hidden_layers"):
            return len(set(getattr(config, "layer_types", None) or ["all"])) == 1
    return False


def _same_arguments(one: Inputs, other: Inputs) -> bool:
    """Whether two blocks got equal arguments on every batch, their first (the hidden states) aside."""
    return len(one) == len(other) and all(
        _equal(a_args[1:], b_args[1:]) and _equal(a_kwargs, b_kwargs)
        for (a_args, a_kwargs), (b_args, b_kwargs) in zip(one, other))


def _equal(one, other) -> bool:
    if one is other:
        return True
    if isinstance(one, torch.Tensor) or isinstance(other, torch.Tensor):
        return (isinstance(one, torch.Tensor) and isinstance(other, torch.Tensor) and one.shape == other.shape
                and one.dtype == other.dtype and bool(torch.equal(one, other)))
    if isinstance(one, (tuple, list)) and isinstance(other, (tuple, list)):
        return len(one) == len(other) and all(_equal(a, b) for a, b in zip(one, other))
    if isinstance(one, dict) and isinstance(other, dict):
        return one.keys() == other.keys() and all(_equal(one[key], other[key]) for key in one)
    try:
        return bool(one == other)
    except Exception:  # objects without a meaningful comparison (a cache): assume they differ
        return False


class _NoCache:
    """Switch off key/value caches (Hugging Face ``config.use_cache``) while blocks run on recorded inputs."""

    def __init__(self, model: nn.Module):
        configs = [getattr(child, "config", None) for child in model.modules()]
        self.configs = [config for config in configs if hasattr(config, "use_cache")]
        self.saved = [config.use_cache for config in self.configs]

    def __enter__(self):
        for config in self.configs:
            config.use_cache = False

    def __exit__(self, *exc):
        for config, value in zip(self.configs, self.saved):
            config.use_cache = value


def _chains(stage: Stage, following: Stage | None, chain: _Chain | None) -> bool:
    """Whether ``following`` takes ``stage``'s outputs directly (the next block of a valid chain)."""
    return bool(chain is not None and chain.valid and stage.block and following is not None
                and following.block == (stage.block[0], stage.block[1] + 1))


def prune_layerwise(model: nn.Module, layers: list[Layer], batches: list[torch.Tensor],
                    solve: Solve) -> dict[str, torch.Tensor]:
    """Prune ``layers`` of ``model`` in place, stage by stage, with ``solve``; return their keep-masks.

    ``batches`` are the calibration inputs; ``solve`` sees each layer with the Hessian of its inputs.
    """
    stages = stages_of(model, layers)
    found = repeated_blocks(model, layers)
    masks: dict[str, torch.Tensor] = {}
    chain, outputs = None, None
    with torch.no_grad(), _NoCache(model):
        for position, stage in enumerate(stages):
            if stage.block and chain is None:
                chain = _Chain(model, found[1], stage.block[1], batches)
            if outputs is not None:
                stage.inputs = chain_inputs(outputs, chain.calls[stage.block[1]])
            else:
                stage.inputs = record_inputs(model, stage.module, batches)
            observers = [Observer(layer) for layer in stage.layers]
            run(stage, observers)
            for observer in observers:
                masks[observer.layer.name] = solve(observer.layer, observer)
            outputs = None
            if _chains(stage, stages[position + 1] if position + 1 < len(stages) else None, chain):
                outputs = [first_output(stage.module(*args, **kwargs)) for args, kwargs in stage.inputs]
            stage.inputs = []
    return masks
