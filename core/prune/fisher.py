"""Fisher importance of whole units (channels, feed-forward neurons, attention heads, blocks) from mask gradients.

Removing a unit is multiplying it by a mask that goes from 1 to 0. The loss change of that step
is, to second order, ``0.5 * F`` where ``F`` is the Fisher information of the mask: the mean
over calibration items of the squared gradient of the item's log-likelihood with respect to
the mask (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers"). The
first-order term is useless here: at the dense model the gradient of any distance to the dense
output is zero. The Fisher is not, and it needs no labels: the likelihood is the model's own
predictive distribution, with targets drawn from it.

- logits (classifiers): targets sampled from ``softmax(output)``; with labels (a labelled
  calibration split) the labels are used instead (the empirical Fisher).
- embeddings, a causal language model's next-token logits and any other output: a Gaussian
  around the output, so a draw is ``output + noise`` and the gradient is ``J^T noise``; its mean
  square is ``J^T J``, the second-order term of the squared distance to the dense output (a
  random-projection estimate of it). On tinylm the Gaussian ranked best of three likelihoods:
  test perplexity of fisher's 50% channel plan 137.8 (global scope 113.7), and its cheapest block
  is the one whose removal costs least (112.6); next tokens drawn from the model's softmax gave
  143.6 (116.0) and the second cheapest block (115.7), the text's own next tokens 138.0 (118.6)
  and that same block.

A unit's mask sits where a layer reads it: the input columns of the consumer layer (the Linear
or Conv that reads a channel group, the output projection that reads attention heads). One pass
per batch collects every consumer's per-item gradients at once: each consumer's input is
multiplied by a ones tensor with one entry per (item, input column); its gradient is the per-item
mask gradient. Units spanning several columns (a head, a channel read by several layers, a
channel after a flatten) add their columns' gradients per item before squaring, which is the
gradient of one shared mask.

A removable block's gate sits on its residual branch (``block_gradients``): the block returns
``input + m * (output - input)``, so m = 0 is the block removed (its skip path) and the gate's
Fisher is the block's score, in the same units as a unit's.

The per-item gradients depend only on the model's weights, the calibration items and the
consumers, not on the targets: ``cached_mask_gradients`` keeps the last few sets in memory, so a
sweep or a slider move over the same model reads them instead of running backward passes again.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from core.cache import MemoryLRU
from core.prune.blocks import hidden_state

DRAWS = 2  # targets drawn per item (one with labels: they do not change between draws)
CONSUMER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def model_loss(output: torch.Tensor, labels: torch.Tensor | None, kind: str,
               generator: torch.Generator) -> torch.Tensor:
    """The summed negative log-likelihood of targets drawn from the model's own prediction (see module doc).

    kind: 'logits' (class scores in the last dimension) or any other (an embedding, and a causal language
        model's logits, which prunelab's wrapper flattens to (items, positions * vocabulary): the Gaussian).
    labels: used instead of drawn targets for logits shaped (items, classes).
    """
    if kind == "logits" and output.ndim >= 2:
        logits = output.reshape(-1, output.shape[-1]).float()                  # (items * positions, classes)
        if labels is not None and output.ndim == 2:
            targets = labels
        else:
            probabilities = torch.softmax(logits.detach(), dim=-1)
            targets = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
        return nn.functional.cross_entropy(logits, targets, reduction="sum")
    noise = torch.randn(output.shape, generator=generator, dtype=output.dtype)
    return (output * noise).sum()


def _mask_shape(layer: nn.Module, value: torch.Tensor, items: int) -> tuple[int, ...] | None:
    """Shape of a per-(item, input column) ones mask for ``layer``'s input ``value``; None when the
    first dimension is not the batch."""
    if value.ndim < 2 or value.shape[0] != items:
        return None
    if isinstance(layer, nn.Linear):
        return (items,) + (1,) * (value.ndim - 2) + (value.shape[-1],)
    return (items, value.shape[1]) + (1,) * (value.ndim - 2)


class _Gates:
    """The ones masks one forward pass multiplies in, per gated name, for a batch of ``items``."""

    def __init__(self):
        self.items = 0
        self.masks: dict[str, list[torch.Tensor]] = {}

    def new(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        mask = torch.ones(shape, requires_grad=True)
        self.masks.setdefault(name, []).append(mask)
        return mask


def _gated_gradients(module: nn.Module, gates: _Gates, batches: list[tuple[torch.Tensor, torch.Tensor | None]],
                     kind: str, seed: int, draws: int) -> dict[str, torch.Tensor]:
    """Per-item gradients of the loss with respect to every mask the installed hooks put in ``gates``:
    {name: (items * draws, mask entries per item)}, the entries of one name's several masks added."""
    generator = torch.Generator().manual_seed(seed)
    draws = 1 if batches and batches[0][1] is not None and kind == "logits" else draws
    collected: dict[str, list[torch.Tensor]] = {}
    with torch.enable_grad():
        for batch, batch_labels in batches:
            gates.items = len(batch)
            gates.masks.clear()
            output = module(batch)
            output = output[0] if isinstance(output, (tuple, list)) else output
            names = list(gates.masks)
            leaves = [mask for name in names for mask in gates.masks[name]]
            for draw in range(draws):
                loss = model_loss(output, batch_labels, kind, generator)
                grads = torch.autograd.grad(loss, leaves, retain_graph=draw < draws - 1, allow_unused=True)
                position = 0
                for name in names:
                    parts = grads[position:position + len(gates.masks[name])]
                    position += len(gates.masks[name])
                    total = sum(part.reshape(len(batch), -1) for part in parts if part is not None)
                    if isinstance(total, torch.Tensor):
                        collected.setdefault(name, []).append(total.detach())
    return {name: torch.cat(parts).double() for name, parts in collected.items()}


def mask_gradients(module: nn.Module, consumers: dict[str, nn.Module],
                   batches: list[tuple[torch.Tensor, torch.Tensor | None]], kind: str, seed: int = 0,
                   draws: int = DRAWS) -> dict[str, torch.Tensor]:
    """Per-item gradients of the loss with respect to a mask on every input column of each consumer.

    consumers: layer name -> the Linear/Conv module whose input columns carry units.
    batches: (inputs, labels or None) pairs of calibration items.
    Returns {name: (items * draws, input columns)}; a consumer the forward pass never reached
    (or reached with an input that has no batch dimension) is missing. ``module`` is not changed.
    """
    gates = _Gates()

    def hook_for(name: str):
        def hook(layer, args):
            shape = _mask_shape(layer, args[0], gates.items)
            return None if shape is None else (args[0] * gates.new(name, shape), *args[1:])
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in consumers.items()]
    try:
        return _gated_gradients(module, gates, batches, kind, seed, draws)
    finally:
        for handle in handles:
            handle.remove()


def _gated_output(output, before: torch.Tensor, gate: Callable[[tuple[int, ...]], torch.Tensor]):
    """A block's ``output`` with its hidden state ``after`` replaced by ``before + m * (after - before)``;
    None (output unchanged) when the hidden state is not a batch of ``before``'s shape."""
    after = hidden_state(output)
    if after is None or before is None or after.shape != before.shape or not isinstance(output, (torch.Tensor, tuple)):
        return None
    mask = gate((after.shape[0],) + (1,) * (after.ndim - 1))                 # (items, 1, ...): one gate per item
    gated = before + mask * (after - before)
    if isinstance(output, torch.Tensor):
        return gated
    return (gated, *output[1:]) if output and output[0] is after else None


def block_gradients(module: nn.Module, blocks: list[str], batches: list[tuple[torch.Tensor, torch.Tensor | None]],
                    kind: str, seed: int = 0, draws: int = DRAWS) -> dict[str, torch.Tensor]:
    """Per-item gradients of the loss with respect to a gate on each named block's residual branch.

    A gated block returns ``input + m * (output - input)`` (m = 1: the dense model; m = 0: the block
    removed, its skip path left), so the gate's Fisher information is a block's score as a unit's
    mask is a unit's. Returns {block: (items * draws, 1)}; a block whose output is not a tensor or a
    tuple led by one, shaped like its input, is missing. ``module`` is not changed.
    """
    gates = _Gates()

    def hook_for(name: str):
        def hook(block, args, kwargs, output):
            before = hidden_state(args) if args else hidden_state(kwargs.get("hidden_states"))
            if before is None or before.ndim == 0 or before.shape[0] != gates.items:
                return None
            return _gated_output(output, before, lambda shape: gates.new(name, shape))
        return hook

    handles = [module.get_submodule(name).register_forward_hook(hook_for(name), with_kwargs=True) for name in blocks]
    try:
        return _gated_gradients(module, gates, batches, kind, seed, draws)
    finally:
        for handle in handles:
            handle.remove()


_CACHE = MemoryLRU(2)  # the one home of Fisher evidence: {key: {consumer: per-item gradients}} (a sweep needs one)


def weights_digest(module: nn.Module) -> str:
    """A fingerprint of ``module``'s parameters: names, shapes and two sums each (cheap next to a backward pass)."""
    hasher = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            values = parameter.detach().double()
            hasher.update(f"{name}{tuple(parameter.shape)}{values.sum().item():.12e}"
                          f"{values.pow(2).sum().item():.12e}{values.flatten()[::97].sum().item():.12e}".encode())
    return hasher.hexdigest()[:24]


def _cached(key: tuple, names, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The gradients of ``names`` kept under ``key``, else ``compute()``'s, which are kept (one home: _CACHE)."""
    kept = _CACHE.get(key)
    if kept is not None and kept["asked"].issuperset(names):
        return {name: kept["gradients"][name] for name in names if name in kept["gradients"]}
    gradients = compute()
    _CACHE.put(key, {"asked": frozenset(names), "gradients": gradients})
    return gradients


def _key(module: nn.Module, gated: str, data_key: str, kind: str, seed: int, batches) -> tuple:
    return (weights_digest(module), gated, data_key, kind, seed, tuple(len(batch) for batch, _ in batches))


def cached_mask_gradients(module: nn.Module, consumers: dict[str, nn.Module],
                          batches: list[tuple[torch.Tensor, torch.Tensor | None]], kind: str, seed: int,
                          data_key: str) -> dict[str, torch.Tensor]:
    """``mask_gradients``, kept in memory by the model's weights, ``data_key`` (the calibration
    items), the output kind and the seed; a request for consumers the kept set lacks computes them all."""
    return _cached(_key(module, "units", data_key, kind, seed, batches), consumers,
                   lambda: mask_gradients(module, consumers, batches, kind, seed))


def cached_block_gradients(module: nn.Module, blocks: list[str],
                           batches: list[tuple[torch.Tensor, torch.Tensor | None]], kind: str, seed: int,
                           data_key: str) -> dict[str, torch.Tensor]:
    """``block_gradients``, kept in memory as ``cached_mask_gradients`` keeps unit gradients."""
    return _cached(_key(module, "blocks", data_key, kind, seed, batches), blocks,
                   lambda: block_gradients(module, blocks, batches, kind, seed))


def clear_cache() -> None:
    """Forget every kept set of Fisher evidence."""
    _CACHE.clear()


def fisher(per_item: torch.Tensor) -> torch.Tensor:
    """Mean squared per-item gradient of each unit: (items, units) -> (units,)."""
    return per_item.pow(2).mean(0)


def head_importance(gradients: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """One Fisher score per key/value head group from the output projection's per-item column gradients.

    gradients: (items, heads * head size), columns ordered head by head (query heads of one
    key/value group are consecutive).
    """
    per_group = gradients.reshape(gradients.shape[0], kv_heads, -1).sum(-1)   # (items, kv_heads)
    return fisher(per_group)


def channel_importance(columns: list[tuple[torch.Tensor, list[int], list[int]]], channels: int) -> torch.Tensor:
    """One Fisher score per root channel of a coupled group.

    columns: (per-item gradients of one consumer, its input column indices, the root channel of
    each of those columns); every consumer that reads the group's channels adds its columns.
    """
    items = columns[0][0].shape[0]
    per_channel = torch.zeros(items, channels, dtype=torch.float64)          # (items, channels)
    for gradients, idxs, root_idxs in columns:
        index = torch.tensor(root_idxs, dtype=torch.long).expand(items, -1)
        per_channel.scatter_add_(1, index, gradients[:, idxs].double())
    return fisher(per_channel)
