"""Fisher importance of whole units (channels, feed-forward neurons, attention heads) from mask gradients.

Removing a unit is multiplying it by a mask that goes from 1 to 0. The loss change of that step
is, to second order, ``0.5 * F`` where ``F`` is the Fisher information of the mask: the mean
over calibration items of the squared gradient of the item's log-likelihood with respect to
the mask (Kwon et al. 2022, "A Fast Post-Training Pruning Framework for Transformers"). The
first-order term is useless here: at the dense model the gradient of any distance to the dense
output is zero. The Fisher is not, and it needs no labels: the likelihood is the model's own
predictive distribution, with targets drawn from it.

- logits (classifiers, language models): targets sampled from ``softmax(output)``; with labels
  (a labelled calibration split) the labels are used instead (the empirical Fisher).
- embeddings and any other output: a Gaussian around the output, so a draw is ``output + noise``
  and the gradient is ``J^T noise``; its mean square is ``J^T J``, the second-order term of the
  squared distance to the dense output (a random-projection estimate of it).

A unit's mask sits where a layer reads it: the input columns of the consumer layer (the Linear
or Conv that reads a channel group, the output projection that reads attention heads). One pass
per batch collects every consumer's per-item gradients at once: each consumer's input is
multiplied by a ones tensor with one entry per (item, input column); its gradient is the per-item
mask gradient. Units spanning several columns (a head, a channel read by several layers, a
channel after a flatten) add their columns' gradients per item before squaring, which is the
gradient of one shared mask.

The per-item gradients depend only on the model's weights, the calibration items and the
consumers, not on the targets: ``cached_mask_gradients`` keeps the last few sets in memory, so a
sweep or a slider move over the same model reads them instead of running backward passes again.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn

from core.cache import MemoryLRU

DRAWS = 2  # targets drawn per item (one with labels: they do not change between draws)
CONSUMER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def model_loss(output: torch.Tensor, labels: torch.Tensor | None, kind: str,
               generator: torch.Generator) -> torch.Tensor:
    """The summed negative log-likelihood of targets drawn from the model's own prediction (see module doc).

    kind: 'logits' (class scores in the last dimension) or 'embedding' (any other output).
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


def mask_gradients(module: nn.Module, consumers: dict[str, nn.Module],
                   batches: list[tuple[torch.Tensor, torch.Tensor | None]], kind: str, seed: int = 0,
                   draws: int = DRAWS) -> dict[str, torch.Tensor]:
    """Per-item gradients of the loss with respect to a mask on every input column of each consumer.

    consumers: layer name -> the Linear/Conv module whose input columns carry units.
    batches: (inputs, labels or None) pairs of calibration items.
    Returns {name: (items * draws, input columns)}; a consumer the forward pass never reached
    (or reached with an input that has no batch dimension) is missing. ``module`` is not changed.
    """
    generator = torch.Generator().manual_seed(seed)
    draws = 1 if batches and batches[0][1] is not None and kind == "logits" else draws
    collected: dict[str, list[torch.Tensor]] = {name: [] for name in consumers}
    masks: dict[str, list[torch.Tensor]] = {}

    def hook_for(name: str):
        def hook(layer, args):
            shape = _mask_shape(layer, args[0], current_items[0])
            if shape is None:
                return None
            mask = torch.ones(shape, requires_grad=True)
            masks.setdefault(name, []).append(mask)
            return (args[0] * mask, *args[1:])
        return hook

    current_items = [0]
    handles = [layer.register_forward_pre_hook(hook_for(name)) for name, layer in consumers.items()]
    try:
        with torch.enable_grad():
            for batch, batch_labels in batches:
                current_items[0] = len(batch)
                masks.clear()
                output = module(batch)
                output = output[0] if isinstance(output, (tuple, list)) else output
                names = list(masks)
                leaves = [mask for name in names for mask in masks[name]]
                for draw in range(draws):
                    loss = model_loss(output, batch_labels, kind, generator)
                    grads = torch.autograd.grad(loss, leaves, retain_graph=draw < draws - 1, allow_unused=True)
                    position = 0
                    for name in names:
                        parts = grads[position:position + len(masks[name])]
                        position += len(masks[name])
                        total = sum(part.reshape(len(batch), -1) for part in parts if part is not None)
                        if isinstance(total, torch.Tensor):
                            collected[name].append(total.detach())
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts).double() for name, parts in collected.items() if parts}


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


def cached_mask_gradients(module: nn.Module, consumers: dict[str, nn.Module],
                          batches: list[tuple[torch.Tensor, torch.Tensor | None]], kind: str, seed: int,
                          data_key: str) -> dict[str, torch.Tensor]:
    """``mask_gradients``, kept in memory by the model's weights, ``data_key`` (the calibration
    items), the output kind and the seed; a request for consumers the kept set lacks computes them all."""
    key = (weights_digest(module), data_key, kind, seed, tuple(len(batch) for batch, _ in batches))
    kept = _CACHE.get(key)
    if kept is not None and kept["asked"].issuperset(consumers):
        return {name: kept["gradients"][name] for name in consumers if name in kept["gradients"]}
    gradients = mask_gradients(module, consumers, batches, kind, seed)
    _CACHE.put(key, {"asked": frozenset(consumers), "gradients": gradients})
    return gradients


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
