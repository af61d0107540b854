"""Rebuild a pruned model from its source: resize a freshly built module to a pruned state_dict.

A channel plan leaves layers narrower and attention layers with fewer heads. ``fit_to`` gives a
module built by the original factory (or config) the shapes of such a state_dict and updates the
size attributes forward passes read (in/out features and channels, depthwise groups, norm sizes,
head counts), so ``load_state_dict`` then restores the pruned model exactly.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.prune import conv1d, heads


def _resize_tensors(child: nn.Module, prefix: str, state: dict) -> bool:
    changed = False
    tensors = list(child.named_parameters(recurse=False)) + list(child.named_buffers(recurse=False))
    for name, tensor in tensors:
        saved = state.get(f"{prefix}{name}")
        if saved is None or tensor is None or saved.shape == tensor.shape:
            continue
        fresh = torch.zeros(saved.shape, dtype=tensor.dtype)
        setattr(child, name, nn.Parameter(fresh, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else fresh)
        changed = True
    return changed


def _linear(child: nn.Linear, weight: torch.Tensor) -> None:
    child.out_features, child.in_features = weight.shape


def _conv(child: nn.modules.conv._ConvNd, weight: torch.Tensor) -> None:
    depthwise = child.groups > 1 and child.groups == child.in_channels == child.out_channels
    child.out_channels = weight.shape[0]
    child.in_channels = weight.shape[1] * (weight.shape[0] if depthwise else child.groups)
    child.groups = weight.shape[0] if depthwise else child.groups


def _batchnorm(child: nn.modules.batchnorm._NormBase, weight: torch.Tensor | None) -> None:
    child.num_features = (weight if weight is not None else child.running_mean).shape[0]


def _layernorm(child: nn.LayerNorm, weight: torch.Tensor | None) -> None:
    if weight is not None:
        child.normalized_shape = tuple(weight.shape)


def _groupnorm(child: nn.GroupNorm, weight: torch.Tensor | None) -> None:
    if weight is not None:
        child.num_channels = weight.shape[0]


def _embedding(child: nn.Embedding, weight: torch.Tensor) -> None:
    child.num_embeddings, child.embedding_dim = weight.shape


def _conv1d(child: nn.Module, weight: torch.Tensor) -> None:
    child.nx, child.nf = weight.shape  # transformers' Conv1D: weight (in, out)


def _multihead(child: nn.MultiheadAttention, weight) -> None:
    size = child.head_dim
    child.embed_dim = child.kdim = child.vdim = child.in_proj_weight.shape[1]
    child.num_heads, child.head_dim = child.embed_dim // size, size


# Module type -> ``updater(module, weight)`` that sets the size attributes forward passes read from
# the (resized) weight. Subclasses use their closest registered base; a type from an optional library
# is registered as 'package.ClassName' (transformers' Conv1D). Add an entry for a new layer type.
SIZE_UPDATERS: dict[type | str, Callable[[nn.Module, torch.Tensor | None], None]] = {
    nn.Linear: _linear,
    nn.modules.conv._ConvNd: _conv,
    nn.modules.batchnorm._NormBase: _batchnorm,
    nn.LayerNorm: _layernorm,
    nn.GroupNorm: _groupnorm,
    nn.Embedding: _embedding,
    nn.MultiheadAttention: _multihead,
    "transformers.Conv1D": _conv1d,
}


def _update_sizes(child: nn.Module) -> None:
    """The size attributes of a layer, from its (resized) weight, by the updater of its type."""
    for kind in type(child).__mro__:
        updater = SIZE_UPDATERS.get(kind) or SIZE_UPDATERS.get(f"{kind.__module__.split('.')[0]}.{kind.__name__}")
        if updater is not None:
            updater(child, getattr(child, "weight", None))
            return


def _outputs(layer: nn.Module) -> int:
    return layer.nf if conv1d.is_conv1d(layer) else layer.out_features


def fit_to(module: nn.Module, state: dict, example_input=None) -> nn.Module:
    """Resize ``module`` in place to the tensor shapes in ``state`` (a pruned model's state_dict); returns it.

    Attention head counts follow the query rows. Tensors ``state`` lacks, or whose shapes already
    match, are left alone; ``load_state_dict`` reports anything that still does not fit.
    """
    with conv1d.as_linear(module):
        attention = heads.find_attention(module, example_input)
    for prefix, child in module.named_modules():
        if _resize_tensors(child, f"{prefix}." if prefix else "", state):
            _update_sizes(child)
    for unit in attention:
        rows = [_outputs(module.get_submodule(name)) for name in unit.projections]
        if unit.fused:
            count = rows[0] // (3 * unit.head_size)
            heads.set_head_counts(unit, count, count)
        else:
            heads.set_head_counts(unit, rows[0] // unit.head_size, rows[1] // unit.head_size)
    return module
