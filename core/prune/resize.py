"""Rebuild a pruned model from its source: resize a freshly built module to a pruned state_dict.

A channel plan leaves layers narrower and attention layers with fewer heads. ``fit_to`` gives a
module built by the original factory (or config) the shapes of such a state_dict and updates the
size attributes forward passes read (in/out features and channels, depthwise groups, norm sizes,
head counts), so ``load_state_dict`` then restores the pruned model exactly.
"""
from __future__ import annotations

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


def _update_sizes(child: nn.Module) -> None:
    """The size attributes of a standard layer, from its (resized) weight."""
    weight = getattr(child, "weight", None)
    if isinstance(child, nn.Linear):
        child.out_features, child.in_features = weight.shape
    elif isinstance(child, nn.modules.conv._ConvNd):
        depthwise = child.groups > 1 and child.groups == child.in_channels == child.out_channels
        child.out_channels = weight.shape[0]
        child.in_channels = weight.shape[1] * (weight.shape[0] if depthwise else child.groups)
        child.groups = weight.shape[0] if depthwise else child.groups
    elif isinstance(child, nn.modules.batchnorm._NormBase):
        child.num_features = (weight if weight is not None else child.running_mean).shape[0]
    elif isinstance(child, nn.LayerNorm) and weight is not None:
        child.normalized_shape = tuple(weight.shape)
    elif isinstance(child, nn.GroupNorm) and weight is not None:
        child.num_channels = weight.shape[0]
    elif isinstance(child, nn.Embedding):
        child.num_embeddings, child.embedding_dim = weight.shape
    elif conv1d.is_conv1d(child):  # transformers' Conv1D: weight (in, out)
        child.nx, child.nf = weight.shape
    elif isinstance(child, nn.MultiheadAttention):
        size = child.head_dim
        child.embed_dim = child.kdim = child.vdim = child.in_proj_weight.shape[1]
        child.num_heads, child.head_dim = child.embed_dim // size, size


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
