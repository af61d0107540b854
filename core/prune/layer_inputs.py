"""Every prunable layer seen as matrix products ``W_part @ x``: its weight split into (rows x columns)
parts, and its calibration inputs unrolled into (samples x columns) matrices, one per part.

A Linear layer is one part. A convolution is one part per group, its inputs unfolded into patches
(``in_channels * kernel`` columns, ordered like the flattened weight). An attention input
projection (3E x E) is three parts, the query, key and value rows, each reading its own input.
Layer-by-layer pruning (SparseGPT) reads a layer only through these functions.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from core.inspect import Layer
from core.prune import nm


def _unfold(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Patches of a Conv1d/2d/3d's input: (samples, in_channels * kernel elements), one row per output position."""
    dims = len(module.kernel_size)
    if inputs.ndim == dims + 1:  # an unbatched call
        inputs = inputs.unsqueeze(0)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    padded = nn.functional.pad(inputs, module._reversed_padding_repeated_twice, mode=mode)
    for axis, (size, stride, dilation) in enumerate(zip(module.kernel_size, module.stride, module.dilation)):
        padded = padded.unfold(2 + axis, (size - 1) * dilation + 1, stride)[..., ::dilation]
    # (batch, channels, *positions, *kernel) -> (batch, *positions, channels, *kernel)
    order = [0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims)]
    columns = inputs.shape[1] * math.prod(module.kernel_size)
    return padded.permute(order).reshape(-1, columns)


def _rows_of(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, values.shape[-1])  # (samples, features)


def _linear_inputs(module: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [_rows_of(args[0])]


def _conv_inputs(module: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return list(_unfold(module, args[0]).chunk(module.groups, dim=1))


def _attention_inputs(module: nn.Module, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    values = list(args) + [kwargs[key] for key in ("query", "key", "value") if key in kwargs]
    return [_rows_of(value) for value in values[:3]]


def _linear_parts(layer: Layer) -> list[torch.Tensor]:
    return [layer.weight.detach()]


def _conv_parts(layer: Layer) -> list[torch.Tensor]:
    weight = layer.weight.detach()
    return list(weight.reshape(weight.shape[0], -1).chunk(layer.module.groups, dim=0))  # (out / groups, columns)


def _attention_parts(layer: Layer) -> list[torch.Tensor]:
    return list(layer.weight.detach().chunk(3, dim=0))  # query, key, value rows


@dataclass(frozen=True)
class Adapter:
    """How one kind of layer reads as matrix products."""

    inputs: Callable[[nn.Module, tuple, dict], list[torch.Tensor]]  # (samples, columns) per part
    parts: Callable[[Layer], list[torch.Tensor]]                     # (rows, columns) per part


ADAPTERS: dict[str, Adapter] = {
    "linear": Adapter(_linear_inputs, _linear_parts),
    "conv1d": Adapter(_conv_inputs, _conv_parts),
    "conv2d": Adapter(_conv_inputs, _conv_parts),
    "conv3d": Adapter(_conv_inputs, _conv_parts),
    "attention": Adapter(_attention_inputs, _attention_parts),
}


def adapter(layer: Layer) -> Adapter | None:
    """The adapter for ``layer``'s kind, or None for a layer no hook can watch."""
    return ADAPTERS.get(layer.kind)


def assemble(layer: Layer, parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts put back together in the shape of ``layer``'s weight."""
    return torch.cat(parts, dim=0).reshape(layer.weight.shape)


def column_order(layer: Layer, m: int) -> torch.Tensor | None:
    """A permutation of a part's columns that makes N:M groups consecutive columns, as core.prune.nm
    lays them out (convolutions: M consecutive input channels at each kernel position); None if the
    layer cannot take groups of ``m``."""
    weight = layer.weight
    how = nm.layout(weight, m)
    if how is None:
        return None
    columns = weight[0].numel()
    if how != "channels":
        return torch.arange(columns)
    channels = weight.shape[1]
    return torch.arange(columns).reshape(channels, -1).T.reshape(-1)  # (kernel, channels) order
